"""Every async test runs on the stock asyncio loop and on uvloop, and every test must
leave the process's signal state (C-level actions, Python's table, the wakeup fd) as it
found it, and must not have sent anything to a loop's exception handler unless it says
it expects to (the ``loop_errors`` fixture)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from aiosigbridge import _native

_loop_errors: list[dict[str, Any]] = []


def _record(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    _loop_errors.append(context)


def _asyncio_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(_record)
    return loop


def _uvloop_loop() -> asyncio.AbstractEventLoop:
    loop = uvloop.new_event_loop()
    loop.set_exception_handler(_record)
    return loop


LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": _asyncio_loop,
    "uvloop": _uvloop_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    return LOOP_FACTORIES


def _signal_state() -> dict[int, tuple[Any, ...]]:
    state = {}
    for sig in sorted(int(s) for s in signal.valid_signals()):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        kind, addr = _native.disposition(sig)
        state[sig] = (kind, addr, signal.getsignal(sig))
    return state


def _wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


@pytest.fixture(autouse=True)
def _leaves_signal_state_as_found() -> Iterator[None]:
    before = _signal_state()
    fd = _wakeup_fd()
    switch = sys.getswitchinterval()
    del _loop_errors[:]
    yield
    assert sys.getswitchinterval() == switch, "test left the switch interval changed"
    after = _signal_state()
    changed = {
        _native.signal_name(s): (before[s], after[s]) for s in before if before[s] != after[s]
    }
    assert not changed, f"test left signal actions changed: {changed}"
    assert _wakeup_fd() == fd, "test left the wakeup fd changed"
    assert not _native.registry.signals, f"signals still bridged: {_native.registry.signals}"
    errors = list(_loop_errors)
    del _loop_errors[:]
    assert not errors, f"the loop's exception handler was called: {errors}"


@pytest.fixture
def loop_errors() -> list[dict[str, Any]]:
    """The calls to the loop's exception handler; a test that uses this fixture expects
    them and must empty the list (``loop_errors.clear()``) after checking it."""
    return _loop_errors
