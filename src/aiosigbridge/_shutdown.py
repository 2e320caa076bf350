"""run()'s shutdown: what the first shutdown signal does, the watchdog, the ending.

The first shutdown signal interrupts (cancels) the main task and runs that signal's
handlers beside its cleanup; their failures are chained onto what run() ends with.  A
watchdog thread (a SignalThread, so it works while the loop is stuck) ends the process
at the second shutdown signal, or when the grace period runs out after printing every
unfinished task's stack; while run() is armed the C handler itself gives SIG_DFL back
after the second delivery of a signal, so a third kills a process stuck in C code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from . import _chain, _owner
from ._diagnostics import dump_tasks
from ._event import SignalEvent
from ._handlers import HandlerHandle
from ._loops import get_bridge
from ._systemd import ServiceManager
from ._watcher import SignalThread

if sys.version_info < (3, 11):  # pragma: no cover - 3.10
    from exceptiongroup import BaseExceptionGroup

T = TypeVar("T")
logger = logging.getLogger("aiosigbridge")


class Shutdown:
    """One run(): its shutdown signals, watchdog and ending."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        signums: tuple[int, ...],
        grace: float,
        handler_timeout: float,
    ) -> None:
        self.loop = loop
        self.signums = signums
        self.grace = grace
        self.handler_timeout = handler_timeout
        self.signal: int | None = None  # the first shutdown signal, once it came
        self.main_task: asyncio.Task[Any] | None = None
        self._interruptions: Callable[[], list[_chain.Interruption]] = list
        self._deliveries = 0
        self._deadline: float | None = None
        self._lock = threading.Lock()
        self._watchdog: SignalThread | None = None
        self._armed: list[int] = []
        self._handles: list[HandlerHandle] = []
        self.reload_signals: tuple[int, ...] = ()
        self.service = ServiceManager(loop)

    # -- in the loop ----------------------------------------------------------------------

    async def guard(self, main: Coroutine[Any, Any, T]) -> T:
        bridge = get_bridge()
        task = asyncio.current_task()
        assert task is not None
        self.main_task = bridge.main_task = task
        bridge.handler_timeout = self.handler_timeout
        recent = bridge.interrupts.recent
        self._interruptions = lambda: [r for r in recent if r.target is task]
        for sig in self.signums:
            # First in registration order; interrupts (cancels) the main task, even
            # in the middle of CPU-bound code; Python's own handler (KeyboardInterrupt
            # for SIGINT) is consumed: run() turns the end into the right exception.
            h = bridge.add_handler(sig, self._on_signal, interrupt=task, consume=True)
            # Only the first delivery interrupts: the second is the watchdog's, which
            # ends the process; cancelling the cleanup again would race with it.
            h._once = True
            self._handles.append(h)
        self.service.start(bridge, self.reload_signals)
        if self.signums:
            self._start_watchdog()
        try:
            return await main
        finally:
            # Interrupted (possibly by Python's handler, before the dispatch that runs
            # the signal's handlers): wait for them, so their failures are chained.
            if self.signal is not None or self._interruptions():
                await self._settle()

    def _on_signal(self, ev: SignalEvent) -> None:
        self._first(int(ev.signum), ev)
        for h in self._handles:
            h._fired = True  # whichever shutdown signal comes next is the watchdog's

    def _first(self, sig: int, ev: SignalEvent) -> None:
        with self._lock:
            if self.signal is not None:
                return
            self.signal = sig
        logger.info("aiosigbridge.run(): %s: shutting down (grace %g s)", ev.describe(), self.grace)
        self.service.stopping(self.grace)

    async def _settle(self) -> None:
        """Give the shutdown signal's handlers time to finish (handler_timeout, within
        what is left of the grace period)."""
        left = self.handler_timeout
        if self._deadline is not None:
            left = min(left, max(0.0, self._deadline - time.monotonic()))
        for rec in self._interruptions():
            with contextlib.suppress(asyncio.CancelledError):
                await rec.settled(left)

    def failures(self) -> list[BaseException]:
        return [f for rec in self._interruptions() for f in rec.failures]

    # -- how run() ends -------------------------------------------------------------------

    def ending(
        self, task: asyncio.Task[Any], cancelled: asyncio.CancelledError | None
    ) -> BaseException | None:
        """What run() raises once the loop is torn down: None (return main's result),
        or KeyboardInterrupt / SystemExit / the failures / CancelledError."""
        sig = self.signal
        if sig is None:
            return cancelled
        failures = self.failures()
        if cancelled is not None:
            if sig == signal.SIGINT:
                if self._cancelled_by_others(task):
                    return cancelled  # asyncio.Runner: main was cancelled before Ctrl-C
                exc: BaseException = KeyboardInterrupt()
                exc.__cause__ = cancelled  # the failures, if any, are chained onto it
                return exc
            if failures:
                return cancelled
            return _quiet_exit(sig)
        if failures:
            return BaseExceptionGroup(
                f"{len(failures)} handler(s) for {signal.Signals(sig).name} failed", failures
            )
        if sig == signal.SIGINT:
            return None  # main caught the cancellation: asyncio.Runner returns too
        return _quiet_exit(sig)

    def late(self) -> BaseException | None:
        """A shutdown signal that came during the teardown, after main had ended."""
        sig = self.signal
        if sig is None:
            return None
        return KeyboardInterrupt() if sig == signal.SIGINT else _quiet_exit(sig)

    def _cancelled_by_others(self, task: asyncio.Task[Any]) -> bool:
        cancelling = getattr(task, "cancelling", None)
        if cancelling is None:  # pragma: no cover - 3.10 has no cancel counts
            return False
        ours = sum(1 for r in self._interruptions() if r.raised is None)
        return int(cancelling()) > ours

    def hand_back(self, outcome: BaseException) -> None:
        """run() in a worker thread: a SystemExit there ends only the thread.  The
        signal is handed back to the process (its original action: SIG_DFL ends it, a
        Python handler runs in the main thread), after printing any failures."""
        sig = self.signal
        if sig is None or threading.current_thread() is threading.main_thread():
            return
        if not isinstance(outcome, (SystemExit, KeyboardInterrupt)):
            with contextlib.suppress(Exception):
                import traceback

                traceback.print_exception(type(outcome), outcome, outcome.__traceback__)
        logger.info(
            "aiosigbridge.run() in thread %s ended by %s: sending it to the process",
            threading.current_thread().name,
            signal.Signals(sig).name,
        )
        os.kill(os.getpid(), sig)

    # -- the watchdog thread --------------------------------------------------------------

    def _start_watchdog(self) -> None:
        for sig in self.signums:
            # Works even if no Python can run: the C handler gives SIG_DFL back after
            # the second delivery, so the third one kills.
            _owner.escalate(sig, +1)
            self._armed.append(sig)
        self._watchdog = SignalThread(
            self.signums,
            self._on_delivery,
            name="aiosigbridge-shutdown-watchdog",
            next_tick=self._until_deadline,
            on_tick=self._grace_ran_out,
        )

    def _until_deadline(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def _on_delivery(self, ev: SignalEvent) -> None:
        with self._lock:
            first = self._deliveries == 0
            self._deliveries += ev.coalesced
            total = self._deliveries
        if first:
            self._first(int(ev.signum), ev)
            self._deadline = time.monotonic() + self.grace
            for sig in self.signums:
                if sig != int(ev.signum):
                    _owner.escalate(sig, 0, lower_to=1)
        if total >= 2:
            self._force(
                int(ev.signum),
                f"aiosigbridge: second shutdown signal ({ev.name} from pid {ev.pid}): "
                "exiting now without waiting for cleanup",
            )

    def _grace_ran_out(self) -> None:
        sig = self.signal or signal.SIGTERM
        if self._deadline is None or time.monotonic() < self._deadline:
            return
        _block_sigpipe()  # the dump may go to a broken pipe: EPIPE, not death by SIGPIPE
        with contextlib.suppress(BaseException):
            dump_tasks(
                [self.loop],
                sys.stderr,
                f"aiosigbridge: the grace period of {self.grace:g} s after "
                f"{signal.Signals(sig).name} ran out; these did not finish:",
            )
        self._force(sig, f"aiosigbridge: exiting with status {128 + sig}")

    def _force(self, sig: int, message: str) -> None:
        """End the process now, whatever stdout and stderr are (closed, broken pipes)."""
        try:
            _block_sigpipe()
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
            with contextlib.suppress(BaseException):
                os.write(2, (message + "\n").encode())
        finally:
            os._exit(128 + sig)

    def close(self) -> None:
        self.service.close()
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        for sig in self._armed:
            with contextlib.suppress(OSError):
                _owner.escalate(sig, -1)
        self._armed.clear()


def _block_sigpipe() -> None:
    """Writes from this thread to a broken pipe fail with EPIPE instead of killing the
    process by SIGPIPE (its default action, when the program restored it)."""
    with contextlib.suppress(BaseException):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})


def _quiet_exit(sig: int) -> SystemExit:
    exc = SystemExit(128 + sig)
    exc.__suppress_context__ = True
    return exc
