"""Interrupts: the task a signal interrupts, and when.

A registration with ``interrupt=`` cancels a task when its signal comes: ``True`` the
task running when the signal arrived (else the bridge's main task), or a given Task.
The cancellation is made at dispatch, when the loop reads the signal: the task gets its
CancelledError at its next ``await``, like any cancellation.

A task that does not return to the loop (CPU-bound code in the main thread's loop) is
reached through Python's own handler for the signal (asb.BRIDGED), which runs in the main
thread at the next bytecode: once the running task has used HOG_NS of CPU time of its
own after the signal (not the main thread's time in BRIDGED or in the C handler) without
the loop dispatching it, the CancelledError is raised where the task is.  A task blocked
in a synchronous call uses none: it gets the interrupt at its next await (or once it has
used the time), as does a task whose step is long only because signals keep coming (more
than QUIET deliveries of any signal since): the main thread is busy with them, not hogged
by the task.  The raise happens only where it is safe: in the task's own code (walking
the frames from the one Python interrupted up to the task's coroutine, none of them
asyncio's or aiosigbridge's), never inside the event loop, a task being started or
asyncio's own functions.  The interrupt timer (C, ``sb_retrip_at``) trips Python's
handler again until then; before 3.13 the main thread notices a trip made by another
thread only when it next takes the GIL, so while a re-check is pending the switch
interval is lowered (QUICK_SWITCH_S), and put back after.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import deque
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import _chain, _owner
from ._clib import lib, monotonic_ns, signal_name
from ._event import SignalEvent

if TYPE_CHECKING:
    from ._handlers import HandlerHandle

_INTERNAL = (os.path.dirname(asyncio.__file__) + os.sep, os.path.dirname(__file__) + os.sep)
#: CPU time (ns) the running task may use after its interrupt before it is raised where
#: the task is; the timer looks again then, doubling up to RETRY_MAX_NS.
HOG_NS = 100_000
RETRY_MAX_NS = 10_000_000
#: The timer's re-check lands a little before the task has used all of HOG_NS (its wall
#: time includes the C handler, BRIDGED and the timer's own wake-up): within this much
#: of HOG_NS counts as used, or the first re-check would always come too early and the
#: interrupt wait for the second (at twice the wait).
HOG_SLACK_NS = 25_000
#: Other deliveries since the interrupt past which the main thread counts as busy with a
#: signal storm rather than hogged by the task.
QUIET = 2


#: Before 3.13 a trip made by the interrupt timer's thread is noticed by the main thread
#: only when it next takes the GIL, which the timer forces by asking for it: granted after
#: the switch interval (5 ms by default).  While an interrupt waits for its re-check, the
#: interval is lowered to this, then put back (unless someone else changed it meanwhile).
QUICK_SWITCH_S = 0.00005
_quick_holders: set[int] = set()
_saved_switch: float | None = None


def _quick_switch(holder: object, want: bool) -> None:
    global _saved_switch
    # Whoever waits for a re-check needs BRIDGED to keep measuring the task's CPU time,
    # even once no interrupt= registration is left (it was removed after the signal).
    if want:
        _owner.rechecking.add(id(holder))
    else:
        _owner.rechecking.discard(id(holder))
    if sys.version_info >= (3, 13):
        return
    if want:
        if not _quick_holders and sys.getswitchinterval() > QUICK_SWITCH_S:
            _saved_switch = sys.getswitchinterval()
            sys.setswitchinterval(QUICK_SWITCH_S)
        _quick_holders.add(id(holder))
        return
    if id(holder) not in _quick_holders:
        return
    _quick_holders.discard(id(holder))
    if not _quick_holders:
        _put_back_switch()


def _put_back_switch() -> None:
    global _saved_switch
    if _saved_switch is not None:
        if abs(sys.getswitchinterval() - QUICK_SWITCH_S) < 1e-9:
            sys.setswitchinterval(_saved_switch)
        _saved_switch = None


def no_main_loop() -> None:
    """Python's handler ran with no loop running in the main thread (it stopped, or was
    closed, while an interrupt waited for its re-check): no re-check can raise anything
    until a loop runs again, so the switch interval is put back now (a later re-check
    lowers it again), not when the bridge closes."""
    _quick_holders.clear()
    _owner.rechecking.clear()
    _put_back_switch()


def _fork_child() -> None:
    """A forked child's bridges are gone: so are their re-checks."""
    _quick_holders.clear()
    _owner.rechecking.clear()
    _put_back_switch()


_owner.on_fork_child(_fork_child)


def can_raise_in(frame: FrameType | None, task: asyncio.Task[Any]) -> bool:
    """Is ``frame`` (where Python's handler interrupted) the task's own code?"""
    top = getattr(task.get_coro(), "cr_frame", None)
    f = frame
    for _ in range(500):
        if f is None:
            return False
        if f is top:
            return True
        if f.f_code.co_filename.startswith(_INTERNAL):
            return False
        f = f.f_back
    return False


class Interrupts:
    """One bridge's interrupt registrations and what they interrupted."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: signal -> interrupt registrations (the bridge keeps it with its registry)
        self.count: dict[int, int] = {}
        self._pending: dict[int, tuple[list[_chain.Interruption], set[int]]] = {}
        #: Recent interruptions (run() looks up those of its main task).
        self.recent: deque[_chain.Interruption] = deque(maxlen=64)
        #: Targets cancelled by an interrupt whose cancellation nobody retrieved yet.
        self.undecided: set[_chain.Interruption] = set()
        #: The task ``interrupt=True`` interrupts when no task is running at the signal.
        self.main_task: asyncio.Task[Any] | None = None
        self.handler_timeout = 5.0
        self._timer: asyncio.TimerHandle | None = None
        # Interrupts of the running task not dispatched yet: (rec, the main thread's CPU
        # time then, the process's deliveries then, the timer's next wait).
        self._hot: list[tuple[_chain.Interruption, int, int, int]] = []

    def _target_of(
        self, h: HandlerHandle, current: asyncio.Task[Any] | None
    ) -> asyncio.Task[Any] | None:
        if isinstance(h.interrupt, asyncio.Task):
            return h.interrupt
        return current or self.main_task

    def _new(
        self, target: asyncio.Task[Any], sig: int, raised: BaseException | None = None
    ) -> _chain.Interruption:
        rec = _chain.Interruption(self._loop, target, sig, self.handler_timeout, raised, self.watch)
        self.recent.append(rec)
        return rec

    def python_signal(
        self,
        sig: int,
        frame: FrameType | None,
        regs: tuple[HandlerHandle, ...],
        *,
        retrip: bool = False,
    ) -> None:
        """Python's own handler for ``sig`` ran in the main thread (or the interrupt
        timer tripped it again): record the interrupts of this delivery, and raise one
        into the running task once it has kept the CPU too long (module docstring)."""
        if not retrip:
            self._record(sig, regs)
        if self._hot:
            self._maybe_raise(frame)

    def _record(self, sig: int, regs: tuple[HandlerHandle, ...]) -> None:
        regs = tuple(
            h
            for h in regs
            if h.active and h.interrupt is not False and h.senders is None and not h._fired
        )
        if not regs:
            return
        current = asyncio.current_task(self._loop)
        pending, handled = self._pending.setdefault(sig, ([], set()))
        # One interruption per target for this delivery.  (Earlier deliveries not yet
        # dispatched do not count: a task that caught their interrupt is interrupted
        # again.)
        seen: set[int] = set()
        cpu = _owner.task_cpu_ns
        for h in regs:
            handled.add(id(h))
            h._fired = h._once
            target = self._target_of(h, current)
            if target is None or target.done() or id(target) in seen:
                continue
            seen.add(id(target))
            rec = self._new(target, sig)
            pending.append(rec)
            if target is current:
                self._hot.append((rec, cpu, lib.sb_deliveries(), HOG_NS))

    def forget(self, sig: int) -> None:
        """The bridge no longer watches ``sig``: its interrupts waiting for a re-check
        are not re-checked (no trip of a released signal would come to do it; a recorded
        interrupt still cancels its task at dispatch, at the task's next await)."""
        if self._hot:
            self._hot = [e for e in self._hot if e[0].signum != sig]
            _quick_switch(self, bool(self._hot))

    def _maybe_raise(self, frame: FrameType | None) -> None:
        current = asyncio.current_task(self._loop)
        cpu = _owner.task_cpu_ns
        hot: list[tuple[_chain.Interruption, int, int, int]] = []
        to_raise: asyncio.CancelledError | None = None
        for rec, cpu0, calls0, wait in self._hot:
            if rec.event is not None or rec.target.done() or rec.target is not current:
                continue  # dispatched (cancelled at its await), or it left the CPU
            hog = cpu - cpu0 >= HOG_NS - HOG_SLACK_NS and lib.sb_deliveries() - calls0 <= QUIET
            if to_raise is None and hog and can_raise_in(frame, current):
                to_raise = asyncio.CancelledError(f"{_chain._PREFIX} {signal_name(rec.signum)}")
            if to_raise is not None:
                rec.raised = to_raise
                continue
            if lib.sb_deliveries() - calls0 > QUIET:  # a storm: its next await it is
                continue
            hot.append((rec, cpu0, calls0, wait))
        # The next re-check comes after the first one's wait (HOG_NS after the signal),
        # and each one after that waits twice as long as the one before.
        self._hot = [(r, c0, n0, min(w * 2, RETRY_MAX_NS)) for r, c0, n0, w in hot]
        _quick_switch(self, bool(hot))
        if hot:
            rec, _, _, wait = hot[0]
            lib.sb_retrip_at(rec.signum, monotonic_ns() + wait)
        if to_raise is not None:
            raise to_raise

    def at_dispatch(
        self, sig: int, ev: SignalEvent, regs: tuple[HandlerHandle, ...]
    ) -> list[_chain.Interruption] | None:
        """The event is dispatched: interrupt what Python's handler did not."""
        recs, handled = self._pending.pop(sig, ([], set()))
        seen = {id(r.target) for r in recs}
        for h in regs:
            if not h.active or h.interrupt is False or id(h) in handled or h._fired:
                continue
            if h.senders is not None and not h.senders.accepts(ev):
                continue
            h._fired = h._once
            target = self._target_of(h, None)
            if target is None or target.done() or id(target) in seen:
                continue
            seen.add(id(target))
            recs.append(self._new(target, sig))
        for rec in recs:
            rec.bind(ev)
            if rec.raised is None:
                if not rec.target.done():
                    rec.target.cancel(rec.message())
            else:
                _chain.add_note(
                    rec.raised, f"aiosigbridge: {ev.name} was sent by pid {ev.pid}, uid {ev.uid}"
                )
        return recs or None

    def watch(self, rec: _chain.Interruption) -> None:
        """A target cancelled by an interrupt: decide, while the loop runs, whether
        anyone retrieved its cancellation."""
        self.undecided.add(rec)
        if self._timer is None and not self._loop.is_closed():
            self._timer = self._loop.call_later(1.0, self._decide_soon)

    def _decide_soon(self) -> None:
        self._timer = None
        self.decide(closing=False)
        if self.undecided and not self._loop.is_closed():
            self._timer = self._loop.call_later(1.0, self._decide_soon)

    def decide(self, *, closing: bool) -> None:
        """Settle cancellations nobody retrieved (see _chain.Interruption.decide)."""
        if closing:
            # A target that ended in this very iteration: its done-callbacks wait in the
            # ready queue and would run after the close.  Let them see its end now.
            for rec in list(self.recent):
                if not rec.target_done and rec.target.done():
                    _chain.note_target_ended(rec.target)
        for rec in list(self.undecided):
            if rec.decide(closing=closing):
                self.undecided.discard(rec)
        if closing:
            self._hot = []
            _quick_switch(self, False)
        if closing and self._timer is not None:
            self._timer.cancel()
            self._timer = None
