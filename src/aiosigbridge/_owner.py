"""The Python face of the signal owner (``cbits/sb_owner.c``).

Each signal's process-wide state (the C action, Python's table entry, forwarding, the
originals, which subscribers hold it) has one owner, in C, so that every change is one
call: under one lock, with every signal blocked in the changing thread and no Python
code running in the middle (a Python-level handler that raises during a change is held
back and re-raised once the change is complete).  Subscribers say what they want of a
signal with :func:`demand`; the owner works out the rest.  The states are drawn in
``sb_owner.c``.

:data:`BRIDGED` is what ``signal.getsignal()`` returns for a signal whose Python table
entry the owner took over (one that was ``SIG_DFL``/``SIG_IGN``, or one the main
thread's loop wants Python-level code for).  Python calls it in the main thread; it asks
the owner what to do: call the previous Python handler, run the bridge's interrupt hook,
take the action back (someone put BRIDGED back with ``signal.signal()``), or act as the
original once nothing holds the signal any more.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
import warnings
from _signal import getsignal as _raw_getsignal  # type: ignore[import-not-found]
from _signal import signal as _raw_signal
from collections.abc import Callable
from types import FrameType
from typing import Any, NamedTuple

from ._clib import check, ffi, is_main_thread, lib, signal_name
from ._event import bridged_fast as _bridged_fast
from ._event import main_handler_ns as _main_handler_ns
from ._event import needs_check_fast as _needs_check_fast

WATCH: int = lib.SB_WANT_WATCH
CONSUME: int = lib.SB_WANT_CONSUME
PYLEVEL: int = lib.SB_WANT_PYLEVEL
FAST: int = lib.SB_WANT_FAST
_RAISED: int = lib.SB_RAISED
# Per delivery (BRIDGED): looked up once, not through cffi's lib on every call.
_sb_bridged = lib.sb_bridged
_thread_time_ns = time.thread_time_ns
_B_FORK: int = lib.SB_B_FORK
_B_DEFER: int = lib.SB_B_DEFER
_B_ORIGINAL: int = lib.SB_B_ORIGINAL
_B_HOOK: int = lib.SB_B_HOOK
_B_RETRIP: int = lib.SB_B_RETRIP
_B_DIE: int = lib.SB_B_DIE


class SignalReplacedWarning(RuntimeWarning):
    """A bridged signal's action was replaced behind the bridge's back.

    Warned when ``signal.signal()``, ``loop.add_signal_handler()``, ``asyncio.Runner``
    or C code replaced the action aiosigbridge installed: the bridge's handlers for that
    signal no longer run (unless the new C handler chains to the old one, as
    ``faulthandler.register(chain=True)`` does).  Putting back what
    ``signal.getsignal()`` returned gives the bridged behaviour back.
    """


class _Bridged:
    """What ``signal.getsignal()`` returns for a signal whose Python table entry
    aiosigbridge holds (see the module docstring)."""

    def __init__(self) -> None:
        #: The frame of the call running now (a later call while it runs is nested).
        self._owner: FrameType | None = None
        self._spent_ns = 0  # main-thread CPU time spent in here

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        owner = self._owner
        if (frame is not None and frame.f_code is _CALL_CODE) or (
            owner is not None and _running(owner)
        ):
            # Python handlers nest: a storm would recurse.  Run it again soon instead
            # (from the timer: a top-level call).  Also when Python interrupted another
            # call's entry or exit, where the owner is not (or no longer) set: there the
            # nested call does next to nothing, so that a storm cannot stack them up.
            lib.sb_redo(signum)
            return
        # The task's CPU time (task_cpu_ns) is read only for an interrupt: without one
        # registered or waiting for its re-check, no clock_gettime system calls.
        measure = bool(interrupting or rechecking)
        t0 = _thread_time_ns() if measure else 0
        # Not a depth count: an exception (another signal's handler raising) between
        # here and the try would leave a count set for good; a frame that is no longer
        # running is not an owner.
        self._owner = sys._getframe()
        try:
            if measure:
                global task_cpu_ns
                task_cpu_ns = t0 - self._spent_ns - _main_handler_ns()
            self._call(signum, frame)
        finally:
            if measure:
                self._spent_ns += _thread_time_ns() - t0
            self._owner = None

    def _call(self, signum: int, frame: FrameType | None) -> None:
        act = _bridged_fast(signum)
        if act >= 0:  # a forwarded delivery of a held signal, nothing else to do
            if act & _B_HOOK and _python_hook is not None:
                _python_hook(signum, frame, False)
            return
        self._call_full(signum, frame)

    def _call_full(self, signum: int, frame: FrameType | None) -> None:
        """Everything but the common case: the owner's full change (sb_bridged)."""
        box: list[Any] = []
        act = _sb_bridged(signum, id(box))
        if act & _B_FORK:
            _after_fork_child()
            box = []
            act = _sb_bridged(signum, id(box))
        if act & _B_DEFER:
            return  # came during a change of signal state: the change trips it again
        original, raised = _settle(box, from_handler=True) if box else (None, None)
        if act & _B_ORIGINAL and callable(original):
            original(signum, frame)
        if act & _B_HOOK and _python_hook is not None:
            _python_hook(signum, frame, bool(act & _B_RETRIP))
        if act & _B_DIE:
            os.kill(os.getpid(), signum)  # the default action is back
        if raised is not None:
            raise raised

    def __repr__(self) -> str:
        return "<aiosigbridge.BRIDGED>"


_CALL_CODE = _Bridged.__call__.__code__


def _running(owner: FrameType) -> bool:
    """Is ``owner`` on the calling thread's stack (a BRIDGED call in progress)?"""
    f: FrameType | None = sys._getframe(1)
    while f is not None:
        if f is owner:
            return True
        f = f.f_back
    return False


#: The main thread's CPU time (ns) outside BRIDGED and our C handler, as of BRIDGED's
#: current call: what the code it interrupts used itself (the interrupt hook's measure
#: of a task hogging the CPU).
task_cpu_ns = 0
#: (id(bridge), signum) of each signal a bridge has an ``interrupt=`` registration for:
#: BRIDGED measures its own CPU time (task_cpu_ns) only while there is one, or while an
#: interrupt already recorded waits for its re-check (``rechecking``).  (Only
#: differences of task_cpu_ns within one interrupt are read, so the calls not measured
#: before do not matter.)
interrupting: set[tuple[int, int]] = set()
#: id() of each bridge's interrupts waiting for a re-check (_interrupt): measured too.
rechecking: set[int] = set()
BRIDGED = _Bridged()
_python_hook: Callable[[int, FrameType | None, bool], None] | None = None

#: The Python table entry the owner expects for each held signal (what a per-drain
#: check compares with, cheaply); signals found replaced; warnings BRIDGED could not
#: give from inside a signal handler.
_expected: dict[int, Any] = {}
_replaced: set[int] = set()
_pending_warnings: list[int] = []


def set_python_hook(hook: Callable[[int, FrameType | None, bool], None] | None) -> None:
    """What BRIDGED runs in the main thread for the main loop's Python-level
    registrations (interrupts, and the stock loop's dispatch from select())."""
    global _python_hook
    _python_hook = hook


def _settle(box: list[Any], *, from_handler: bool = False) -> tuple[Any, BaseException | None]:
    """Take in what a C call appended to its box: expected table entries, warnings,
    exceptions held back during the change, BRIDGED's previous handler."""
    original: Any = None
    raised: BaseException | None = None
    warn: list[int] = []
    for kind, sig, obj in box:  # "drop": a reference released outside the change
        if kind == "expect":
            if obj is None:
                _expected.pop(sig, None)
                _replaced.discard(sig)
            else:
                _expected[sig] = obj
        elif kind == "warn":
            warn.append(sig)
        elif kind == "raise":
            if raised is None:
                raised = obj
        elif kind == "original":
            original = obj
    if from_handler:
        _pending_warnings.extend(warn)
    else:
        warn = _pending_warnings + warn
        del _pending_warnings[:]
        for sig in warn:
            _replaced.add(sig)
            _warn_replaced(sig)
    return original, raised


def _call(fn: Callable[..., int], what: str, *args: int, after: tuple[int, ...] = ()) -> int:
    """``fn(*args, id(box), *after)``, then what it put in the box (see _settle)."""
    box: list[Any] = []
    rc = fn(*args, id(box), *after)
    _, raised = _settle(box)
    if rc == -errno.ESTALE:
        return 0  # a slot whose use ended (a close cut short, then made again): done
    if rc < 0:
        if -rc == errno.EDEADLK:
            msg = (
                f"aiosigbridge: {what} was called from a signal handler that interrupted "
                "another change of signal state; call it from the event loop instead"
            )
            raise RuntimeError(msg)
        check(rc, what)
    if raised is not None:
        raise raised  # from a Python-level handler during the change; the change is done
    return rc & ~_RAISED


Ops = list[tuple[dict[Any, Any], Any, Any]]


def demand(slot: int, gen: int, sig: int, flags: int, ops: Ops | None = None) -> None:
    """What subscriber ``slot`` wants of ``sig`` (WATCH | CONSUME | PYLEVEL | FAST;
    0: nothing).  Idempotent: the owner installs on the first holder, gives the
    signal back after the last, and keeps the table and forwarding right between.
    ``ops``: the caller's (dict, key, value) updates (value None: delete), made in the
    same change, so that its own registry and the owner's never disagree."""
    ops_id = 0 if ops is None else id(ops)
    what = f"watching {signal_name(sig)}"
    _call(lib.sb_demand, what, slot, gen, sig, flags, is_main_thread(), after=(ops_id,))


def unsubscribe(slot: int, gen: int) -> None:
    """Drop every demand of ``slot`` (in its use ``gen``) and free it."""
    _call(lib.sb_unsubscribe, "closing a subscription", slot, gen, is_main_thread())


def check_now() -> frozenset[int]:
    """Look for held signals replaced behind our back (warn once each), or put back
    (take them again); pay table restores owed to the main thread.  The replaced ones."""
    _call(lib.sb_check, "checking signal actions", is_main_thread())
    for sig in list(_replaced):
        if not state(sig).replaced:
            _replaced.discard(sig)
    return frozenset(_replaced)


def needs_check() -> bool:
    """Cheap, per drain: did Python code change the table of a held signal, is one
    replaced (it may have been put back since), or did the C handler see its action
    changed by C code (put back without SA_SIGINFO, or another handler over it)?"""
    # In C (sb_fastpy.c): the C handler's request, a held signal's action not ours where
    # the table does not hold BRIDGED (a put-back shows only there), a table entry not
    # the expected one.
    return bool(_replaced or _pending_warnings or _needs_check_fast(_expected))


def actions_changed() -> bool:
    """Is some held signal's C action not ours right now (a cheap look, no lock)?"""
    return bool(lib.sb_actions_changed(0))


def escalate(sig: int, arm: int, lower_to: int = 0) -> None:
    """run()'s escalation: ``arm`` +1/-1; while armed the C handler gives SIG_DFL back
    after the second delivery (or ``lower_to`` more), so a further one kills a process
    stuck in C code."""
    check(lib.sb_escalate(sig, arm, lower_to) & ~_RAISED, "aiosigbridge escalate")


class SignalState(NamedTuple):
    """The owner's view of one signal."""

    held: bool
    forward: bool
    chain: bool
    table_bridged: bool
    debt: bool
    replaced: bool
    behind: bool
    restart: bool
    demand: int


def state(sig: int) -> SignalState:
    out = ffi.new("sb_sigstate *")
    check(lib.sb_state(sig, out), "aiosigbridge state")
    return SignalState(
        bool(out.held),
        bool(out.forward),
        bool(out.chain),
        bool(out.table_bridged),
        bool(out.debt),
        bool(out.replaced),
        bool(out.behind),
        bool(out.restart),
        int(out.demand),
    )


def held() -> list[int]:
    """The signals some subscriber holds, ascending."""
    mask = int(lib.sb_held_mask())
    return [i + 1 for i in range(64) if mask >> i & 1]


def _warn_replaced(sig: int) -> None:
    name = signal_name(sig)
    msg = (
        f"the action for {name} was replaced behind aiosigbridge's back (signal.signal(), "
        f"loop.add_signal_handler(), asyncio.Runner or C code): the bridge's handlers for "
        f"{name} no longer run unless the new handler chains to the old one. Putting back "
        f"what signal.getsignal() returned gives them back; or register bridge handlers "
        f"after installing other handlers for {name}."
    )
    warnings.warn(msg, SignalReplacedWarning, stacklevel=5)


# -- fork --------------------------------------------------------------------------------

_fork_callbacks: list[Callable[[], None]] = []
_pid = os.getpid()


def on_fork_child(callback: Callable[[], None]) -> None:
    """Run ``callback`` in a forked child, before the owner gives Python's table back."""
    _fork_callbacks.append(callback)


def _before_fork() -> None:
    lib.sb_fork_prepare()


def _after_fork_parent() -> None:
    lib.sb_fork_parent()


def _after_fork_child() -> None:
    """The C layer gave the original actions back inside fork(); here the Python side:
    no subscriptions (callbacks), and Python's table gets its originals back."""
    global _pid
    if _pid == os.getpid():
        return
    _pid = os.getpid()
    _expected.clear()
    _replaced.clear()
    del _pending_warnings[:]
    for cb in _fork_callbacks:
        with contextlib.suppress(Exception):
            cb()
    box: list[Any] = []
    lib.sb_fork_child(id(box))
    _settle(box, from_handler=True)
    del _pending_warnings[:]


check(lib.sb_owner_init(id(BRIDGED), id(_raw_signal), id(_raw_getsignal)), "aiosigbridge init")
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_parent,
        after_in_child=_after_fork_child,
    )

__all__ = [
    "BRIDGED",
    "CONSUME",
    "FAST",
    "PYLEVEL",
    "WATCH",
    "SignalReplacedWarning",
    "SignalState",
    "demand",
    "held",
    "state",
    "unsubscribe",
]
