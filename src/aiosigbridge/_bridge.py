"""The per-loop bridge: its registry, its life, and what it asks of the owner.

One SignalBridge per event loop.  Its reader is the read end of the loop's own pipe
(``loop.add_reader``); reading and dispatch are in _dispatch.  What the bridge wants of
each signal (watch it; consume it; Python-level code for the main loop's interrupts;
dispatch from Python's handler) it tells the owner (``_owner.demand``), which owns the
process-wide state, and the owner writes the bridge's registry in the same change.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any

from . import _chain, _owner
from ._clib import SIGNALS, is_main_thread, signal_name, validate_signal
from ._dispatch import Dispatcher, Partial, Receiver
from ._event import SignalEvent
from ._handlers import (
    Handler,
    HandlerHandle,
    Policy,
    SignalStats,
    check_handler,
    check_options,
)
from ._interrupt import Interrupts
from ._native import DEFAULT_CAPACITY, Subscription
from ._senders import Senders

#: Seconds between a bridge's looks at its signals' actions (see SignalBridge._check).
RECHECK_S = 1.0


class SignalBridge(Dispatcher):
    """Delivers signals into one event loop.  Get it with :func:`get_bridge`.

    ::

        bridge = asb.get_bridge()
        h = bridge.add_handler(signal.SIGHUP, reload_config)
        ...
        await bridge.aclose()   # gives every signal back as it found it
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = DEFAULT_CAPACITY) -> None:
        if loop.is_closed():
            msg = "cannot bridge signals into a closed event loop; create the bridge first"
            raise RuntimeError(msg)
        self._loop = loop
        self._sub = Subscription(capacity)
        self._handlers: dict[int, tuple[HandlerHandle, ...]] = {}
        self._receivers: dict[int, tuple[Receiver, ...]] = {}
        self._stats: dict[int, SignalStats] = {}
        self._closed = False  # no new registrations
        self._released = False  # the subscription is closed: every signal given back
        # Python-level handlers run in the main thread: only the main thread's loop can
        # have its interrupts raised there.  The stock selector loop there can also be
        # dispatched from Python's handler while it waits in select() (_loops): its
        # reader's wake-up costs more than the rest of the path; uvloop's is cheap.
        self._main = is_main_thread()
        self._fast = (
            self._main and isinstance(loop, asyncio.BaseEventLoop) and hasattr(loop, "_selector")
        )
        self._closer: AsyncGenerator[None, None] | None = None
        self.chain = _chain.FailureChain(loop)
        self.interrupts = Interrupts(loop)
        self._backlog: deque[SignalEvent | Partial] = deque()
        self._partial: Partial | None = None
        self._resume_scheduled = False
        self._recheck: asyncio.TimerHandle | None = None
        #: Called once when the bridge closes (get_bridge() forgets it).
        self.on_close: Callable[[SignalBridge], None] | None = None
        try:
            loop.add_reader(self._sub.read_fd, self._on_readable)
        except BaseException:
            self._sub.close()
            raise

    # -- public API ---------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this bridge delivers into."""
        return self._loop

    @property
    def closed(self) -> bool:
        """True after :meth:`aclose` (or after the loop was closed or the process forked)."""
        return self._closed

    @property
    def main_task(self) -> asyncio.Task[Any] | None:
        """The task ``interrupt=True`` interrupts when no task is running at the signal:
        the task run() runs, else the task in which the bridge was created."""
        return self.interrupts.main_task

    @main_task.setter
    def main_task(self, task: asyncio.Task[Any] | None) -> None:
        self.interrupts.main_task = task

    @property
    def handler_timeout(self) -> float:
        """Seconds handlers of an interrupting signal may go on after the interrupted
        task ended, before they are cancelled and reported as TimeoutError."""
        return self.interrupts.handler_timeout

    @handler_timeout.setter
    def handler_timeout(self, seconds: float) -> None:
        self.interrupts.handler_timeout = seconds

    def add_handler(
        self,
        sig: int,
        handler: Handler,
        *,
        interrupt: bool | asyncio.Task[Any] = False,
        consume: bool = False,
        senders: Senders | None = None,
        policy: Policy = "concurrent",
    ) -> HandlerHandle:
        """Run ``handler(event)`` on every delivery of ``sig``.

        ``handler`` is a plain function (called inline, in registration order) or an
        ``async def`` function (started as a task whose code up to its first ``await``
        runs inline, before the next handler).  Several handlers per signal are fine::

            def on_usr1(ev: asb.SignalEvent) -> None:
                print("SIGUSR1 from pid", ev.pid)

            async def on_hup(ev: asb.SignalEvent) -> None:
                await reload_config()

            bridge.add_handler(signal.SIGUSR1, on_usr1)
            h = bridge.add_handler(signal.SIGHUP, on_hup, policy="latest")
            h.remove()

        :param interrupt: ``True`` interrupts the task that was running when the signal
            arrived (else the main task), or pass a Task to interrupt that one; the
            handlers' failures are chained onto the exception it ends with.
        :param consume: ``True``: Python's own handler for ``sig`` (e.g.
            ``KeyboardInterrupt`` on SIGINT) is not run.
        :param senders: a :class:`Senders` filter; events from others are dropped and
            counted in ``stats()[sig].filtered``.
        :param policy: for async handlers, what to do when the signal comes again while
            a run is in progress: ``"concurrent"`` (start another), ``"serial"`` (queue
            the event, one run at a time) or ``"latest"`` (cancel the run, start anew).
        :raises TypeError: ``handler`` is not callable (or is a coroutine object).
        :raises ValueError: ``sig`` cannot be handled (SIGKILL, SIGSTOP, faults, ...).
        :raises RuntimeError: the bridge is closed.
        """
        self._check_open("add_handler")
        signum = validate_signal(sig)
        check_handler(handler)
        check_options(consume, senders, policy, interrupt)
        h = HandlerHandle(
            self,
            signum,
            handler,
            interrupt=interrupt,
            consume=consume,
            senders=senders,
            policy=policy,
        )
        # One change: the owner's state and this bridge's registry together (a
        # KeyboardInterrupt before it leaves nothing, after it leaves both).
        self._sync(signum, (*self._handlers.get(signum, ()), h))
        self._check()
        return h

    def stats(self) -> dict[signal.Signals | int, SignalStats]:
        """Counters for every signal this bridge has seen or watches::

        st = bridge.stats()[signal.SIGUSR1]
        print(st.received, st.delivered, st.coalesced, st.overflowed)
        """
        out: dict[signal.Signals | int, SignalStats] = {}
        watched = set(self._handlers) | set(self._receivers)
        for sig in sorted(set(self._stats) | watched):
            mine = self._stats.get(sig, SignalStats())
            st = SignalStats(
                delivered=mine.delivered,
                unclaimed=mine.unclaimed,
                filtered=mine.filtered,
                dropped=mine.dropped,
            )
            if not self._sub.closed:
                st.received, st.overflowed, st.forwarded, st.coalesced = self._sub.counters(sig)
            out[SIGNALS.get(sig, sig)] = st
        return out

    def check(self) -> tuple[signal.Signals | int, ...]:
        """The bridged signals whose action was replaced behind the bridge's back
        (``signal.signal()``, ``loop.add_signal_handler()``), with a
        :class:`SignalReplacedWarning` the first time each is found.  A signal whose
        replacement was undone (what ``signal.getsignal()`` returned was put back) is
        taken back and no longer listed."""
        watched = set(self._handlers) | set(self._receivers)
        return tuple(SIGNALS.get(s, s) for s in sorted(self._check() & watched))

    async def aclose(self) -> None:
        """Remove every handler and receiver, cancel runs still in progress (and wait
        for them), stop reading and give every signal back as it was found, unless
        another bridge still uses it.  Calling it again does nothing."""
        if self._released:
            return
        tasks = self._shutdown(spare=asyncio.current_task())
        try:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._close_storage()

    def close(self) -> None:
        """Synchronous :meth:`aclose` for callbacks and loop teardown: runs in progress
        are cancelled but not waited for.  Safe on a loop that is already closed.  A
        close cut short (KeyboardInterrupt) is finished by the next close(), aclose() or
        the loop's shutdown."""
        if self._released:
            return
        try:
            self._shutdown()
        finally:
            self._close_storage()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        sigs = ", ".join(signal_name(s) for s in sorted(set(self._handlers) | set(self._receivers)))
        return f"<SignalBridge {state} [{sigs}] loop={self._loop!r}>"

    # -- registrations and the owner ----------------------------------------------------

    def _check_open(self, what: str) -> None:
        if self._closed:
            msg = (
                f"{what}() on a closed SignalBridge (aclose() was called, the loop was "
                "closed, or the process forked); call aiosigbridge.get_bridge() for a new one"
            )
            raise RuntimeError(msg)
        if self._loop.is_closed():
            self.close()
            msg = f"{what}(): the bridge's event loop is closed"
            raise RuntimeError(msg)

    def _sync(
        self,
        sig: int,
        regs: tuple[HandlerHandle, ...] | None = None,
        rxs: tuple[Receiver, ...] | None = None,
    ) -> None:
        """Make ``sig``'s registrations ``regs`` / ``rxs`` (default: as they are) and
        tell the owner what this bridge wants of it, in one change.  Idempotent."""
        if regs is None:
            regs = self._handlers.get(sig, ())
        if rxs is None:
            rxs = self._receivers.get(sig, ())
        active = [h for h in regs if h.active]
        interrupting = sum(1 for h in active if h.interrupt is not False)
        if interrupting:
            _owner.interrupting.add((id(self), sig))
        else:
            _owner.interrupting.discard((id(self), sig))
        if not (active or rxs):
            self.interrupts.forget(sig)
        flags = 0
        if active or rxs:
            flags = _owner.WATCH | (_owner.FAST if self._fast else 0)
            if any(h.consume for h in active):
                flags |= _owner.CONSUME
            if self._main and interrupting:
                flags |= _owner.PYLEVEL
        ops: _owner.Ops = [
            (self._handlers, sig, regs or None),
            (self._receivers, sig, rxs or None),
            (self.interrupts.count, sig, interrupting or None),
        ]
        self._sub.demand(sig, flags, ops)

    def _check(self) -> frozenset[int]:
        """Ask the owner about replaced signals (warned once each) and put-back ones
        (taken again).  While the bridge watches signals it looks again now and then:
        every RECHECK_S, or every RECHECK_S / 4 while one of its signals is replaced,
        since other code may put back what signal.getsignal() returned at any time."""
        replaced = _owner.check_now()
        watched = set(self._handlers) | set(self._receivers)
        if watched and self._recheck is None and not self._loop.is_closed():
            delay = RECHECK_S / 4 if replaced & watched else RECHECK_S
            self._recheck = self._loop.call_later(delay, self._recheck_now)
        return replaced

    def _recheck_now(self) -> None:
        self._recheck = None
        if self._closed:
            return
        if _owner.needs_check() or _owner.actions_changed():
            self._check()
        elif (self._handlers or self._receivers) and not self._loop.is_closed():
            self._recheck = self._loop.call_later(RECHECK_S, self._recheck_now)

    def _remove(self, h: HandlerHandle) -> None:
        """One change (the owner's and the registry's); idempotent."""
        sig = int(h.signum)
        self._sync(sig, tuple(r for r in self._handlers.get(sig, ()) if r is not h))
        h.active = False
        h.pending.clear()

    def _add_receiver(self, rx: Receiver) -> None:
        self._check_open("open_receiver")
        try:
            for s in (int(s) for s in rx.signums):
                self._sync(s, rxs=(*self._receivers.get(s, ()), rx))
        except BaseException:
            self._remove_receiver(rx)
            raise
        self._check()

    def _remove_receiver(self, rx: Receiver) -> None:
        for s in (int(s) for s in rx.signums):
            self._sync(s, rxs=tuple(r for r in self._receivers.get(s, ()) if r is not rx))

    # -- closing --------------------------------------------------------------------------

    def _shutdown(self, spare: asyncio.Task[Any] | None = None) -> list[asyncio.Task[Any]]:
        """Unregister everything and cancel the handler runs in progress (but ``spare``,
        the task calling aclose() from a handler).  On a closed loop nothing is
        scheduled: its tasks are as dead as it is.  Idempotent."""
        self._closed = True
        loop_closed = self._loop.is_closed()
        tasks: list[asyncio.Task[Any]] = []
        for regs in list(self._handlers.values()):
            for h in regs:
                tasks.extend(t for t in h.running if t is not spare and not t.done())
                h.active = False
                h.pending.clear()
        for rxs in list(self._receivers.values()):
            for rx in rxs:
                rx._bridge_closed(loop_closed=loop_closed)
        if self.on_close is not None:
            self.on_close(self)
        if loop_closed:
            return []
        for t in tasks:
            t.cancel("aiosigbridge: the bridge was closed")
        return tasks

    def _close_storage(self) -> None:
        try:
            if not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._sub.read_fd)
            self._sub.close()  # first: the owner gives back what nobody else holds
        finally:
            self._released = self._sub.closed
        try:
            with contextlib.suppress(Exception):  # reports go to the exception handler
                self.interrupts.decide(closing=True)
        finally:
            self._handlers.clear()
            self._receivers.clear()
            if self._recheck is not None:
                self._recheck.cancel()
                self._recheck = None
            if self._closer is not None:
                # Finish the loop-shutdown hook now, so that nothing is left for the loop
                # (or the garbage collector) to finalize later.
                closer, self._closer = self._closer, None
                with contextlib.suppress(StopIteration, RuntimeError):
                    closer.aclose().send(None)

    def _forked(self) -> None:
        self._closed = True
        for regs in self._handlers.values():
            for h in regs:
                h.active = False
        self._handlers.clear()
        self._receivers.clear()
