"""Failure collection and exception chaining: no handler failure is ever lost.

When a signal interrupts a task (``interrupt=``, or the main task under ``run()``), an
:class:`Interruption` collects every failure of that delivery's handlers and chains
them onto the exception the interrupted task ends with: one failure as its
``__cause__``, several as a ``BaseExceptionGroup``; each failure carries a note naming
the signal, the sender and the handler.  Handlers still running when the task ends
get ``handler_timeout`` seconds; one still running then is cancelled and reported as a
``TimeoutError`` the same way.

Where nothing was interrupted (or the task ended without an exception to chain onto),
a failure goes to the loop's exception handler with the event attached
(``context["signal_event"]``).  A failure takes exactly one of these routes.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._event import SignalEvent
from ._native import signal_name

if sys.version_info < (3, 11):  # pragma: no cover - 3.10
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from ._bridge import HandlerHandle

__all__ = ["FailureChain", "Interruption", "add_note", "describe"]


def describe(h: HandlerHandle, ev: SignalEvent) -> str:
    """The note added to a handler's failure."""
    return (
        f"aiosigbridge: raised by handler {h.name} for {ev.name} "
        f"(sent by pid {ev.pid}, uid {ev.uid})"
    )


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; on 3.10 the note is kept in ``__notes__``, which the
    exceptiongroup backport's traceback printing shows."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:  # pragma: no cover - 3.10
        notes = getattr(exc, "__notes__", None)
        if notes is None:
            notes = []
            exc.__notes__ = notes  # type: ignore[attr-defined]
        notes.append(note)


def _report(
    loop: asyncio.AbstractEventLoop, h: HandlerHandle, ev: SignalEvent, exc: BaseException
) -> None:
    loop.call_exception_handler(
        {
            "message": f"aiosigbridge: handler {h.name} for {ev.name} failed",
            "exception": exc,
            "signal_event": ev,
            "handler": h.handler,
        }
    )


def cancelled_exception(task: asyncio.Task[Any]) -> BaseException | None:
    """The CancelledError a cancelled task ended with, without consuming it (asyncio
    hands it once to the first caller of result(), and a fresh one to later callers)."""
    exc = getattr(task, "_cancelled_exc", _MISSING)  # the pure-Python Task
    if exc is not _MISSING:
        return exc if isinstance(exc, BaseException) else None
    for obj in gc.get_referents(task):  # the C Task keeps it as a plain reference
        if isinstance(obj, asyncio.CancelledError):
            return obj
    return None


_MISSING: Any = object()


def add_done_callback_first(task: asyncio.Future[Any], cb: Callable[[Any], None]) -> None:
    """Register ``cb`` to run before the callbacks already registered on ``task`` (so it
    sees the task's exception before any awaiter has taken it)."""
    existing = list(getattr(task, "_callbacks", None) or ())
    for fn, _ctx in existing:
        task.remove_done_callback(fn)
    task.add_done_callback(cb)
    for fn, ctx in existing:
        task.add_done_callback(fn, context=ctx)


def _root(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


class Interruption:
    """One delivery of a signal interrupting one task, and its handlers' failures."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        target: asyncio.Task[Any],
        signum: int,
        handler_timeout: float,
        raised: BaseException | None = None,
    ) -> None:
        self.loop = loop
        self.target = target
        self.signum = signum
        self.event: SignalEvent | None = None
        self.handler_timeout = handler_timeout
        self.raised = raised  # the CancelledError the hook raised inside the target
        self._failed: list[tuple[HandlerHandle, BaseException]] = []  # to chain
        self._orphans: list[tuple[HandlerHandle, BaseException]] = []  # to report
        self.running: dict[asyncio.Task[Any], HandlerHandle] = {}
        self.final: BaseException | None = None  # what the target ended with
        self.target_done = False
        self._timer: asyncio.TimerHandle | None = None
        self._settled = loop.create_future()
        self._bound = loop.create_future()  # the event was dispatched
        add_done_callback_first(target, self._on_target_done)

    # -- what the bridge tells it -------------------------------------------------------

    def bind(self, ev: SignalEvent) -> None:
        """The event this interruption stands for (known at dispatch)."""
        self.event = ev
        if not self._bound.done():
            self._bound.set_result(None)

    def message(self) -> str:
        ev = self.event
        who = f" (sent by pid {ev.pid}, uid {ev.uid})" if ev is not None else ""
        return f"aiosigbridge: interrupted by {signal_name(self.signum)}{who}"

    def track(self, task: asyncio.Task[Any], h: HandlerHandle) -> None:
        """A handler run started for this delivery."""
        self.running[task] = h
        if self.target_done and self._timer is None and not task.done():
            self._timer = self.loop.call_later(self.handler_timeout, self._time_out)

    def done(self, task: asyncio.Task[Any]) -> None:
        """A handler run finished (its failure, if any, was given to failed())."""
        self.running.pop(task, None)
        self._maybe_settled()

    def failed(self, h: HandlerHandle, exc: BaseException) -> None:
        if self.target_done and self.final is None:
            self._orphan(h, exc)
            return
        self._failed.append((h, exc))
        self._attach()

    # -- the target's end ---------------------------------------------------------------

    def _on_target_done(self, task: asyncio.Task[Any]) -> None:
        self.target_done = True
        if task.cancelled():
            self.final = cancelled_exception(task) or self.raised
        else:
            self.final = task.exception()
        if self.final is None:
            # Ended normally: nothing to chain onto.
            self._orphans.extend(self._failed)
            self._failed.clear()
        self._attach()
        if self.running:
            self._timer = self.loop.call_later(self.handler_timeout, self._time_out)
        self._maybe_settled()

    @property
    def failures(self) -> list[BaseException]:
        """The failures chained (or to be chained) onto the task's exception."""
        return [exc for _, exc in self._failed]

    def _time_out(self) -> None:
        for task, h in list(self.running.items()):
            exc = TimeoutError(
                f"handler {h.name} for {signal_name(self.signum)} was still running "
                f"{self.handler_timeout:g} s after the interrupted task ended; cancelled"
            )
            add_note(exc, self._note(h))
            self.failed(h, exc)
            task.cancel(f"aiosigbridge: handler timeout ({self.handler_timeout:g} s)")

    def _note(self, h: HandlerHandle) -> str:
        ev = self.event
        who = f"sent by pid {ev.pid}, uid {ev.uid}" if ev is not None else "sender unknown"
        return f"aiosigbridge: handler {h.name} for {signal_name(self.signum)} ({who})"

    def _attach(self) -> None:
        final = self.final
        failures = self.failures
        if final is None or not failures:
            self._flush_orphans()
            return
        if len(failures) == 1:
            cause: BaseException = failures[0]
        else:
            cause = BaseExceptionGroup(
                f"{len(failures)} handlers for {signal_name(self.signum)} failed", failures
            )
        previous = getattr(final, "_aiosigbridge_cause", None)
        if final.__cause__ is None or final.__cause__ is previous:
            final.__cause__ = cause
        else:  # the task chained something itself: keep it, hang ours at its root
            _root(final).__context__ = cause
        final._aiosigbridge_cause = cause  # type: ignore[attr-defined]
        self._flush_orphans()

    def _orphan(self, h: HandlerHandle, exc: BaseException) -> None:
        self._orphans.append((h, exc))
        self._flush_orphans()

    def _flush_orphans(self) -> None:
        while self._orphans:
            h, exc = self._orphans.pop(0)
            if self.event is not None:
                _report(self.loop, h, self.event, exc)
            else:
                self.loop.call_exception_handler(
                    {"message": "aiosigbridge: a signal handler failed", "exception": exc}
                )

    def _maybe_settled(self) -> None:
        if self.target_done and not self.running:
            if self._timer is not None:
                self._timer.cancel()
            if not self._settled.done():
                self._settled.set_result(None)

    async def settled(self, timeout: float) -> None:
        """Wait (up to ``timeout``) until every handler run of this delivery ended;
        runs still going then are cancelled and reported as TimeoutError.  When the
        interrupt came from Python's handler, the dispatch that starts the handlers may
        still be ahead: wait for it first."""
        deadline = self.loop.time() + timeout
        if not self._bound.done():
            await asyncio.wait([self._bound], timeout=timeout)
        timeout = max(0.0, deadline - self.loop.time())
        pending = [t for t in self.running if not t.done()]
        if not pending:
            return
        _, still = await asyncio.wait(pending, timeout=timeout)
        if still:
            self.handler_timeout = timeout
            self._time_out()
            await asyncio.wait(still)


class FailureChain:
    """Where one bridge's handler failures go."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def failed(
        self,
        h: HandlerHandle,
        ev: SignalEvent,
        exc: BaseException,
        interruptions: list[Interruption] | None = None,
    ) -> None:
        add_note(exc, describe(h, ev))
        if interruptions:
            for rec in interruptions:
                rec.failed(h, exc)
            return
        _report(self._loop, h, ev, exc)
