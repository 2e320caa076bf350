"""wait_for_signal() (what server hooks take) and open_signal_receiver() (anyio's shape)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

import pytest
import uvloop

import aiosigbridge as asb
from aiosigbridge import _native

from ._faults import until
from .helpers import TIMEOUT

SIG = signal.SIGUSR1


def _bridged(sig: int) -> bool:
    return sig in _native.registry.signals


async def _kill_from_child(sig: int) -> int:
    """Send ``sig`` to us from another process; its pid."""
    proc = await asyncio.create_subprocess_exec("kill", f"-{int(sig)}", str(os.getpid()))
    assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    return proc.pid


async def test_wait_for_signal_returns_the_next_delivery_with_its_sender() -> None:
    """The event of the next delivery, the sender's pid and uid; released after."""
    waiter = asyncio.ensure_future(asb.wait_for_signal(signal.SIGTERM, SIG))
    await until(lambda: _bridged(SIG) and _bridged(signal.SIGTERM))
    pid = await _kill_from_child(SIG)
    ev = await asyncio.wait_for(waiter, TIMEOUT)
    assert ev.signum is SIG
    assert (ev.pid, ev.uid, ev.code) == (pid, os.getuid(), asb.SI_USER)
    assert not _bridged(SIG)
    assert not _bridged(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


async def test_wait_for_signal_cancelled_leaves_nothing_bridged() -> None:
    """A wait cancelled (a server stopped by other means) gives its signals back."""
    waiter = asyncio.ensure_future(asb.wait_for_signal(SIG))
    await until(lambda: _bridged(SIG))
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not _bridged(SIG)


async def test_two_waits_each_see_the_delivery() -> None:
    """Every wait in progress gets the delivery (each has its own receiver)."""
    waits = [asyncio.ensure_future(asb.wait_for_signal(SIG)) for _ in range(2)]
    await until(lambda: len(asb.get_bridge()._receivers.get(SIG, ())) == 2)
    os.kill(os.getpid(), SIG)
    evs = await asyncio.wait_for(asyncio.gather(*waits), TIMEOUT)
    assert evs[0] == evs[1]
    assert evs[0].pid == os.getpid()


async def test_wait_for_signal_raises_when_the_bridge_closes() -> None:
    """aclose() while a wait is in progress: RuntimeError naming the signal."""
    bridge = asb.get_bridge()
    waiter = asyncio.ensure_future(asb.wait_for_signal(SIG))
    await until(lambda: _bridged(SIG))
    await bridge.aclose()
    with pytest.raises(RuntimeError, match="closed while waiting for SIGUSR1"):
        await asyncio.wait_for(waiter, TIMEOUT)


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((), TypeError, "needs at least one signal"),
        ((signal.SIGKILL,), ValueError, "SIGKILL"),
        (("SIGTERM",), TypeError, "int"),
    ],
)
async def test_bad_signals_are_refused_at_the_call(args: Any, exc: Any, match: str) -> None:
    """Refused when called, not when awaited, and nothing is left bridged."""
    with pytest.raises(exc, match=match):
        asb.wait_for_signal(*args)
    with pytest.raises(exc, match=match), asb.open_signal_receiver(*args):
        pass  # pragma: no cover - never entered
    assert not _native.registry.signals


async def test_open_signal_receiver_yields_signal_numbers() -> None:
    """anyio's shape: a plain `with`, signal numbers (Signals members, ints for
    realtime signals) in the order sent; released on exit."""
    rt = signal.SIGRTMIN + 2
    with asb.open_signal_receiver(SIG, rt) as signals:
        assert _bridged(SIG)
        assert _bridged(rt)
        os.kill(os.getpid(), SIG)
        asb.sigqueue(os.getpid(), rt, 7)
        got: list[Any] = []

        async def take_two() -> None:
            async for signum in signals:
                got.append(signum)
                if len(got) == 2:
                    return

        await asyncio.wait_for(take_two(), TIMEOUT)
    assert got == [SIG, rt]
    assert got[0] is signal.SIGUSR1
    assert not _bridged(SIG)
    assert not _bridged(rt)


async def test_open_signal_receiver_reports_a_standard_signal_sent_twice_once() -> None:
    """Two sends before the iterator looked: one number (trio and anyio coalesce)."""
    with asb.open_signal_receiver(SIG) as signals:
        it = signals.__aiter__()
        os.kill(os.getpid(), SIG)
        os.kill(os.getpid(), SIG)
        first = await asyncio.wait_for(it.__anext__(), TIMEOUT)
        os.kill(os.getpid(), signal.SIGUSR1)
        second = await asyncio.wait_for(it.__anext__(), TIMEOUT)
    assert (first, second) == (SIG, SIG)
    assert asb.get_bridge().stats()[SIG].delivered >= 2


def test_open_signal_receiver_on_a_loop_in_a_worker_thread() -> None:
    """Where anyio's asyncio backend needs the main thread, this works in any."""
    got: list[Any] = []
    ready = threading.Event()

    async def worker() -> None:
        with asb.open_signal_receiver(SIG) as signals:
            ready.set()
            async for signum in signals:
                got.append(signum)
                return

    def run(factory: Any) -> None:
        loop = factory()
        try:
            loop.run_until_complete(asyncio.wait_for(worker(), TIMEOUT))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    for factory in (asyncio.new_event_loop, uvloop.new_event_loop):
        got.clear()
        ready.clear()
        t = threading.Thread(target=run, args=(factory,))
        t.start()
        assert ready.wait(TIMEOUT)
        os.kill(os.getpid(), SIG)
        t.join(TIMEOUT)
        assert got == [SIG], factory
    assert not _native.registry.signals
