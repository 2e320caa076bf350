"""open_receiver(): signals as an async iterator with a bounded queue."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

import aiosigbridge as asb
from aiosigbridge import _native

from .helpers import TIMEOUT, Collector


async def test_receiver_yields_events_in_order() -> None:
    """Events of several signals arrive in the order they were sent."""
    rt = signal.SIGRTMIN + 5
    async with asb.open_receiver(signal.SIGUSR1, rt) as rx:
        asb.sigqueue(os.getpid(), rt, 1)
        os.kill(os.getpid(), signal.SIGUSR1)
        asb.sigqueue(os.getpid(), rt, 2)
        got = []

        async def take_three() -> None:
            async for ev in rx:
                got.append((int(ev.signum), ev.value))
                if len(got) == 3:
                    break

        await asyncio.wait_for(take_three(), TIMEOUT)
    assert got == [(int(rt), 1), (int(signal.SIGUSR1), None), (int(rt), 2)]
    assert _native.disposition(signal.SIGUSR1)[0] == _native.DISP_DEFAULT


async def test_receiver_waits_for_the_next_signal() -> None:
    """A task blocked in the iterator wakes when a signal arrives."""
    async with asb.open_receiver(signal.SIGUSR2) as rx:
        task = asyncio.ensure_future(rx.__anext__())
        await asyncio.sleep(0)
        assert not task.done()
        os.kill(os.getpid(), signal.SIGUSR2)
        ev = await asyncio.wait_for(task, TIMEOUT)
    assert ev.signum is signal.SIGUSR2


async def test_full_queue_counts_overflow_and_never_blocks() -> None:
    """Past maxsize, events are dropped and counted; the reader and other handlers go on."""
    rt = signal.SIGRTMIN + 6
    bridge = asb.get_bridge()
    handler_saw = Collector()
    bridge.add_handler(rt, handler_saw)
    async with asb.open_receiver(rt, maxsize=2) as rx:
        for i in range(5):
            asb.sigqueue(os.getpid(), rt, i)
        await handler_saw.wait(5)
        assert rx.overflowed == 3
        assert bridge.stats()[rt].dropped == 3
        assert bridge.stats()[rt].overflowed == 0  # the bridge's storage kept them all
        first = await asyncio.wait_for(rx.__anext__(), TIMEOUT)
        second = await asyncio.wait_for(rx.__anext__(), TIMEOUT)
    assert (first.value, second.value) == (0, 1)


async def test_two_tasks_iterating_one_receiver_is_an_error() -> None:
    """A second task iterating the same receiver gets a clear RuntimeError."""
    async with asb.open_receiver(signal.SIGUSR1) as rx:
        first = asyncio.ensure_future(rx.__anext__())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already being iterated by another task"):
            await rx.__anext__()
        os.kill(os.getpid(), signal.SIGUSR1)
        ev = await asyncio.wait_for(first, TIMEOUT)
    assert ev.signum is signal.SIGUSR1


async def test_iteration_ends_when_receiver_closes() -> None:
    """Closing the receiver ends a pending iteration with StopAsyncIteration."""
    rx = asb.open_receiver(signal.SIGUSR1)
    async with rx:
        task = asyncio.ensure_future(rx.__anext__())
        await asyncio.sleep(0)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(task, TIMEOUT)
    with pytest.raises(RuntimeError, match="entered once"):
        async with rx:
            pass


async def test_iteration_ends_when_bridge_closes() -> None:
    """aclose() of the bridge ends every receiver's iteration."""
    async with asb.open_receiver(signal.SIGUSR1) as rx:
        task = asyncio.ensure_future(rx.__anext__())
        await asyncio.sleep(0)
        await asb.get_bridge().aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(task, TIMEOUT)
    assert _native.disposition(signal.SIGUSR1)[0] == _native.DISP_DEFAULT


async def test_two_receivers_each_get_every_event() -> None:
    """Each receiver gets its own copy of every event."""
    async with asb.open_receiver(signal.SIGUSR1) as a, asb.open_receiver(signal.SIGUSR1) as b:
        os.kill(os.getpid(), signal.SIGUSR1)
        ea = await asyncio.wait_for(a.__anext__(), TIMEOUT)
        eb = await asyncio.wait_for(b.__anext__(), TIMEOUT)
    assert ea == eb


async def test_cancelled_consumer_does_not_lose_its_event() -> None:
    """A consumer woken with an event but cancelled before it resumed: the event stays
    for the next __anext__."""
    loop = asyncio.get_running_loop()
    async with asb.open_receiver(signal.SIGUSR1) as rx:
        consumer = asyncio.ensure_future(rx.__anext__())
        await asyncio.sleep(0)
        # Handlers run before receivers in a dispatch: this schedules the cancel ahead
        # of the consumer's wake-up, i.e. after the event was handed to it.
        asb.add_handler(signal.SIGUSR1, lambda ev: loop.call_soon(consumer.cancel))
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(asyncio.CancelledError):
            await consumer
        ev = await asyncio.wait_for(rx.__anext__(), TIMEOUT)
    assert ev.signum is signal.SIGUSR1
