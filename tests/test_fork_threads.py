"""Fork, threads and signals from other processes: a forked child acts as the original
actions say from the instant fork() returns; bridges in several threads give a signal
back exactly as found, in any order; loops off the main thread survive signal storms.
What kills or forks runs in a child Python whose result lines the test asserts on."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import aiosigbridge as asb
from aiosigbridge import _native

from .conftest import LOOP_FACTORIES
from .helpers import TIMEOUT, Collector

LOOPS = ["asyncio", "uvloop"]

# Every child starts with this.  `run` is a plain loop: asyncio.Runner would put its own
# SIGINT handler in the way of the tests about Ctrl-C.
PRELUDE = """
import asyncio, ctypes, multiprocessing, os, signal, subprocess, sys, threading
import uvloop
import aiosigbridge as asb
from aiosigbridge import _native
new_loop = uvloop.new_event_loop if sys.argv[1] == "uvloop" else asyncio.new_event_loop
noop = lambda ev: None

def run(coro):
    loop = new_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

def parent_bridge():
    # The parent's SIGTERM handler; check() sends the parent its own SIGTERM and prints
    # what the handler saw: that one delivery only, never the children's.
    got, seen, bridge = [], asyncio.Event(), asb.get_bridge()
    bridge.add_handler(signal.SIGTERM, lambda ev: (got.append(ev), seen.set()))
    async def check():
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(seen.wait(), 10)
        me = [(e.pid == os.getpid(), e.coalesced) for e in got]
        print("parent saw", me, bridge.stats()[signal.SIGTERM].received, flush=True)
    return check
"""
PARENT_SAW = "parent saw [(True, 1)] 1"


def _child(*code: str, loop: str) -> subprocess.CompletedProcess[str]:
    script = PRELUDE + "".join(textwrap.dedent(part) for part in code)
    return subprocess.run(
        [sys.executable, "-c", script, loop], capture_output=True, text=True, timeout=45
    )


def _lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout.splitlines()


# -- kind 1: signals from another process, loops off the main thread ----------------------

SENDER = """
import os, signal, sys, aiosigbridge as asb
pid, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    os.kill(pid, signal.SIGWINCH)  # default action: ignore; a straggler harms nothing
    asb.sigqueue(pid, signal.SIGRTMIN + 1, i)
"""


@pytest.mark.parametrize("loop", LOOPS)
def test_signal_storm_from_another_process_with_loops_off_the_main_thread(loop: str) -> None:
    """Another process's signal storm: loops off the main thread (interrupt=, run()) survive."""
    proc = _child(
        f"""
        N, RT, SENDER = 300, signal.SIGRTMIN + 1, {SENDER!r}
        got, winch, interrupted = {{"loop": [], "run": []}}, {{"loop": 0, "run": 0}}, []
        ready = threading.Barrier(3, timeout=20)

        async def serve(name, interrupt):  # until every queued delivery came
            done = asyncio.Event()
            def on(ev):
                if ev.signum != RT:
                    winch[name] += ev.coalesced
                    return
                got[name].append((ev.value, ev.pid))
                if len(got[name]) == N:
                    done.set()
            for sig in (signal.SIGWINCH, RT):
                asb.add_handler(sig, on, interrupt=interrupt)
            await asyncio.get_running_loop().run_in_executor(None, ready.wait)
            await asyncio.wait_for(done.wait(), 30)

        async def survivor():  # what interrupt=True cancels: it takes every interrupt
            while True:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError as exc:
                    if "interrupted by" not in str(exc):
                        raise
                    interrupted.append(exc)

        async def loop_main():
            victim = asb.get_bridge().main_task = asyncio.ensure_future(survivor())
            await serve("loop", True)
            victim.cancel()
            await asyncio.gather(victim, return_exceptions=True)

        threads = [threading.Thread(target=run, args=(loop_main(),)), threading.Thread(
            target=lambda: asb.run(serve("run", False), loop_factory=new_loop))]
        for t in threads:
            t.start()
        ready.wait()
        sender = subprocess.Popen([sys.executable, "-c", SENDER, str(os.getpid()), str(N)])
        print("sender exit", sender.wait(30), flush=True)
        for t in threads:
            t.join(40)
        for name, events in got.items():
            print(name, sorted(events) == [(i, sender.pid) for i in range(N)], winch[name] > 0)
        print("interrupted", len(interrupted) > 0)
        """,
        loop=loop,
    )
    out = ["sender exit 0", "loop True True", "run True True", "interrupted True"]
    assert _lines(proc) == out, proc.stderr


# -- kind 2: fork ----------------------------------------------------------------------------

FORKS = {
    "os.fork": "term_child(os.fork)",
    "libc.fork": "term_child(ctypes.PyDLL(None).fork)",  # from C: no Python at-fork hook
    "multiprocessing": "mp_term()",
}


@pytest.mark.parametrize("how", list(FORKS))
@pytest.mark.parametrize("loop", LOOPS)
def test_forked_child_dies_of_sigterm_sent_at_once(loop: str, how: str) -> None:
    """A child forked while SIGTERM is bridged and terminated at once dies of it, 20 of 20."""
    proc = _child(
        f"""
        def wait_pipe(r, w):  # the child would live until the pipe closes
            os.close(w)
            os.read(r, 1)

        def term_child(fork):
            r, w = os.pipe()
            pid = fork()
            if pid == 0:
                wait_pipe(r, w)
                os._exit(7)
            os.kill(pid, signal.SIGTERM)
            os.close(w), os.close(r)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

        def mp_term():
            r, w = os.pipe()
            p = multiprocessing.get_context("fork").Process(target=wait_pipe, args=(r, w))
            p.start()
            p.terminate()
            os.close(w), os.close(r)
            p.join(20)
            return p.exitcode

        async def main():
            check = parent_bridge()
            codes = [{FORKS[how]} for _ in range(20)]
            print("children", codes == [-signal.SIGTERM] * 20, sorted(set(codes)), flush=True)
            await check()
        run(main())
        """,
        loop=loop,
    )
    assert _lines(proc) == ["children True [-15]", PARENT_SAW], proc.stderr


ORIGINALS = {
    "default": ("signal.SIG_DFL", -15),
    "handler": ("on_term", 42),
    "ignored": ("signal.SIG_IGN", 7),
}


@pytest.mark.parametrize("original", list(ORIGINALS))
@pytest.mark.parametrize("loop", LOOPS)
def test_forked_child_has_the_original_back_and_can_bridge_again(loop: str, original: str) -> None:
    """A forked child has SIGTERM's original back, acts as it, and can bridge SIGTERM again."""
    proc = _child(
        f"""
        PARENT, ran = os.getpid(), []
        def on_term(signum, frame):
            ran.append(os.getpid())
            if os.getpid() != PARENT:
                os._exit(42)
        ORIGINAL = {ORIGINALS[original][0]}
        signal.signal(signal.SIGTERM, ORIGINAL)
        ACTION = _native.disposition(signal.SIGTERM)

        def same():
            return (signal.getsignal(signal.SIGTERM) == ORIGINAL
                    and _native.disposition(signal.SIGTERM) == ACTION)

        async def bridge_again():
            got, pids, bridge = asyncio.Event(), [], asb.get_bridge()
            on = lambda ev: (pids.append(ev.pid), got.set())
            bridge.add_handler(signal.SIGTERM, on, consume=True)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(got.wait(), 10)
            await bridge.aclose()
            return pids == [os.getpid()]

        async def main():
            check, results = parent_bridge(), []
            for _ in range(10):
                (r, w), (ready_r, ready_w) = os.pipe(), os.pipe()
                pid = os.fork()
                if pid == 0:  # SIG_IGN: the parent's SIGTERM may come at any time
                    os.close(w)
                    ok = same() and (ORIGINAL is signal.SIG_IGN or run(bridge_again()))
                    os.write(ready_w, b"y" if ok and same() else b"n")
                    os.read(r, 1)
                    os._exit(7)
                os.close(ready_w)
                # Python drops the signals that come before its own after-fork code.
                child_ok = os.read(ready_r, 1) if ORIGINAL is not signal.SIG_IGN else b""
                os.kill(pid, signal.SIGTERM)
                os.close(w), os.close(r)
                child_ok = child_ok or os.read(ready_r, 1)
                os.close(ready_r)
                results.append((child_ok, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])))
            print("children", sorted(set(results)), flush=True)
            await check()
        run(main())
        print("parent", ran == ([PARENT] if ORIGINAL is on_term else []), same(), flush=True)
        """,
        loop=loop,
    )
    code = ORIGINALS[original][1]
    assert _lines(proc) == [f"children [(b'y', {code})]", PARENT_SAW, "parent True True"]


# -- kind 4: bridges in several threads ---------------------------------------------------


class Threads:
    """Loop 0 is the main thread's; loops 1, 2, ... run in threads of their own."""

    def __init__(self, *kinds: str) -> None:
        self.loops = [LOOP_FACTORIES[k]() for k in kinds]  # the suite's exception handler
        self.threads = [threading.Thread(target=lp.run_forever) for lp in self.loops]
        for t in self.threads:
            t.start()

    async def call(self, i: int, fn: Callable[[], Any]) -> Any:
        """``fn()`` in a task of loop ``i``, awaited there if it returns an awaitable."""

        async def step() -> Any:
            result = fn()
            return await result if isinstance(result, Awaitable) else result

        if i == 0:
            return await step()
        fut = asyncio.run_coroutine_threadsafe(step(), self.loops[i - 1])
        return await asyncio.wait_for(asyncio.wrap_future(fut), TIMEOUT)

    async def close(self) -> None:
        for i, (lp, t) in enumerate(zip(self.loops, self.threads, strict=True), 1):
            try:
                await self.call(i, lambda: asb.get_bridge().aclose())
                await self.call(i, lp.shutdown_asyncgens)
            finally:
                lp.call_soon_threadsafe(lp.stop)
                await asyncio.get_running_loop().run_in_executor(None, t.join, TIMEOUT)
                lp.close()
        await asb.get_bridge().aclose()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_bridges_in_threads_give_the_signal_back_in_any_order(sig: int) -> None:
    """Loops in three threads take a signal, let go in every order: action and table as found."""
    # interrupt=True on SIGINT only: the owed restore of SIGTERM's table is covered by
    # test_owed_table_restore_is_not_a_delivery.
    interrupt = sig == signal.SIGINT
    action, table = _native.disposition(sig), signal.getsignal(sig)
    loops = Threads("asyncio", "uvloop")
    try:
        for adds, removes in itertools.product(itertools.permutations(range(3)), repeat=2):
            handles = {}
            add = functools.partial(asb.add_handler, sig, lambda ev: None, interrupt=interrupt)
            for i in adds:
                handles[i] = await loops.call(i, add)
            assert _native.disposition(sig)[0] == _native.DISP_OURS
            assert signal.getsignal(sig) is asb.BRIDGED or not interrupt
            for i in removes:
                await loops.call(i, handles[i].remove)
            assert _native.disposition(sig) == action, (adds, removes)
            asb.get_bridge().check()
            assert signal.getsignal(sig) == table, (adds, removes)
    finally:
        await loops.close()


async def test_every_thread_bridge_receives_every_realtime_delivery() -> None:
    """Each thread's bridge gets every realtime delivery exactly once while it holds it."""
    rt, sent = signal.SIGRTMIN + 3, itertools.count()
    loops = Threads("asyncio", "uvloop")
    idents = [threading.main_thread().ident] + [t.ident for t in loops.threads]
    expected: list[list[int]] = [[], [], []]
    handles: dict[int, asb.HandlerHandle] = {}

    async def toggle(i: int) -> None:
        if i in handles:
            await loops.call(i, handles.pop(i).remove)
        else:
            handles[i] = await loops.call(i, lambda: asb.add_handler(rt, got[i]))

    async def send() -> None:
        # Each delivery is handled by a thread whose bridge's count is awaited (a handler
        # still storing on some other thread could reach a bridge that subscribes next).
        values = [next(sent) for _ in range(30)]
        for v in values:
            asb.sigqueue(os.getpid(), rt, v)  # sent by the main thread: handled there
        for i in handles:
            signal.pthread_kill(idents[i] or 0, rt)  # no value: counted as -1 below
        for i in handles:
            expected[i] += [*values, *[-1] * len(handles)]
            await loops.call(i, lambda i=i: got[i].wait(len(expected[i])))

    try:
        got = [await loops.call(i, Collector) for i in range(3)]
        # The main thread takes it first and lets go last (a worker letting go last owes
        # the main thread a table restore: see test_owed_table_restore_is_not_a_delivery).
        for step in (0, 1, 2, None, 1, None, 0, None, 0, 2, None, 1, None, 1, None, 0):
            await (send() if step is None else toggle(step))
        for i in range(3):
            values = sorted(-1 if e.value is None else e.value for e in got[i].events)
            assert values == sorted(expected[i]), i
            assert {e.pid for e in got[i].events} == {os.getpid()}
            stats = await loops.call(i, lambda i=i: asb.get_bridge().stats())
            assert stats[rt].received == len(expected[i]), i
    finally:
        await loops.close()


_RELEASE_MAIN_FIRST = """
def main_then_worker(sig, later_worker=False):
    # The main loop holds sig with interrupt=True, then a worker loop too; the main
    # thread lets go first, the worker last.  Returns: was BRIDGED in Python's table.
    added, release = threading.Event(), threading.Event()
    def worker():
        async def body():
            h = asb.add_handler(sig, noop)
            added.set()
            release.wait(10)  # this loop has nothing else to do
            h.remove()
        run(body())
        if later_worker:  # a worker-only bridge while the main thread still waits
            run(asb_call(lambda: asb.add_handler(sig, noop).remove()))
    async def main():
        h = asb.add_handler(sig, noop, interrupt=True)
        t = threading.Thread(target=worker)
        t.start()
        added.wait(10)
        held = signal.getsignal(sig) is asb.BRIDGED
        h.remove()
        release.set()
        t.join(10)  # no bytecode in the main thread until the worker is done
        return held
    return run(main())

async def asb_call(fn=lambda: asb.get_bridge().check()):
    fn()
"""


@pytest.mark.parametrize("loop", LOOPS)
def test_ctrl_c_raises_again_after_a_worker_lets_go_last(loop: str) -> None:
    """Main lets go of SIGINT (interrupt=True) first, a worker last: Ctrl-C works again."""
    proc = _child(
        _RELEASE_MAIN_FIRST,
        """
        before = _native.disposition(signal.SIGINT)
        def ctrl_c():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                threading.Event().wait(10)
            except KeyboardInterrupt:
                return "KeyboardInterrupt"
            return "nothing"

        for ctrl_c_first in (True, False):  # else the main thread's next aiosigbridge call
            print("held", main_then_worker(signal.SIGINT), flush=True)
            print("action", _native.disposition(signal.SIGINT) == before, flush=True)
            print("first", ctrl_c() if ctrl_c_first else run(asb_call()) or "a call", flush=True)
            print("table", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
            print("ctrl-c", ctrl_c(), flush=True)
        """,
        loop=loop,
    )
    out = [
        ["held True", "action True", f"first {first}", "table True", "ctrl-c KeyboardInterrupt"]
        for first in ("KeyboardInterrupt", "a call")
    ]
    assert _lines(proc) == out[0] + out[1], proc.stderr


@pytest.mark.parametrize("loop", LOOPS)
def test_sigterm_table_restore_owed_by_a_worker_is_paid(loop: str) -> None:
    """A worker lets go of SIGTERM last, then another: the owed SIG_DFL is paid, SIGTERM kills."""
    proc = _child(
        _RELEASE_MAIN_FIRST,
        """
        print("held", main_then_worker(signal.SIGTERM, later_worker=True), flush=True)
        print("action", _native.disposition(signal.SIGTERM)[0] == _native.DISP_DEFAULT)
        run(asb_call())
        print("table", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(10)
        print("survived SIGTERM", flush=True)
        """,
        loop=loop,
    )
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout.splitlines() == ["held True", "action True", "table True"], proc.stderr


@pytest.mark.parametrize("loop", LOOPS)
def test_owed_table_restore_is_not_a_delivery(loop: str) -> None:
    """The trip that pays a table restore owed to the main thread is not a delivery."""
    proc = _child(
        """
        import select, socket
        RT, events = signal.SIGRTMIN + 3, []
        added, release, retaken = threading.Event(), threading.Event(), threading.Event()
        trip_r, trip_w = socket.socketpair()
        trip_w.setblocking(False)

        async def second():  # holds RT from before the main thread runs until the sent one
            got = asyncio.Event()
            def on(ev):
                events.append((ev.pid, ev.value))
                if ev.value == 7:
                    got.set()
            h = asb.add_handler(RT, on)
            retaken.set()
            await asyncio.wait_for(got.wait(), 10)
            h.remove()

        async def first():
            h = asb.add_handler(RT, noop)
            added.set()
            release.wait(10)
            h.remove()  # the last holder, off the main thread

        def worker():
            run(first())
            print("tripped", select.select([trip_r], [], [], 10)[0] != [], flush=True)
            t2.start()
            retaken.wait(10)

        async def setup():
            return asb.add_handler(RT, noop)  # BRIDGED into Python's table
        main_loop = new_loop()
        h = main_loop.run_until_complete(setup())
        signal.set_wakeup_fd(trip_w.fileno())  # Python writes each trip's number here
        t1, t2 = threading.Thread(target=worker), threading.Thread(target=run, args=(second(),))
        t1.start()
        added.wait(10)
        h.remove()
        sys.setswitchinterval(60)  # the main thread keeps the GIL until join() blocks
        release.set()
        t1.join(10)  # no bytecode here until a worker holds RT again
        sys.setswitchinterval(0.005)
        ctypes.pythonapi.PyErr_CheckSignals()  # Python runs the tripped BRIDGED now
        asb.sigqueue(os.getpid(), RT, 7)
        t2.join(10)
        print("only the sent one", events == [(os.getpid(), 7)], events, flush=True)
        """,
        loop=loop,
    )
    assert _lines(proc)[-1].startswith("only the sent one True"), proc.stdout


# -- a signal inside os.fork()'s window ------------------------------------------------

FORK_WINDOW = """
import asyncio, os, signal, sys
import uvloop
kind, window = sys.argv[1], sys.argv[2]

def hook():
    os.kill(os.getpid(), signal.SIGUSR1)  # a signal arrives inside the window
    x = 0
    for i in range(1000):  # Python code: the signal's Python-level handler runs here
        x += i

if window == "before":
    os.register_at_fork(before=hook)  # registered first: runs after the bridge's own
else:
    os.register_at_fork(after_in_parent=hook)  # runs before the bridge's own
import aiosigbridge as asb
got = []

async def main():
    # The main thread's loop: Python's table holds BRIDGED (stock loop: the dispatch from
    # select(); uvloop: the interrupt).
    other = asyncio.ensure_future(asyncio.sleep(60))
    asb.add_handler(signal.SIGUSR1, got.append, interrupt=other if kind == "uvloop" else False)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    while not got:
        await asyncio.sleep(0.001)
    print("events", len(got), got[0].pid == os.getpid(), flush=True)

(uvloop.run if kind == "uvloop" else asyncio.run)(main())
"""


@pytest.mark.parametrize("window", ["before", "after"])
@pytest.mark.parametrize("loop", LOOPS)
def test_signal_inside_the_fork_window_neither_hangs_nor_is_lost(loop: str, window: str) -> None:
    """A Python-level handler that runs between the bridge's at-fork hooks (in another
    library's hook) is deferred, not blocked on the owner's lock: fork returns and the
    delivery is dispatched."""
    proc = subprocess.run(
        [sys.executable, "-c", FORK_WINDOW, loop, window],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["events", "1", "True"], proc.stdout + proc.stderr
