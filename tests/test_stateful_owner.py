"""A hypothesis state machine over each signal's owner: what other code does, threads,
fork, and signals racing registrations (issue 8).

Beside add / remove / close / send on a main-thread bridge and on a bridge of a worker
thread's loop, the rules do what programs around a library do: replace a bridged
signal's handler with ``signal.signal()`` and later put back what it returned, fork and
look at the child, send a signal from another thread while a registration changes.

After every step the C action, Python's table and forwarding must agree (forwarding
only to a callable; CPython's C handler only under a callable; SIG_DFL/SIG_IGN in the
table only over that action or our own that does not forward), and match the model:
held while a handler is active and nobody else replaced it; given back exactly
(SIG_IGN here) once nothing is held.  Every send reaches exactly the active handlers
(the first sends after a put-back may come without a sender, ``SI_UNKNOWN``, or be
lost while the table said SIG_IGN: see ``pending``); a replaced signal reaches only the
other code's handler.  A forked child sees every original action back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import warnings
from _signal import getsignal as raw_getsignal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import aiosigbridge as asb
from aiosigbridge import _native, _owner

pytestmark = pytest.mark.timeout(300)  # forks and waits: longer than the suite's 60 s

STANDARD = [int(signal.SIGUSR1), int(signal.SIGUSR2)]
REALTIME = [int(signal.SIGRTMIN) + 5]
SIGNALS = STANDARD + REALTIME
WHERE = ("main", "worker")
PID = os.getpid()
IGN = 1  # Python's table entry for SIG_IGN (_signal.getsignal's raw value)

Send = tuple[int, int, "int | None"]


@dataclass
class ModelHandler:
    sig: int
    where: str
    handle: asb.HandlerHandle | None = None
    active: bool = True
    got: list[Send] = field(default_factory=list)
    expected: list[Send] = field(default_factory=list)
    optional: list[Send] = field(default_factory=list)  # may or may not come (see module)

    def record(self, ev: asb.SignalEvent) -> None:
        self.got.append((int(ev.signum), ev.code, ev.value))

    def missing(self) -> list[Send]:
        """Expected sends not seen yet; raises on an event that stands for no send."""
        exp, opt = list(self.expected), list(self.optional)
        for g in self.got:
            if exp and g == exp[0]:
                exp.pop(0)
            elif g in opt:
                opt.remove(g)
            elif g[1] == asb.SI_UNKNOWN and any(o[0] == g[0] for o in opt + exp):
                # a delivery without its siginfo (put back): stands for one send
                pool = opt if any(o[0] == g[0] for o in opt) else exp
                pool.remove(next(o for o in pool if o[0] == g[0]))
            else:
                raise AssertionError(
                    f"{self.where} handler for {self.sig}: unexpected {g}; got {self.got}, "
                    f"expected {self.expected}, optional {self.optional}"
                )
        return exp


class OwnerMachine(RuleBasedStateMachine):
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop

    def __init__(self) -> None:
        super().__init__()
        self.saved = {s: signal.signal(s, signal.SIG_IGN) for s in SIGNALS}
        self.ignored = {s: (_native.disposition(s)[0], raw_getsignal(s)) for s in SIGNALS}
        self.loop = type(self).loop_factory()
        self.worker_loop = type(self).loop_factory()
        self.worker = threading.Thread(target=self.worker_loop.run_forever, daemon=True)
        self.worker.start()
        self.handlers: list[ModelHandler] = []
        self.other: dict[int, Any] = {}  # sig -> what signal.signal() returned
        self.other_got: dict[int, int] = {s: 0 for s in SIGNALS}
        self.other_expected: dict[int, int] = {s: 0 for s in SIGNALS}
        self.pending: set[int] = set()  # put back, not taken again yet
        self.stale: set[int] = set()  # BRIDGED put back after the bridge let go
        self.next_value = 1

    # -- helpers ------------------------------------------------------------------------

    def on(self, where: str, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the main loop or the worker's, catching the warnings a
        replaced signal gives (only for signals other code holds or held)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if where == "main":
                result = self.loop.run_until_complete(asyncio.wait_for(coro, 10))
            else:
                fut = asyncio.run_coroutine_threadsafe(coro, self.worker_loop)
                result = fut.result(10)
        for w in caught:
            assert issubclass(w.category, asb.SignalReplacedWarning), w
        return result

    def bridge(self, where: str) -> asb.SignalBridge:
        async def get() -> asb.SignalBridge:
            return asb.get_bridge()

        return self.on(where, get())  # type: ignore[no-any-return]

    def active(self, sig: int) -> list[ModelHandler]:
        return [h for h in self.handlers if h.active and h.sig == sig]

    def settle(self) -> None:
        """Run until every expected send arrived (bounded), a little longer so that an
        event standing for no send would show, then compare with the model."""

        async def wait() -> None:
            for _ in range(1000):
                if not any(h.missing() for h in self.handlers) and all(
                    self.other_got[s] >= self.other_expected[s] for s in SIGNALS
                ):
                    break
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.005)

        self.on("main", wait())
        for h in self.handlers:
            assert not h.missing(), (h.where, h.sig, h.got, h.expected, self.pending)
        for s in SIGNALS:
            assert self.other_got[s] == self.other_expected[s], (s, self.other_got)

    def other_handler(self, signum: int, frame: Any) -> None:
        self.other_got[signum] += 1

    # -- rules ----------------------------------------------------------------------------

    @rule(where=st.sampled_from(WHERE), sig=st.sampled_from(SIGNALS))
    def add(self, where: str, sig: int) -> None:
        mh = ModelHandler(sig, where)

        async def add() -> asb.HandlerHandle:
            return asb.add_handler(sig, mh.record)  # list.append: safe from the worker

        mh.handle = self.on(where, add())
        self.handlers.append(mh)
        self.pending.clear()  # add_handler checks: put-back signals are taken back
        if where == "main":
            self.stale.clear()  # and the main thread repairs a stale BRIDGED

    def _removable(self, where: str | None = None) -> list[ModelHandler]:
        """Active handlers whose removal leaves their signal held while other code has
        replaced it (the save/replace/restore pattern is about a bridged signal)."""
        return [
            h
            for h in self.handlers
            if h.active
            and (where is None or h.where == where)
            and (h.sig not in self.other or len(self.active(h.sig)) > 1)
        ]

    @precondition(lambda self: bool(self._removable()))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self._removable()))

        async def remove() -> None:
            assert h.handle is not None
            h.handle.remove()

        self.on(h.where, remove())
        h.active = False
        if h.where == "main":
            self.stale.clear()

    @precondition(
        lambda self: (
            all(any(h.where != "main" for h in self.active(s)) for s in self.other)
            or all(any(h.where != "worker" for h in self.active(s)) for s in self.other)
        )
    )
    @rule(where=st.sampled_from(WHERE))
    def close(self, where: str) -> None:
        if any(all(h.where == where for h in self.active(s)) for s in self.other):
            return  # it would let go of a signal other code replaced
        self.on(where, self.bridge(where).aclose())
        for h in self.handlers:
            if h.where == where:
                h.active = False

    @rule(sig=st.sampled_from(SIGNALS))
    def send(self, sig: int) -> None:
        self._send(sig)
        self.settle()

    def _send(self, sig: int) -> None:
        if sig in REALTIME:
            value: int | None = self.next_value
            self.next_value += 1
            asb.sigqueue(PID, sig, value)
            code = asb.SI_QUEUE
        else:
            value = None
            os.kill(PID, sig)
            code = asb.SI_USER
        self.stale.discard(sig)  # BRIDGED acts as the original (SIG_IGN) and repairs it
        if sig in self.other:
            self.other_expected[sig] += 1
            return
        for h in self.active(sig):
            (h.optional if sig in self.pending else h.expected).append((sig, code, value))

    def _replaceable(self) -> list[int]:
        return [s for s in SIGNALS if s not in self.other and self.active(s)]

    @precondition(lambda self: bool(self._replaceable()))
    @rule(data=st.data())
    def other_code_replaces(self, data: st.DataObject) -> None:
        """Other code replaces a bridged signal's handler (and keeps what it got)."""
        sig = data.draw(st.sampled_from(self._replaceable()))
        self.other[sig] = signal.signal(sig, self.other_handler)
        self.pending.discard(sig)

    @precondition(lambda self: bool(self.other))
    @rule(data=st.data())
    def other_code_restores(self, data: st.DataObject) -> None:
        """... and puts back what signal.signal() returned."""
        sig = data.draw(st.sampled_from(sorted(self.other)))
        old = self.other.pop(sig)
        signal.signal(sig, old)
        if self.active(sig):
            self.pending.add(sig)
        elif old is asb.BRIDGED:
            self.stale.add(sig)

    @precondition(lambda self: bool(self._removable("main")))
    @rule(data=st.data(), send=st.sampled_from(SIGNALS), add=st.booleans())
    def signal_races_a_registration(self, data: st.DataObject, send: int, add: bool) -> None:
        """Another thread sends ``send`` while the main loop adds or removes a handler:
        the handler being added or removed may see it; every other one sees it once."""
        go = threading.Event()
        sender = threading.Thread(target=lambda: (go.wait(5), os.kill(PID, send)))
        before = [h for h in self.handlers if h.active and h.sig == send]
        # Put back by other code and not taken again yet: the registration racing the
        # send is what takes it back (add() clears ``pending``), so the send may land
        # before that, while the action other code put back (SIG_IGN here) is in place.
        was_pending = send in self.pending
        if add:
            sender.start()
            go.set()
            self.add("main", data.draw(st.sampled_from(SIGNALS)))
            target = self.handlers[-1]
        else:
            target = data.draw(st.sampled_from(self._removable("main")))
            sender.start()
            go.set()
            self.remove_one(target)
        sender.join(5)
        self.stale.discard(send)
        if send in self.other:
            self.other_expected[send] += 1
        else:
            for h in {id(h): h for h in [*before, *self.active(send)]}.values():
                racing = h is target or was_pending or send in self.pending
                (h.optional if racing else h.expected).append((send, asb.SI_USER, None))
        self.settle()

    def remove_one(self, h: ModelHandler) -> None:
        async def remove() -> None:
            assert h.handle is not None
            h.handle.remove()

        self.on(h.where, remove())
        h.active = False
        if h.where == "main":
            self.stale.clear()

    @rule()
    def fork(self) -> None:
        """A child sees every original action back (SIG_IGN here) and survives."""
        r, w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            ok = b"0"
            try:
                good = all(
                    (_native.disposition(s)[0], raw_getsignal(s)) == self.ignored[s]
                    or (s in self.other and raw_getsignal(s) == self.other_handler)
                    or (s in self.stale and raw_getsignal(s) is asb.BRIDGED)
                    for s in SIGNALS
                )
                for s in SIGNALS:
                    if s not in self.other:
                        os.kill(os.getpid(), s)
                ok = b"1" if good else b"0"
            finally:
                os.write(w, ok)
                os._exit(0)
        os.close(w)
        answer = os.read(r, 1)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        assert answer == b"1", "the child did not see the original actions"
        assert os.waitstatus_to_exitcode(status) == 0, status

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def action_table_and_forwarding_agree(self) -> None:
        held = set(_owner.held())
        for sig in SIGNALS:
            st_ = _owner.state(sig)
            kind, _ = _native.disposition(sig)
            table = raw_getsignal(sig)
            if st_.forward:
                assert callable(table), (sig, st_, table)
            if table in (0, 1) and table is not None and not callable(table):
                want = _native.DISP_IGNORE if table == IGN else _native.DISP_DEFAULT
                assert kind == want or (kind == _native.DISP_OURS and not st_.forward), (
                    sig,
                    kind,
                    table,
                    st_,
                )
            active = bool(self.active(sig))
            assert (sig in held) == active, (sig, held, active)
            if sig in self.other:
                assert table == self.other_handler
                assert kind == _native.DISP_OTHER
            elif sig in self.stale:
                assert table is asb.BRIDGED, (sig, table)
                assert kind == _native.DISP_OTHER, (sig, kind)
            elif not active:
                # Given back exactly; let go by the worker thread, the table may still owe
                # the main thread its restore (paid at its next call, or when BRIDGED runs).
                owed = table is asb.BRIDGED and st_.debt
                assert kind == self.ignored[sig][0], (sig, kind)
                assert table == self.ignored[sig][1] or owed, (sig, table, st_)
            elif sig not in self.pending:
                assert kind == _native.DISP_OURS, (sig, kind, st_)

    def teardown(self) -> None:
        try:
            for sig, old in list(self.other.items()):
                signal.signal(sig, old)
            self.other.clear()
            for where in WHERE:
                self.on(where, self.bridge(where).aclose())
            self.on("main", self.loop.shutdown_asyncgens())
            _owner.check_now()  # a main-thread call: pays what the worker's release owes
            assert not _owner.held()
            for sig in SIGNALS:
                assert (_native.disposition(sig)[0], raw_getsignal(sig)) == self.ignored[sig]
        finally:
            self.worker_loop.call_soon_threadsafe(self.worker_loop.stop)
            self.worker.join(10)
            self.worker_loop.close()
            self.loop.close()
            for s, old in self.saved.items():
                signal.signal(s, old)


class AsyncioOwnerMachine(OwnerMachine):
    loop_factory = asyncio.new_event_loop


class UvloopOwnerMachine(OwnerMachine):
    loop_factory = uvloop.new_event_loop


_SETTINGS = settings(
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
AsyncioOwnerMachine.TestCase.settings = _SETTINGS
UvloopOwnerMachine.TestCase.settings = _SETTINGS


class TestOwnerAsyncio(AsyncioOwnerMachine.TestCase):
    """The owner's state machine with a stock asyncio loop in each thread."""


class TestOwnerUvloop(UvloopOwnerMachine.TestCase):
    """The owner's state machine with a uvloop loop in each thread."""
