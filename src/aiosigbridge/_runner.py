"""run(): asyncio.run() for servers, with graceful shutdown on signals (see _shutdown)."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._clib import DISP_IGNORE, disposition, signal_name, validate_signal
from ._shutdown import Shutdown

__all__ = ["run"]

T = TypeVar("T")
logger = logging.getLogger("aiosigbridge")


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


def _inherited_ignore(sig: int) -> bool:
    """SIG_IGN from the parent (nohup, a shell's background job): it stays ignored, as
    asyncio.Runner leaves SIGINT alone when it is not Python's default handler."""
    return signal.getsignal(sig) == signal.SIG_IGN and disposition(sig)[0] == DISP_IGNORE


def run(
    main: Coroutine[Any, Any, T],
    *,
    shutdown_signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
    reload_signals: tuple[int, ...] = (),
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
    * SIGINT keeps :class:`asyncio.Runner`'s contract: then ``KeyboardInterrupt``
      (``CancelledError`` if main had been cancelled by someone else first).
      Any other shutdown signal, handlers all succeeding: ``SystemExit(128 + signum)``,
      a quiet exit with the shell's conventional status (143 for SIGTERM).  A shutdown
      signal that comes while run() tears the loop down after main ended does the same.
    * Failing handlers: their failures are chained (``__cause__``, or a
      ``BaseExceptionGroup`` for several) onto the exception run() ends with: a
      non-zero status and one traceback with each failure once.
    * A second shutdown signal ends the process at once (``os._exit(128 + signum)``),
      whatever the tasks do; a third one, if even that could not run, dies of the
      signal's default action.
    * When ``grace`` seconds pass after the first signal and the process is still
      here, the stacks of the unfinished tasks are printed to stderr, then it exits
      with ``128 + signum`` (even when stderr is closed or a broken pipe).
    * A shutdown signal inherited as ignored (``SIG_IGN``: ``nohup``, a background job)
      stays ignored.
    * In a thread other than the main one, the shutdown signal is handed back to the
      process once run() is done (its original action then applies: SIG_DFL ends the
      process), since a ``SystemExit`` there would only end the thread.

    * Under systemd (``$NOTIFY_SOCKET`` set; call :func:`notify` ``("READY=1")`` once
      the service is ready): ``STOPPING=1`` and ``EXTEND_TIMEOUT_USEC=`` (the grace) on
      the first shutdown signal; ``RELOADING=1`` with ``MONOTONIC_USEC=`` on a reload
      signal before its handlers run, ``READY=1`` once all of them (async too) have
      finished, with ``STATUS=`` naming a handler that failed (``Type=notify-reload``);
      ``WATCHDOG=1`` from the loop every ``WATCHDOG_USEC / 2`` when systemd asks for it.
      Each shutdown and reload signal is logged (``logging.getLogger("aiosigbridge")``,
      INFO) with its sender: "SIGTERM from pid 1 (systemd), uid 0".

    :param shutdown_signals: the signals that shut down (may be empty).
    :param reload_signals: signals whose handlers reload the service (add them with
        :func:`add_handler`); systemd is told when a reload starts and ends.
    :param grace: seconds from the first shutdown signal to the forced end.
    :param handler_timeout: seconds the shutdown signal's handlers may go on after
        main ended; one still running then is cancelled and reported as TimeoutError.
    :param loop_factory: e.g. ``uvloop.new_event_loop``; default asyncio's loop.
    :param debug: the loop's debug mode, as in asyncio.run().
    :raises TypeError: ``main`` is not a coroutine, or ``grace`` not a number.
    :raises ValueError: a negative time, or a signal that cannot be handled.
    :raises RuntimeError: called from a running event loop.

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
        reloads = tuple(dict.fromkeys(validate_signal(s) for s in reload_signals))
        both = sorted(set(signums) & set(reloads))
        if both:
            msg = (
                f"{', '.join(signal_name(s) for s in both)} cannot both shut down and "
                "reload: take it out of shutdown_signals or reload_signals"
            )
            raise ValueError(msg)
        if asyncio._get_running_loop() is not None:
            msg = "aiosigbridge.run() cannot be called from a running event loop; await main"
            raise RuntimeError(msg)
    except BaseException:
        main.close()
        raise
    ignored = [s for s in signums if _inherited_ignore(s)]
    for s in ignored:
        logger.info(
            "aiosigbridge.run(): %s is ignored (SIG_IGN inherited: nohup or a background "
            "job); it will not shut down",
            signal_name(s),
        )
    signums = tuple(s for s in signums if s not in ignored)

    loop = (loop_factory or asyncio.new_event_loop)()
    if loop_factory is None:
        asyncio.set_event_loop(loop)
    if debug is not None:
        loop.set_debug(debug)
    shutdown = Shutdown(loop, signums, float(grace), float(handler_timeout))
    shutdown.reload_signals = reloads
    outcome: BaseException | None = None
    try:
        task = loop.create_task(shutdown.guard(main))
        try:
            result = loop.run_until_complete(task)
        except asyncio.CancelledError as cancelled:
            if shutdown.signal is None:
                raise
            outcome = shutdown.ending(task, cancelled)
        else:
            outcome = shutdown.ending(task, None)
        came_during_main = shutdown.signal is not None
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
    if outcome is None and not came_during_main:
        outcome = shutdown.late()  # a shutdown signal during the teardown
    if outcome is None:
        return result
    shutdown.hand_back(outcome)
    raise outcome
