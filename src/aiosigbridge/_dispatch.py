"""Reading and dispatch: the half of SignalBridge that runs per delivery (a mixin).

Each wake-up of the loop's reader drains the pipe and every pending record in one C
call, turns the records into SignalEvents and dispatches each: handlers in registration
order (a sync handler runs inline; an async handler's first step runs inline too, as an
eagerly started task), then receivers (their bounded queues; the reader never blocks).

A BaseException (KeyboardInterrupt, SystemExit) leaving a handler propagates, as asyncio
lets it, but what was drained is not lost: the rest of the batch, and the rest of the
handlers of the event being dispatched, wait in a backlog that the loop's next
iteration dispatches.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import types
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

from . import _chain, _owner
from ._eager import start_task
from ._event import SignalEvent
from ._handlers import HandlerHandle, SignalStats

if TYPE_CHECKING:
    from ._interrupt import Interrupts
    from ._native import Subscription


class Receiver(Protocol):
    """What the bridge needs of a receiver (see _receiver.SignalReceiver)."""

    signums: tuple[int, ...]

    def _put(self, ev: SignalEvent) -> bool: ...

    def _bridge_closed(self, *, loop_closed: bool) -> None: ...


Partial = tuple[SignalEvent, tuple[HandlerHandle, ...], int, Any, bool]


class Dispatcher:
    """Reader, dispatch and handler runs of a SignalBridge (which sets these up)."""

    _loop: asyncio.AbstractEventLoop
    _sub: Subscription
    _handlers: dict[int, tuple[HandlerHandle, ...]]
    _receivers: dict[int, tuple[Receiver, ...]]
    _stats: dict[int, SignalStats]
    _closed: bool
    interrupts: Interrupts
    chain: _chain.FailureChain
    _backlog: deque[SignalEvent | Partial]
    _partial: Partial | None
    _resume_scheduled: bool

    def _check(self) -> frozenset[int]:
        raise NotImplementedError

    def _on_readable(self) -> None:
        if self._sub.closed:
            return
        evs = self._sub.drain()
        if len(evs) == 1 and not self._backlog:
            # _deliver's common case inline: this is the reader's path per delivery
            # (a Python frame and the loop cost ~10 % of it on uvloop).
            try:
                self._dispatch(evs[0])
            except BaseException:
                self._keep_rest(evs, 0)
                raise
        else:
            self._deliver(evs)
        if _owner.needs_check():
            self._check()

    def _fast_dispatch(self) -> None:
        """Dispatch from Python's handler while the loop waits in select(): the records
        only; the wake-up byte stays, so select() returns at once and the loop runs
        what the handlers scheduled."""
        if self._sub.closed:
            return
        try:
            evs = self._sub.drain(read_pipe=False)
        except Exception as exc:  # never into select(): report like a loop callback
            self._loop.call_exception_handler(
                {"message": "aiosigbridge: dispatch failed", "exception": exc}
            )
            return
        self._deliver(evs)

    def _deliver(self, evs: list[SignalEvent]) -> None:
        """Dispatch drained events after the backlog, oldest first."""
        if self._backlog:
            self._backlog.extend(evs)
            self._pump()
            return
        i = 0  # by hand, not enumerate(): this runs per delivery, mostly for one event
        try:
            for ev in evs:
                self._dispatch(ev)
                i += 1
        except BaseException:
            self._keep_rest(evs, i)
            raise

    def _keep_rest(self, evs: list[SignalEvent], i: int) -> None:
        """KeyboardInterrupt/SystemExit from a handler of ``evs[i]``: it propagates, the
        rest (that event's remaining handlers, the events after it) waits in the backlog."""
        rest: deque[SignalEvent | Partial] = deque()
        if self._partial is not None:
            rest.append(self._partial)
            i += 1
        self._partial = None
        rest.extend(evs[i:])
        rest.extend(self._backlog)
        self._backlog = rest
        self._resume_later()

    def _pump(self) -> None:
        """Dispatch the backlog, oldest first."""
        self._resume_scheduled = False
        backlog = self._backlog
        while backlog:
            item = backlog.popleft()
            try:
                if type(item) is tuple:
                    self._dispatch(*item)
                else:
                    self._dispatch(item)  # type: ignore[arg-type]
            except BaseException:
                backlog.appendleft(self._partial if self._partial is not None else item)
                self._partial = None
                self._resume_later()
                raise

    def _resume_later(self) -> None:
        if self._backlog and not self._resume_scheduled and not self._loop.is_closed():
            self._resume_scheduled = True
            self._loop.call_soon(self._pump)

    def _dispatch(
        self,
        ev: SignalEvent,
        regs: tuple[HandlerHandle, ...] | None = None,
        step: int = 0,
        recs: list[_chain.Interruption] | None = None,
        delivered: bool = False,
    ) -> None:
        sig = int(ev.signum)
        st = self._stats.get(sig)
        if st is None:
            st = self._stats[sig] = SignalStats()
        if regs is None:
            regs = self._handlers.get(sig, ())
            if sig in self.interrupts.count:
                recs = self.interrupts.at_dispatch(sig, ev, regs)
        k = step
        try:
            for h in regs[step:]:
                k += 1
                if not h.active:
                    continue
                if h.senders is not None and not h.senders.accepts(ev):
                    st.filtered += 1
                    continue
                if not delivered:
                    delivered = True
                    st.delivered += 1
                self._run(h, ev, recs)
        except BaseException:
            self._partial = (ev, regs, k, recs, delivered)
            raise
        for rx in self._receivers.get(sig, ()):
            if not delivered:
                delivered = True
                st.delivered += 1
            if not rx._put(ev):
                st.dropped += 1
        if not delivered:
            st.unclaimed += 1

    # -- running handlers -------------------------------------------------------------

    def _run(
        self, h: HandlerHandle, ev: SignalEvent, recs: list[_chain.Interruption] | None
    ) -> None:
        if h.running:
            if h.policy == "serial":
                h.pending.append((ev, recs))
                return
            if h.policy == "latest":
                for t in h.running:
                    t.cancel(f"aiosigbridge: superseded by a newer {ev.name}")
        try:
            result = h.handler(ev)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # CancelledError too: a failure, never lost
            self.chain.failed(h, ev, exc, recs)
            return
        if result is None:
            return
        if type(result) is not _CoroutineType:
            if not inspect.isawaitable(result):
                return
            result = _await(result)
        task = start_task(self._loop, result, h.task_name)
        if recs:
            for rec in recs:
                rec.track(task, h)
        if task.done():
            self._task_done(h, ev, recs, task)
            return
        h.running.add(task)
        task.add_done_callback(functools.partial(self._task_done, h, ev, recs))

    def _task_done(
        self,
        h: HandlerHandle,
        ev: SignalEvent,
        recs: list[_chain.Interruption] | None,
        task: asyncio.Task[Any],
    ) -> None:
        h.running.discard(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                self.chain.failed(h, ev, exc, recs)
        if recs:
            for rec in recs:
                rec.done(task)
        if h.pending and h.active and not h.running and not self._closed:
            next_ev, next_recs = h.pending.popleft()
            self._run(h, next_ev, next_recs)


_CoroutineType = types.CoroutineType


async def _await(aw: Awaitable[Any]) -> Any:
    return await aw
