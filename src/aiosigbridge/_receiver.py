"""SignalReceiver: signals as an async iterator with a bounded queue."""

from __future__ import annotations

import asyncio
import signal
from collections import deque
from types import TracebackType
from typing import Any

from ._bridge import SignalBridge
from ._clib import RTMAX, RTMIN, SIGNALS, validate_signal
from ._event import SignalEvent
from ._loops import get_bridge

_END: Any = object()


def _queued(sig: int) -> bool:
    return RTMIN is not None and RTMAX is not None and RTMIN <= sig <= RTMAX


class SignalReceiver:
    """An async iterator of :class:`SignalEvent` for some signals; see
    :func:`open_receiver`.  Iterate it from one task at a time."""

    def __init__(self, signums: tuple[int, ...], maxsize: int) -> None:
        self.signums: tuple[signal.Signals | int, ...] = tuple(SIGNALS.get(s, s) for s in signums)
        self.maxsize = maxsize
        self.overflowed = 0
        # Each queued event in a one-element list, so that a standard signal delivered
        # again while its event waits merges into it (_std: signal -> that list).
        self._queue: deque[list[SignalEvent]] = deque()
        self._std: dict[int, list[SignalEvent]] = {}
        self._waiter: asyncio.Future[SignalEvent] | None = None
        self._bridge: SignalBridge | None = None
        self._state = "new"  # "open", "closed"

    async def __aenter__(self) -> SignalReceiver:
        self._open()
        return self

    def _open(self) -> None:
        if self._state != "new":
            msg = "a SignalReceiver can be entered once; call open_receiver() again"
            raise RuntimeError(msg)
        bridge = get_bridge()
        bridge._add_receiver(self)
        self._bridge = bridge
        self._state = "open"

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop receiving: iteration ends once the queued events are consumed."""
        if self._state == "open" and self._bridge is not None:
            self._bridge._remove_receiver(self)
        self._state = "closed"
        self._wake(_END)

    def __aiter__(self) -> SignalReceiver:
        return self

    def _pop(self) -> SignalEvent:
        box = self._queue.popleft()
        sig = int(box[0].signum)
        if self._std.get(sig) is box:
            del self._std[sig]
        return box[0]

    async def __anext__(self) -> SignalEvent:
        if self._queue:
            return self._pop()
        if self._state == "closed":
            raise StopAsyncIteration
        if self._state == "new":
            msg = "use the receiver inside `async with open_receiver(...) as rx:`"
            raise RuntimeError(msg)
        if self._waiter is not None:
            msg = (
                "this receiver is already being iterated by another task; open one "
                "receiver per consuming task (each gets every event)"
            )
            raise RuntimeError(msg)
        assert self._bridge is not None
        waiter: asyncio.Future[SignalEvent] = self._bridge.loop.create_future()
        self._waiter = waiter
        try:
            ev = await waiter
        except BaseException:
            # Woken with an event, then cancelled before it could return it: keep the
            # event for the next __anext__ rather than lose it.
            if waiter.done() and not waiter.cancelled():
                kept = waiter.result()
                if kept is not _END:
                    self._queue.appendleft([kept])
            raise
        finally:
            self._waiter = None
        if ev is _END:
            raise StopAsyncIteration
        return ev

    def _wake(self, value: Any) -> bool:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(value)
            return True
        return False

    def _put(self, ev: SignalEvent) -> bool:
        """Called by the bridge's reader: never blocks.  A standard signal whose event
        still waits merges into it (its ``coalesced`` grows, as trio does); else False
        when the queue is full."""
        if not self._queue and self._wake(ev):
            return True
        sig = int(ev.signum)
        std = not _queued(sig)
        if std:
            box = self._std.get(sig)
            if box is not None:
                box[0] = box[0]._replace(coalesced=box[0].coalesced + ev.coalesced)
                return True
        if len(self._queue) >= self.maxsize:
            self.overflowed += 1
            return False
        box = [ev]
        self._queue.append(box)
        if std:
            self._std[sig] = box
        return True

    def _bridge_closed(self, *, loop_closed: bool = False) -> None:
        self._state = "closed"
        if not loop_closed:  # a closed loop can schedule nothing: its tasks are gone too
            self._wake(_END)

    def __repr__(self) -> str:
        sigs = ", ".join(getattr(s, "name", str(s)) for s in self.signums)
        return f"<SignalReceiver [{sigs}] {self._state}, {len(self._queue)} queued>"


def open_receiver(*signals: int, maxsize: int = 128) -> SignalReceiver:
    """Receive signals as an async iterator, on the running loop's bridge::

        async with asb.open_receiver(signal.SIGTERM, signal.SIGUSR1) as rx:
            async for ev in rx:
                print(ev.name, "from", ev.pid)
                if ev.signum == signal.SIGTERM:
                    break

    Events wait in a queue of at most ``maxsize``; when it is full the reader does not
    block: further events are dropped and counted (``rx.overflowed`` and the bridge's
    ``stats()[sig].dropped``).  A standard signal delivered again while an event of it
    still waits merges into that event (its ``coalesced`` grows; the sender and time are
    the first delivery's), so a slow consumer never sees a storm of one overflow the
    queue.  Realtime signals stay one event per send.

    :raises TypeError: no signals, or a signal is not an int.
    :raises ValueError: a signal cannot be handled, or ``maxsize < 1``.
    """
    if not signals:
        msg = "open_receiver() needs at least one signal, e.g. open_receiver(signal.SIGTERM)"
        raise TypeError(msg)
    signums = tuple(dict.fromkeys(validate_signal(s) for s in signals))
    if isinstance(maxsize, bool) or not isinstance(maxsize, int):
        msg = f"maxsize must be an int, not {type(maxsize).__name__}"
        raise TypeError(msg)
    if maxsize < 1:
        msg = f"maxsize must be at least 1, got {maxsize}"
        raise ValueError(msg)
    return SignalReceiver(signums, maxsize)
