"""interrupt=: the task running at the signal (or a given one) is cancelled, at once
even inside CPU-bound code, and the handlers' failures are chained onto it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from typing import Any

import pytest

import aiosigbridge as asb

from .helpers import TIMEOUT, Collector

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

SIG = signal.SIGUSR1


def interrupted(exc: BaseException) -> BaseException:
    """The CancelledError the interrupt raised inside the task.  On 3.10 asyncio hands
    an awaiter a fresh, message-less CancelledError whose __context__ is that one."""
    if sys.version_info < (3, 11) and not exc.args and exc.__context__ is not None:
        return exc.__context__
    return exc


def _kill_when(flag: threading.Event, sig: int = SIG) -> threading.Thread:
    """Send ``sig`` to this process from another thread once ``flag`` is set."""

    def run() -> None:
        if flag.wait(TIMEOUT):
            os.kill(os.getpid(), sig)

    t = threading.Thread(target=run)
    t.start()
    return t


async def test_interrupts_a_task_hogging_the_cpu() -> None:
    """A task that never awaits is interrupted inside its CPU-bound loop with a
    CancelledError naming the signal, and the handler still runs."""
    got = Collector()
    asb.add_handler(SIG, got, interrupt=True)
    started = threading.Event()
    finished_loop: list[bool] = []

    async def hog() -> None:
        started.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # never awaits
            pass
        finished_loop.append(True)

    task = asyncio.ensure_future(hog())
    sender = _kill_when(started)
    with pytest.raises(asyncio.CancelledError) as info:
        await task
    sender.join()
    assert "interrupted by SIGUSR1" in str(interrupted(info.value))
    assert finished_loop == []  # left the loop by the interrupt, not by the deadline
    (ev,) = await got.wait(1)
    assert ev.pid == os.getpid()
    notes = getattr(interrupted(info.value), "__notes__", [])
    assert any(f"sent by pid {os.getpid()}" in n for n in notes), notes


async def test_interrupt_recorded_then_registration_removed_still_lands() -> None:
    """A delivery recorded for an interrupt= registration that is removed right after
    (``with add_handler(..., interrupt=True): phase1()`` where the signal lands at the
    end of phase1) still interrupts the task inside its CPU-bound code that follows,
    though no interrupt= registration is left anywhere."""
    bridge = asb.get_bridge()
    keep = bridge.add_handler(SIG, lambda ev: None)  # SIG stays bridged after the removal
    finished_loop: list[bool] = []

    async def hog() -> None:
        with bridge.add_handler(SIG, lambda ev: None, interrupt=True):
            os.kill(os.getpid(), SIG)  # Python's handler runs at the next bytecode
            sum(range(100))  # a few more bytecodes before the removal
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # never awaits
            pass
        finished_loop.append(True)

    try:
        with pytest.raises(asyncio.CancelledError) as info:
            await asyncio.ensure_future(hog())
        assert "interrupted by SIGUSR1" in str(interrupted(info.value))
        assert finished_loop == []  # left the loop by the interrupt, not by the deadline
    finally:
        keep.remove()


async def test_interrupt_given_task_with_sender_in_message() -> None:
    """interrupt=task cancels that task at its await; the message names the sender."""
    waiting = asyncio.ensure_future(asyncio.sleep(60))
    asb.add_handler(SIG, lambda ev: None, interrupt=waiting)
    os.kill(os.getpid(), SIG)
    with pytest.raises(asyncio.CancelledError) as info:
        await asyncio.wait_for(waiting, TIMEOUT)
    assert waiting.cancelled()
    assert "interrupted by SIGUSR1" in str(interrupted(info.value)) or any(
        "SIGUSR1" in n for n in getattr(interrupted(info.value), "__notes__", [])
    )


async def test_one_failure_is_the_cause() -> None:
    """One failing handler becomes the __cause__ of the interrupted task's exception,
    with a note naming the signal, the sender and the handler."""
    target = asyncio.ensure_future(asyncio.sleep(60))

    def reload_config(ev: asb.SignalEvent) -> None:
        raise ValueError("bad config")

    asb.add_handler(SIG, reload_config, interrupt=target)
    os.kill(os.getpid(), SIG)
    with pytest.raises(asyncio.CancelledError) as info:
        await asyncio.wait_for(target, TIMEOUT)
    cause = interrupted(info.value).__cause__
    assert isinstance(cause, ValueError)
    (note,) = cause.__notes__
    assert "reload_config" in note
    assert "SIGUSR1" in note
    assert f"pid {os.getpid()}" in note


async def test_several_failures_become_a_group() -> None:
    """Several failures (sync and async) become one BaseExceptionGroup, each once."""
    target = asyncio.ensure_future(asyncio.sleep(60))
    gate = asyncio.Event()

    def first(ev: asb.SignalEvent) -> None:
        raise ValueError("one")

    async def second(ev: asb.SignalEvent) -> None:
        await gate.wait()
        raise KeyError("two")

    bridge = asb.get_bridge()
    bridge.add_handler(SIG, first, interrupt=target)
    bridge.add_handler(SIG, second)
    os.kill(os.getpid(), SIG)

    with pytest.raises(asyncio.CancelledError) as info:
        await target
    exc = interrupted(info.value)
    gate.set()
    rec = next(r for r in bridge.interrupts.recent if r.target is target)
    await asyncio.wait_for(rec.settled(TIMEOUT), TIMEOUT)
    group = exc.__cause__
    assert isinstance(group, BaseExceptionGroup)
    assert sorted(type(e).__name__ for e in group.exceptions) == ["KeyError", "ValueError"]
    assert "2 handlers for SIGUSR1 failed" in str(group)


async def test_failure_after_normal_end_goes_to_exception_handler(
    loop_errors: list[dict[str, Any]],
) -> None:
    """If the interrupted task swallows the cancellation and ends normally, there is
    nothing to chain onto: the failure reaches the loop's exception handler instead."""

    async def stubborn() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return "caught"
        return "slept"

    target = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    gate = asyncio.Event()

    async def late(ev: asb.SignalEvent) -> None:
        await gate.wait()
        raise RuntimeError("late failure")

    asb.add_handler(SIG, late, interrupt=target)
    os.kill(os.getpid(), SIG)
    assert await asyncio.wait_for(target, TIMEOUT) == "caught"
    gate.set()
    for _ in range(100):
        if loop_errors:
            break
        await asyncio.sleep(0)
    assert [type(c["exception"]) for c in loop_errors] == [RuntimeError]
    assert loop_errors[0]["signal_event"].signum is SIG
    loop_errors.clear()


async def test_handler_outliving_the_task_times_out() -> None:
    """A handler still running handler_timeout after the task ended is cancelled and
    reported as a TimeoutError chained like any failure."""
    bridge = asb.get_bridge()
    bridge.handler_timeout = 0.05
    target = asyncio.ensure_future(asyncio.sleep(60))
    cancelled = asyncio.Event()

    async def slow(ev: asb.SignalEvent) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    bridge.add_handler(SIG, slow, interrupt=target)
    os.kill(os.getpid(), SIG)
    with pytest.raises(asyncio.CancelledError) as info:
        await asyncio.wait_for(target, TIMEOUT)
    await asyncio.wait_for(cancelled.wait(), TIMEOUT)
    cause = interrupted(info.value).__cause__
    assert isinstance(cause, TimeoutError)
    assert "still running" in str(cause)


async def test_interrupt_in_a_loop_in_another_thread() -> None:
    """In a loop off the main thread, the interrupt reaches the task at its next await."""
    result: dict[str, Any] = {}
    ready = threading.Event()

    def thread_main() -> None:
        async def main() -> None:
            bridge = asb.get_bridge()
            task = asyncio.ensure_future(asyncio.sleep(60))
            bridge.add_handler(SIG, lambda ev: None, interrupt=task)
            ready.set()
            try:
                await asyncio.wait_for(task, TIMEOUT)
            except asyncio.CancelledError as exc:
                result["exc"] = exc
            await bridge.aclose()

        asyncio.run(main())

    t = threading.Thread(target=thread_main)
    t.start()
    await asyncio.get_running_loop().run_in_executor(None, ready.wait, TIMEOUT)
    os.kill(os.getpid(), SIG)
    await asyncio.get_running_loop().run_in_executor(None, t.join, TIMEOUT)
    assert "interrupted by SIGUSR1" in str(interrupted(result["exc"]))


async def test_interrupt_true_without_running_task_takes_the_main_task() -> None:
    """interrupt=True when no task runs at the signal interrupts the bridge's main task
    (the task that created it, or the one set as bridge.main_task)."""
    bridge = asb.get_bridge()
    target = asyncio.ensure_future(asyncio.sleep(60))
    bridge.main_task = target
    bridge.add_handler(SIG, lambda ev: None, interrupt=True)
    idle = threading.Event()
    # Set by a plain callback: the signal is sent while no task runs.
    asyncio.get_running_loop().call_soon(idle.set)
    sender = _kill_when(idle)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(target, TIMEOUT)
    sender.join()


async def test_each_delivery_interrupts_again() -> None:
    """A task that catches the interrupt and goes on hogging the CPU (no await in
    between) is interrupted again by the next signal."""
    asb.add_handler(SIG, lambda ev: None, interrupt=True)
    rounds = 3
    busy = [threading.Event() for _ in range(rounds)]
    caught: list[int] = []

    async def hog() -> None:
        for i in range(rounds):
            deadline = time.monotonic() + 30
            try:
                busy[i].set()
                while True:  # never awaits
                    if time.monotonic() >= deadline:
                        return
            except asyncio.CancelledError:
                caught.append(i)

    def sender() -> None:
        for i in range(rounds):
            if busy[i].wait(TIMEOUT):
                os.kill(os.getpid(), SIG)

    task = asyncio.ensure_future(hog())
    t = threading.Thread(target=sender)
    t.start()
    await asyncio.wait_for(task, TIMEOUT * 2)
    t.join()
    assert caught == [0, 1, 2]


async def test_previous_python_handler_still_runs_with_interrupt() -> None:
    """With interrupt=True, a signal.signal() handler installed before still runs
    (consume=False), even when the interrupt is raised into the running task."""
    calls: list[int] = []
    old = signal.signal(SIG, lambda s, f: calls.append(s))
    try:
        bridge = asb.get_bridge()
        bridge.add_handler(SIG, lambda ev: None, interrupt=True)

        async def hog() -> None:
            os.kill(os.getpid(), SIG)  # raised into this task at the next bytecode
            deadline = time.monotonic() + 30
            while True:
                if time.monotonic() >= deadline:
                    return

        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.ensure_future(hog()), TIMEOUT)
        assert calls == [SIG]
        await bridge.aclose()
    finally:
        signal.signal(SIG, old)
