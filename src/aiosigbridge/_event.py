"""SignalEvent: one signal delivery as the C handler recorded it."""

from __future__ import annotations

import os
import signal
import time
from typing import Any, NamedTuple

from ._clib import (
    SI_QUEUE,
    SI_UNKNOWN,
    SIGNALS,
    check,
    lib,
    signal_name,
)


class SignalEvent(NamedTuple):
    """One delivery of a signal (or, for a standard signal, ``coalesced`` of them).

    Built from the record the C handler wrote when the signal arrived, so the sender's
    identity and the time are the kernel's, not the time Python got round to it::

        async def on_hup(ev: asb.SignalEvent) -> None:
            print(f"{ev.name} from pid {ev.pid} (uid {ev.uid}), "
                  f"{ev.age_ns() / 1000:.0f} us ago")

    Fields:

    * ``signum``: a :class:`signal.Signals` member where the number has one (the realtime
      range does: ``SIGRTMIN`` ... ``SIGRTMAX``), else the plain ``int``.
    * ``code``: ``si_code``: ``SI_USER`` (kill), ``SI_QUEUE`` (sigqueue), ``SI_TKILL``
      (pthread_kill), ``SI_KERNEL``, ``CLD_EXITED``, ... (see the ``SI_*`` constants);
      ``SI_UNKNOWN`` where the delivery came without a siginfo (CPython's own handler
      took it, after other code put ``asb.BRIDGED`` back with ``signal.signal()``, or
      it was simulated with ``_thread.interrupt_main()``): the sender is unknown.
    * ``pid``, ``uid``: the sender (0 where the kernel sent it, or it is unknown).
    * ``value``: ``si_value.sival_int`` (a C ``int``) for senders that carry one
      (``SI_QUEUE``: ``sigqueue()``; also POSIX timers, message queues and AIO),
      ``None`` for other senders.
    * ``status``: for ``SIGCHLD`` the child's exit status or signal, else ``None``.
    * ``timestamp_ns``: ``CLOCK_MONOTONIC`` (the clock of :func:`time.monotonic_ns`) when
      the C handler ran.
    * ``coalesced``: how many deliveries of a standard signal this event stands for
      (always 1 for realtime signals, which the kernel queues one by one).
    """

    signum: signal.Signals | int
    code: int
    pid: int
    uid: int
    value: int | None
    status: int | None
    timestamp_ns: int
    coalesced: int = 1

    @property
    def name(self) -> str:
        """The signal's name: ``"SIGHUP"``, ``"SIGRTMIN+3"``."""
        return signal_name(self.signum)

    @property
    def queued(self) -> bool:
        """True when the sender used ``sigqueue()`` (and ``value`` is set)."""
        return self.code == SI_QUEUE

    def age_ns(self) -> int:
        """Nanoseconds since the C handler recorded this event."""
        return time.monotonic_ns() - self.timestamp_ns

    def sender_name(self) -> str | None:
        """The sender's command name ("who killed my service?"): ``/proc/<pid>/comm``
        (``systemd``, ``kill``, ``containerd-shim``), read now, when asked.

        ``None`` when there is no sender process to name: the kernel sent it (``pid``
        0: a timer, a child's exit, ``SI_KERNEL``), the delivery came without a siginfo
        (``SI_UNKNOWN``), the sender has exited since (a zombie too), or the system has
        no ``/proc``
        (then `psutil <https://pypi.org/project/psutil/>`_ is asked, if installed).
        A pid may be reused once its process is gone: read it soon after delivery.
        """
        if self.pid <= 0:
            return None
        try:
            with open(f"/proc/{self.pid}/stat", encoding="utf-8", errors="replace") as f:
                if f.read().rpartition(")")[2].split()[:1] == ["Z"]:
                    return None  # exited, not yet reaped by its parent
            with open(f"/proc/{self.pid}/comm", encoding="utf-8", errors="replace") as f:
                return f.read().rstrip("\n") or None
        except FileNotFoundError:
            if os.path.isdir("/proc/self"):
                return None  # gone
        except OSError:
            return None
        try:  # no /proc (macOS)
            import psutil  # type: ignore[import-untyped]

            return str(psutil.Process(self.pid).name())
        except Exception:
            return None

    def describe(self) -> str:
        """``"SIGTERM from pid 1 (systemd), uid 0"``: for logs (the name read now)."""
        if self.pid <= 0 and self.code == SI_UNKNOWN:
            return f"{self.name} (sender unknown)"
        name = self.sender_name()
        who = f"pid {self.pid} ({name})" if name else f"pid {self.pid}"
        return f"{self.name} from {who}, uid {self.uid}"


_SIGNALS = SIGNALS


# The drain's fast path (cbits/sb_fastpy.c): a builtin that drains a subscriber and builds
# its SignalEvents in C, keeping the GIL.  signum -> Signals member, for 0..64.
_SIGNAL_TABLE = tuple(_SIGNALS.get(i, i) for i in range(lib.SB_NSIG))
_box: list[Any] = []
check(lib.sb_fastpy_init(id(_box), id(SignalEvent), id(_SIGNAL_TABLE)), "aiosigbridge init")
drain_events: Any = _box[0][2]
#: BRIDGED's common call (sb_bridged_fast: -1 for the full path) and the main thread's
#: time in our C handler, without cffi's GIL release around each call.
bridged_fast: Any = _box[1][2]
main_handler_ns: Any = _box[2][2]
#: The owner's per-drain look (_owner.needs_check), in one call.
needs_check_fast: Any = _box[3][2]
del _box
