"""A self-contained tour: send this process a few signals and print each event, with its
sender and the latency from the C handler to the Python handler, on asyncio and uvloop.

    python examples/demo.py        (or: make demo)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import uvloop

import aiosigbridge as asb


def show(ev: asb.SignalEvent, kind: str) -> None:
    latency_us = (time.monotonic_ns() - ev.timestamp_ns) / 1000
    value = f", value {ev.value}" if ev.value is not None else ""
    print(
        f"  {kind:<8} {ev.name:<12} from pid {ev.pid:<7} uid {ev.uid:<5} "
        f"code {ev.code:<4} x{ev.coalesced}{value}  {latency_us:7.1f} us after the C handler"
    )


async def main() -> None:
    bridge = asb.get_bridge()
    done = asyncio.Event()

    def sync_handler(ev: asb.SignalEvent) -> None:
        show(ev, "sync")

    async def async_handler(ev: asb.SignalEvent) -> None:
        show(ev, "async")
        if ev.signum == signal.SIGUSR2:
            done.set()

    rt = signal.SIGRTMIN + 1
    for sig in (signal.SIGUSR1, signal.SIGUSR2, rt):
        bridge.add_handler(sig, sync_handler)
        bridge.add_handler(sig, async_handler)

    me = os.getpid()
    os.kill(me, signal.SIGUSR1)  # from this process
    await asyncio.sleep(0.01)
    for value in (1, 2, 3):  # realtime, one event each, with values
        asb.sigqueue(me, rt, value)
    await asyncio.sleep(0.01)
    for _ in range(3):  # standard signals sent before the loop runs: coalesced
        os.kill(me, signal.SIGUSR1)
    await asyncio.sleep(0.01)
    child = await asyncio.create_subprocess_exec(  # from another process
        sys.executable, "-c", f"import os, signal; os.kill({me}, signal.SIGUSR2)"
    )
    assert await child.wait() == 0
    await asyncio.wait_for(done.wait(), 5)
    print(
        "  stats:",
        {
            s.name: (st.received, st.delivered)
            for s, st in bridge.stats().items()
            if isinstance(s, signal.Signals)
        },
    )
    await bridge.aclose()


if __name__ == "__main__":
    print(f"asyncio (pid {os.getpid()}):")
    asyncio.run(main())
    print("uvloop:")
    uvloop.run(main())
