"""Task dumps: every task's stack and every thread's Python stack, on demand.

Printed from a SignalThread, so it works while the loop is stuck in CPU-bound code.
"""

from __future__ import annotations

import asyncio
import contextlib
import linecache
import signal
import sys
import threading
import traceback
from typing import Any, TextIO

from ._clib import signal_name, validate_signal
from ._event import SignalEvent
from ._loops import bridged_loops
from ._watcher import SignalThread

__all__ = ["TaskDump", "dump_tasks", "enable_task_dump"]


def _tasks_of(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    # all_tasks() from another thread can meet its weak set changing size: retry.
    for _ in range(10):
        try:
            return sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())
        except RuntimeError:
            continue
    return []


def _print_task(task: asyncio.Task[Any], out: TextIO) -> None:
    """The task and its whole await chain (coroutine names, files, lines), outermost
    first: Task.print_stack() shows only the outermost coroutine's frame."""
    print(f"{task!r}, awaiting (outermost first):", file=out)
    coro: Any = task.get_coro()
    seen = 0
    while coro is not None and seen < 100:
        seen += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if frame is not None:
            name = getattr(coro, "__qualname__", frame.f_code.co_name)
            print(
                f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {name}', file=out
            )
            line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            if line:
                print(f"    {line}", file=out)
        elif code is not None:
            print(
                f"  {code.co_qualname if hasattr(code, 'co_qualname') else code.co_name}"
                " (not running)",
                file=out,
            )
        nxt = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if nxt is not None and not (hasattr(nxt, "cr_frame") or hasattr(nxt, "gi_frame")):
            print(f"  waiting on {nxt!r}", file=out)
            break
        coro = nxt


def dump_tasks(
    loops: list[asyncio.AbstractEventLoop], file: TextIO | None = None, header: str = ""
) -> None:
    """Print the stack of every unfinished task of ``loops`` and of every thread."""
    out = file if file is not None else sys.stderr
    if header:
        print(header, file=out)
    for loop in loops:
        tasks = [t for t in _tasks_of(loop) if not t.done()]
        print(f"--- {len(tasks)} unfinished task(s) of {loop!r} ---", file=out)
        for task in tasks:
            try:
                _print_task(task, out)
            except Exception as exc:  # a task finishing under our feet
                print(f"{task!r}: stack unavailable ({exc!r})", file=out)
    frames = sys._current_frames()
    for thread in threading.enumerate():
        frame = frames.get(thread.ident or -1)
        if frame is None or thread is threading.current_thread():
            continue
        print(f"--- thread {thread.name} (Python stack, most recent call last) ---", file=out)
        traceback.print_stack(frame, file=out)
    out.flush()


class TaskDump:
    """What :func:`enable_task_dump` returns: ``close()`` turns the dump off."""

    def __init__(self, sig: int, file: TextIO | None) -> None:
        self.signum = sig
        self._file = file
        self._loops: list[asyncio.AbstractEventLoop] = []
        with contextlib.suppress(RuntimeError):
            self._loops.append(asyncio.get_running_loop())
        self._thread = SignalThread((sig,), self._on_event, name="aiosigbridge-task-dump")

    def _on_event(self, ev: SignalEvent) -> None:
        loops = list(dict.fromkeys([*self._loops, *bridged_loops()]))
        loops = [lp for lp in loops if not lp.is_closed()]
        dump_tasks(
            loops,
            self._file,
            f"aiosigbridge: task dump on {ev.name} (sent by pid {ev.pid}, uid {ev.uid})",
        )

    def close(self) -> None:
        """Stop dumping and give the signal back."""
        self._thread.close()

    def __enter__(self) -> TaskDump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TaskDump on {signal_name(self.signum)}>"


def enable_task_dump(sig: int = signal.SIGUSR1, *, file: TextIO | None = None) -> TaskDump:
    """On ``sig``, print every task's stack (of the running loop and every bridged
    loop) and every other thread's current Python stack (the main thread's included)
    to stderr, even while the loop is stuck in CPU-bound code::

        dump = asb.enable_task_dump(signal.SIGUSR1)
        ...                    # kill -USR1 <pid> prints where everything is
        dump.close()

    .. warning:: Process-wide: takes ``sig`` over (its default action, for SIGUSR1 to
       terminate the process, no longer happens) until ``close()``.
    """
    return TaskDump(validate_signal(sig), file)
