"""The compiled module's only importer: constants, signal names and checks, C errors.

Everything that touches ``aiosigbridge._sigbridge`` goes through here; C return codes
(``-errno``) become ``OSError`` with the C library's message.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import threading

from ._sigbridge import ffi, lib

_rc = lib.sb_init()
if _rc < 0:  # pragma: no cover - only on a platform without lock-free atomics
    msg = f"aiosigbridge cannot start its C layer: {os.strerror(-_rc)}"
    raise ImportError(msg)

NSIG: int = min(signal.NSIG, lib.SB_NSIG)
RTMIN: int | None = lib.sb_rtmin() or None
RTMAX: int | None = lib.sb_rtmax() or None
DEFAULT_CAPACITY: int = lib.SB_DEFAULT_CAPACITY
MAX_CAPACITY: int = lib.SB_MAX_CAPACITY
STD_RESERVE: int = lib.SB_STD_RESERVE

SI_USER: int = lib.SI_USER
SI_QUEUE: int = lib.SI_QUEUE
SI_KERNEL: int | None = None if lib.SB_SI_KERNEL == lib.SB_SI_NONE else lib.SB_SI_KERNEL
SI_TKILL: int | None = None if lib.SB_SI_TKILL == lib.SB_SI_NONE else lib.SB_SI_TKILL
SI_UNKNOWN: int = lib.SB_SI_UNKNOWN
SI_MIXED: int = lib.SB_SI_MIXED
#: si_codes whose si_value carries the sender's value (POSIX: sigqueue, timers, mqueues, AIO).
VALUE_CODES = frozenset((lib.SI_QUEUE, lib.SI_TIMER, lib.SI_MESGQ, lib.SI_ASYNCIO))
CLD_CODES = frozenset(
    (
        lib.CLD_EXITED,
        lib.CLD_KILLED,
        lib.CLD_DUMPED,
        lib.CLD_TRAPPED,
        lib.CLD_STOPPED,
        lib.CLD_CONTINUED,
    )
)

#: sb_record as struct packs it: timestamp_ns, value, signum, code, pid, uid, status,
#: coalesced.
RECORD = struct.Struct("=qqiiiIiI")
assert RECORD.size == ffi.sizeof("sb_record"), "sb_record layout changed: update RECORD"

DISP_DEFAULT: int = lib.SB_DISP_DEFAULT
DISP_IGNORE: int = lib.SB_DISP_IGNORE
DISP_OURS: int = lib.SB_DISP_OURS
DISP_OTHER: int = lib.SB_DISP_OTHER

_FORBIDDEN = {
    "SIGKILL": "cannot be caught: the kernel never lets a process handle it",
    "SIGSTOP": "cannot be caught: the kernel never lets a process handle it",
    "SIGSEGV": "is a synchronous fault of the faulting thread; use faulthandler instead",
    "SIGBUS": "is a synchronous fault of the faulting thread; use faulthandler instead",
    "SIGFPE": "is a synchronous fault of the faulting thread; use faulthandler instead",
    "SIGILL": "is a synchronous fault of the faulting thread; use faulthandler instead",
}
_FORBIDDEN_NUMS = {
    int(getattr(signal, name)): reason
    for name, reason in _FORBIDDEN.items()
    if hasattr(signal, name)
}
_VALID = frozenset(int(s) for s in signal.valid_signals())
SIGNALS: dict[int, signal.Signals] = {int(s): s for s in signal.Signals}


def signal_name(sig: int) -> str:
    """``"SIGHUP"``, ``"SIGRTMIN+3"``, or ``"signal 77"``."""
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = ""
    if (
        RTMIN is not None
        and RTMAX is not None
        and RTMIN <= sig <= RTMAX
        and name not in ("SIGRTMIN", "SIGRTMAX")
    ):
        return f"SIGRTMIN+{sig - RTMIN}"
    return name or f"signal {int(sig)}"


def validate_signal(sig: object) -> int:
    """Return ``sig`` as an int, or raise naming what is wrong and what to do."""
    if isinstance(sig, bool) or not isinstance(sig, int):
        msg = (
            f"a signal must be an int or a signal.Signals member (e.g. signal.SIGTERM), "
            f"not {type(sig).__name__} {sig!r}"
        )
        raise TypeError(msg)
    n = int(sig)
    if not 0 < n < NSIG:
        msg = f"{n} is not a signal number: use 1..{NSIG - 1}, e.g. signal.SIGTERM"
        raise ValueError(msg)
    reason = _FORBIDDEN_NUMS.get(n)
    if reason is not None:
        msg = f"{signal_name(n)} {reason}"
        raise ValueError(msg)
    if n not in _VALID:
        msg = (
            f"signal {n} is reserved by the C library on this platform "
            f"(signal.valid_signals() leaves it out); use a signal from that set"
        )
        raise ValueError(msg)
    return n


def validate_any_signal(sig: object) -> int:
    """Like validate_signal, but any signal the kernel accepts may be *sent*."""
    if isinstance(sig, bool) or not isinstance(sig, int):
        msg = f"a signal must be an int or a signal.Signals member, not {type(sig).__name__}"
        raise TypeError(msg)
    n = int(sig)
    if not 0 <= n < NSIG:
        msg = f"{n} is not a signal number: use 0..{NSIG - 1}"
        raise ValueError(msg)
    return n


def check(rc: int, what: str) -> int:
    """Turn a C return code (-errno on failure) into OSError."""
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return int(rc)


def disposition(sig: int) -> tuple[int, int]:
    """The current C-level action of ``sig``: (DISP_* kind, handler address)."""
    addr = ffi.new("uintptr_t *")
    kind = check(lib.sb_disposition(sig, addr, ffi.NULL), "sigaction")
    return kind, int(addr[0])


def sigqueue(pid: int, sig: int, value: int = 0) -> None:
    """Send ``sig`` with an integer ``value`` to ``pid`` (POSIX ``sigqueue(3)``).

    The receiver sees ``ev.code == SI_QUEUE`` and ``ev.value == value``; realtime
    signals sent this way queue one by one, in order::

        asb.sigqueue(os.getpid(), signal.SIGRTMIN, 42)

    ``value`` is a C ``int`` (-2**31 .. 2**31-1): it travels in ``si_value.sival_int``,
    the member every receiver can read (the rest of the union is zeroed).

    :raises OverflowError: ``value`` does not fit in a C int.
    :raises OSError: as ``sigqueue(3)`` fails (``EAGAIN``: the receiver's queue of
        pending signals is full, RLIMIT_SIGPENDING; ``ESRCH``: no such process).
    :raises NotImplementedError: where the platform has no ``sigqueue`` (macOS).
    """
    n = validate_any_signal(sig)
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"a sigqueue value must be an int, not {type(value).__name__}"
        raise TypeError(msg)
    if not -(2**31) <= value < 2**31:
        msg = f"a sigqueue value travels as a C int (sival_int): -2**31..2**31-1, got {value!r}"
        raise OverflowError(msg)
    rc = lib.sb_sigqueue(pid, n, value)
    if rc == -errno.ENOSYS:
        msg = "sigqueue() is not available on this platform (Linux has it, macOS does not)"
        raise NotImplementedError(msg)
    if rc < 0:
        raise OSError(-rc, f"sigqueue({pid}, {signal_name(n)}, {value}): {os.strerror(-rc)}")


def monotonic_ns() -> int:
    """CLOCK_MONOTONIC as the C handler reads it."""
    return int(lib.sb_monotonic_ns())


def is_main_thread() -> bool:
    """The thread that may write Python's signal table."""
    return threading.current_thread() is threading.main_thread()


__all__ = ["ffi", "lib"]
