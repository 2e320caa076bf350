"""Thin Python face of the C layer: subscriptions (one per event loop or watchdog
thread: a C slot, its pipe, its storage), their demands on the owner, and the drain.

Also the registry view (``registry.signals``: what is bridged; ``.subscriptions``: what
is subscribed), and the names the rest of the package takes from the C layer.
"""

from __future__ import annotations

import errno
from typing import Any

from . import _owner
from ._clib import (
    DEFAULT_CAPACITY,
    DISP_DEFAULT,
    DISP_IGNORE,
    DISP_OTHER,
    DISP_OURS,
    MAX_CAPACITY,
    STD_RESERVE,
    check,
    disposition,
    ffi,
    lib,
    signal_name,
    validate_signal,
)
from ._event import SignalEvent, drain_events
from ._owner import BRIDGED, SignalReplacedWarning, SignalState


class Registry:
    """What is bridged and subscribed in this process (the owner's state, read-only)."""

    def __init__(self) -> None:
        self.subscriptions: set[Subscription] = set()

    @property
    def signals(self) -> dict[int, SignalState]:
        """The bridged signals (some subscriber holds them) and their state."""
        return {sig: _owner.state(sig) for sig in _owner.held()}

    def __repr__(self) -> str:
        sigs = ", ".join(signal_name(s) for s in _owner.held())
        return f"<aiosigbridge registry [{sigs}], {len(self.subscriptions)} subscription(s)>"


registry = Registry()


def _timestamp(ev: SignalEvent) -> int:
    return ev.timestamp_ns


class Subscription:
    """One subscriber: a C slot, its pipe and its storage, and what it demands of each
    signal (``_owner.WATCH | CONSUME | PYLEVEL | FAST``)."""

    __slots__ = (
        "__weakref__",
        "_buf",
        "_buf_addr",
        "_buf_len",
        "capacity",
        "closed",
        "gen",
        "read_fd",
        "slot",
    )

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            msg = f"capacity must be an int, not {type(capacity).__name__}"
            raise TypeError(msg)
        if not 0 < capacity <= MAX_CAPACITY:
            msg = (
                f"capacity must be between 1 and {MAX_CAPACITY} records, got {capacity}; "
                f"the default is {DEFAULT_CAPACITY}"
            )
            raise ValueError(msg)
        fd = ffi.new("int *")
        rc = lib.sb_subscribe(capacity, fd)
        if rc == -errno.EMFILE:
            msg = (
                f"aiosigbridge serves at most {lib.SB_MAX_SLOTS} event loops (bridges "
                "and task dumps) per process at once: aclose() the bridges of loops "
                "you no longer use"
            )
            raise RuntimeError(msg)
        self.slot = check(rc, "aiosigbridge subscribe")
        self.gen = int(lib.sb_slot_gen(self.slot))  # the slot's use: a stale one is refused
        self.read_fd = int(fd[0])
        self.capacity = capacity
        self.closed = False
        # Room for every standard signal's events (they always come in one drain) and
        # up to 64 realtime records; more grow the buffer (see drain()).  Made at the
        # first drain: a bridge that never gets a signal does not pay for it.
        self._buf_len = min(capacity, 64) + STD_RESERVE + 1
        self._buf: Any = None
        self._buf_addr = 0
        registry.subscriptions.add(self)

    def demand(self, sig: int, flags: int, ops: _owner.Ops | None = None) -> None:
        """Tell the owner what this subscriber wants of ``sig`` (0: nothing), and make
        the caller's ``ops`` (dict updates, see _owner.demand) in the same change.
        Idempotent: always asked, so that a call cut short is made right by the next.
        Closed: the ops alone."""
        if not self.closed:
            _owner.demand(self.slot, self.gen, sig, flags, ops)
            return
        for d, key, value in ops or ():
            if value is None:
                d.pop(key, None)
            else:
                d[key] = value

    def drain(self, read_pipe: bool = True) -> list[SignalEvent]:
        """Empty the pipe and return every pending delivery as SignalEvents, in time
        order.  One call into C that builds the events itself (``_event.drain_events``)
        in the common case.  With ``read_pipe=False`` the wake-up byte stays for the
        loop's reader."""
        if not self._buf_addr:
            self._buf = ffi.new("sb_record[]", self._buf_len)
            self._buf_addr = int(ffi.cast("uintptr_t", self._buf))
        evs: list[SignalEvent] = drain_events(
            self.slot, self._buf_addr, self._buf_len, read_pipe
        )
        if len(evs) < self._buf_len:
            return evs
        # More realtime records wait than the buffer holds: grow it to the capacity,
        # take the rest, and put the batches in time order (the first had the standard
        # signals' events, which may be newer than some realtime records after it).
        self._buf_len = self.capacity + STD_RESERVE + 1
        self._buf = buf = ffi.new("sb_record[]", self._buf_len)
        self._buf_addr = int(ffi.cast("uintptr_t", buf))
        while True:
            more: list[SignalEvent] = drain_events(
                self.slot, self._buf_addr, self._buf_len, False
            )
            evs += more
            if len(more) < self._buf_len:
                break
        return sorted(evs, key=_timestamp)

    def undrained(self, sig: int) -> int:
        """Deliveries of ``sig`` stored for this subscriber and not drained yet."""
        return int(lib.sb_undrained(self.slot, sig))

    def counters(self, sig: int) -> tuple[int, int, int, int]:
        out = ffi.new("sb_counters *")
        check(lib.sb_counters_get(self.slot, sig, out), "aiosigbridge counters")
        return int(out.received), int(out.overflowed), int(out.forwarded), int(out.coalesced)

    def close(self) -> None:
        """Drop every demand (signals nobody else holds are given back) and free the
        slot.  Idempotent, and safe to call again after a close cut short: the owner
        refuses a slot whose use (``gen``) has ended."""
        if self.closed:
            return
        _owner.unsubscribe(self.slot, self.gen)
        self.closed = True
        registry.subscriptions.discard(self)

    def forked(self) -> None:
        """In a forked child: the C layer dropped the slot already."""
        self.closed = True


def _forget_subscriptions() -> None:
    for sub in list(registry.subscriptions):
        sub.forked()
    registry.subscriptions.clear()


_owner.on_fork_child(_forget_subscriptions)

__all__ = [
    "BRIDGED",
    "DEFAULT_CAPACITY",
    "DISP_DEFAULT",
    "DISP_IGNORE",
    "DISP_OTHER",
    "DISP_OURS",
    "Registry",
    "SignalReplacedWarning",
    "Subscription",
    "disposition",
    "lib",
    "registry",
    "signal_name",
    "validate_signal",
]
