"""One-shot waits and anyio's receiver shape, on top of SignalReceiver.

:func:`wait_for_signal` is what server hooks take (hypercorn's ``shutdown_trigger``, a
``asyncio.wait`` of "stop" events); :func:`open_signal_receiver` has the signature and
behaviour of ``anyio.open_signal_receiver`` (a context manager yielding an async iterator
of signal numbers), so anyio code switches with one import, and gains loops in any
thread.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from ._clib import signal_name, validate_signal
from ._event import SignalEvent
from ._receiver import SignalReceiver


def _signums(what: str, signals: tuple[int, ...]) -> tuple[int, ...]:
    if not signals:
        msg = f"{what}() needs at least one signal, e.g. {what}(signal.SIGTERM)"
        raise TypeError(msg)
    return tuple(dict.fromkeys(validate_signal(s) for s in signals))


def wait_for_signal(*signals: int) -> Coroutine[Any, Any, SignalEvent]:
    """Wait for the next delivery of any of ``signals`` on the running loop::

        ev = await asb.wait_for_signal(signal.SIGTERM, signal.SIGINT)
        print(ev.name, "from pid", ev.pid)

    The signals are bridged from the moment the wait starts (the ``await``) until it
    returns or is cancelled: a delivery before that is not seen, one during it is
    returned (others that come with it stay counted in the bridge's ``stats()``).  What
    hypercorn's ``serve(..., shutdown_trigger=...)`` takes::

        await hypercorn.asyncio.serve(app, config, shutdown_trigger=lambda:
                                      asb.wait_for_signal(signal.SIGTERM))

    :returns: the :class:`SignalEvent` (sender, ``si_code``, time).
    :raises TypeError: no signals, or a signal is not an int (at the call).
    :raises ValueError: a signal cannot be handled (``SIGKILL``, ``SIGSTOP``, out of
        range), at the call.
    :raises RuntimeError: the loop's bridge was closed (``aclose()``, or the loop
        shutting down) before any of them came.
    """
    signums = _signums("wait_for_signal", signals)
    return _wait(signums)


async def _wait(signums: tuple[int, ...]) -> SignalEvent:
    async with SignalReceiver(signums, 1) as rx:
        async for ev in rx:
            return ev
    names = ", ".join(signal_name(s) for s in signums)
    msg = f"aiosigbridge: the bridge was closed while waiting for {names}"
    raise RuntimeError(msg)


@contextmanager
def open_signal_receiver(*signals: int) -> Iterator[AsyncIterator[signal.Signals | int]]:
    """``anyio.open_signal_receiver()``'s shape: a (synchronous) context manager that
    bridges ``signals`` on the running loop while it is open and yields an async
    iterator of the signal numbers (:class:`signal.Signals` members; a plain ``int``
    for realtime signals) as they arrive::

        with asb.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    reload()
                else:
                    break

    A standard signal sent again before the iterator took it is reported once (as trio
    and anyio do); use :func:`open_receiver` for the sender, the count (``coalesced``)
    and every event.  Unlike anyio's asyncio backend, it works on a loop in any thread.

    :raises TypeError: no signals, or a signal is not an int.
    :raises ValueError: a signal cannot be handled.
    :raises RuntimeError: no running event loop.
    """
    rx = SignalReceiver(_signums("open_signal_receiver", signals), 128)
    rx._open()
    try:
        yield _numbers(rx)
    finally:
        rx.close()


async def _numbers(rx: SignalReceiver) -> AsyncIterator[signal.Signals | int]:
    async for ev in rx:
        yield ev.signum
