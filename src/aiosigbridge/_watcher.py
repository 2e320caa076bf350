"""SignalThread: signals seen from a plain thread, with no event loop.

What must work while the event loop is stuck (a task hogging the CPU, the main thread
blocked in C code) cannot wait for the loop's reader: run()'s watchdog (second signal,
grace period) and the task dump.  A SignalThread is one more subscriber of the C layer,
read by a daemon thread blocked in a selector (epoll; select() refuses fds past 1024,
which any busy server has); the GIL switch interval lets it run beside CPU-bound Python code.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
from collections.abc import Callable, Iterable

from . import _owner
from ._event import SignalEvent
from ._native import Subscription

__all__ = ["SignalThread"]


class SignalThread:
    """Call ``on_event(ev)`` in a daemon thread for every delivery of ``signums``, and
    ``on_tick()`` whenever ``next_tick()`` (seconds, or None for never) runs out."""

    def __init__(
        self,
        signums: Iterable[int],
        on_event: Callable[[SignalEvent], None],
        *,
        name: str,
        next_tick: Callable[[], float | None] = lambda: None,
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.signums = tuple(signums)
        self._on_event = on_event
        self._next_tick = next_tick
        self._on_tick = on_tick
        self._sub = Subscription(64)
        try:
            for s in self.signums:
                self._sub.demand(s, _owner.WATCH)
        except BaseException:
            self._sub.close()
            raise
        self._stop_r, self._stop_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._sub.read_fd, selectors.EVENT_READ)
            sel.register(self._stop_r, selectors.EVENT_READ)
            while True:
                ready = {key.fd for key, _ in sel.select(self._next_tick())}
                if self._stop_r in ready:
                    return
                if self._sub.read_fd in ready:
                    for ev in self._sub.drain():
                        self._on_event(ev)
                else:
                    self._on_tick()

    def close(self) -> None:
        """Stop the thread and give the signals back (unless others still use them).
        Deliveries it had not read yet are handed to ``on_event`` here, in the closing
        thread: none is lost between the thread's last look and the close."""
        if self._closed:
            return
        self._closed = True
        os.write(self._stop_w, b"x")
        if threading.current_thread() is not self._thread:
            self._thread.join()
        try:
            for ev in self._sub.drain():
                self._on_event(ev)
        finally:
            self._sub.close()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
