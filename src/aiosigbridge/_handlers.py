"""Handler registrations: HandlerHandle, the per-signal counters, what a handler may be."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ._clib import SIGNALS, signal_name
from ._event import SignalEvent
from ._senders import Senders

if TYPE_CHECKING:
    import signal

    from ._chain import Interruption

Handler = Callable[[SignalEvent], Awaitable[Any] | None]
Policy = Literal["concurrent", "serial", "latest"]
POLICIES = ("concurrent", "serial", "latest")


class _Owner(Protocol):
    def _remove(self, h: HandlerHandle) -> None: ...


@dataclass
class SignalStats:
    """Counters of one signal on one bridge (``bridge.stats()[sig]``).

    Per delivery (the C layer's counts):

    * ``received``: deliveries that reached this bridge;
    * ``coalesced``: deliveries of a standard signal folded into an earlier event of the
      same sender (``ev.coalesced - 1`` summed);
    * ``overflowed``: deliveries the bridge's storage had no room for (realtime signals
      beyond ``capacity``);
    * ``forwarded``: process-wide, deliveries passed on to Python's own handler.

    Per event (what the bridge did with it):

    * ``delivered``: events given to at least one handler or receiver;
    * ``unclaimed``: events no handler took (every one's ``senders`` filter refused it)
      and no receiver watched;
    * ``filtered``: refusals by a handler's ``senders`` filter (one per handler);
    * ``dropped``: events a receiver's full queue could not take (one per receiver).

    Once every drained event is dispatched, ``received == coalesced + overflowed +
    delivered + unclaimed`` exactly.  Read as attributes or as a mapping:
    ``st.received == st["received"]``.
    """

    received: int = 0
    delivered: int = 0
    coalesced: int = 0
    overflowed: int = 0
    unclaimed: int = 0
    filtered: int = 0
    dropped: int = 0
    forwarded: int = 0

    def __getitem__(self, key: str) -> int:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return int(getattr(self, key))


class HandlerHandle:
    """What :meth:`SignalBridge.add_handler` returns: call :meth:`remove` to
    unregister (idempotent).  Also a context manager that removes on exit::

        with bridge.add_handler(signal.SIGUSR1, on_usr1):
            await serve()
    """

    __slots__ = (
        "__weakref__",
        "_bridge",
        "_fired",
        "_once",
        "active",
        "consume",
        "handler",
        "interrupt",
        "name",
        "pending",
        "policy",
        "running",
        "senders",
        "signum",
        "task_name",
    )

    def __init__(
        self,
        bridge: _Owner,
        signum: int,
        handler: Handler,
        *,
        interrupt: bool | asyncio.Task[Any],
        consume: bool,
        senders: Senders | None,
        policy: Policy,
    ) -> None:
        self._bridge = bridge
        self.signum: signal.Signals | int = SIGNALS.get(signum, signum)
        self.handler = handler
        self.interrupt = interrupt
        self.consume = consume
        self.senders = senders
        self.policy = policy
        self.name = getattr(handler, "__qualname__", None) or repr(handler)
        self.task_name = f"aiosigbridge:{self.name}:{signal_name(signum)}"
        self.active = True
        self._once = False  # run(): interrupt at the first delivery only
        self._fired = False
        self.running: set[asyncio.Task[Any]] = set()
        self.pending: deque[tuple[SignalEvent, list[Interruption] | None]] = deque()

    def remove(self) -> None:
        """Unregister this handler.  Calling it again does nothing.

        A run of the handler that already started is left to finish; events queued
        for a ``policy="serial"`` handler are dropped.  When it was the last user of
        the signal in the process, the signal's previous action is restored.  A removal
        cut short (a KeyboardInterrupt in the middle) is finished by calling it again.
        """
        self._bridge._remove(self)

    def __enter__(self) -> HandlerHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"<HandlerHandle {self.name} for {signal_name(self.signum)} ({state})>"


def check_handler(handler: object) -> None:
    """Refuse what cannot be called as ``handler(event)``, naming the fix."""
    if inspect.isasyncgenfunction(handler):
        msg = (
            f"handler must be a function or an async function, not the async generator "
            f"function {handler!r}: to iterate signals, use open_receiver()"
        )
        raise TypeError(msg)
    if inspect.iscoroutine(handler) or inspect.isawaitable(handler):
        msg = (
            f"handler must be a function, got the awaitable {handler!r}: pass the async "
            "function itself (add_handler(sig, on_signal)), not on_signal(...)"
        )
        raise TypeError(msg)
    if not callable(handler):
        msg = (
            f"handler must be callable as handler(event), got {type(handler).__name__} {handler!r}"
        )
        raise TypeError(msg)


def check_options(consume: object, senders: object, policy: object, interrupt: object) -> None:
    """Refuse bad registration options, naming the fix."""
    if not isinstance(consume, bool):
        msg = f"consume must be True or False, not {consume!r}"
        raise TypeError(msg)
    if senders is not None and not isinstance(senders, Senders):
        msg = (
            f"senders must be an aiosigbridge.Senders (e.g. Senders(uids={{0}})) or None, "
            f"not {type(senders).__name__}"
        )
        raise TypeError(msg)
    if policy not in POLICIES:
        msg = f"policy must be one of {', '.join(map(repr, POLICIES))}, not {policy!r}"
        raise ValueError(msg)
    if not isinstance(interrupt, (bool, asyncio.Task)):
        msg = f"interrupt must be True, False or an asyncio.Task, not {interrupt!r}"
        raise TypeError(msg)
