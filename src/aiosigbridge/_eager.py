"""Start a coroutine as a task whose first step runs now, on every supported Python.

``loop.create_task()`` runs nothing until the next loop iteration; a signal handler
that starts there is one iteration late and, worse, runs after the handlers registered
after it.  Python 3.12 added ``Task(..., eager_start=True)``.  On 3.10 and 3.11 we do
the same by hand: create the task around a small wrapper, run the coroutine's first
step with the task entered as the current task (so ``asyncio.current_task()`` and
``asyncio.timeout()`` work before the first ``await``), and let the wrapper hand the
task whatever that step yielded when the task takes its first real step.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import contextvars
import sys
from collections.abc import Coroutine, Generator
from types import FrameType
from typing import Any

__all__ = ["start_task"]

_Task = asyncio.Task
_new = object.__new__
_copy_context = contextvars.copy_context
_PY311 = sys.version_info >= (3, 11)
_current_task = asyncio.tasks.current_task


def _start_task_eager(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], name: str
) -> asyncio.Task[Any]:
    # Made and initialised apart: when the first step raises KeyboardInterrupt or
    # SystemExit, an eager Task raises it from its constructor and also holds it, and
    # would log it as "never retrieved" once dropped.  It propagates, as from a sync
    # handler; the task's copy is marked retrieved.
    task: asyncio.Task[Any] = _Task.__new__(_Task)
    try:
        task.__init__(coro, loop=loop, name=name, eager_start=True)  # type: ignore[misc,call-arg,unused-ignore]
    except BaseException:
        with contextlib.suppress(Exception):  # not initialised that far: nothing held
            if task.done() and not task.cancelled():
                task.exception()
        raise
    return task


class _Resume(collections.abc.Coroutine):  # type: ignore[type-arg]
    """The coroutine a by-hand eager task runs: replays the eager first step's outcome,
    then delegates to the real coroutine."""

    # Per-instance state starts as these class defaults (one task per delivery: the
    # fewer attributes set in __init__, the shorter the path).
    _started = False
    _state = "running"  # after the eager step: "suspended", "returned", "raised", "ended"
    _first: Any = None
    _result: Any = None
    _exc: BaseException | None = None
    #: 3.10: the context the eager step ran in, when the task runs in a copy of it made
    #: before that step: its values are replayed at the task's first step.
    _replay: contextvars.Context | None = None

    #: The real coroutine (set right after object.__new__: no __init__ frame per delivery).
    _coro: Coroutine[Any, Any, Any]

    def __getattr__(self, name: str) -> Any:
        # For asyncio's task repr: the real coroutine's __name__ and __qualname__, looked
        # up when a repr asks (not set per delivery).
        if name in ("__name__", "__qualname__"):
            return getattr(self._coro, name)
        raise AttributeError(name)

    def _replay_context(self) -> None:
        ctx, self._replay = self._replay, None
        if ctx is not None:
            for var, value in ctx.items():
                var.set(value)

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            self._replay_context()
            if self._state == "returned":
                raise StopIteration(self._result)
            if self._state == "raised":
                assert self._exc is not None
                exc, self._exc = self._exc, None
                raise exc
            if self._state == "ended":  # KeyboardInterrupt/SystemExit went to the caller
                raise asyncio.CancelledError
            return self._first
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if not self._started and self._state in ("returned", "raised", "ended"):
            # The eager step already finished the coroutine: a real eager task would be
            # done, and a cancel() of a done task does nothing.
            return self.send(None)
        if not self._started:
            self._started = True
            self._replay_context()
            # Cancelled before the task's first step: the future the eager step is
            # waiting on would have been the task's _fut_waiter, cancel it as Task does.
            first = self._first
            if isinstance(first, asyncio.Future) and not first.done():
                first.cancel()
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover - legacy signature

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:  # pragma: no cover - never awaited
        msg = "internal eager-start wrapper is not awaitable"
        raise TypeError(msg)

    # What asyncio's task repr and get_stack() read from a coroutine.
    @property
    def cr_frame(self) -> FrameType | None:
        return getattr(self._coro, "cr_frame", None)

    @property
    def cr_await(self) -> Any:
        return getattr(self._coro, "cr_await", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self._coro, "cr_running", False))

    @property
    def cr_code(self) -> Any:
        return getattr(self._coro, "cr_code", None)


def _start_task_by_hand(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], name: str
) -> asyncio.Task[Any]:
    wrapper = _new(_Resume)  # no __init__ frame: the one attribute set here
    wrapper._coro = coro
    ctx = _copy_context()
    # asyncio.Task itself, as 3.12's eager start does (not loop.create_task(), whose
    # uvloop form formats a default name and then sets ours).
    if _PY311:
        task = _Task(wrapper, loop=loop, name=name, context=ctx)
    else:
        task = _Task(wrapper, loop=loop, name=name)
        own = getattr(task, "_context", None)  # the pure-Python Task's
        if own is not None:
            ctx = own
        else:  # the C Task's context is a copy made now: give it the first step's values
            wrapper._replay = ctx
    # Looked up per call: tools (and this project's tests) wrap asyncio's own.
    enter = asyncio.tasks._enter_task
    leave = asyncio.tasks._leave_task
    # Started from inside another task (3.12's eager start allows it too): step aside.
    # Every step is inside the try: whatever interrupts it (a Python-level signal
    # handler raising), the loop's current task is put back as it was.
    outer = _current_task(loop)
    entered = False
    try:
        if outer is not None:
            leave(loop, outer)
        enter(loop, task)
        entered = True
        wrapper._first = ctx.run(coro.send, None)
        wrapper._state = "suspended"
    except StopIteration as stop:
        wrapper._state = "returned"
        wrapper._result = stop.value
    except (KeyboardInterrupt, SystemExit):
        # As from 3.12's eager start (and from a sync handler): it propagates from here,
        # now.  The task, already scheduled, ends cancelled at its first step (3.12's
        # holds the exception, marked retrieved): it reaches nobody a second time.
        wrapper._state = "ended"
        raise
    except BaseException as exc:  # the task reports it, as an eager Task would
        wrapper._state = "raised"
        wrapper._exc = exc
    finally:
        if entered:
            leave(loop, task)
        if outer is not None and _current_task(loop) is None:
            enter(loop, outer)
    return task


#: Wrap ``coro`` in a task and run it up to its first suspension, now:
#: ``start_task(loop, coro, name) -> asyncio.Task``.
start_task = _start_task_eager if sys.version_info >= (3, 12) else _start_task_by_hand
