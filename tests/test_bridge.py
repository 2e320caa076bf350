"""The per-loop bridge: handlers, order, eager start, remove, aclose, several loops."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

import pytest
import uvloop

import aiosigbridge as asb
from aiosigbridge import _native

from .helpers import TIMEOUT, Collector, run_python, run_script

SIG = signal.SIGUSR1
SIG2 = signal.SIGUSR2


async def test_sync_handler_gets_event_with_sender() -> None:
    """A sync handler gets the signal with this process as sender and a fresh stamp."""
    got = Collector()
    asb.add_handler(SIG, got)
    os.kill(os.getpid(), SIG)
    (ev,) = await got.wait(1)
    assert ev.signum is SIG
    assert ev.name == "SIGUSR1"
    assert ev.pid == os.getpid()
    assert ev.uid == os.getuid()
    assert ev.code == asb.SI_USER
    assert ev.value is None
    assert ev.status is None
    assert ev.coalesced == 1
    assert 0 < ev.age_ns() < 10 * 10**9


async def test_async_handler_runs() -> None:
    """An async handler runs to completion as a task."""
    done = asyncio.Event()
    seen: list[asb.SignalEvent] = []

    async def handler(ev: asb.SignalEvent) -> None:
        await asyncio.sleep(0)
        seen.append(ev)
        done.set()

    asb.add_handler(SIG, handler)
    os.kill(os.getpid(), SIG)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert [e.signum for e in seen] == [SIG]


async def test_sender_is_another_process() -> None:
    """ev.pid names the process that called kill()."""
    got = Collector()
    asb.add_handler(SIG, got)
    rc, out, err = await run_python(
        "import os, signal; os.kill(os.getppid(), signal.SIGUSR1); print(os.getpid())"
    )
    assert rc == 0, err
    (ev,) = await got.wait(1)
    assert ev.pid == int(out)
    assert ev.uid == os.getuid()


async def test_handlers_start_in_registration_order_with_eager_async() -> None:
    """Sync and async handlers start in registration order; an async handler's code
    before its first await runs before the next handler."""
    order: list[str] = []
    finished = asyncio.Event()

    def first(ev: asb.SignalEvent) -> None:
        order.append("first")

    async def second(ev: asb.SignalEvent) -> None:
        order.append("second:start")
        assert asyncio.current_task() is not None
        await asyncio.sleep(0)
        order.append("second:end")
        finished.set()

    def third(ev: asb.SignalEvent) -> None:
        order.append("third")

    bridge = asb.get_bridge()
    for h in (first, second, third):
        bridge.add_handler(SIG, h)
    os.kill(os.getpid(), SIG)
    await asyncio.wait_for(finished.wait(), TIMEOUT)
    assert order == ["first", "second:start", "third", "second:end"]


async def test_async_handler_starts_in_the_drain_iteration() -> None:
    """The first step of an async handler runs in the reader callback itself, before
    any callback scheduled from there with call_soon."""
    loop = asyncio.get_running_loop()
    order: list[str] = []
    finished = asyncio.Event()

    def sync(ev: asb.SignalEvent) -> None:
        loop.call_soon(order.append, "call_soon")

    async def handler(ev: asb.SignalEvent) -> None:
        order.append("async:start")
        finished.set()

    asb.add_handler(SIG, sync)
    asb.add_handler(SIG, handler)
    os.kill(os.getpid(), SIG)
    await asyncio.wait_for(finished.wait(), TIMEOUT)
    await asyncio.sleep(0)
    assert order == ["async:start", "call_soon"]


async def test_timeout_works_before_first_await() -> None:
    """asyncio.current_task() and timeouts work in an async handler's eager first step."""
    done = asyncio.Event()
    tasks: list[Any] = []

    async def handler(ev: asb.SignalEvent) -> None:
        tasks.append(asyncio.current_task())
        await asyncio.wait_for(asyncio.sleep(0), 1)
        done.set()

    asb.add_handler(SIG, handler)
    os.kill(os.getpid(), SIG)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert isinstance(tasks[0], asyncio.Task)
    assert "aiosigbridge" in tasks[0].get_name()


async def test_remove_is_idempotent_and_stops_delivery() -> None:
    """A removed handler is not called again; remove() twice is fine; the handle is a
    context manager."""
    a, b = Collector(), Collector()
    bridge = asb.get_bridge()
    ha = bridge.add_handler(SIG, a)
    with bridge.add_handler(SIG, b):
        os.kill(os.getpid(), SIG)
        await a.wait(1)
        await b.wait(1)
    ha.remove()
    ha.remove()
    assert not ha.active
    assert _native.disposition(SIG)[0] == _native.DISP_DEFAULT
    keep = Collector()
    bridge.add_handler(SIG, keep)
    os.kill(os.getpid(), SIG)
    await keep.wait(1)
    assert len(a.events) == 1
    assert len(b.events) == 1


async def test_aclose_restores_default_action_at_c_level() -> None:
    """aclose() gives back SIG_DFL exactly, at the C level and in Python's table."""
    assert _native.disposition(SIG2)[0] == _native.DISP_DEFAULT
    bridge = asb.get_bridge()
    bridge.add_handler(SIG2, lambda ev: None)
    assert _native.disposition(SIG2)[0] == _native.DISP_OURS
    assert signal.getsignal(SIG2) is asb.BRIDGED
    await bridge.aclose()
    assert bridge.closed
    assert _native.disposition(SIG2)[0] == _native.DISP_DEFAULT
    assert signal.getsignal(SIG2) == signal.SIG_DFL
    with pytest.raises(RuntimeError, match="closed SignalBridge"):
        bridge.add_handler(SIG2, lambda ev: None)
    await bridge.aclose()  # idempotent
    assert asb.get_bridge() is not bridge


async def test_previous_python_handler_keeps_running_and_is_restored() -> None:
    """A signal.signal() handler installed before the bridge keeps running (forwarding)
    and is what signal.getsignal() reports; aclose() restores its exact C action."""
    python_calls: list[int] = []

    def py_handler(signum: int, frame: object) -> None:
        python_calls.append(signum)

    old = signal.signal(SIG2, py_handler)
    try:
        before = _native.disposition(SIG2)
        got = Collector()
        bridge = asb.get_bridge()
        bridge.add_handler(SIG2, got)
        assert signal.getsignal(SIG2) is py_handler
        os.kill(os.getpid(), SIG2)
        await got.wait(1)
        assert python_calls == [SIG2]
        assert bridge.stats()[SIG2].forwarded >= 1
        await bridge.aclose()
        assert _native.disposition(SIG2) == before
        assert signal.getsignal(SIG2) is py_handler
    finally:
        signal.signal(SIG2, old)


async def test_consume_keeps_python_handler_from_running() -> None:
    """consume=True: the Python-level handler is not run."""
    python_calls: list[int] = []
    old = signal.signal(SIG2, lambda s, f: python_calls.append(s))
    try:
        got = Collector()
        asb.add_handler(SIG2, got, consume=True)
        os.kill(os.getpid(), SIG2)
        await got.wait(1)
        marker = Collector()
        asb.add_handler(SIG, marker)
        os.kill(os.getpid(), SIG)
        await marker.wait(1)
        assert python_calls == []
        await asb.get_bridge().aclose()
    finally:
        signal.signal(SIG2, old)


async def test_standard_signal_coalesces() -> None:
    """Deliveries of a standard signal that arrive before the loop drains come as one
    event whose coalesced counts them."""
    got = Collector()
    bridge = asb.get_bridge()
    bridge.add_handler(SIG, got)
    for _ in range(5):
        os.kill(os.getpid(), SIG)  # delivered synchronously; the loop is not running
    (ev,) = await got.wait(1)
    assert ev.coalesced == 5
    st = bridge.stats()[SIG]
    assert (st.received, st.delivered, st.coalesced) == (5, 1, 4)


async def test_realtime_one_event_per_send_in_order() -> None:
    """Realtime signals with sigqueue values: one event per send, in order."""
    sig = signal.SIGRTMIN + 2
    got = Collector()
    asb.add_handler(sig, got)
    n = 200
    for i in range(n):
        asb.sigqueue(os.getpid(), sig, i * 1000 - 7)
    events = await got.wait(n)
    assert [e.value for e in events] == [i * 1000 - 7 for i in range(n)]
    assert all(e.code == asb.SI_QUEUE and e.coalesced == 1 for e in events)
    assert events[0].name == "SIGRTMIN+2"
    assert events[0].signum == int(sig)


async def test_sigqueue_value_from_child_process() -> None:
    """A value sigqueue'd by another process arrives with that process as sender."""
    sig = signal.SIGRTMIN + 1
    got = Collector()
    asb.add_handler(sig, got)
    rc, out, err = await run_python(
        f"""
        import os, aiosigbridge
        for v in (1, -1, 2**31 - 1):
            aiosigbridge.sigqueue(os.getppid(), {int(sig)}, v)
        print(os.getpid())
        """
    )
    assert rc == 0, err
    events = await got.wait(3)
    # Sorted: the kernel may hand back-to-back deliveries to different threads of this
    # (multi-threaded) process, whose handlers then race (README, "Order").
    assert sorted(e.value for e in events) == [-1, 1, 2**31 - 1]
    assert {e.pid for e in events} == {int(out)}


async def test_small_capacity_counts_overflow() -> None:
    """Past the storage bound, realtime deliveries are counted as overflow, not lost."""
    sig = signal.SIGRTMIN + 3
    loop = asyncio.get_running_loop()
    small = asb.SignalBridge(loop, capacity=4)
    got = Collector()
    small.add_handler(sig, got)
    for i in range(10):
        asb.sigqueue(os.getpid(), sig, i)
    events = await got.wait(4)
    st = small.stats()[sig]
    assert [e.value for e in events] == [0, 1, 2, 3]
    assert (st.received, st.overflowed) == (10, 6)
    await small.aclose()


async def test_pthread_kill_to_another_thread_reaches_loop() -> None:
    """A signal delivered to a worker thread still reaches the loop (SI_TKILL)."""
    got = Collector()
    asb.add_handler(SIG, got)
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        assert worker.ident is not None
        signal.pthread_kill(worker.ident, SIG)
        (ev,) = await got.wait(1)
    finally:
        stop.set()
        worker.join()
    assert ev.pid == os.getpid()
    assert ev.code == asb.SI_TKILL


def _loop_in_thread(
    factory: Any, ready: threading.Barrier, results: dict[str, Any], key: str
) -> None:
    async def main() -> None:
        got = Collector()
        bridge = asb.get_bridge()
        bridge.add_handler(SIG, got)
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, TIMEOUT)
        results[key] = (await got.wait(1))[0]
        await bridge.aclose()

    loop = factory()
    try:
        loop.run_until_complete(main())
    except BaseException as exc:
        results[key] = exc
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def test_several_loops_in_threads_each_receive() -> None:
    """Loops in other threads (asyncio and uvloop) each receive every signal."""
    factories = [asyncio.new_event_loop, uvloop.new_event_loop] * 2
    got = Collector()
    asb.add_handler(SIG, got)
    ready = threading.Barrier(len(factories) + 1)
    results: dict[str, Any] = {}
    threads = [
        threading.Thread(target=_loop_in_thread, args=(f, ready, results, f"t{i}"))
        for i, f in enumerate(factories)
    ]
    for t in threads:
        t.start()
    await asyncio.get_running_loop().run_in_executor(None, ready.wait, TIMEOUT)
    os.kill(os.getpid(), SIG)
    await got.wait(1)
    for t in threads:
        await asyncio.get_running_loop().run_in_executor(None, t.join, TIMEOUT)
    assert len(results) == len(factories)
    for ev in results.values():
        assert isinstance(ev, asb.SignalEvent), ev
        assert ev.signum is SIG
        assert ev.pid == os.getpid()


async def test_handler_failure_goes_to_exception_handler(
    loop_errors: list[dict[str, Any]],
) -> None:
    """Without an interrupted task, failures reach the loop's exception handler with
    the event attached and a note naming the signal and the handler; nothing else is
    disturbed."""
    after = Collector()

    def bad(ev: asb.SignalEvent) -> None:
        raise ValueError("sync boom")

    async def bad_async(ev: asb.SignalEvent) -> None:
        await asyncio.sleep(0)
        raise KeyError("async boom")

    bridge = asb.get_bridge()
    bridge.add_handler(SIG, bad)
    bridge.add_handler(SIG, bad_async)
    bridge.add_handler(SIG, after)
    os.kill(os.getpid(), SIG)
    await after.wait(1)
    for _ in range(10):
        if len(loop_errors) >= 2:
            break
        await asyncio.sleep(0)
    assert len(loop_errors) == 2
    by_type = {type(c["exception"]): c for c in loop_errors}
    for exc_type in (ValueError, KeyError):
        ctx = by_type[exc_type]
        assert ctx["signal_event"].signum is SIG
        notes = getattr(ctx["exception"], "__notes__", [])
        assert any("SIGUSR1" in n and "bad" in n for n in notes), notes
    loop_errors.clear()


async def test_handler_returning_awaitable_is_awaited() -> None:
    """A plain function that returns an awaitable (a future) is run as a task."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    done = asyncio.Event()

    async def waiter() -> None:
        await fut
        done.set()

    def handler(ev: asb.SignalEvent) -> Any:
        loop.call_soon(fut.set_result, None)
        return waiter()

    asb.add_handler(SIG, handler)
    os.kill(os.getpid(), SIG)
    await asyncio.wait_for(done.wait(), TIMEOUT)


async def test_policy_serial_runs_one_at_a_time() -> None:
    """policy='serial': a second event waits for the first run to finish."""
    sig = signal.SIGRTMIN + 4
    release = asyncio.Event()
    log: list[tuple[str, int | None]] = []
    both = Collector()

    async def handler(ev: asb.SignalEvent) -> None:
        log.append(("start", ev.value))
        await release.wait()
        log.append(("end", ev.value))
        both(ev)

    asb.add_handler(sig, handler, policy="serial")
    asb.sigqueue(os.getpid(), sig, 1)
    asb.sigqueue(os.getpid(), sig, 2)
    started = Collector()
    asb.add_handler(sig, started)
    await started.wait(2)
    assert log == [("start", 1)]
    release.set()
    await both.wait(2)
    assert log == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]


async def test_policy_latest_cancels_the_running_one() -> None:
    """policy='latest': a new event cancels the run in progress."""
    sig = signal.SIGRTMIN + 4
    cancelled: list[int | None] = []
    finished = Collector()

    async def handler(ev: asb.SignalEvent) -> None:
        try:
            if ev.value == 1:
                await asyncio.sleep(60)
            finished(ev)
        except asyncio.CancelledError:
            cancelled.append(ev.value)
            raise

    asb.add_handler(sig, handler, policy="latest")
    asb.sigqueue(os.getpid(), sig, 1)
    asb.sigqueue(os.getpid(), sig, 2)
    (ev,) = await finished.wait(1)
    assert ev.value == 2
    await asyncio.sleep(0)
    assert cancelled == [1]


async def test_aclose_cancels_running_handlers() -> None:
    """aclose() cancels handler runs in progress and waits for them."""
    started = asyncio.Event()
    cleaned = []

    async def handler(ev: asb.SignalEvent) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            cleaned.append(True)

    bridge = asb.get_bridge()
    bridge.add_handler(SIG, handler)
    os.kill(os.getpid(), SIG)
    await asyncio.wait_for(started.wait(), TIMEOUT)
    await bridge.aclose()
    assert cleaned == [True]


async def test_loop_add_signal_handler_on_another_signal() -> None:
    """loop.add_signal_handler keeps working beside the bridge."""
    loop = asyncio.get_running_loop()
    stock = asyncio.Event()
    loop.add_signal_handler(SIG2, stock.set)
    try:
        got = Collector()
        asb.add_handler(SIG, got)
        os.kill(os.getpid(), SIG)
        os.kill(os.getpid(), SIG2)
        await got.wait(1)
        await asyncio.wait_for(stock.wait(), TIMEOUT)
        await asb.get_bridge().aclose()
    finally:
        loop.remove_signal_handler(SIG2)
        signal.signal(SIG2, signal.SIG_DFL)


async def test_loop_add_signal_handler_on_the_same_signal_first() -> None:
    """With loop.add_signal_handler installed first on the same signal, both it and
    the bridge's handler run, and it still works after the bridge is closed."""
    loop = asyncio.get_running_loop()
    stock_calls: list[int] = []
    stock = asyncio.Event()

    def on_stock() -> None:
        stock_calls.append(1)
        stock.set()

    loop.add_signal_handler(SIG, on_stock)
    try:
        got = Collector()
        bridge = asb.get_bridge()
        bridge.add_handler(SIG, got)
        os.kill(os.getpid(), SIG)
        await got.wait(1)
        await asyncio.wait_for(stock.wait(), TIMEOUT)
        await bridge.aclose()
        stock.clear()
        os.kill(os.getpid(), SIG)
        await asyncio.wait_for(stock.wait(), TIMEOUT)
        assert stock_calls == [1, 1]
    finally:
        loop.remove_signal_handler(SIG)
        signal.signal(SIG, signal.SIG_DFL)


async def test_add_signal_handler_after_bridge_is_detected() -> None:
    """loop.add_signal_handler on a bridged signal replaces the bridge's action: the
    bridge says so with a SignalReplacedWarning naming the signal."""
    loop = asyncio.get_running_loop()
    bridge = asb.get_bridge()
    bridge.add_handler(SIG2, lambda ev: None)
    loop.add_signal_handler(SIG2, lambda: None)
    try:
        with pytest.warns(asb.SignalReplacedWarning, match="SIGUSR2"):
            assert bridge.check() == (SIG2,)
        assert bridge.check() == (SIG2,)  # warns once
    finally:
        loop.remove_signal_handler(SIG2)
        await bridge.aclose()
        signal.signal(SIG2, signal.SIG_DFL)


async def test_signal_signal_after_bridge_warns_at_next_drain() -> None:
    """signal.signal() on a bridged signal is noticed at the next drain."""
    bridge = asb.get_bridge()
    bridge.add_handler(SIG2, lambda ev: None)
    got = Collector()
    bridge.add_handler(SIG, got)
    signal.signal(SIG2, signal.SIG_IGN)
    try:
        os.kill(os.getpid(), SIG)
        with pytest.warns(asb.SignalReplacedWarning, match="SIGUSR2"):
            await got.wait(1)
    finally:
        await bridge.aclose()  # warned once already: quiet now
        signal.signal(SIG2, signal.SIG_DFL)


async def test_sigchld_carries_status() -> None:
    """SIGCHLD events carry the child's pid and exit status.  (The child is not started
    through the loop: uvloop's subprocess support takes SIGCHLD over for libuv.)"""
    got = Collector()
    asb.add_handler(signal.SIGCHLD, got)
    loop = asyncio.get_running_loop()
    proc = await loop.run_in_executor(None, functools.partial(run_script, "raise SystemExit(3)"))
    assert proc.returncode == 3, proc.stderr
    events = await got.wait(1)
    exited = [e for e in events if e.code in asb.CLD_CODES and e.status == 3]
    assert exited, events


async def test_replaced_by_c_code_gives_python_table_back() -> None:
    """When C code (here libuv, spawning a child on uvloop) replaces a bridged signal's
    action, the bridge warns, and on close leaves that action alone while Python's table
    no longer claims the bridge."""
    bridge = asb.get_bridge()
    bridge.add_handler(signal.SIGCHLD, lambda ev: None)
    rc, _, err = await run_python("pass")
    assert rc == 0, err
    if _native.disposition(signal.SIGCHLD)[0] == _native.DISP_OURS:
        await bridge.aclose()  # the stock loop leaves SIGCHLD alone on 3.12+ (pidfd)
        return
    with pytest.warns(asb.SignalReplacedWarning, match="SIGCHLD"):
        await bridge.aclose()
    assert signal.getsignal(signal.SIGCHLD) is not asb.BRIDGED


async def test_stats_for_watched_signals() -> None:
    """stats() lists watched signals with counters, readable as attributes or keys."""
    bridge = asb.get_bridge()
    got = Collector()
    bridge.add_handler(SIG, got)
    os.kill(os.getpid(), SIG)
    await got.wait(1)
    st = bridge.stats()[SIG]
    assert st.received == st["received"] == 1
    assert st.delivered == 1
    with pytest.raises(KeyError):
        st["nope"]


async def test_bridge_closes_with_its_loop() -> None:
    """A bridge left open is closed by the loop's shutdown; get_bridge() then makes a
    new one for a new loop.  (The autouse fixture checks nothing is left installed.)"""
    bridge = asb.get_bridge()
    bridge.add_handler(SIG, lambda ev: None)
    assert asb.get_bridge() is bridge
    assert repr(bridge).startswith("<SignalBridge open [SIGUSR1]")


async def test_stock_loop_dispatches_from_pythons_handler_in_select() -> None:
    """On the stock loop in the main thread, a signal that arrives while the loop waits
    in select() is dispatched from Python's own handler, ahead of the reader, and the
    loop still runs what the handler scheduled (it does not go back to sleep)."""
    seen_fast: list[bool] = []
    finished = asyncio.Event()

    async def handler(ev: asb.SignalEvent) -> None:
        seen_fast.append(any(f.name == "_fast_dispatch" for f in traceback.extract_stack()))
        await asyncio.sleep(0)  # must be resumed by the loop right after
        finished.set()

    asb.add_handler(SIG, handler)
    # Sent to the main thread once the loop has nothing to do but wait in select().
    idle = threading.Event()
    asyncio.get_running_loop().call_soon(idle.set)
    main = threading.main_thread().ident
    assert main is not None

    def send() -> None:
        # No event says "the loop is in select() now": look at the main thread's frame.
        # (uvloop waits in C: there is no Python frame to look for.)
        deadline = time.monotonic() + TIMEOUT
        while idle.wait(TIMEOUT) and stock and time.monotonic() < deadline:
            frame = sys._current_frames().get(main)
            if frame is not None and frame.f_code.co_name == "select":
                break
            time.sleep(0.0005)
        signal.pthread_kill(main, SIG)

    stock = not type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    sender = threading.Thread(target=send)
    sender.start()
    await asyncio.wait_for(finished.wait(), TIMEOUT)
    sender.join()
    assert seen_fast == [stock]


async def test_cancelled_error_from_a_sync_handler_is_a_failure(
    loop_errors: list[dict[str, Any]],
) -> None:
    """A sync handler raising CancelledError (a BaseException) is reported like any
    failure; the other events of the same drain are still dispatched."""

    def bad(ev: asb.SignalEvent) -> None:
        raise asyncio.CancelledError("from a handler")

    other = Collector()
    bridge = asb.get_bridge()
    bridge.add_handler(SIG, bad)
    bridge.add_handler(SIG2, other)
    os.kill(os.getpid(), SIG)
    os.kill(os.getpid(), SIG2)  # both pending: one drain
    await other.wait(1)
    assert [type(c["exception"]) for c in loop_errors] == [asyncio.CancelledError]
    loop_errors.clear()


async def test_aclose_from_inside_a_handler() -> None:
    """A handler may close its own bridge: it is not cancelled, and everything is freed."""
    done = asyncio.Event()
    bridge = asb.get_bridge()

    async def closer(ev: asb.SignalEvent) -> None:
        await asyncio.sleep(0)
        await bridge.aclose()
        done.set()

    bridge.add_handler(SIG, closer)
    os.kill(os.getpid(), SIG)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert bridge.closed
    assert bridge._sub.closed
    assert _native.disposition(SIG)[0] == _native.DISP_DEFAULT


async def test_async_generator_function_is_refused() -> None:
    """An async generator function would never run as a handler: TypeError naming the
    receiver instead."""

    async def agen(ev: asb.SignalEvent) -> Any:
        yield ev

    with pytest.raises(TypeError, match="open_receiver"):
        asb.get_bridge().add_handler(SIG, agen)


def test_get_bridge_after_a_loop_closed_without_shutdown() -> None:
    """A loop closed without shutting down its async generators: the next get_bridge()
    closes its bridge (giving the signal back) without deadlocking."""
    old = asyncio.new_event_loop()

    async def setup() -> None:
        asb.get_bridge().add_handler(SIG, lambda ev: None)

    old.run_until_complete(setup())
    old.close()
    assert _native.disposition(SIG)[0] == _native.DISP_OURS
    new = asyncio.new_event_loop()
    try:
        bridge = asb.get_bridge(new)
        assert _native.disposition(SIG)[0] == _native.DISP_DEFAULT
        bridge.close()
    finally:
        new.close()
