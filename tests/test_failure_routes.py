"""Where each handler failure goes (exactly one route: chained onto an awaited task's
CancelledError, or the loop's exception handler), what survives an interrupt (context
variables, a bounded number of done-callbacks), and bridges of loops closed bare."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import signal
import threading
from typing import Any

import pytest
import uvloop

import aiosigbridge as asb
from aiosigbridge import _native

from ._faults import LOOPS, child, interrupted, uncancel, until
from .helpers import TIMEOUT

SIG = signal.SIGUSR2


# -- where a handler's failure goes: exactly one route ------------------------------------


def _reported(loop_errors: list[dict[str, Any]]) -> list[str]:
    return [str(c.get("exception")) for c in loop_errors]


async def test_failure_on_an_unawaited_interrupted_task_is_reported(
    loop_errors: list[dict[str, Any]],
) -> None:
    """A failure on a cancelled task nobody holds is reported while the loop runs, once."""
    bridge = asb.get_bridge()
    try:
        worker = asyncio.ensure_future(asyncio.sleep(3600))
        await asyncio.sleep(0)

        def flush_cache(ev: asb.SignalEvent) -> None:
            raise ValueError("cache flush failed")

        h = bridge.add_handler(SIG, flush_cache, interrupt=worker)
        os.kill(os.getpid(), SIG)
        await until(worker.done)
        assert worker.cancelled()
        h.remove()
        del worker, h  # fire-and-forget: nobody can retrieve its cancellation any more
        await until(lambda: loop_errors, timeout=2.5)  # the library looks every second
        (ctx,) = loop_errors
        exc = ctx["exception"]
        assert isinstance(exc, ValueError)
        assert str(exc) == "cache flush failed"
        assert ctx["signal_event"].signum is SIG
        assert ctx["signal_event"].pid == os.getpid()
        assert any("flush_cache" in n for n in exc.__notes__), exc.__notes__
        await bridge.aclose()
        assert _reported(loop_errors) == ["cache flush failed"]  # not again at close
    finally:
        await bridge.aclose()
        loop_errors.clear()


async def test_failure_on_an_unawaited_task_is_reported_at_close(
    loop_errors: list[dict[str, Any]],
) -> None:
    """A failure on an unawaited cancelled task still held is reported by close, once."""
    bridge = asb.get_bridge()
    worker = asyncio.ensure_future(asyncio.sleep(3600))
    await asyncio.sleep(0)

    def flush_cache(ev: asb.SignalEvent) -> None:
        raise ValueError("held task")

    bridge.add_handler(SIG, flush_cache, interrupt=worker)
    os.kill(os.getpid(), SIG)
    await until(worker.done)
    await bridge.aclose()
    assert _reported(loop_errors) == ["held task"]
    assert worker.cancelled()
    loop_errors.clear()


async def test_survivor_failures_are_each_reported_once(
    loop_errors: list[dict[str, Any]],
) -> None:
    """A task that catches its interrupts and goes on: each failure is reported once."""
    bridge = asb.get_bridge()
    stop = asyncio.Event()
    caught: list[str] = []

    async def survivor() -> int:
        while True:
            try:
                await stop.wait()
                return len(caught)
            except asyncio.CancelledError as exc:
                caught.append(str(interrupted(exc)))
                uncancel()

    worker = asyncio.ensure_future(survivor())
    await asyncio.sleep(0)
    rounds = [0]

    def failing(ev: asb.SignalEvent) -> None:
        rounds[0] += 1
        raise ValueError(f"failure {rounds[0]}")

    bridge.add_handler(SIG, failing, interrupt=worker)
    for n in (1, 2):
        os.kill(os.getpid(), SIG)
        await until(lambda n=n: len(caught) == n)
    stop.set()
    assert await asyncio.wait_for(worker, TIMEOUT) == 2
    await until(lambda: len(loop_errors) >= 2)
    await bridge.aclose()
    assert sorted(_reported(loop_errors)) == ["failure 1", "failure 2"]
    assert all(c["signal_event"].signum is SIG for c in loop_errors)
    loop_errors.clear()


async def test_awaited_task_gets_the_failure_chained_and_not_reported() -> None:
    """An awaited task gets the failure as its CancelledError's cause, never also reported."""
    bridge = asb.get_bridge()
    target = asyncio.ensure_future(asyncio.sleep(3600))
    await asyncio.sleep(0)

    def reload_config(ev: asb.SignalEvent) -> None:
        raise ValueError("bad config")

    bridge.add_handler(SIG, reload_config, interrupt=target)
    os.kill(os.getpid(), SIG)
    with pytest.raises(asyncio.CancelledError) as info:
        await asyncio.wait_for(target, TIMEOUT)
    cause = interrupted(info.value).__cause__
    assert isinstance(cause, ValueError)
    assert str(cause) == "bad config"
    await bridge.aclose()
    gc.collect()  # nothing left to report later either (a task's __del__ would)


async def test_failure_on_a_fire_and_forget_task_kept_in_a_set_is_reported(
    loop_errors: list[dict[str, Any]],
) -> None:
    """A fire-and-forget task kept in a set (a done-callback) still gets its failure reported."""
    background: set[asyncio.Task[Any]] = set()
    bridge = asb.get_bridge()
    try:
        worker = asyncio.ensure_future(asyncio.sleep(3600))
        background.add(worker)
        worker.add_done_callback(background.discard)
        await asyncio.sleep(0)

        def flush_cache(ev: asb.SignalEvent) -> None:
            raise ValueError("kept in a set")

        bridge.add_handler(SIG, flush_cache, interrupt=worker)
        os.kill(os.getpid(), SIG)
        # The set lets go of the task in its done-callback, which runs one loop step after
        # the task is done (worker.done() alone does not say it ran).
        await until(lambda: worker.done() and not background)
        await bridge.aclose()
        assert _reported(loop_errors) == ["kept in a set"]
    finally:
        await bridge.aclose()
        loop_errors.clear()


# -- what survives an interrupt; bridges of loops closed bare ------------------------------

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")


async def test_contextvars_set_in_the_first_step_survive_the_await() -> None:
    """Context vars set in an async handler's first step survive its awaits, stay in its task."""
    seen: list[tuple[str, ...]] = []
    next_handler: list[str] = []
    done = asyncio.Event()

    async def on_signal(ev: asb.SignalEvent) -> None:
        REQUEST_ID.set(f"req-{ev.value}")
        first = REQUEST_ID.get("unset")
        await asyncio.sleep(0)
        second = REQUEST_ID.get("unset")
        await asyncio.sleep(0.001)
        seen.append((first, second, REQUEST_ID.get("unset")))
        if len(seen) == 2:
            done.set()

    sig = signal.SIGRTMIN + 2
    asb.add_handler(sig, on_signal)
    asb.add_handler(sig, lambda ev: next_handler.append(REQUEST_ID.get("unset")))
    asb.sigqueue(os.getpid(), sig, 1)
    asb.sigqueue(os.getpid(), sig, 2)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert seen == [("req-1", "req-1", "req-1"), ("req-2", "req-2", "req-2")]
    assert next_handler == ["unset", "unset"]  # ran inline after each first step
    assert REQUEST_ID.get("unset") == "unset"
    await asb.get_bridge().aclose()


async def test_survivor_of_many_interrupts_keeps_few_done_callbacks() -> None:
    """A task surviving 20 interrupts keeps at most 2 done-callbacks, not one per interrupt."""
    stop = asyncio.Event()
    caught = [0]

    async def survivor() -> int:
        while True:
            try:
                await stop.wait()
                return caught[0]
            except asyncio.CancelledError:
                caught[0] += 1
                uncancel()

    worker = asyncio.ensure_future(survivor())
    await asyncio.sleep(0)
    bridge = asb.get_bridge()
    bridge.add_handler(SIG, lambda ev: None, interrupt=worker)
    sizes = []
    for n in range(1, 21):
        os.kill(os.getpid(), SIG)
        await until(lambda n=n: caught[0] == n)
        sizes.append(len(worker._callbacks or ()))  # type: ignore[attr-defined]
    assert max(sizes) <= 2, sizes
    stop.set()
    assert await asyncio.wait_for(worker, TIMEOUT) == 20
    await bridge.aclose()


STALE = """
import asyncio, json, os, signal, sys
import uvloop
import aiosigbridge as asb
from aiosigbridge import _native

loop_name, mode = sys.argv[1], sys.argv[2]
new = uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop
SIGS = (signal.SIGTERM, signal.SIGUSR1)
def state():
    return {int(s): [list(_native.disposition(s)), repr(signal.getsignal(s))] for s in SIGS}
before = state()
loop1 = new()
running = asyncio.Event()

async def consumer():
    async with asb.open_receiver(signal.SIGTERM) as rx:
        running.set()
        async for ev in rx:
            pass

async def slow_handler(ev):
    running.set()
    await asyncio.sleep(3600)

async def setup():
    if mode == "receiver":
        asyncio.ensure_future(consumer())
    else:
        asb.add_handler(signal.SIGUSR1, slow_handler)
        os.kill(os.getpid(), signal.SIGUSR1)
    await asyncio.wait_for(running.wait(), 10)

loop1.run_until_complete(setup())
held_before = sorted(_native.registry.signals)
loop1.close()  # a bare close: the bridge is left for the next get_bridge()
problems = []

async def main():
    try:
        asb.get_bridge()
    except Exception as exc:
        problems.append(f"get_bridge() raised {type(exc).__name__}: {exc}")
    return sorted(_native.registry.signals)

held_during = (uvloop.run if loop_name == "uvloop" else asyncio.run)(main())
print("RESULT " + json.dumps({
    "problems": problems, "held_before": held_before, "held_during": held_during,
    "held_after": sorted(_native.registry.signals),
    "subscriptions": len(_native.registry.subscriptions),
    "restored": state() == before,
}), flush=True)
"""


@pytest.mark.parametrize("mode", ["receiver", "handler"])
@pytest.mark.parametrize("loop", LOOPS)
def test_get_bridge_after_bare_close_with_work_in_progress(loop: str, mode: str) -> None:
    """get_bridge() after a bare close with work in progress: no error, signals given back."""
    r = child(STALE, loop, mode)
    assert r["problems"] == [], r
    assert r["held_before"], r  # it was bridged when the loop was closed
    assert r["held_during"] == [], r  # given back by that get_bridge()
    assert r["held_after"] == [], r
    assert r["subscriptions"] == 0, r
    assert r["restored"], r


@pytest.mark.parametrize("factory", ["asyncio", "uvloop"])
def test_two_threads_close_one_stale_bridge_once(factory: str) -> None:
    """Two threads calling get_bridge() at once close the one stale bridge exactly once."""
    new = uvloop.new_event_loop if factory == "uvloop" else asyncio.new_event_loop
    for _ in range(20):
        old = new()

        async def setup() -> asb.SignalBridge:
            bridge = asb.get_bridge()
            bridge.add_handler(SIG, lambda ev: None)
            return bridge

        stale = old.run_until_complete(setup())
        old.close()
        closes: list[int] = []
        forget = stale.on_close
        assert forget is not None

        def counted(b: asb.SignalBridge, forget: Any = forget, closes: list[int] = closes) -> None:
            closes.append(threading.get_ident())
            forget(b)

        stale.on_close = counted
        barrier = threading.Barrier(2)
        results: list[Any] = []

        def contender(barrier: threading.Barrier = barrier, results: list[Any] = results) -> None:
            loop = new()
            try:
                barrier.wait(TIMEOUT)
                bridge = asb.get_bridge(loop)
                results.append(bridge.loop is loop)
                bridge.close()
            except BaseException as exc:
                results.append(exc)
            finally:
                loop.close()

        threads = [threading.Thread(target=contender) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert results == [True, True]
        assert len(closes) == 1, closes
        assert stale.closed
        assert not _native.registry.signals
