"""Repro: sigqueue'd realtime signals from one sender reach a bridge out of order when
the kernel hands them to several threads of the receiving process.

The kernel dequeues a realtime signal's queue in order, but two threads can each take
one and run sb_handler at the same time; the ring keeps the order in which the handlers
claim cells (and sb_drain sorts by the handler's timestamp), not the kernel's order.
With the signal blocked in every thread but one, the order holds.

    python tests/stress/repro_rt_order.py       # any thread: out_of_order > 0
    python tests/stress/repro_rt_order.py one   # one thread takes it: out_of_order == 0
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

import aiosigbridge as asb

SIG = int(signal.SIGRTMIN) + 1
N = 20_000
ONE = sys.argv[1:] == ["one"]
SENDER = """
import errno, sys, time
import aiosigbridge as asb
pid, sig, n = map(int, sys.argv[1:])
for q in range(n):
    while True:
        try:
            asb.sigqueue(pid, sig, q)
            break
        except OSError as e:
            assert e.errno == errno.EAGAIN
            time.sleep(0.0002)
"""


def spin() -> None:
    """Other threads of the process, idle most of the time (as in any real program)."""
    if ONE:
        signal.pthread_sigmask(signal.SIG_BLOCK, {SIG})
    for _ in range(20_000):
        time.sleep(0.0001)


async def main() -> None:
    bridge = asb.SignalBridge(asyncio.get_running_loop(), capacity=1 << 16)
    last, seen, out_of_order = -1, 0, 0
    finished = asyncio.Event()

    def on_signal(ev: asb.SignalEvent) -> None:
        nonlocal last, seen, out_of_order
        assert ev.value is not None
        seen += 1
        if ev.value < last:
            out_of_order += 1
        last = max(last, ev.value)
        if seen + bridge.stats()[SIG].overflowed >= N:
            finished.set()

    h = bridge.add_handler(SIG, on_signal)
    if ONE:  # every thread started before has the signal blocked; only this one takes it
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {SIG})
    busy = [threading.Thread(target=spin) for _ in range(3)]
    for t in busy:
        t.start()
    sender = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SENDER, str(os.getpid()), str(SIG), str(N)
    )
    await asyncio.wait_for(finished.wait(), 60)
    for t in busy:
        t.join()
    await asyncio.wait_for(sender.wait(), 10)
    overflowed = bridge.stats()[SIG].overflowed
    where = "one thread" if ONE else "any thread"
    print(f"{where}: seen={seen} overflowed={overflowed} out_of_order={out_of_order}")
    h.remove()
    await bridge.aclose()


if __name__ == "__main__":
    if ONE:
        signal.pthread_sigmask(signal.SIG_BLOCK, {SIG})
    th = threading.Thread(target=lambda: asyncio.run(main()))
    th.start()
    th.join()
