"""A hypothesis state machine over add / remove / close / kill / sigqueue (issue 5, §1).

Each example runs in a real event loop of its own (the stock asyncio loop and uvloop,
one machine each), with two bridges on it: the loop's own (``get_bridge()``, default
ring capacity) and an extra ``SignalBridge(loop, capacity=4)`` whose tiny ring makes
bursts overflow.  The process is single-threaded here, so a signal sent to ourselves is
handled before ``kill``/``sigqueue`` returns and the model can say exactly which handler
sees which event:

* every event a handler gets matches a send (signal, si_code, value, our pid), and every
  active handler of that signal on an open bridge gets every send, in order, except the
  sends beyond a burst's ring capacity, which the bridge counts as overflowed;
* removed handlers and handlers of closed bridges get nothing more;
* at the end every bridge is closed and every signal's action (C level and Python's
  table) is exactly what it was before the example.

The signals used are set to SIG_IGN for the example, so a send while nothing is bridged
is ignored rather than killing the test process; that SIG_IGN is what must come back.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import uvloop
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import aiosigbridge as asb
from aiosigbridge import _native

STANDARD = [int(signal.SIGUSR1), int(signal.SIGUSR2)]
REALTIME = [int(signal.SIGRTMIN) + 3, int(signal.SIGRTMIN) + 4]
SIGNALS = STANDARD + REALTIME
SMALL_CAPACITY = 4
CAPACITY = (asb.DEFAULT_CAPACITY, SMALL_CAPACITY)  # bridge 0: get_bridge(); 1: extra
PID = os.getpid()

Send = tuple[int, int, "int | None"]  # (signal, si_code, value)


@dataclass
class ModelHandler:
    """A registered handler and what it must have seen."""

    sig: int
    bridge: int
    generation: int  # which incarnation of the bridge it was added to
    handle: asb.HandlerHandle
    is_async: bool
    active: bool = True
    got: list[Send] = field(default_factory=list)
    expected: list[Send] = field(default_factory=list)

    def record(self, ev: asb.SignalEvent) -> None:
        assert ev.pid == PID, ev
        assert ev.coalesced == 1, ev
        self.got.append((int(ev.signum), ev.code, ev.value))


def _signal_state() -> dict[int, tuple[Any, ...]]:
    state = {}
    for sig in sorted(int(s) for s in signal.valid_signals()):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        state[sig] = (*_native.disposition(sig), signal.getsignal(sig))
    return state


class BridgeMachine(RuleBasedStateMachine):
    """add / remove / close / kill / sigqueue on two bridges of one loop."""

    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop

    def __init__(self) -> None:
        super().__init__()
        self.state_before = _signal_state()
        self.saved = {s: signal.signal(s, signal.SIG_IGN) for s in SIGNALS}
        self.ignored_state = _signal_state()
        self.loop = type(self).loop_factory()
        self.bridges: list[asb.SignalBridge | None] = [None, None]
        self.generation = [0, 0]
        self.handlers: list[ModelHandler] = []
        self.next_value = 1
        self.overflow_expected = [0, 0]

    # -- helpers ------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 10))

    def bridge(self, i: int) -> asb.SignalBridge:
        b = self.bridges[i]
        if b is None or b.closed:

            async def open_() -> asb.SignalBridge:
                if i == 0:
                    return asb.get_bridge()
                return asb.SignalBridge(asyncio.get_running_loop(), capacity=SMALL_CAPACITY)

            b = self.bridges[i] = self.run(open_())
            self.generation[i] += 1
        return b

    def watchers(self, sig: int) -> list[ModelHandler]:
        return [h for h in self.handlers if h.active and h.sig == sig]

    def settle(self) -> None:
        """Run the loop until every handler has what it expects (bounded), then a bit
        longer so that an unexpected extra event would show."""

        async def wait() -> None:
            for _ in range(500):
                if all(len(h.got) >= len(h.expected) for h in self.handlers):
                    break
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.003)

        self.run(wait())
        self.check_events()

    def send(self, sig: int, value: int | None) -> None:
        if value is None:
            os.kill(PID, sig)
            code = asb.SI_USER
        else:
            asb.sigqueue(PID, sig, value)
            code = asb.SI_QUEUE
        for h in self.watchers(sig):
            h.expected.append((sig, code, value))

    # -- rules --------------------------------------------------------------------------

    @rule(
        i=st.integers(0, 1),
        sig=st.sampled_from(SIGNALS),
        is_async=st.booleans(),
    )
    def add_handler(self, i: int, sig: int, is_async: bool) -> None:
        bridge = self.bridge(i)
        box: list[ModelHandler] = []
        if is_async:

            async def on_signal(ev: asb.SignalEvent) -> None:
                box[0].record(ev)  # before the first await: runs at dispatch
                await asyncio.sleep(0)

            handle = bridge.add_handler(sig, on_signal)
        else:
            handle = bridge.add_handler(sig, lambda ev: box[0].record(ev))
        box.append(ModelHandler(sig, i, self.generation[i], handle, is_async))
        self.handlers.append(box[0])

    @precondition(lambda self: any(h.active for h in self.handlers))
    @rule(data=st.data(), twice=st.booleans())
    def remove_handler(self, data: st.DataObject, twice: bool) -> None:
        active = [h for h in self.handlers if h.active]
        h = data.draw(st.sampled_from(active))
        h.handle.remove()
        if twice:
            h.handle.remove()  # idempotent
        h.active = False

    @precondition(lambda self: any(not h.active for h in self.handlers))
    @rule(data=st.data())
    def remove_removed_handler(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from([h for h in self.handlers if not h.active]))
        h.handle.remove()  # a no-op, even after its bridge was closed

    @rule(i=st.integers(0, 1), sync_close=st.booleans())
    def close_bridge(self, i: int, sync_close: bool) -> None:
        b = self.bridges[i]
        if b is None:
            return
        if sync_close:
            b.close()
        else:
            self.run(b.aclose())
        assert b.closed
        for h in self.handlers:
            if h.bridge == i and h.generation == self.generation[i]:
                h.active = False

    @rule(sig=st.sampled_from(STANDARD))
    def kill(self, sig: int) -> None:
        self.send(sig, None)
        self.settle()

    @rule(sig=st.sampled_from(REALTIME), value=st.integers(-(2**31), 2**31 - 1))
    def sigqueue(self, sig: int, value: int) -> None:
        self.send(sig, value)
        self.settle()

    @rule(sig=st.sampled_from(REALTIME), n=st.integers(1, 2 * SMALL_CAPACITY))
    def sigqueue_burst(self, sig: int, n: int) -> None:
        """n sends before the loop can drain: a bridge keeps its capacity's worth and
        counts the rest as overflowed."""
        stats_before = {
            i: self.bridges[i].stats().get(sig)  # type: ignore[union-attr]
            for i in (0, 1)
            if self.bridges[i] is not None and not self.bridges[i].closed  # type: ignore[union-attr]
        }
        values = []
        for _ in range(n):
            values.append(self.next_value)
            self.next_value += 1
        watchers = self.watchers(sig)
        for v in values:
            asb.sigqueue(PID, sig, v)
        for h in watchers:
            kept = values[: CAPACITY[h.bridge]]
            h.expected += [(sig, asb.SI_QUEUE, v) for v in kept]
        self.settle()
        for i, before in stats_before.items():
            if not any(h.bridge == i for h in watchers):
                continue
            after = self.bridges[i].stats()[sig]  # type: ignore[union-attr]
            grown = after.overflowed - (before.overflowed if before else 0)
            assert grown == max(0, n - CAPACITY[i]), (i, n, before, after)

    # -- invariants ---------------------------------------------------------------------

    def check_events(self) -> None:
        for h in self.handlers:
            assert h.got == h.expected, (
                f"handler #{self.handlers.index(h)} ({_native.signal_name(h.sig)}, bridge "
                f"{h.bridge}, {'async' if h.is_async else 'sync'}, "
                f"{'active' if h.active else 'removed'}): got {h.got}, expected {h.expected}"
            )

    @invariant()
    def bridged_signals_match_the_model(self) -> None:
        wanted = {h.sig for h in self.handlers if h.active}
        assert set(_native.registry.signals) == wanted
        for sig in SIGNALS:
            kind = _native.disposition(sig)[0]
            assert (kind == _native.DISP_OURS) == (sig in wanted), (sig, kind)

    def teardown(self) -> None:
        try:
            for b in self.bridges:
                if b is not None:
                    self.run(b.aclose())
            self.settle()

            left = asyncio.all_tasks(self.loop)
            for t in left:
                t.cancel()
            if left:
                gathered = asyncio.gather(*left, return_exceptions=True)
                self.loop.run_until_complete(gathered)
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            assert not _native.registry.signals
            assert _signal_state() == self.ignored_state, "actions not given back"
        finally:
            self.loop.close()
            for s, old in self.saved.items():
                signal.signal(s, old)
        assert _signal_state() == self.state_before


class AsyncioMachine(BridgeMachine):
    loop_factory = asyncio.new_event_loop


class UvloopMachine(BridgeMachine):
    loop_factory = uvloop.new_event_loop


_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
AsyncioMachine.TestCase.settings = _SETTINGS
UvloopMachine.TestCase.settings = _SETTINGS


class TestStatefulAsyncio(AsyncioMachine.TestCase):
    """The state machine on the stock asyncio loop."""


class TestStatefulUvloop(UvloopMachine.TestCase):
    """The state machine on uvloop."""
