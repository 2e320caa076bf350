"""Failure collection and exception chaining: no handler failure is ever lost.

When a signal interrupts a task (``interrupt=``, or the main task under ``run()``), an
:class:`Interruption` collects every failure of that delivery's handlers and chains
them onto the exception the interrupted task ends with, when it ends *because of* the
interrupt: one failure as its ``__cause__``, several as a ``BaseExceptionGroup``; each
failure carries a note naming the signal, the sender and the handler.  Handlers still
running when the task ends get ``handler_timeout`` seconds; one still running then is
cancelled and reported as a ``TimeoutError`` the same way.

Everything else goes to the loop's exception handler with the event attached
(``context["signal_event"]``): failures of deliveries that interrupted nothing; of a
task that survived the interrupt (it caught it and ended later, normally or for another
reason); and of a task cancelled by the interrupt whose cancellation nobody retrieved
(asyncio never reports one) within RETRIEVE_S of its end, or by the time the bridge
closes: the chain is then taken off the exception again.  (On 3.10, which hands an
awaiter a fresh CancelledError and so hides whether anyone retrieved the original, a
cancellation keeps the chain where the task had an awaiter, gather, shield or
run_until_complete waiting on it at the interrupt.)  A failure takes exactly one route.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from ._clib import signal_name
from ._event import SignalEvent

if sys.version_info < (3, 11):  # pragma: no cover - 3.10
    from exceptiongroup import BaseExceptionGroup


class HandlerLike(Protocol):
    """What a failure report needs of a registration (a HandlerHandle)."""

    name: str
    handler: Callable[..., Any]

__all__ = ["FailureChain", "Interruption", "add_note", "describe"]

_PREFIX = "aiosigbridge: interrupted by"
#: Seconds a cancellation made by an interrupt may wait to be retrieved (awaited) before
#: its handlers' failures go to the loop's exception handler instead.
RETRIEVE_S = 1.0


def describe(h: HandlerLike, ev: SignalEvent) -> str:
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
    loop: asyncio.AbstractEventLoop, h: HandlerLike, ev: SignalEvent | None, exc: BaseException
) -> None:
    name = ev.name if ev is not None else "a signal"
    loop.call_exception_handler(
        {
            "message": f"aiosigbridge: handler {h.name} for {name} failed",
            "exception": exc,
            "signal_event": ev,
            "handler": h.handler,
        }
    )


_MISSING: Any = object()


def cancelled_exception(task: asyncio.Task[Any]) -> BaseException | None:
    """The CancelledError a cancelled task ended with, without consuming it (asyncio
    hands it once to the first caller of result(), and a fresh one to later callers);
    None once handed out."""
    exc = getattr(task, "_cancelled_exc", _MISSING)  # the pure-Python Task
    if exc is not _MISSING:
        return exc if isinstance(exc, BaseException) else None
    for obj in gc.get_referents(task):  # the C Task keeps it as a plain reference
        if isinstance(obj, asyncio.CancelledError):
            return obj
    return None


def final_exception(task: asyncio.Task[Any]) -> BaseException | None:
    """What a done task ended with, without marking it retrieved (asyncio's own
    "exception was never retrieved" report stays possible)."""
    if task.cancelled():
        return cancelled_exception(task)
    exc = getattr(task, "_exception", _MISSING)
    if exc is _MISSING:  # pragma: no cover - every Task implementation has it
        exc = task.exception()
    return exc if isinstance(exc, BaseException) else None


def add_done_callback_first(task: asyncio.Future[Any], cb: Callable[[Any], None]) -> None:
    """Register ``cb`` to run before the callbacks already registered on ``task`` (so it
    sees the task's exception before any awaiter has taken it)."""
    existing = list(getattr(task, "_callbacks", None) or ())
    for fn, _ctx in existing:
        task.remove_done_callback(fn)
    task.add_done_callback(cb)
    for fn, ctx in existing:
        task.add_done_callback(fn, context=ctx)


# One done-callback per interrupted task, however often it is interrupted.
_targets: weakref.WeakKeyDictionary[asyncio.Task[Any], list[Interruption]] = (
    weakref.WeakKeyDictionary()
)


_RETRIEVERS = frozenset(
    (
        "gather.<locals>._done_callback",
        "shield.<locals>._inner_done_callback",
        "_run_until_complete_cb",
        "run_until_complete.<locals>.done_cb",  # uvloop's
    )
)


def _retrieves(cb: Any) -> bool:
    """Does this done-callback hand the task's exception on (an awaiting task's wakeup,
    gather, shield, run_until_complete, wait_for's waiter)?  set.discard does not.
    Futures are told by asyncio.isfuture(): the pure-Python Task (as the asyncio.Runner
    backport on 3.10 makes) is no subclass of the C asyncio.Future."""
    if asyncio.isfuture(getattr(cb, "__self__", None)):
        return True
    func = getattr(cb, "func", None)  # functools.partial(_release_waiter, ...)
    if func is not None and getattr(func, "__name__", "") == "_release_waiter":
        return True
    return getattr(cb, "__qualname__", "") in _RETRIEVERS


def _observers(task: asyncio.Task[Any]) -> int:
    """Done-callbacks of ``task`` that hand its exception on to someone."""
    return sum(1 for cb, _ctx in (getattr(task, "_callbacks", None) or ()) if _retrieves(cb))


def _watch_target(task: asyncio.Task[Any], rec: Interruption) -> None:
    recs = _targets.get(task)
    if recs is None:
        recs = _targets[task] = []
        add_done_callback_first(task, note_target_ended)
    else:  # a survivor: forget interruptions that have nothing left to chain
        recs[:] = [r for r in recs if not r.idle()]
    recs.append(rec)


def note_target_ended(task: asyncio.Task[Any]) -> None:
    for rec in _targets.pop(task, ()):
        rec.target_ended(task)


def _root(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def _caused_by_interrupt(final: BaseException, raised: BaseException | None) -> bool:
    """Did the task end because of an interrupt (the exception, or one it came from)?"""
    seen: set[int] = set()
    exc: BaseException | None = final
    while exc is not None and id(exc) not in seen and len(seen) < 100:
        seen.add(id(exc))
        if exc is raised:
            return True
        if isinstance(exc, asyncio.CancelledError):
            arg = exc.args[0] if exc.args else None
            if isinstance(arg, str) and arg.startswith(_PREFIX):
                return True
        exc = exc.__context__ or exc.__cause__
    return False


class Interruption:
    """One delivery of a signal interrupting one task, and its handlers' failures."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        target: asyncio.Task[Any],
        signum: int,
        handler_timeout: float,
        raised: BaseException | None = None,
        watch: Callable[[Interruption], None] | None = None,
    ) -> None:
        self.loop = loop
        self.target = target
        self.signum = signum
        self.event: SignalEvent | None = None
        self.handler_timeout = handler_timeout
        self.raised = raised  # the CancelledError the hook raised inside the target
        self._failed: list[tuple[HandlerLike, BaseException]] = []  # to chain
        self.running: dict[asyncio.Task[Any], HandlerLike] = {}
        self.final: BaseException | None = None  # what the target ended with, if chained
        self.target_done = False
        self._cause: BaseException | None = None
        self._watch = watch  # the bridge's: cancellations nobody retrieved yet
        self._timer: asyncio.TimerHandle | None = None
        self._ended_at = 0.0
        self._settled = loop.create_future()
        self._bound = loop.create_future()  # the event was dispatched
        # 3.10 hands whoever retrieves a cancellation a fresh CancelledError and keeps
        # the original, so a retrieval cannot be seen: there, a cancellation shows the
        # chain where the task was awaited (had observers) when it was interrupted.
        self._observed = _observers(target) > 0
        _watch_target(target, self)

    # -- what the bridge tells it -------------------------------------------------------

    def bind(self, ev: SignalEvent) -> None:
        """The event this interruption stands for (known at dispatch)."""
        self.event = ev
        self._observed = self._observed or _observers(self.target) > 0
        if not self._bound.done():
            self._bound.set_result(None)

    def message(self) -> str:
        ev = self.event
        who = f" (sent by pid {ev.pid}, uid {ev.uid})" if ev is not None else ""
        return f"{_PREFIX} {signal_name(self.signum)}{who}"

    def track(self, task: asyncio.Task[Any], h: HandlerLike) -> None:
        """A handler run started for this delivery."""
        self.running[task] = h
        if self.target_done and self._timer is None and not task.done():
            self._timer = self.loop.call_later(self.handler_timeout, self._time_out)

    def done(self, task: asyncio.Task[Any]) -> None:
        """A handler run finished (its failure, if any, was given to failed())."""
        self.running.pop(task, None)
        self._maybe_settled()

    def failed(self, h: HandlerLike, exc: BaseException) -> None:
        if self.target_done and self.final is None:
            _report(self.loop, h, self.event, exc)
            return
        self._failed.append((h, exc))
        if self.final is not None:
            self._attach()

    def idle(self) -> bool:
        """Nothing to chain, nothing running, the event known: forgettable."""
        return not self._failed and not self.running and self._bound.done()

    # -- the target's end ---------------------------------------------------------------

    def target_ended(self, task: asyncio.Task[Any]) -> None:
        self.target_done = True
        self._ended_at = self.loop.time()
        final = final_exception(task)
        if task.cancelled() and final is None:
            final = self.raised
        unseen_310 = sys.version_info < (3, 11) and task.cancelled() and not self._observed
        if final is not None and _caused_by_interrupt(final, self.raised) and not unseen_310:
            self.final = final
            self._attach()
            if task.cancelled() and self._watch is not None and sys.version_info >= (3, 11):
                # asyncio never reports a cancellation nobody retrieved: watch it.
                self._watch(self)
        else:
            # Ended normally, or for another reason than the interrupt (it caught it
            # and went on): nothing that shows the failures.
            self._report_all()
        if self.running:
            self._timer = self.loop.call_later(self.handler_timeout, self._time_out)
        self._maybe_settled()

    def decide(self, *, closing: bool) -> bool:
        """For a target cancelled by the interrupt: has its cancellation been retrieved
        (then the chain shows)?  Not within RETRIEVE_S of its end (or the bridge
        closes): the failures go to the exception handler instead, and the chain is
        taken off (whoever retrieves it later sees a plain cancellation).  True once
        decided."""
        if cancelled_exception(self.target) is not self.final:
            return True  # handed out: whoever took it sees the chain
        if not closing and self.loop.time() - self._ended_at < RETRIEVE_S:
            return False
        self._detach()
        self._report_all()
        self.final = None
        return True

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

    def _note(self, h: HandlerLike) -> str:
        ev = self.event
        who = f"sent by pid {ev.pid}, uid {ev.uid}" if ev is not None else "sender unknown"
        return f"aiosigbridge: handler {h.name} for {signal_name(self.signum)} ({who})"

    def _attach(self) -> None:
        final = self.final
        failures = self.failures
        if final is None or not failures:
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
        self._cause = cause

    def _detach(self) -> None:
        final, cause = self.final, self._cause
        if final is None or cause is None:
            return
        if final.__cause__ is cause:
            final.__cause__ = None
            final.__suppress_context__ = False
        else:
            root = final
            for _ in range(100):
                if root.__context__ is cause:
                    root.__context__ = None
                    break
                nxt = root.__cause__ or root.__context__
                if nxt is None:
                    break
                root = nxt
        if getattr(final, "_aiosigbridge_cause", None) is cause:
            del final._aiosigbridge_cause  # type: ignore[attr-defined]
        self._cause = None

    def _report_all(self) -> None:
        failed, self._failed = self._failed, []
        for h, exc in failed:
            _report(self.loop, h, self.event, exc)

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
        #: Told of every failure first (run()'s reload notifications).
        self.observers: list[Callable[[HandlerLike, SignalEvent, BaseException], None]] = []

    def failed(
        self,
        h: HandlerLike,
        ev: SignalEvent,
        exc: BaseException,
        interruptions: list[Interruption] | None = None,
    ) -> None:
        add_note(exc, describe(h, ev))
        for observe in self.observers:
            observe(h, ev, exc)
        if interruptions:
            for rec in interruptions:
                rec.failed(h, exc)
            return
        _report(self._loop, h, ev, exc)
