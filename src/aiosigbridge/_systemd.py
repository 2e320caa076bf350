"""systemd's notify protocol (``sd_notify(3)``) and what run() tells the service manager.

A service of ``Type=notify`` / ``Type=notify-reload`` learns its state to systemd by
datagrams of ``KEY=VALUE`` lines on the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET``
(a path, or ``@name`` in the abstract namespace).  The protocol is a single
``sendto()``: written here rather than taken from a library, because the Python ones are
unmaintained (``sdnotify``, last release 2017) or need libsystemd and a compiler
(``systemd-python``, ``cysystemd``); this keeps the wheel free of both.

run() sends, when ``$NOTIFY_SOCKET`` is set: ``STOPPING=1`` and
``EXTEND_TIMEOUT_USEC=`` (the grace period) on the first shutdown signal;
``RELOADING=1`` with ``MONOTONIC_USEC=`` on a reload signal, before its handlers run,
then ``READY=1`` once all of them (async too) have finished, with ``STATUS=`` naming a
handler that failed; and ``WATCHDOG=1`` from the event loop every ``WATCHDOG_USEC / 2``
when systemd asks for a watchdog (``WatchdogSec=``), so that a stuck loop is restarted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._bridge import SignalBridge
    from ._event import SignalEvent
    from ._handlers import HandlerHandle

logger = logging.getLogger("aiosigbridge")


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path[0] == "@":  # the abstract namespace (Linux)
        return "\0" + path[1:]
    return path


def notify(*fields: str) -> bool:
    """Tell systemd the service's state (``sd_notify(3)``)::

        asb.notify("READY=1")
        asb.notify("STATUS=serving 12 connections")

    :param fields: ``KEY=VALUE`` strings, sent as one datagram (one per line).
    :returns: True when sent; False when not under systemd (no ``$NOTIFY_SOCKET``).
    :raises ValueError: no field, a field without ``=`` or containing a newline.
    :raises OSError: ``$NOTIFY_SOCKET`` is set but the datagram could not be sent
        (systemd gone, a path that is not a socket).
    """
    if not fields:
        msg = 'notify() needs at least one "KEY=VALUE" field, e.g. notify("READY=1")'
        raise ValueError(msg)
    for f in fields:
        if not isinstance(f, str):
            msg = f'notify() fields are str ("KEY=VALUE"), got {type(f).__name__}: {f!r}'
            raise TypeError(msg)
        if "=" not in f or "\n" in f or "\0" in f or f.startswith("="):
            msg = (
                f'notify() fields are "KEY=VALUE" strings on one line each, without NUL '
                f"(systemd drops such a message), got {f!r}"
            )
            raise ValueError(msg)
    addr = _address()
    if addr is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto("\n".join(fields).encode(), addr)
    return True


_last_failure: list[str] = []  # the last failure logged as a warning (one per kind)


def _quiet(*fields: str) -> None:
    """notify() for run()'s own messages: a failure is logged (a warning the first time
    it happens, then at debug level until a send succeeds), never raised."""
    try:
        notify(*fields)
    except OSError as exc:
        what = f"{type(exc).__name__}: {exc}"
        level = logging.DEBUG if _last_failure == [what] else logging.WARNING
        _last_failure[:] = [what]
        logger.log(level, "aiosigbridge: sd_notify(%s) failed: %s", ", ".join(fields), exc)
    else:
        _last_failure.clear()


#: The shortest interval between WATCHDOG=1 pings (a WATCHDOG_USEC of a few µs would
#: otherwise keep the loop busy pinging).
WATCHDOG_MIN_S = 0.01


def _watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), when systemd asks for
    them for this process (``sd_watchdog_enabled(3)``)."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or _address() is None:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class ServiceManager:
    """run()'s side of the notify protocol (inert when not under systemd).

    Reloads may overlap (a second SIGHUP while the first one's handlers run, queued by
    ``policy="serial"`` or superseding with ``"latest"``): READY=1 is sent once no
    handler of a reload signal is running or queued any more, after the latest
    RELOADING=1, with the failures of every reload since the last READY=1.  Once
    STOPPING=1 was sent, reloads are not announced (the handlers still run)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.enabled = _address() is not None
        self._watchdog: asyncio.TimerHandle | None = None
        self._bridge: SignalBridge | None = None
        self._reload_handles: list[HandlerHandle] = []
        self._reload_signals: frozenset[int] = frozenset()
        self._reloads = 0  # reloads announced since the last READY=1
        self._failed: list[str] = []  # their failed handlers
        self._waiting: asyncio.Future[None] | None = None
        self._stopping = False

    def start(self, bridge: SignalBridge, reload_signals: tuple[int, ...]) -> None:
        self._bridge = bridge
        self._reload_signals = frozenset(reload_signals)
        for sig in reload_signals:
            # First registered: runs before the application's handlers of the signal.
            self._reload_handles.append(bridge.add_handler(sig, self._on_reload))
        if reload_signals:
            bridge.chain.observers.append(self._on_failure)
        interval = _watchdog_interval()
        if interval is not None:
            self._ping(max(interval, WATCHDOG_MIN_S))

    def _ping(self, interval: float) -> None:
        _quiet("WATCHDOG=1")
        self._watchdog = self.loop.call_later(interval, self._ping, interval)

    def stopping(self, grace: float) -> None:
        self._stopping = True
        if self.enabled:
            _quiet("STOPPING=1", f"EXTEND_TIMEOUT_USEC={int((grace + 1) * 1e6)}")

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None

    # -- reloads -------------------------------------------------------------------------

    def _on_reload(self, ev: SignalEvent) -> None:
        logger.info("aiosigbridge.run(): %s: reloading", ev.describe())
        if self._stopping:
            return  # shutting down: systemd is not told of a reload any more
        if self.enabled:
            _quiet("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        self._reloads += 1
        if self._waiting is None or self._waiting.done():
            # After this dispatch: every handler of the event has run or started.
            self._waiting = asyncio.ensure_future(self._until_quiet(), loop=self.loop)
            self._waiting.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _on_failure(self, h: Any, ev: SignalEvent, exc: BaseException) -> None:
        if int(ev.signum) in self._reload_signals and self._reloads:
            self._failed.append(f"{h.name}: {type(exc).__name__}: {exc}")

    def _busy(self) -> list[asyncio.Task[Any]]:
        """Runs of the reload signals' handlers (ours aside) still going, or None-like
        [] when none runs and none is queued."""
        mine = {id(h) for h in self._reload_handles}
        tasks: list[asyncio.Task[Any]] = []
        queued = False
        if self._bridge is not None:
            for sig in self._reload_signals:
                for h in self._bridge._handlers.get(sig, ()):
                    if id(h) not in mine:
                        tasks.extend(t for t in h.running if not t.done())
                        queued = queued or bool(h.pending)
        if queued and not tasks:  # a queued run starts when one ends: look again soon
            tasks.append(asyncio.ensure_future(asyncio.sleep(0), loop=self.loop))
        return tasks

    async def _until_quiet(self) -> None:
        await asyncio.sleep(0)  # the dispatch that announced the reload is over
        while tasks := self._busy():
            await asyncio.wait(tasks)
            await asyncio.sleep(0)  # their done-callbacks (failures, next queued run)
        failed, self._failed, self._reloads = self._failed, [], 0
        if not self.enabled or self._stopping:
            return
        if failed:
            status = "STATUS=reload failed: " + "; ".join(failed)
            _quiet(" ".join(status.replace("\0", " ").split("\n")), "READY=1")
        else:
            _quiet("READY=1")
