"""The per-loop bridge: the pipe reader, the handler registry and dispatch.

One SignalBridge per event loop.  Its reader is the read end of the loop's own pipe
(``loop.add_reader``); each wake-up drains the pipe and every pending record in one C
call, turns the records into SignalEvents and dispatches each: handlers in registration
order (a sync handler runs inline; an async handler's first step runs inline too, as an
eagerly started task), then receivers (their bounded queues; a full one counts
overflow, the reader never blocks).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import selectors
import signal
import threading
import types
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from . import _chain
from ._eager import start_task
from ._event import SignalEvent, events_from
from ._native import (
    DEFAULT_CAPACITY,
    Subscription,
    registry,
    set_python_hook,
    signal_name,
    validate_signal,
)
from ._senders import Senders

if TYPE_CHECKING:
    from ._receiver import SignalReceiver

Handler = Callable[[SignalEvent], Awaitable[Any] | None]
Policy = Literal["concurrent", "serial", "latest"]
_POLICIES = ("concurrent", "serial", "latest")

_SIGNALS = {int(s): s for s in signal.Signals}


@dataclass
class SignalStats:
    """Counters of one signal on one bridge (``bridge.stats()[sig]``).

    * ``received``: deliveries that reached this bridge's storage;
    * ``delivered``: events dispatched to at least one handler or receiver;
    * ``coalesced``: deliveries of a standard signal folded into an earlier event;
    * ``overflowed``: deliveries dropped because storage or a receiver's queue was full;
    * ``filtered``: events a handler's ``senders`` filter refused (once per handler);
    * ``forwarded``: process-wide, deliveries passed on to Python's own handler.

    Read as attributes or as a mapping: ``st.received == st["received"]``.
    """

    received: int = 0
    delivered: int = 0
    coalesced: int = 0
    overflowed: int = 0
    filtered: int = 0
    forwarded: int = 0

    def __getitem__(self, key: str) -> int:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return int(getattr(self, key))


class HandlerHandle:
    """What :meth:`SignalBridge.add_handler` returns: call :meth:`remove` to
    unregister (idempotent).  Also a context manager that removes on exit::

        with bridge.add_handler(signal.SIGUSR1, on_usr1):
            await serve()
    """

    __slots__ = (
        "__weakref__",
        "_bridge",
        "_fired",
        "_once",
        "active",
        "consume",
        "handler",
        "interrupt",
        "name",
        "pending",
        "policy",
        "running",
        "senders",
        "signum",
        "task_name",
    )

    def __init__(
        self,
        bridge: SignalBridge,
        signum: int,
        handler: Handler,
        *,
        interrupt: bool | asyncio.Task[Any],
        consume: bool,
        senders: Senders | None,
        policy: Policy,
    ) -> None:
        self._bridge = bridge
        self.signum: signal.Signals | int = _SIGNALS.get(signum, signum)
        self.handler = handler
        self.interrupt = interrupt
        self.consume = consume
        self.senders = senders
        self.policy = policy
        self.name = getattr(handler, "__qualname__", None) or repr(handler)
        self.task_name = f"aiosigbridge:{self.name}:{signal_name(signum)}"
        self.active = True
        self._once = False  # run(): interrupt at the first delivery only
        self._fired = False
        self.running: set[asyncio.Task[Any]] = set()
        self.pending: deque[tuple[SignalEvent, list[_chain.Interruption] | None]] = deque()

    def remove(self) -> None:
        """Unregister this handler.  Calling it again does nothing.

        A run of the handler that already started is left to finish; events queued
        for a ``policy="serial"`` handler are dropped.  When it was the last user of
        the signal in the process, the signal's previous action is restored.
        """
        if self.active:
            self._bridge._remove(self)

    def __enter__(self) -> HandlerHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"<HandlerHandle {self.name} for {signal_name(self.signum)} ({state})>"


class SignalBridge:
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
        self._receivers: dict[int, tuple[SignalReceiver, ...]] = {}
        self._watch_count: dict[int, int] = {}
        self._stats: dict[int, SignalStats] = {}
        self._closed = False
        # The stock selector loop in the main thread can dispatch from Python's own
        # handler while it waits in select() (see _python_signal_hook): its reader's
        # wake-up costs more than the rest of the path.  uvloop's is cheap, and
        # forwarding there would also run uvloop's own signal machinery.
        self._fast = (
            threading.current_thread() is threading.main_thread()
            and isinstance(loop, asyncio.BaseEventLoop)
            and hasattr(loop, "_selector")
        )
        self._closer: AsyncGenerator[None, None] | None = None
        self.chain = _chain.FailureChain(loop)
        self._interrupting: dict[int, int] = {}  # signal -> interrupt registrations
        self._pending_interrupts: dict[int, tuple[list[_chain.Interruption], set[int]]] = {}
        self._interruptions: deque[_chain.Interruption] = deque(maxlen=64)  # recent ones
        #: The task ``interrupt=True`` interrupts when no task is running at the signal:
        #: the task run() runs, else the task in which the bridge was created.
        self.main_task: asyncio.Task[Any] | None = None
        #: Seconds handlers of an interrupting signal may go on after the interrupted
        #: task ended, before they are cancelled and reported as TimeoutError.
        self.handler_timeout: float = 5.0
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
        _check_handler(handler)
        if not isinstance(consume, bool):
            msg = f"consume must be True or False, not {consume!r}"
            raise TypeError(msg)
        if senders is not None and not isinstance(senders, Senders):
            msg = (
                f"senders must be an aiosigbridge.Senders (e.g. Senders(uids={{0}})) or None, "
                f"not {type(senders).__name__}"
            )
            raise TypeError(msg)
        if policy not in _POLICIES:
            msg = f"policy must be one of {', '.join(map(repr, _POLICIES))}, not {policy!r}"
            raise ValueError(msg)
        if not isinstance(interrupt, (bool, asyncio.Task)):
            msg = f"interrupt must be True, False or an asyncio.Task, not {interrupt!r}"
            raise TypeError(msg)
        h = HandlerHandle(
            self,
            signum,
            handler,
            interrupt=interrupt,
            consume=consume,
            senders=senders,
            policy=policy,
        )
        self._watch(signum, consume=consume, interrupt=interrupt is not False)
        self._handlers[signum] = (*self._handlers.get(signum, ()), h)
        if interrupt is not False:
            self._interrupting[signum] = self._interrupting.get(signum, 0) + 1
        registry.replaced()
        return h

    def stats(self) -> dict[signal.Signals | int, SignalStats]:
        """Counters for every signal this bridge has seen or watches::

        st = bridge.stats()[signal.SIGUSR1]
        print(st.received, st.delivered, st.coalesced, st.overflowed)
        """
        out: dict[signal.Signals | int, SignalStats] = {}
        for sig in sorted(set(self._stats) | set(self._watch_count)):
            mine = self._stats.get(sig, SignalStats())
            st = SignalStats(
                delivered=mine.delivered, filtered=mine.filtered, overflowed=mine.overflowed
            )
            if not self._sub.closed:
                received, overflowed, forwarded, coalesced = self._sub.counters(sig)
                st.received = received
                st.overflowed += overflowed
                st.forwarded = forwarded
                st.coalesced = coalesced
            out[_SIGNALS.get(sig, sig)] = st
        return out

    def check(self) -> tuple[signal.Signals | int, ...]:
        """The bridged signals whose action was replaced behind the bridge's back
        (``signal.signal()``, ``loop.add_signal_handler()``), with a
        :class:`SignalReplacedWarning` the first time each is found."""
        return tuple(_SIGNALS.get(s, s) for s in registry.replaced() if s in self._watch_count)

    async def aclose(self) -> None:
        """Remove every handler and receiver, cancel runs still in progress (and wait
        for them), stop reading and give every signal back as it was found, unless
        another bridge still uses it.  Calling it again does nothing."""
        if self._closed:
            return
        current = asyncio.current_task()
        tasks = self._shutdown(spare=current)
        try:
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._close_storage()

    def close(self) -> None:
        """Synchronous :meth:`aclose` for callbacks and loop teardown: runs in progress
        are cancelled but not waited for."""
        if self._closed:
            return
        self._shutdown()
        self._close_storage()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        sigs = ", ".join(signal_name(s) for s in sorted(self._watch_count))
        return f"<SignalBridge {state} [{sigs}] loop={self._loop!r}>"

    # -- internals ----------------------------------------------------------------------

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

    def _watch(self, signum: int, *, consume: bool = False, interrupt: bool = False) -> None:
        registry.acquire(signum, consume=consume, interrupt=interrupt, fast=self._fast)
        try:
            n = self._watch_count.get(signum, 0)
            if n == 0:
                self._sub.watch(signum, True)
            self._watch_count[signum] = n + 1
        except BaseException:
            registry.release(signum, consume=consume, interrupt=interrupt, fast=self._fast)
            raise

    def _unwatch(self, signum: int, *, consume: bool = False, interrupt: bool = False) -> None:
        n = self._watch_count.get(signum, 0) - 1
        if n <= 0:
            self._watch_count.pop(signum, None)
            if not self._sub.closed:
                self._sub.watch(signum, False)
        else:
            self._watch_count[signum] = n
        registry.release(signum, consume=consume, interrupt=interrupt, fast=self._fast)

    def _remove(self, h: HandlerHandle) -> None:
        h.active = False
        h.pending.clear()
        regs = tuple(r for r in self._handlers.get(int(h.signum), ()) if r is not h)
        if regs:
            self._handlers[int(h.signum)] = regs
        else:
            self._handlers.pop(int(h.signum), None)
        if h.interrupt is not False:
            n = self._interrupting.get(int(h.signum), 0) - 1
            if n > 0:
                self._interrupting[int(h.signum)] = n
            else:
                self._interrupting.pop(int(h.signum), None)
        self._unwatch(int(h.signum), consume=h.consume, interrupt=h.interrupt is not False)

    def _add_receiver(self, rx: SignalReceiver) -> None:
        self._check_open("open_receiver")
        done: list[int] = []
        try:
            for s in rx.signums:
                self._watch(int(s))
                done.append(int(s))
        except BaseException:
            for s in done:
                self._unwatch(s)
            raise
        for s in rx.signums:
            self._receivers[int(s)] = (*self._receivers.get(int(s), ()), rx)

    def _remove_receiver(self, rx: SignalReceiver) -> None:
        for s in rx.signums:
            rxs = tuple(r for r in self._receivers.get(int(s), ()) if r is not rx)
            if len(rxs) == len(self._receivers.get(int(s), ())):
                continue
            if rxs:
                self._receivers[int(s)] = rxs
            else:
                self._receivers.pop(int(s), None)
            self._unwatch(int(s))

    def _shutdown(self, spare: asyncio.Task[Any] | None = None) -> list[asyncio.Task[Any]]:
        """Unregister everything and cancel the handler runs in progress (but ``spare``,
        the task calling aclose() from a handler)."""
        self._closed = True
        tasks: list[asyncio.Task[Any]] = []
        for regs in list(self._handlers.values()):
            for h in regs:
                tasks.extend(t for t in h.running if t is not spare)
                if h.active:
                    self._remove(h)
        for rxs in list(self._receivers.values()):
            for rx in rxs:
                rx._bridge_closed()
        for t in tasks:
            t.cancel("aiosigbridge: the bridge was closed")
        _forget(self)
        return tasks

    def _close_storage(self) -> None:
        for s in list(self._watch_count):  # receivers still registered
            while s in self._watch_count:
                self._unwatch(s)
        if not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sub.read_fd)
        self._sub.close()
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
        self._watch_count.clear()

    def _fast_dispatch(self) -> None:
        """Dispatch from Python's handler while the loop waits in select(): the records
        only; the wake-up byte stays, so select() returns at once and the loop runs
        what the handlers scheduled."""
        if self._sub.closed:
            return
        try:
            for ev in events_from(self._sub.drain(read_pipe=False)):
                self._dispatch(ev)
        except Exception as exc:  # never into select(): report like a loop callback
            self._loop.call_exception_handler(
                {"message": "aiosigbridge: dispatch failed", "exception": exc}
            )

    def _on_readable(self) -> None:
        if self._sub.closed:
            return
        for ev in events_from(self._sub.drain()):
            self._dispatch(ev)
        if registry.signals:
            registry.quick_check()

    def _dispatch(self, ev: SignalEvent) -> None:
        sig = int(ev.signum)
        st = self._stats.get(sig)
        if st is None:
            st = self._stats[sig] = SignalStats()
        regs = self._handlers.get(sig, ())
        recs = self._interrupt(sig, ev, regs) if sig in self._interrupting else None
        delivered = False
        for h in regs:
            if not h.active:
                continue
            if h.senders is not None and not h.senders.accepts(ev):
                st.filtered += 1
                continue
            delivered = True
            self._run(h, ev, recs)
        for rx in self._receivers.get(sig, ()):
            delivered = True
            if not rx._put(ev):
                st.overflowed += 1
        if delivered:
            st.delivered += 1

    # -- interrupts -----------------------------------------------------------------------

    def _target_of(
        self, h: HandlerHandle, current: asyncio.Task[Any] | None
    ) -> asyncio.Task[Any] | None:
        if isinstance(h.interrupt, asyncio.Task):
            return h.interrupt
        return current or self.main_task

    def _python_signal(self, sig: int) -> None:
        """Python's own handler for ``sig`` ran in the main thread (BRIDGED): interrupt
        now.  The task running right now is interrupted by raising CancelledError in
        it, which reaches code that never awaits; other targets are cancelled at
        dispatch, which follows within microseconds."""
        regs = [
            h
            for h in self._handlers.get(sig, ())
            if h.active and h.interrupt is not False and h.senders is None and not h._fired
        ]
        if not regs:
            return
        current = asyncio.current_task(self._loop)
        pending, handled = self._pending_interrupts.setdefault(sig, ([], set()))
        # One interruption per target for this delivery.  (Earlier deliveries not yet
        # dispatched do not count: a task that caught their interrupt is interrupted
        # again.)
        seen: set[int] = set()
        to_raise: BaseException | None = None
        for h in regs:
            handled.add(id(h))
            h._fired = h._once
            target = self._target_of(h, current)
            if target is None or target.done() or id(target) in seen:
                continue
            seen.add(id(target))
            raised = None
            if target is current:
                raised = to_raise = asyncio.CancelledError(
                    f"aiosigbridge: interrupted by {signal_name(sig)}"
                )
            rec = _chain.Interruption(self._loop, target, sig, self.handler_timeout, raised)
            pending.append(rec)
            self._interruptions.append(rec)
        if to_raise is not None:
            raise to_raise

    def _interrupt(
        self, sig: int, ev: SignalEvent, regs: tuple[HandlerHandle, ...]
    ) -> list[_chain.Interruption] | None:
        # Registrations the Python-level hook already handled for this delivery (it
        # knew which task was running) are not handled again.
        recs, handled = self._pending_interrupts.pop(sig, ([], set()))
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
            rec = _chain.Interruption(self._loop, target, sig, self.handler_timeout)
            recs.append(rec)
            self._interruptions.append(rec)
        for rec in recs:
            rec.bind(ev)
            if rec.raised is None:
                rec.target.cancel(rec.message())
            else:
                _chain.add_note(
                    rec.raised, f"aiosigbridge: {ev.name} was sent by pid {ev.pid}, uid {ev.uid}"
                )
        return recs or None

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
        if type(result) is not types.CoroutineType:
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


async def _await(aw: Awaitable[Any]) -> Any:
    return await aw


def _check_handler(handler: object) -> None:
    if inspect.isasyncgenfunction(handler):
        msg = (
            f"handler must be a function or an async function, not the async generator "
            f"function {handler!r}: to iterate signals, use open_receiver()"
        )
        raise TypeError(msg)
    if inspect.iscoroutine(handler) or inspect.isawaitable(handler):
        msg = (
            f"handler must be a function, got the awaitable {handler!r}: pass the async "
            "function itself (add_handler(sig, on_signal)), not on_signal(...)"
        )
        raise TypeError(msg)
    if not callable(handler):
        msg = (
            f"handler must be callable as handler(event), got {type(handler).__name__} {handler!r}"
        )
        raise TypeError(msg)


# -- one bridge per loop ---------------------------------------------------------------

_bridges: dict[asyncio.AbstractEventLoop, SignalBridge] = {}
_bridges_lock = threading.Lock()


def _forget(bridge: SignalBridge) -> None:
    with _bridges_lock:
        if _bridges.get(bridge.loop) is bridge:
            del _bridges[bridge.loop]


def get_bridge(
    loop: asyncio.AbstractEventLoop | None = None, *, capacity: int | None = None
) -> SignalBridge:
    """The bridge of ``loop`` (default: the running loop), created on first use.

    ::

        async def main() -> None:
            bridge = asb.get_bridge()
            bridge.add_handler(signal.SIGTERM, on_term)

    The bridge closes itself when the loop shuts down its async generators
    (``asyncio.run()`` and ``asyncio.Runner`` do), or call :meth:`SignalBridge.aclose`.

    :param capacity: records kept per subscriber for queued (realtime) signals before
        further ones are counted as overflow (default 1024); only used on creation.
    :raises RuntimeError: no running loop and none given, or the loop is closed.
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            msg = (
                "get_bridge() needs an event loop: call it from a coroutine (e.g. inside "
                "asyncio.run(main())) or pass the loop: get_bridge(loop)"
            )
            raise RuntimeError(msg) from None
    if loop.is_closed():
        msg = "get_bridge(): the event loop is closed; bridge a loop before closing it"
        raise RuntimeError(msg)
    with _bridges_lock:
        stale = [b for lp, b in _bridges.items() if lp.is_closed()]
    for other in stale:  # loops closed without shutting down their async generators
        other.close()  # (outside the lock: close() takes it to forget the bridge)
    with _bridges_lock:
        bridge = _bridges.get(loop)
        if bridge is not None and not bridge.closed:
            return bridge
        bridge = SignalBridge(loop, DEFAULT_CAPACITY if capacity is None else capacity)
        _bridges[loop] = bridge
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:
                bridge.main_task = asyncio.current_task()
    bridge._closer = _install_closer(bridge)
    if bridge._closer is None:
        # Made before the loop runs: tie it to the loop's shutdown once it does.
        loop.call_soon(_late_closer, bridge)
    return bridge


def _late_closer(bridge: SignalBridge) -> None:
    if bridge._closer is None and not bridge.closed:
        bridge._closer = _install_closer(bridge)


def _install_closer(bridge: SignalBridge) -> AsyncGenerator[None, None] | None:
    """Tie the bridge's life to the loop's: an async generator the loop finalizes in
    ``shutdown_asyncgens()``.  Only possible from inside the running loop."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if running is not bridge.loop:
        return None

    async def closer() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            bridge.close()

    agen = closer()
    step = agen.asend(None)
    try:
        step.send(None)
    except StopIteration:
        return agen
    return agen  # pragma: no cover - the generator always stops at its yield


def add_handler(
    sig: int,
    handler: Handler,
    *,
    interrupt: bool | asyncio.Task[Any] = False,
    consume: bool = False,
    senders: Senders | None = None,
    policy: Policy = "concurrent",
) -> HandlerHandle:
    """:meth:`SignalBridge.add_handler` on the running loop's bridge::

    asb.add_handler(signal.SIGHUP, reload_config)
    """
    return get_bridge().add_handler(
        sig, handler, interrupt=interrupt, consume=consume, senders=senders, policy=policy
    )


_SELECT_CODES = frozenset(
    getattr(selectors, name).select.__code__
    for name in (
        "SelectSelector",
        "PollSelector",
        "EpollSelector",
        "DevpollSelector",
        "KqueueSelector",
    )
    if hasattr(selectors, name)
)
_RUN_ONCE_CODE = asyncio.BaseEventLoop._run_once.__code__  # type: ignore[attr-defined]


def _python_signal_hook(signum: int, frame: types.FrameType | None) -> None:
    """Run by BRIDGED (Python's handler) in the main thread: interrupts, then, when the
    stock loop is waiting in select() (the frame Python interrupted is the selector's,
    called from the loop's _run_once), the dispatch itself, ahead of the reader."""
    loop = asyncio._get_running_loop()
    if loop is None:
        return
    bridge = _bridges.get(loop)
    if bridge is None or bridge._closed:
        return
    if signum in bridge._interrupting:
        bridge._python_signal(signum)
    if (
        bridge._fast
        and frame is not None
        and frame.f_code in _SELECT_CODES
        and frame.f_back is not None
        and frame.f_back.f_code is _RUN_ONCE_CODE
    ):
        bridge._fast_dispatch()


set_python_hook(_python_signal_hook)


def _after_fork_child() -> None:
    global _bridges_lock
    _bridges_lock = threading.Lock()  # another thread may have held it at fork()
    with contextlib.suppress(Exception):
        for b in list(_bridges.values()):
            b._forked()
    _bridges.clear()


import os as _os  # noqa: E402

if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_after_fork_child)
