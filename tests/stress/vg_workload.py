"""A small signal workload for valgrind memcheck (tests/stress/sanitize.sh).

Both loops: a bridge with a sync and an async handler and a receiver, standard signals
(kill) and realtime signals with values (sigqueue), an extra bridge with a tiny ring
(overflow path), removal, close, and a fork whose child bridges a signal of its own.
Exits non-zero if a signal is lost or misreported.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import uvloop

import aiosigbridge as asb

N = 50


async def workload() -> None:
    pid = os.getpid()
    rt = int(signal.SIGRTMIN)
    bridge = asb.get_bridge(capacity=64)
    small = asb.SignalBridge(asyncio.get_running_loop(), capacity=2)
    values: list[int] = []
    usr1 = 0
    async_runs = 0
    done = asyncio.Event()

    def on_rt(ev: asb.SignalEvent) -> None:
        assert ev.value is not None, ev
        assert ev.pid == pid, ev
        values.append(ev.value)
        if len(values) == N:
            done.set()

    def on_usr1(ev: asb.SignalEvent) -> None:
        nonlocal usr1
        usr1 += ev.coalesced

    async def on_usr1_async(ev: asb.SignalEvent) -> None:
        nonlocal async_runs
        await asyncio.sleep(0)
        async_runs += 1

    h1 = bridge.add_handler(rt, on_rt)
    h2 = bridge.add_handler(signal.SIGUSR1, on_usr1)
    h3 = bridge.add_handler(signal.SIGUSR1, on_usr1_async)
    hs = small.add_handler(rt, lambda ev: None)
    async with asb.open_receiver(signal.SIGUSR2, maxsize=4) as rx:
        for i in range(N):
            await _sigqueue(pid, rt, i * 1000 + 7)
            os.kill(pid, signal.SIGUSR1)
            if i % 10 == 0:
                os.kill(pid, signal.SIGUSR2)
                await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 30)
        got = await asyncio.wait_for(rx.__anext__(), 30)
        assert got.signum == signal.SIGUSR2
    assert values == [i * 1000 + 7 for i in range(N)], values
    for _ in range(100):
        if usr1 == N:
            break
        await asyncio.sleep(0.01)
    st = small.stats()[rt]
    assert st.delivered + st.overflowed == N, st
    if sys.platform == "linux" and not os.environ.get("VG_NO_FORK"):
        child = os.fork()
        if child == 0:
            code = 1
            try:
                code = 0 if asyncio.run(_child()) else 2
            finally:
                os._exit(code)
        for _ in range(3000):
            done_pid, status = os.waitpid(child, os.WNOHANG)  # noqa: ASYNC222 (non-blocking)
            if done_pid:
                break
            await asyncio.sleep(0.01)
        assert done_pid, "the forked child did not finish in 30 s"
        assert status == 0, status
    for h in (h1, h2, h3, hs):
        h.remove()
    h1.remove()
    await small.aclose()
    await bridge.aclose()
    print(f"ok: {len(values)} values, SIGUSR1 x{usr1}, async runs {async_runs}")


async def _sigqueue(pid: int, sig: int, value: int) -> None:
    """sigqueue, retried on EAGAIN (under valgrind the queue of pending signals fills:
    valgrind delivers them to the program itself, later)."""
    for _ in range(5000):
        try:
            asb.sigqueue(pid, sig, value)
            return
        except BlockingIOError:
            await asyncio.sleep(0.001)
    raise TimeoutError(f"sigqueue kept failing with EAGAIN for {sig}")


async def _child() -> bool:
    got = asyncio.Event()
    h = asb.add_handler(signal.SIGUSR1, lambda ev: got.set())
    os.kill(os.getpid(), signal.SIGUSR1)
    await asyncio.wait_for(got.wait(), 30)
    h.remove()
    await asb.get_bridge().aclose()
    return True


def main() -> None:
    for factory in (asyncio.new_event_loop, uvloop.new_event_loop):
        loop = factory()
        try:
            loop.run_until_complete(workload())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


if __name__ == "__main__":
    main()
