"""Thin Python face of the C layer: the only importer of the compiled module.

It owns the process-wide state that has to be shared by every bridge: which signals
carry our C handler, what sits in Python's own signal table for them, whether a
delivery is forwarded to Python (``PyErr_SetInterruptEx``), and the subscriptions
(one per event loop).  Everything here runs under one lock; the C handler needs none.

What sits in Python's table for a bridged signal (``signal.getsignal()``):

* the previous Python-level handler, if there was one (a function,
  ``signal.default_int_handler``, asyncio's handler): it keeps running, because the C
  handler forwards every delivery to it with ``PyErr_SetInterruptEx``;
* otherwise (``SIG_DFL``, ``SIG_IGN``, or a handler Python did not install),
  :data:`BRIDGED`, so that ``getsignal()`` does not claim the default action that no
  longer happens.  Nothing is forwarded to it unless an interrupt needs it;
* :data:`BRIDGED` also once a registration asks for ``interrupt``: it runs the bridge's
  interrupt hook in the main thread (which reaches a task hogging the CPU), then the
  previous Python handler, unless a registration consumes the signal.

Python's table can only be written from the main thread: a signal first bridged from
another thread keeps ``SIG_DFL``/``SIG_IGN`` there, and its interrupts wait for the
interrupted task's next ``await``.

Giving a signal back restores Python's table, then the exact C action saved first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import struct
import threading
import warnings
from _signal import getsignal as _raw_getsignal  # type: ignore[import-not-found]
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

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

SI_USER: int = lib.SI_USER
SI_QUEUE: int = lib.SI_QUEUE
SI_KERNEL: int | None = None if lib.SB_SI_KERNEL == lib.SB_SI_NONE else lib.SB_SI_KERNEL
SI_TKILL: int | None = None if lib.SB_SI_TKILL == lib.SB_SI_NONE else lib.SB_SI_TKILL
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


class SignalReplacedWarning(RuntimeWarning):
    """A bridged signal's action was replaced behind the bridge's back.

    Raised (as a warning) when ``signal.signal()``, ``loop.add_signal_handler()`` or C
    code replaced the action aiosigbridge installed: the bridge's handlers for that
    signal no longer run.
    """


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
        and name
        not in (
            "SIGRTMIN",
            "SIGRTMAX",
        )
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
    """Send ``sig`` with an integer ``value`` to ``pid`` (POSIX ``sigqueue``).

    The receiver sees ``ev.code == SI_QUEUE`` and ``ev.value == value``; realtime
    signals sent this way queue one by one, in order::

        asb.sigqueue(os.getpid(), signal.SIGRTMIN, 42)

    :raises OSError: as ``sigqueue(3)`` fails (``EAGAIN``: the receiver's queue of
        pending signals is full, RLIMIT_SIGPENDING; ``ESRCH``: no such process).
    :raises NotImplementedError: where the platform has no ``sigqueue`` (macOS).
    """
    n = validate_any_signal(sig)
    if not -(2**63) <= value < 2**63:
        msg = f"a sigqueue value must fit in 64 signed bits, got {value!r}"
        raise OverflowError(msg)
    rc = lib.sb_sigqueue(pid, n, value)
    if rc == -errno.ENOSYS:
        msg = "sigqueue() is not available on this platform (Linux has it, macOS does not)"
        raise NotImplementedError(msg)
    if rc < 0:
        raise OSError(-rc, f"sigqueue({pid}, {signal_name(n)}, {value}): {os.strerror(-rc)}")


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


def monotonic_ns() -> int:
    """CLOCK_MONOTONIC as the C handler reads it."""
    return int(lib.sb_monotonic_ns())


class _Bridged:
    """What ``signal.getsignal()`` returns for a signal aiosigbridge owns at the Python
    level: one it took over from ``SIG_DFL``/``SIG_IGN`` (the process no longer takes the
    default action; the bridge's handlers run instead), or one with an ``interrupt``
    registration.  Called by Python in the main thread, it runs the bridge's interrupt
    hook, then the Python handler that was there before, unless a registration
    consumes the signal."""

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        hook = _python_hook
        st = registry.signals.get(signum)
        # The previous handler first: the interrupt hook may raise into the running
        # task, which would skip it.  (If it raises, e.g. KeyboardInterrupt, Python's own
        # semantics win and the interrupt comes from the dispatch instead.)
        if st is not None and not st.consumers and _is_python_callable(st.python_original):
            st.python_original(signum, frame)
        if hook is not None and st is not None and (st.interrupters or st.fast):
            hook(signum, frame)

    def __repr__(self) -> str:
        return "<aiosigbridge.BRIDGED>"


BRIDGED = _Bridged()
_python_hook: Callable[[int, FrameType | None], None] | None = None


@dataclass
class _SigState:
    python_original: Any  # what signal.getsignal() said before we came
    marker: bool  # we put BRIDGED in Python's table
    chained: bool  # the previous C action is foreign and is called after ours
    watchers: int = 0  # (subscription, signal) pairs
    consumers: int = 0  # registrations with consume=True
    interrupters: int = 0  # registrations that need Python-level code to run
    fast: int = 0  # watchers on the main thread's stock asyncio loop (see _bridge)
    forward: bool = False
    warned: bool = False


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _is_python_callable(h: object) -> bool:
    return callable(h) and not isinstance(h, _Bridged)


class Registry:
    """Process-wide: installed signals and their subscriptions."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.signals: dict[int, _SigState] = {}
        self.subscriptions: set[Subscription] = set()
        self._python_c_handler = 0  # address of CPython's own C handler, once known
        self._stale_python: dict[int, Any] = {}  # Python-table restores owed (off main)
        self._learn_python_handler()

    def _learn_python_handler(self) -> None:
        # CPython installs its C handler for SIGINT at start-up (default_int_handler).
        # Where that is not so, we learn it the first time we call signal.signal().
        if callable(signal.getsignal(signal.SIGINT)):
            kind, addr = disposition(int(signal.SIGINT))
            if kind == DISP_OTHER:
                self._python_c_handler = addr

    # -- per-signal install / restore -------------------------------------------------

    def _settle_python_table(self) -> None:
        # Restores of Python's table that were owed because the last user went away
        # off the main thread (the C action was given back then already).
        if not self._stale_python or not _in_main_thread():
            return
        for sig, original in list(self._stale_python.items()):
            del self._stale_python[sig]
            if sig in self.signals or signal.getsignal(sig) is not BRIDGED:
                continue
            if original in (signal.SIG_DFL, signal.SIG_IGN):
                signal.signal(sig, original)

    def _wanted_forward(self, st: _SigState, sig: int) -> bool:
        # fast: only where BRIDGED already sits in Python's table; a Python handler
        # that was there before stays what signal.getsignal() says.
        if st.interrupters or (st.fast and st.marker):
            return True
        if st.consumers:
            return False
        return _is_python_callable(st.python_original)

    def _install(self, sig: int) -> _SigState:
        self._settle_python_table()
        self._stale_python.pop(sig, None)
        py = signal.getsignal(sig)
        kind, addr = disposition(sig)
        if kind == DISP_OURS:
            msg = (
                f"{signal_name(sig)} already carries aiosigbridge's C handler but this "
                "process's registry does not know it (a second copy of the extension?)"
            )
            raise RuntimeError(msg)
        # CPython's own C handler is never chained to (its effects would double).  Not
        # known yet: if Python's table holds a callable, the C action is most likely
        # CPython's; if not, a handler there is foreign.
        python_handler = self._python_c_handler or (addr if _is_python_callable(py) else 1)
        chained = bool(check(lib.sb_save_original(sig, python_handler), "sigaction"))
        marker = False
        try:
            if not _is_python_callable(py) and _in_main_thread():
                signal.signal(sig, BRIDGED)
                marker = True
                k2, a2 = disposition(sig)
                if k2 == DISP_OTHER:
                    self._python_c_handler = a2
            st = _SigState(python_original=py, marker=marker, chained=chained)
            st.forward = self._wanted_forward(st, sig)
            check(lib.sb_install(sig, int(st.forward)), f"sigaction({signal_name(sig)})")
        except BaseException:
            if marker:
                signal.signal(sig, py if py is not None else signal.SIG_DFL)
            lib.sb_restore(sig, 0)
            raise
        self.signals[sig] = st
        return st

    def _uninstall(self, sig: int) -> None:
        st = self.signals.pop(sig)
        kind, _ = disposition(sig)
        if kind != DISP_OURS:
            # Replaced behind our back.  Whoever replaced it keeps it; say so unless the
            # state is exactly what we would have restored (asyncio.Runner puts back
            # default_int_handler for SIGINT when its main task ends).
            now = signal.getsignal(sig)
            if (
                now is not st.python_original
                and not st.warned
                and not _runner_gave_back(sig, st.python_original, now)
            ):
                _warn_replaced(sig, stacklevel=4)
            lib.sb_restore(sig, 1)
            if now is BRIDGED and _in_main_thread():
                # C code replaced it (libuv does for SIGCHLD): put Python's table back
                # without touching the C action that is now someone else's.
                original = st.python_original
                check(lib.sb_stash(sig, 0), "sigaction")
                signal.signal(sig, original if original is not None else signal.SIG_DFL)
                check(lib.sb_stash(sig, 1), "sigaction")
            return
        if st.marker:
            if _in_main_thread():
                original = st.python_original
                signal.signal(sig, original if original is not None else signal.SIG_DFL)
            else:
                self._stale_python[sig] = st.python_original
        check(lib.sb_restore(sig, 0), f"sigaction({signal_name(sig)})")

    def _take_python_table(self, sig: int, st: _SigState) -> None:
        """Put BRIDGED in Python's table (main thread only) and our action back on top
        of the one signal.signal() installs.  The signal is blocked in this thread
        meanwhile; a delivery to another thread in that instant still reaches Python."""
        if st.marker or not _in_main_thread():
            return
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
        try:
            signal.signal(sig, BRIDGED)
            st.marker = True
            kind, addr = disposition(sig)
            if kind == DISP_OTHER:
                self._python_c_handler = addr
            check(lib.sb_set_forward(sig, int(st.forward)), f"sigaction({signal_name(sig)})")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _update_forward(self, sig: int, st: _SigState) -> None:
        if st.interrupters:
            self._take_python_table(sig, st)
        want = self._wanted_forward(st, sig)
        if want != st.forward:
            check(lib.sb_set_forward(sig, int(want)), f"sigaction({signal_name(sig)})")
            st.forward = want

    def acquire(
        self, sig: int, *, consume: bool = False, interrupt: bool = False, fast: bool = False
    ) -> None:
        """One more user of ``sig``: install our action on the first."""
        with self.lock:
            st = self.signals.get(sig)
            if st is None:
                st = self._install(sig)
            st.watchers += 1
            st.consumers += consume
            st.interrupters += interrupt
            st.fast += fast
            self._update_forward(sig, st)

    def release(
        self, sig: int, *, consume: bool = False, interrupt: bool = False, fast: bool = False
    ) -> None:
        """One user less: give the signal back after the last."""
        with self.lock:
            st = self.signals.get(sig)
            if st is None:
                return
            st.watchers -= 1
            st.consumers -= consume
            st.interrupters -= interrupt
            st.fast -= fast
            if st.watchers <= 0:
                self._uninstall(sig)
            else:
                self._update_forward(sig, st)

    def replaced(self) -> list[int]:
        """Bridged signals whose C action is no longer ours (warns once for each)."""
        out = []
        with self.lock:
            for sig, st in self.signals.items():
                if disposition(sig)[0] != DISP_OURS:
                    out.append(sig)
                    if not st.warned:
                        st.warned = True
                        _warn_replaced(sig, stacklevel=4)
        return out

    def quick_check(self) -> None:
        """Cheap check at each drain: did Python code call signal.signal() on a bridged
        signal?  (Python's table changes with it; C-level replacement is found by
        replaced().)"""
        for sig, st in list(self.signals.items()):  # other threads may add or remove
            if st.warned:
                continue
            # _signal.getsignal: signal.getsignal() without the enum conversion, which
            # would cost more than the rest of a drain.
            h = _raw_getsignal(sig)
            if h is BRIDGED if st.marker else h == st.python_original:
                continue
            if disposition(sig)[0] != DISP_OURS:
                st.warned = True
                _warn_replaced(sig, stacklevel=2)

    # -- fork ---------------------------------------------------------------------------

    def after_fork_child(self) -> None:
        """In the child: no subscriptions, and every signal given back, so that the
        child is not deaf to e.g. SIGTERM that the parent's bridge had taken."""
        lib.sb_after_fork_child()
        self.lock = threading.RLock()
        for sub in self.subscriptions:
            sub.forked()
        self.subscriptions.clear()
        for sig in list(self.signals):
            with contextlib.suppress(Exception):  # nothing to report to in a fresh child
                self._uninstall(sig)
        self._stale_python.clear()


def _runner_gave_back(sig: int, original: Any, now: Any) -> bool:
    """asyncio.Runner puts back default_int_handler for SIGINT when its main task ends,
    before the loop closes the bridge: that is the state before the Runner, not a
    replacement to warn about."""
    func = getattr(original, "func", None)
    owner = getattr(func, "__self__", None)
    return (
        sig == signal.SIGINT
        and now is signal.default_int_handler
        and type(owner).__module__ == "asyncio.runners"
    )


def _warn_replaced(sig: int, stacklevel: int) -> None:
    name = signal_name(sig)
    msg = (
        f"the action for {name} was replaced behind aiosigbridge's back (signal.signal(), "
        f"loop.add_signal_handler() or C code): the bridge's handlers for {name} no "
        f"longer run. Register bridge handlers after installing other handlers for "
        f"{name}, or remove the bridge's handlers and add them again to take it back "
        "(the handler Python knows keeps running)."
    )
    warnings.warn(msg, SignalReplacedWarning, stacklevel=stacklevel)


registry = Registry()


class Subscription:
    """One event loop's subscription: a C slot, its pipe and its storage."""

    __slots__ = ("__weakref__", "_buf", "_buf_len", "capacity", "closed", "read_fd", "slot")

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
        with registry.lock:
            rc = lib.sb_subscribe(capacity, fd)
            if rc == -errno.EMFILE:
                msg = (
                    f"aiosigbridge serves at most {lib.SB_MAX_SLOTS} event loops (bridges "
                    "and task dumps) per process at once: aclose() the bridges of loops "
                    "you no longer use"
                )
                raise RuntimeError(msg)
            self.slot = check(rc, "aiosigbridge subscribe")
            registry.subscriptions.add(self)
        self.read_fd = int(fd[0])
        self.capacity = capacity
        self.closed = False
        self._buf_len = 256
        self._buf = ffi.new("sb_record[]", self._buf_len)

    def watch(self, sig: int, on: bool) -> None:
        check(lib.sb_watch(self.slot, sig, int(on)), "aiosigbridge watch")

    def drain(self, read_pipe: bool = True) -> Any:
        """Empty the pipe and return every pending record, packed as ``RECORD`` (a
        buffer valid until the next drain).  One C call in the common case.  With
        ``read_pipe=False`` the wake-up byte stays for the loop's reader."""
        buf, size = self._buf, self._buf_len
        drain = lib.sb_drain if read_pipe else lib.sb_drain_records
        n = drain(self.slot, buf, size)
        if n < size:
            return ffi.buffer(buf, max(n, 0) * RECORD.size)
        chunks = [ffi.buffer(buf, n * RECORD.size)[:]]
        while n == size:
            n = drain(self.slot, buf, size)
            chunks.append(ffi.buffer(buf, max(n, 0) * RECORD.size)[:])
        return b"".join(chunks)

    def counters(self, sig: int) -> tuple[int, int, int, int]:
        out = ffi.new("sb_counters *")
        check(lib.sb_counters_get(self.slot, sig, out), "aiosigbridge counters")
        return int(out.received), int(out.overflowed), int(out.forwarded), int(out.coalesced)

    def close(self) -> None:
        with registry.lock:
            if self.closed:
                return
            self.closed = True
            registry.subscriptions.discard(self)
            check(lib.sb_unsubscribe(self.slot), "aiosigbridge unsubscribe")

    def forked(self) -> None:
        self.closed = True


def set_python_hook(hook: Callable[[int, FrameType | None], None] | None) -> None:
    """The code BRIDGED runs in the main thread for signals with interrupt
    registrations (the bridge's interrupt hook)."""
    global _python_hook
    _python_hook = hook


def reset_after(sig: int, deliveries: int) -> None:
    """After ``deliveries`` more deliveries of ``sig``, the C handler itself gives back
    SIG_DFL (0: never).  What lets a further signal kill a process stuck in C code."""
    check(lib.sb_reset_after(sig, deliveries), "aiosigbridge reset_after")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=registry.after_fork_child)

__all__ = ["BRIDGED", "Registry", "SignalReplacedWarning", "Subscription", "registry"]
