"""One bridge per event loop: get_bridge(), its life tied to the loop's, and the hook
Python's own handler (asb.BRIDGED) runs in the main thread for the main loop."""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import threading
import types
from collections.abc import AsyncGenerator
from typing import Any

from . import _interrupt, _owner
from ._bridge import SignalBridge
from ._handlers import Handler, HandlerHandle, Policy
from ._native import DEFAULT_CAPACITY
from ._senders import Senders

_bridges: dict[asyncio.AbstractEventLoop, SignalBridge] = {}
_bridges_lock = threading.Lock()


def forget(bridge: SignalBridge) -> None:
    """A bridge closed: the next get_bridge() of its loop makes a new one."""
    with _bridges_lock:
        if _bridges.get(bridge.loop) is bridge:
            del _bridges[bridge.loop]


def bridged_loops() -> list[asyncio.AbstractEventLoop]:
    """The loops that have a bridge now (the task dump shows them)."""
    with _bridges_lock:
        return list(_bridges)


def get_bridge(
    loop: asyncio.AbstractEventLoop | None = None, *, capacity: int | None = None
) -> SignalBridge:
    """The bridge of ``loop`` (default: the running loop), created on first use.

    ::

        async def main() -> None:
            bridge = asb.get_bridge()
            bridge.add_handler(signal.SIGTERM, on_term)

    The bridge closes itself when the loop shuts down its async generators
    (``asyncio.run()``, ``asyncio.Runner`` and ``uvloop.run()`` do), or call
    :meth:`SignalBridge.aclose`.  The bridge of a loop closed without that is closed by
    the next ``get_bridge()`` in the process, from any thread.

    :param capacity: records kept per bridge for queued (realtime) signals before
        further ones are counted as overflow (default 1024); only used on creation.
    :raises RuntimeError: no running loop and none given, or the loop is closed.
    """
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            msg = (
                "get_bridge() needs an event loop: call it from a coroutine (e.g. inside "
                "asyncio.run(main())) or pass the loop: get_bridge(loop)"
            )
            raise RuntimeError(msg) from None
    if loop.is_closed():
        msg = "get_bridge(): the event loop is closed; bridge a loop before closing it"
        raise RuntimeError(msg)
    with _bridges_lock:
        # Loops closed without shutting down their async generators: each stale bridge
        # is taken out here, under the lock, so exactly one caller closes it.
        stale = [_bridges.pop(lp) for lp in [lp for lp in _bridges if lp.is_closed()]]
    for other in stale:
        with contextlib.suppress(Exception):
            other.close()  # never touches its closed loop
    with _bridges_lock:
        bridge = _bridges.get(loop)
        if bridge is not None and not bridge.closed:
            return bridge
        bridge = SignalBridge(loop, DEFAULT_CAPACITY if capacity is None else capacity)
        bridge.on_close = forget
        _bridges[loop] = bridge
        with contextlib.suppress(RuntimeError):
            if asyncio.get_running_loop() is loop:
                bridge.main_task = asyncio.current_task()
    bridge._closer = _install_closer(bridge)
    if bridge._closer is None:
        # Made before the loop runs: tie it to the loop's shutdown once it does.
        loop.call_soon(_late_closer, bridge)
    return bridge


def _late_closer(bridge: SignalBridge) -> None:
    if bridge._closer is None and not bridge.closed:
        bridge._closer = _install_closer(bridge)


def _install_closer(bridge: SignalBridge) -> AsyncGenerator[None, None] | None:
    """Tie the bridge's life to the loop's: an async generator the loop finalizes in
    ``shutdown_asyncgens()``.  Only possible from inside the running loop."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if running is not bridge.loop:
        return None

    async def closer() -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            bridge.close()

    agen = closer()
    step = agen.asend(None)
    try:
        step.send(None)
    except StopIteration:
        return agen
    return agen  # pragma: no cover - the generator always stops at its yield


def add_handler(
    sig: int,
    handler: Handler,
    *,
    interrupt: bool | asyncio.Task[Any] = False,
    consume: bool = False,
    senders: Senders | None = None,
    policy: Policy = "concurrent",
) -> HandlerHandle:
    """:meth:`SignalBridge.add_handler` on the running loop's bridge::

    asb.add_handler(signal.SIGHUP, reload_config)
    """
    return get_bridge().add_handler(
        sig, handler, interrupt=interrupt, consume=consume, senders=senders, policy=policy
    )


# By id(): hashing a code object hashes its constants (thousands of instructions).
_SELECT_CODES = frozenset(
    id(getattr(selectors, name).select.__code__)
    for name in (
        "SelectSelector",
        "PollSelector",
        "EpollSelector",
        "DevpollSelector",
        "KqueueSelector",
    )
    if hasattr(selectors, name)
)
_RUN_ONCE_CODE = asyncio.BaseEventLoop._run_once.__code__  # type: ignore[attr-defined]


def _python_signal_hook(signum: int, frame: types.FrameType | None, retrip: bool) -> None:
    """Run by BRIDGED (Python's handler) in the main thread: interrupts, then, when the
    stock loop is waiting in select() (the frame Python interrupted is the selector's,
    called from the loop's _run_once), the dispatch itself, ahead of the reader."""
    loop = asyncio._get_running_loop()
    if loop is None:
        _interrupt.no_main_loop()
        return
    bridge = _bridges.get(loop)
    if bridge is None or bridge.closed:
        return
    if signum in bridge.interrupts.count or retrip:
        # A delivery the loop dispatched already (its reader ran before this handler)
        # was interrupted at dispatch: only one still stored is this handler's to do.
        fresh = not retrip and bridge._sub.undrained(signum) > 0
        regs = bridge._handlers.get(signum, ()) if fresh else ()
        bridge.interrupts.python_signal(signum, frame, regs, retrip=not fresh)
    if (
        not retrip
        and bridge._fast
        and frame is not None
        and frame.f_back is not None
        and frame.f_back.f_code is _RUN_ONCE_CODE
        and id(frame.f_code) in _SELECT_CODES
    ):
        bridge._fast_dispatch()


def _after_fork_child() -> None:
    global _bridges_lock
    _bridges_lock = threading.Lock()  # another thread may have held it at fork()
    for b in list(_bridges.values()):
        with contextlib.suppress(Exception):
            b._forked()
    _bridges.clear()


_owner.set_python_hook(_python_signal_hook)
_owner.on_fork_child(_after_fork_child)
