"""What the per-loop storage keeps and how it is counted: standard signals merging in a
receiver's queue, realtime overflow, capacity=1 and exact capacities, large batches in
send order, senders kept apart, sival_int values, and the count identity
``received == coalesced + overflowed + delivered + unclaimed`` after mixed bursts."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from typing import Any

import pytest

import aiosigbridge as asb

from .helpers import TIMEOUT, Collector, run_python

RT = signal.SIGRTMIN + 4


def _identity(st: asb.SignalStats) -> None:
    """The documented count identity, once every drained event is dispatched."""
    assert st.received == st.coalesced + st.overflowed + st.delivered + st.unclaimed, st


async def _next(rx: asb.SignalReceiver) -> asb.SignalEvent:
    return await asyncio.wait_for(rx.__anext__(), TIMEOUT)


# -- receivers: standard signals merge, realtime signals overflow ---------------------------


async def test_standard_storm_into_a_tiny_receiver_never_drops() -> None:
    """1000 SIGUSR1 into a maxsize=2 receiver merge into the waiting event: nothing dropped."""
    bridge = asb.get_bridge()
    async with asb.open_receiver(signal.SIGUSR1, signal.SIGUSR2, maxsize=2) as rx:
        for i in range(1000):
            os.kill(os.getpid(), signal.SIGUSR1)
            if i % 100 == 0:
                os.kill(os.getpid(), signal.SIGUSR2)
            if i % 10 == 0:
                await asyncio.sleep(0)  # the loop drains: several batches reach rx
        per_sig = {signal.SIGUSR1: 0, signal.SIGUSR2: 0}
        while per_sig[signal.SIGUSR1] < 1000 or per_sig[signal.SIGUSR2] < 10:
            ev = await _next(rx)
            per_sig[ev.signum] += ev.coalesced
        assert per_sig == {signal.SIGUSR1: 1000, signal.SIGUSR2: 10}
        assert rx.overflowed == 0
        stats = bridge.stats()
        for sig, sent in per_sig.items():
            st = stats[sig]
            assert (st.received, st.dropped, st.overflowed) == (sent, 0, 0), st
            _identity(st)
        assert stats[signal.SIGUSR1].delivered > 1  # several drains merged in the queue


async def test_standard_storm_from_another_process_into_a_tiny_receiver() -> None:
    """A child's SIGUSR1 storm into a maxsize=1 receiver: no drop, coalesced counts add up."""
    bridge = asb.get_bridge()
    marker = Collector()
    bridge.add_handler(signal.SIGUSR2, marker)
    async with asb.open_receiver(signal.SIGUSR1, maxsize=1) as rx:
        rc, _, err = await run_python(
            "import os, signal\nfor _ in range(1000):\n    os.kill(os.getppid(), signal.SIGUSR1)\n"
        )
        assert rc == 0, err
        os.kill(os.getpid(), signal.SIGUSR2)  # after every delivery of the child's
        await marker.wait(1)
        st = bridge.stats()[signal.SIGUSR1]
        assert 1 <= st.received <= 1000, st
        total = 0
        while total < st.received:
            total += (await _next(rx)).coalesced
        assert total == st.received
        assert (rx.overflowed, st.dropped, st.overflowed) == (0, 0, 0), st
        _identity(bridge.stats()[signal.SIGUSR1])


async def test_realtime_into_a_small_receiver_counts_overflow() -> None:
    """Realtime signals past a receiver's maxsize are dropped and counted, one per send."""
    bridge = asb.get_bridge()
    got = Collector()
    bridge.add_handler(RT, got)
    async with asb.open_receiver(RT, maxsize=2) as rx:
        for i in range(5):
            asb.sigqueue(os.getpid(), RT, i)
        await got.wait(5)
        st = bridge.stats()[RT]
        assert (st.received, st.delivered, st.dropped, st.coalesced) == (5, 5, 3, 0), st
        assert rx.overflowed == 3
        _identity(st)
        assert [(await _next(rx)).value for _ in range(2)] == [0, 1]


# -- capacity ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", ["get_bridge", "SignalBridge"])
async def test_capacity_one_delivers_one_and_counts_one_per_round(make: str) -> None:
    """capacity=1: two sends before a drain give one event and one overflow, every round."""
    loop = asyncio.get_running_loop()
    bridge = asb.get_bridge(capacity=1) if make == "get_bridge" else asb.SignalBridge(loop, 1)
    got = Collector()
    bridge.add_handler(RT, got)
    for rnd in range(1, 4):
        for i in range(2):  # both stored before the loop drains
            asb.sigqueue(os.getpid(), RT, rnd * 10 + i)
        await got.wait(rnd)
        st = bridge.stats()[RT]
        assert (st.received, st.delivered, st.overflowed) == (2 * rnd, rnd, rnd), st
        _identity(st)
    assert [e.value for e in got.events] == [10, 20, 30]
    await bridge.aclose()


@pytest.mark.parametrize("capacity", [2, 3, 5, 6])
async def test_capacity_is_exact(capacity: int) -> None:
    """A bridge keeps exactly `capacity` realtime records (5 keeps 5, not 8), every round."""
    bridge = asb.SignalBridge(asyncio.get_running_loop(), capacity=capacity)
    got = Collector()
    bridge.add_handler(RT, got)
    sends = 2 * capacity + 1
    for rnd in range(2):
        for i in range(sends):
            asb.sigqueue(os.getpid(), RT, rnd * 100 + i)
        await got.wait(capacity * (rnd + 1))
        st = bridge.stats()[RT]
        assert st.delivered == capacity * (rnd + 1), st
        assert st.overflowed == (sends - capacity) * (rnd + 1), st
        _identity(st)
    assert [e.value for e in got.events] == [
        *range(capacity),
        *range(100, 100 + capacity),
    ]
    await bridge.aclose()


async def test_large_batch_comes_out_in_send_order() -> None:
    """1000 queued values with a SIGUSR1 in the middle, drained at once, come in send order."""
    bridge = asb.get_bridge()
    order: list[Any] = []
    done = Collector()
    bridge.add_handler(RT, lambda ev: order.append(ev.value))
    bridge.add_handler(signal.SIGUSR1, lambda ev: order.append("USR1"))
    bridge.add_handler(RT, done)
    bridge.add_handler(signal.SIGUSR1, done)
    for i in range(1000):
        asb.sigqueue(os.getpid(), RT, i)
        if i == 499:
            os.kill(os.getpid(), signal.SIGUSR1)
    await done.wait(1001)
    assert order == [*range(500), "USR1", *range(500, 1000)]
    st = bridge.stats()[RT]
    assert (st.received, st.delivered, st.overflowed) == (1000, 1000, 0), st


# -- senders, values ------------------------------------------------------------------------


async def test_refused_sender_then_accepted_sender_are_kept_apart() -> None:
    """A refused then an accepted sender's SIGUSR1 before a drain: the accepted is delivered."""
    bridge = asb.get_bridge()
    go_r, go_w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            f"import os, signal; os.read({go_r}, 1); os.kill(os.getppid(), signal.SIGUSR1)",
            pass_fds=(go_r,),
        )
        accepted = Collector()
        bridge.add_handler(signal.SIGUSR1, accepted, senders=asb.Senders(pids={proc.pid}))
        # No await from here until both are stored: the loop cannot drain in between.
        os.kill(os.getpid(), signal.SIGUSR1)  # refused: this process
        os.write(go_w, b"x")  # then the child sends
        deadline = time.monotonic() + TIMEOUT
        while bridge.stats()[signal.SIGUSR1].received < 2 and time.monotonic() < deadline:
            pass
        assert bridge.stats()[signal.SIGUSR1].received == 2  # both stored, undrained
        (ev,) = await accepted.wait(1)
        assert ev.pid == proc.pid
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
        st = bridge.stats()[signal.SIGUSR1]
        assert (st.received, st.coalesced, st.delivered) == (2, 0, 1), st
        assert (st.filtered, st.unclaimed) == (1, 1), st
        _identity(st)
    finally:
        os.close(go_r)
        os.close(go_w)


async def test_accepted_sender_past_the_fourth_is_not_lost() -> None:
    """Six senders of SIGUSR1 before a drain, the accepted one last: the four first keep
    their own events, the rest make one SI_MIXED event, which the filter accepts."""
    bridge = asb.get_bridge()
    pipes = [os.pipe() for _ in range(5)]
    try:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                f"import os, signal; os.read({r}, 1); os.kill(os.getppid(), signal.SIGUSR1)",
                pass_fds=(r,),
            )
            for r, _ in pipes
        ]
        accepted = Collector()
        last = procs[-1].pid
        bridge.add_handler(signal.SIGUSR1, accepted, senders=asb.Senders(pids={last}))
        # No await from here until all six are stored: the loop cannot drain in between.
        os.kill(os.getpid(), signal.SIGUSR1)
        for n, (_, w) in enumerate(pipes, start=2):
            os.write(w, b"x")  # one sender at a time, in this order
            deadline = time.monotonic() + TIMEOUT
            while bridge.stats()[signal.SIGUSR1].received < n and time.monotonic() < deadline:
                pass
            assert bridge.stats()[signal.SIGUSR1].received == n
        (ev,) = await accepted.wait(1)
        assert (ev.code, ev.pid, ev.uid) == (asb.SI_MIXED, 0, 0)
        assert ev.coalesced == 2  # the fifth and sixth senders
        for p in procs:
            assert await asyncio.wait_for(p.wait(), TIMEOUT) == 0
        st = bridge.stats()[signal.SIGUSR1]
        assert (st.received, st.coalesced, st.delivered) == (6, 1, 1), st
        assert (st.filtered, st.unclaimed) == (4, 4), st
        _identity(st)
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


@pytest.mark.skipif(sys.byteorder != "little", reason="sival_int is the low half here")
async def test_value_of_a_sender_filling_only_sival_int() -> None:
    """A sender filling only sival_int (garbage upper half) gives ev.value == that int."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sigqueue.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_uint64]
    got = Collector()
    asb.add_handler(RT, got)
    values = [12345, -7, 2**31 - 1, -(2**31), 0]
    for v in values:
        union = (0xDEADBEEF << 32) | (v & 0xFFFFFFFF)  # sival_int = v, the rest garbage
        assert libc.sigqueue(os.getpid(), int(RT), union) == 0, ctypes.get_errno()
    events = await got.wait(len(values))
    assert [e.value for e in events] == values
    assert all(e.code == asb.SI_QUEUE and e.queued for e in events)
    await asb.get_bridge().aclose()


async def test_sigqueue_takes_exactly_the_c_int_range() -> None:
    """asb.sigqueue sends -2**31 and 2**31-1 exactly and refuses one past either end."""
    bridge = asb.get_bridge()
    got = Collector()
    bridge.add_handler(RT, got)
    for bad in (2**31, -(2**31) - 1, 2**63):
        with pytest.raises(OverflowError, match="C int"):
            asb.sigqueue(os.getpid(), RT, bad)
    for v in (-(2**31), 2**31 - 1, 1):
        asb.sigqueue(os.getpid(), RT, v)
    events = await got.wait(3)
    assert [e.value for e in events] == [-(2**31), 2**31 - 1, 1]
    assert bridge.stats()[RT].received == 3  # the refused ones were never sent


# -- the count identity after mixed bursts ----------------------------------------------------

BURST = """
import os, signal, sys
import aiosigbridge as asb
parent, rt, rt2 = os.getppid(), int(sys.argv[1]), int(sys.argv[2])
for i in range(20):
    asb.sigqueue(parent, rt, 1000 + i)
    asb.sigqueue(parent, rt2, 2000 + i)
for _ in range(200):
    os.kill(parent, signal.SIGUSR1)
    os.kill(parent, signal.SIGHUP)
"""


async def test_count_identity_after_bursts_with_filters_and_small_capacity() -> None:
    """Bursts into a capacity=4 bridge with filters and tiny receivers: every count adds up."""
    bridge = asb.get_bridge(capacity=4)
    rt2 = RT + 1
    mine, nobody, usr1, marker = Collector(), Collector(), Collector(), Collector()
    bridge.add_handler(RT, mine, senders=asb.Senders(this_process=True))
    bridge.add_handler(RT, nobody, senders=asb.Senders(parent=True))  # neither sender
    bridge.add_handler(signal.SIGUSR1, usr1, senders=asb.Senders(uids={os.getuid() + 1}))
    bridge.add_handler(signal.SIGUSR2, marker)
    async with (
        asb.open_receiver(rt2, maxsize=2) as rx_rt,
        asb.open_receiver(signal.SIGHUP, maxsize=1) as rx_hup,
    ):
        for i in range(10):  # before a drain: 4 realtime records kept, 16 overflow
            asb.sigqueue(os.getpid(), RT, i)
            asb.sigqueue(os.getpid(), rt2, i)
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGHUP)
        rc, _, err = await run_python(BURST, str(int(RT)), str(int(rt2)))
        assert rc == 0, err
        os.kill(os.getpid(), signal.SIGUSR2)  # after every delivery above
        await marker.wait(1)
        stats = bridge.stats()
        for sig in (RT, rt2, signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR2):
            _identity(stats[sig])
        st = stats[RT]
        assert (st.received, st.coalesced) == (30, 0), st
        assert st.overflowed >= 8, st
        # The ring is the bridge's, shared: 2 of this process's sends of each signal fit.
        assert [(e.pid, e.value) for e in mine.events] == [(os.getpid(), 0), (os.getpid(), 1)]
        assert st.delivered == 2, st
        assert st.filtered == st.delivered + 2 * st.unclaimed, st  # the child's: unclaimed
        assert nobody.events == []
        assert usr1.events == []
        st = stats[rt2]
        assert (st.received, st.coalesced, st.unclaimed) == (30, 0, 0), st
        assert st.overflowed >= 8, st
        assert st.dropped == rx_rt.overflowed == st.delivered - 2, st  # nobody reads rx_rt
        st = stats[signal.SIGUSR1]
        assert st.received >= 10, st
        assert st.delivered == 0, st
        assert st.filtered == st.unclaimed >= 1, st
        st = stats[signal.SIGHUP]
        assert st.received >= 10, st
        assert st.unclaimed == 0, st
        assert st.dropped == rx_hup.overflowed == 0, st  # merged into the waiting event
