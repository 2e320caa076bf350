"""Failure collection: no handler failure is ever lost or only logged.

Without an interrupted task, a failure goes to the loop's exception handler with the
event attached (``context["signal_event"]``), and a note on the exception names the
signal, the sender and the handler.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from ._event import SignalEvent

if TYPE_CHECKING:
    from ._bridge import HandlerHandle


def describe(h: HandlerHandle, ev: SignalEvent) -> str:
    """The note added to a handler's failure."""
    return (
        f"aiosigbridge: raised by handler {h.name} for {ev.name} "
        f"(sent by pid {ev.pid}, uid {ev.uid})"
    )


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; on 3.10 the note is kept in ``__notes__`` too."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:  # pragma: no cover - 3.10
        notes = getattr(exc, "__notes__", None)
        if notes is None:
            notes = []
            exc.__notes__ = notes  # type: ignore[attr-defined]
        notes.append(note)


class FailureChain:
    """Where one bridge's handler failures go."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def failed(self, h: HandlerHandle, ev: SignalEvent, exc: BaseException) -> None:
        add_note(exc, describe(h, ev))
        self._loop.call_exception_handler(
            {
                "message": f"aiosigbridge: handler {h.name} for {ev.name} failed",
                "exception": exc,
                "signal_event": ev,
                "handler": h.handler,
            }
        )
