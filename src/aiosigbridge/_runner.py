"""run(): asyncio.run() for servers, with graceful shutdown on signals.

The first shutdown signal interrupts (cancels) the main task and runs that signal's
handlers beside its cleanup; their failures are chained onto what run() ends with.  A
watchdog thread (a SignalThread, so it works while the loop is stuck) ends the process
at the second shutdown signal, or when the grace period runs out after printing every
unfinished task's stack; the C handler itself gives SIG_DFL back after the second
delivery of a signal, so a third kills a process stuck in C code.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from . import _chain
from ._bridge import HandlerHandle, get_bridge
from ._diagnostics import dump_tasks
from ._event import SignalEvent
from ._native import reset_after, signal_name, validate_signal
from ._watcher import SignalThread

if sys.version_info < (3, 11):  # pragma: no cover - 3.10
    from exceptiongroup import BaseExceptionGroup

__all__ = ["run"]

T = TypeVar("T")


class _Shutdown:
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
        self._bridge_interruptions: Callable[[], list[_chain.Interruption]] = list
        self._deliveries = 0
        self._deadline: float | None = None
        self._lock = threading.Lock()
        self._watchdog: SignalThread | None = None
        self._handles: list[HandlerHandle] = []

    # -- in the loop ----------------------------------------------------------------------

    async def guard(self, main: Coroutine[Any, Any, T]) -> T:
        bridge = get_bridge()
        task = asyncio.current_task()
        assert task is not None
        self.main_task = bridge.main_task = task
        bridge.handler_timeout = self.handler_timeout
        self._bridge_interruptions = lambda: [r for r in bridge._interruptions if r.target is task]
        for sig in self.signums:
            # First in registration order; interrupts (cancels) the main task, even
            # in the middle of CPU-bound code; Python's own handler (KeyboardInterrupt
            # for SIGINT) is consumed: run() turns the end into the right exception.
            h = bridge.add_handler(sig, self._on_signal, interrupt=task, consume=True)
            # Only the first delivery interrupts: the second is the watchdog's, which
            # ends the process; cancelling the cleanup again would race with it.
            h._once = True
            self._handles.append(h)
        if self.signums:
            self._start_watchdog()
        try:
            return await main
        finally:
            # Interrupted (possibly by Python's handler, before the dispatch that runs
            # the signal's handlers): wait for them, so their failures are chained.
            if self.signal is not None or self._bridge_interruptions():
                await self._settle()

    def _on_signal(self, ev: SignalEvent) -> None:
        if self.signal is None:
            self.signal = int(ev.signum)
        for h in self._handles:
            h._fired = True  # whichever shutdown signal comes next is the watchdog's

    async def _settle(self) -> None:
        """Give the shutdown signal's handlers time to finish (handler_timeout, within
        what is left of the grace period)."""
        left = self.handler_timeout
        if self._deadline is not None:
            left = min(left, max(0.0, self._deadline - time.monotonic()))
        for rec in self._bridge_interruptions():
            with contextlib.suppress(asyncio.CancelledError):
                await rec.settled(left)

    def failures(self) -> list[BaseException]:
        return [f for rec in self._bridge_interruptions() for f in rec.failures]

    # -- the watchdog thread --------------------------------------------------------------

    def _start_watchdog(self) -> None:
        for sig in self.signums:
            # Works even if no Python can run: the C handler gives SIG_DFL back after
            # the second delivery, so the third one kills.
            reset_after(sig, 2)
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
            if self.signal is None:
                self.signal = int(ev.signum)
            self._deadline = time.monotonic() + self.grace
            for sig in self.signums:
                if sig != int(ev.signum):
                    reset_after(sig, 1)
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
        dump_tasks(
            [self.loop],
            sys.stderr,
            f"aiosigbridge: the grace period of {self.grace:g} s after "
            f"{signal_name(sig)} ran out; these did not finish:",
        )
        self._force(sig, f"aiosigbridge: exiting with status {128 + sig}")

    def _force(self, sig: int, message: str) -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            print(message, file=sys.stderr, flush=True)
        os._exit(128 + sig)

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        for sig in self.signums:
            with contextlib.suppress(OSError):
                reset_after(sig, 0)


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run() does with the tasks left when main ends."""
    to_cancel = asyncio.all_tasks(loop)
    if not to_cancel:
        return
    for task in to_cancel:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*to_cancel, return_exceptions=True))
    for task in to_cancel:
        if task.cancelled():
            continue
        if task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during aiosigbridge.run() shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )


def run(
    main: Coroutine[Any, Any, T],
    *,
    shutdown_signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
    grace: float = 10.0,
    handler_timeout: float = 5.0,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    debug: bool | None = None,
) -> T:
    """Run ``main`` like :func:`asyncio.run`, with graceful shutdown on signals::

        async def main() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 8080)
            async with server:
                await server.serve_forever()   # cancelled by the first SIGTERM

        asb.run(main(), grace=10.0, loop_factory=uvloop.new_event_loop)

    * The first shutdown signal cancels the main task (at once, even inside CPU-bound
      code, when the loop runs in the main thread) and runs that signal's handlers (add
      your shutdown hooks with :func:`add_handler`) beside main's cleanup.
    * SIGINT keeps :class:`asyncio.Runner`'s contract: then ``KeyboardInterrupt``.
      Any other shutdown signal, handlers all succeeding: ``SystemExit(128 + signum)``,
      a quiet exit with the shell's conventional status (143 for SIGTERM).
    * Failing handlers: their failures are chained (``__cause__``, or a
      ``BaseExceptionGroup`` for several) onto the exception run() ends with: a
      non-zero status and one traceback with each failure once.
    * A second shutdown signal ends the process at once (``os._exit(128 + signum)``),
      whatever the tasks do; a third one, if even that could not run, dies of the
      signal's default action.
    * When ``grace`` seconds pass after the first signal and the process is still
      here, the stacks of the unfinished tasks are printed to stderr, then it exits
      with ``128 + signum``.

    :param shutdown_signals: the signals that shut down (may be empty).
    :param grace: seconds from the first shutdown signal to the forced end.
    :param handler_timeout: seconds the shutdown signal's handlers may go on after
        main ended; one still running then is cancelled and reported as TimeoutError.
    :param loop_factory: e.g. ``uvloop.new_event_loop``; default asyncio's loop.
    :param debug: the loop's debug mode, as in asyncio.run().

    .. warning:: Process-wide: takes the shutdown signals over for its duration, and
       exits the process (``os._exit``) on a second signal or at the end of grace.
    """
    if not asyncio.iscoroutine(main):
        msg = f"run() needs a coroutine object: run(main()), not run(main); got {main!r}"
        raise TypeError(msg)
    try:
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or math.isnan(grace):
            msg = f"grace must be a number of seconds, got {grace!r}"
            raise TypeError(msg)
        if grace < 0 or handler_timeout < 0:
            msg = (
                f"grace and handler_timeout must be 0 or more seconds, got grace={grace!r}, "
                f"handler_timeout={handler_timeout!r}"
            )
            raise ValueError(msg)
        signums = tuple(dict.fromkeys(validate_signal(s) for s in shutdown_signals))
        if asyncio._get_running_loop() is not None:
            msg = "aiosigbridge.run() cannot be called from a running event loop; await main"
            raise RuntimeError(msg)
    except BaseException:
        main.close()
        raise

    loop = (loop_factory or asyncio.new_event_loop)()
    if loop_factory is None:
        asyncio.set_event_loop(loop)
    if debug is not None:
        loop.set_debug(debug)
    shutdown = _Shutdown(loop, signums, float(grace), float(handler_timeout))
    try:
        task = loop.create_task(shutdown.guard(main))
        try:
            result = loop.run_until_complete(task)
        except asyncio.CancelledError as cancelled:
            sig = shutdown.signal
            if sig is None:
                raise
            if sig == signal.SIGINT:
                # asyncio.Runner's contract; the CancelledError (with any failures
                # chained onto it) is shown above it.
                raise KeyboardInterrupt() from cancelled
            if shutdown.failures():
                raise
            raise SystemExit(128 + sig) from None
        sig = shutdown.signal
        if sig is None:
            return result
        failures = shutdown.failures()
        if failures:
            group = BaseExceptionGroup(
                f"{len(failures)} handler(s) for {signal_name(sig)} failed", failures
            )
            raise group
        if sig == signal.SIGINT:
            return result  # main caught the cancellation: asyncio.Runner returns too
        raise SystemExit(128 + sig)
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            if loop_factory is None:
                asyncio.set_event_loop(None)
            loop.close()
            shutdown.close()
