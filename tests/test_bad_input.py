"""Bad input: a clear exception at the call, naming the problem and the fix, and
nothing already registered lost or left half-installed."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

import aiosigbridge as asb
from aiosigbridge import _native

from .helpers import Collector

SIG = signal.SIGUSR1

FORBIDDEN = [
    (signal.SIGKILL, "SIGKILL cannot be caught"),
    (signal.SIGSTOP, "SIGSTOP cannot be caught"),
    (signal.SIGSEGV, "SIGSEGV is a synchronous fault.*faulthandler"),
    (signal.SIGBUS, "SIGBUS is a synchronous fault"),
    (signal.SIGFPE, "SIGFPE is a synchronous fault"),
    (signal.SIGILL, "SIGILL is a synchronous fault"),
    (0, "0 is not a signal number: use 1..64"),
    (signal.NSIG, f"{signal.NSIG} is not a signal number"),
    (-3, "-3 is not a signal number"),
    (10_000, "10000 is not a signal number"),
]


@pytest.fixture
async def bridge_with_one_handler() -> Any:
    """A bridge that already has a working handler, to show nothing is lost."""
    got = Collector()
    bridge = asb.get_bridge()
    bridge.add_handler(SIG, got)
    before = _native.disposition(SIG), dict(bridge._handlers), dict(bridge._receivers)
    yield bridge, got, before
    await bridge.aclose()


async def _still_works(bridge: asb.SignalBridge, got: Collector, before: Any) -> None:
    assert (_native.disposition(SIG), dict(bridge._handlers), dict(bridge._receivers)) == before
    os.kill(os.getpid(), SIG)
    await got.wait(len(got.events) + 1)


@pytest.mark.parametrize(("sig", "message"), FORBIDDEN)
async def test_impossible_signals_are_refused(
    bridge_with_one_handler: Any, sig: int, message: str
) -> None:
    """Signals that cannot be handled raise ValueError naming the signal."""
    bridge, got, before = bridge_with_one_handler
    with pytest.raises(ValueError, match=message):
        bridge.add_handler(sig, lambda ev: None)
    with pytest.raises(ValueError, match=message):
        asb.open_receiver(SIG, sig)
    await _still_works(bridge, got, before)


@pytest.mark.skipif(not hasattr(signal, "SIGRTMIN"), reason="no realtime signals")
async def test_signals_reserved_by_libc_are_refused(bridge_with_one_handler: Any) -> None:
    """The C library's private signals (glibc's 32 and 33) are refused with the reason."""
    bridge, got, before = bridge_with_one_handler
    reserved = [s for s in range(1, signal.NSIG) if s not in signal.valid_signals()]
    for sig in reserved:
        with pytest.raises(ValueError, match="reserved by the C library"):
            bridge.add_handler(sig, lambda ev: None)
    await _still_works(bridge, got, before)


@pytest.mark.parametrize("sig", ["SIGTERM", 1.0, None, True])
async def test_non_int_signals_are_type_errors(bridge_with_one_handler: Any, sig: Any) -> None:
    """A signal given as a name, a float, None or a bool is a TypeError."""
    bridge, got, before = bridge_with_one_handler
    with pytest.raises(TypeError, match=r"signal\.Signals member"):
        bridge.add_handler(sig, lambda ev: None)
    await _still_works(bridge, got, before)


async def _coro_fn(ev: asb.SignalEvent) -> None:
    pass


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (None, "handler must be callable"),
        (42, "handler must be callable"),
        ("print", "handler must be callable"),
    ],
)
async def test_non_callable_handlers_are_refused(
    bridge_with_one_handler: Any, handler: Any, message: str
) -> None:
    """A handler that cannot be called is a TypeError."""
    bridge, got, before = bridge_with_one_handler
    with pytest.raises(TypeError, match=message):
        bridge.add_handler(signal.SIGUSR2, handler)
    assert _native.disposition(signal.SIGUSR2)[0] == _native.DISP_DEFAULT
    await _still_works(bridge, got, before)


async def test_coroutine_object_is_refused(bridge_with_one_handler: Any) -> None:
    """Passing on_signal(...) instead of on_signal names the fix."""
    bridge, got, before = bridge_with_one_handler
    coro = _coro_fn(None)  # type: ignore[arg-type]
    try:
        with pytest.raises(TypeError, match="pass the async function itself"):
            bridge.add_handler(signal.SIGUSR2, coro)  # type: ignore[arg-type]
    finally:
        coro.close()
    await _still_works(bridge, got, before)


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"policy": "fifo"}, ValueError, "policy must be one of"),
        ({"consume": 1}, TypeError, "consume must be True or False"),
        ({"senders": 0}, TypeError, "senders must be an aiosigbridge.Senders"),
        ({"interrupt": "yes"}, TypeError, "interrupt must be True, False or an asyncio.Task"),
    ],
)
async def test_bad_options_are_refused(
    bridge_with_one_handler: Any, kwargs: dict[str, Any], exc: type[Exception], message: str
) -> None:
    """Bad keyword options raise at the call and install nothing."""
    bridge, got, before = bridge_with_one_handler
    with pytest.raises(exc, match=message):
        bridge.add_handler(signal.SIGUSR2, lambda ev: None, **kwargs)
    assert _native.disposition(signal.SIGUSR2)[0] == _native.DISP_DEFAULT
    await _still_works(bridge, got, before)


async def test_open_receiver_bad_arguments() -> None:
    """open_receiver() without signals, or with a bad maxsize, says what to do."""
    with pytest.raises(TypeError, match="at least one signal"):
        asb.open_receiver()
    with pytest.raises(ValueError, match="maxsize must be at least 1"):
        asb.open_receiver(SIG, maxsize=0)
    with pytest.raises(TypeError, match="maxsize must be an int"):
        asb.open_receiver(SIG, maxsize=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("capacity", "exc"),
    [(0, ValueError), (-1, ValueError), (2**40, ValueError), ("big", TypeError)],
)
async def test_bad_capacity(capacity: Any, exc: type[Exception]) -> None:
    """Storage bounds outside 1..MAX are refused, naming the range."""
    loop = asyncio.get_running_loop()
    with pytest.raises(exc, match="capacity must be"):
        asb.SignalBridge(loop, capacity=capacity)


def test_get_bridge_needs_a_loop() -> None:
    """get_bridge() outside a loop says how to call it."""
    with pytest.raises(RuntimeError, match="get_bridge\\(\\) needs an event loop"):
        asb.get_bridge()


def test_closed_loop_is_refused() -> None:
    """A closed loop cannot get a bridge."""
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(RuntimeError, match="event loop is closed"):
        asb.get_bridge(loop)


async def test_receiver_used_without_async_with() -> None:
    """Iterating a receiver that was never entered says how to use it."""
    rx = asb.open_receiver(SIG)
    with pytest.raises(RuntimeError, match="async with open_receiver"):
        await rx.__anext__()


def test_sigqueue_errors() -> None:
    """sigqueue() reports the kernel's refusal as OSError with the call in it."""
    with pytest.raises(ProcessLookupError, match="sigqueue"):
        asb.sigqueue(2**22 + 12345, signal.SIGUSR1, 1)
    with pytest.raises(OverflowError, match="C int"):
        asb.sigqueue(os.getpid(), signal.SIGUSR1, 2**31)
    with pytest.raises(OverflowError, match="C int"):
        asb.sigqueue(os.getpid(), signal.SIGUSR1, -(2**31) - 1)
    with pytest.raises(TypeError):
        asb.sigqueue(os.getpid(), "SIGUSR1", 1)  # type: ignore[arg-type]


def test_senders_needs_a_condition() -> None:
    """An empty Senders() would accept nobody: refused with the fix."""
    with pytest.raises(ValueError, match="accepts nobody"):
        asb.Senders()
    with pytest.raises(TypeError, match="non-negative ints"):
        asb.Senders(uids={-1})


def test_loop_closed_with_events_pending() -> None:
    """A loop closed with its bridge open and an event pending: the next use says the
    loop is closed and gives every signal back; nothing stays installed."""
    loop = asyncio.new_event_loop()
    try:
        bridge = asb.get_bridge(loop)
        bridge.add_handler(SIG, lambda ev: None)
        os.kill(os.getpid(), SIG)  # recorded, never dispatched: the loop does not run
        assert _native.disposition(SIG)[0] == _native.DISP_OURS
    finally:
        loop.close()
    with pytest.raises(RuntimeError, match="event loop is closed"):
        bridge.add_handler(SIG, lambda ev: None)
    assert bridge.closed
    assert _native.disposition(SIG)[0] == _native.DISP_DEFAULT


async def test_bridge_after_aclose_and_double_remove() -> None:
    """After aclose(), every method says so; removing a handle twice is a no-op."""
    bridge = asb.get_bridge()
    h = bridge.add_handler(SIG, lambda ev: None)
    await bridge.aclose()
    h.remove()
    h.remove()
    with pytest.raises(RuntimeError, match="closed SignalBridge"):
        bridge.add_handler(SIG, lambda ev: None)
