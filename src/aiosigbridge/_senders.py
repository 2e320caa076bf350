"""Senders: who may send a signal to a handler."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from ._clib import SI_MIXED, SI_QUEUE, SI_TKILL, SI_UNKNOWN, SI_USER
from ._event import SignalEvent

_USER_CODES = frozenset(c for c in (SI_USER, SI_QUEUE, SI_TKILL) if c is not None)


def _ints(what: str, values: Iterable[int]) -> frozenset[int]:
    if isinstance(values, int):
        values = (values,)
    out = frozenset(values)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            msg = f"Senders({what}=...) takes non-negative ints, got {v!r}"
            raise TypeError(msg)
    return out


@dataclass(frozen=True)
class Senders:
    """Who may send a signal; events from anyone else are dropped and counted
    (``bridge.stats()[sig].filtered``).

    The kernel already refuses ``kill()`` from an unprivileged process to a process
    of another user; the filter narrows that further, e.g. to reload only when root
    or the supervisor asks::

        bridge.add_handler(signal.SIGHUP, reload,
                           senders=asb.Senders(uids={0}, parent=True))

    An event is accepted when any of the given conditions holds:

    * ``uids``: the sender's real uid is one of these;
    * ``pids``: the sender's pid is one of these;
    * ``kernel``: the kernel sent it (terminal keys, SIGCHLD, SIGPIPE, timers: any
      ``si_code`` other than ``SI_USER``/``SI_QUEUE``/``SI_TKILL``);
    * ``parent``: the sender is this process's parent (``os.getppid()`` at delivery);
    * ``this_process``: the process sent it to itself.

    Two events have no single sender to judge: ``SI_UNKNOWN`` (no siginfo reached the
    bridge) is refused by every filter; ``SI_MIXED`` (a standard signal sent by more than
    four processes while its events waited, the senders past the fourth folded into one
    event) is accepted by every filter, rather than lose an accepted sender's delivery.
    """

    uids: frozenset[int] = field(default_factory=frozenset)
    pids: frozenset[int] = field(default_factory=frozenset)
    kernel: bool = False
    parent: bool = False
    this_process: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "uids", _ints("uids", self.uids))
        object.__setattr__(self, "pids", _ints("pids", self.pids))
        if not (self.uids or self.pids or self.kernel or self.parent or self.this_process):
            msg = (
                "Senders() with no condition accepts nobody; name uids, pids, or set "
                "kernel/parent/this_process (or pass senders=None to accept everyone)"
            )
            raise ValueError(msg)

    def accepts(self, ev: SignalEvent) -> bool:
        """True when ``ev`` comes from an accepted sender (``SI_UNKNOWN``: never;
        ``SI_MIXED``: always, see the class docstring)."""
        if ev.code == SI_UNKNOWN:
            return False
        if ev.code == SI_MIXED:
            return True
        user_sent = ev.code in _USER_CODES
        if self.kernel and not user_sent:
            return True
        if not user_sent:
            return False
        if ev.uid in self.uids or ev.pid in self.pids:
            return True
        if self.this_process and ev.pid == os.getpid():
            return True
        return self.parent and ev.pid == os.getppid()
