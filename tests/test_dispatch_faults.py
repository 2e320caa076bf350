"""Faults in the middle of dispatch: a KeyboardInterrupt or SystemExit from a handler
mid-batch, storms of interrupts and of many async handlers from another process, and an
interrupt landing while a handler task is being started."""

from __future__ import annotations

import sys

import pytest

from ._faults import LOOPS, child

# -- a BaseException from a handler in the middle of a drained batch ----------------------

MID_BATCH = """
import asyncio, json, os, signal, sys, threading
import uvloop
import aiosigbridge as asb
from aiosigbridge import _native

loop_name, exc_name, mode = sys.argv[1:4]
EXC = {"KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit}[exc_name]
RT = signal.SIGRTMIN + 1
SIGS = (signal.SIGUSR1, signal.SIGHUP, RT)
before = {int(s): [list(_native.disposition(s)), repr(signal.getsignal(s))] for s in SIGS}
loop = (uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop)()
asyncio.set_event_loop(loop)
got, raised = [], []
N = 8  # handler calls expected
all_in = asyncio.Event()
go = threading.Event()

def note(what):
    got.append(what)
    if len(got) == N:
        all_in.set()

def raiser(ev):
    note("usr1-raise")
    if not raised:
        raised.append(1)
        raise EXC("from a handler")

async def usr1_async(ev):
    note("usr1-async")

def send():
    # Blocked here: the process-directed signals go to the main thread, in select().
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGS)
    if go.wait(10):
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGHUP)
        for i in range(3):
            asb.sigqueue(os.getpid(), RT, i)

async def main():
    b = asb.get_bridge()
    b.add_handler(signal.SIGUSR1, lambda ev: note("usr1-a"))
    b.add_handler(signal.SIGUSR1, raiser)
    b.add_handler(signal.SIGUSR1, lambda ev: note("usr1-c"))
    b.add_handler(signal.SIGUSR1, usr1_async)
    b.add_handler(signal.SIGHUP, lambda ev: note("hup"))
    b.add_handler(RT, lambda ev: note(f"rt{ev.value}"))
    if mode == "self":  # one batch: all five are stored before the loop drains
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGHUP)
        for i in range(3):
            asb.sigqueue(os.getpid(), RT, i)
    else:
        go.set()
    await asyncio.wait_for(all_in.wait(), 10)
    return b

sender = threading.Thread(target=send)
if mode == "thread":
    sender.start()
task = loop.create_task(main())
first = seen_then = None
try:
    loop.run_until_complete(task)
except BaseException as exc:
    first = type(exc).__name__
    seen_then = list(got)
go.set()
if mode == "thread":
    sender.join(10)
bridge = loop.run_until_complete(task)  # the program goes on running the loop
stats = {s: dict(vars(st)) for s, st in
         ((int(k), v) for k, v in bridge.stats().items())}
loop.run_until_complete(bridge.aclose())
loop.run_until_complete(loop.shutdown_asyncgens())
loop.close()
after = {int(s): [list(_native.disposition(s)), repr(signal.getsignal(s))] for s in SIGS}
print("RESULT " + json.dumps({
    "first": first, "seen_then": seen_then, "got": got, "stats": stats,
    "restored": before == after, "bridged": sorted(_native.registry.signals),
    "sigs": [int(s) for s in SIGS],
}), flush=True)
"""


@pytest.mark.parametrize(
    ("exc", "mode"),
    [("KeyboardInterrupt", "self"), ("SystemExit", "self"), ("KeyboardInterrupt", "thread")],
)
@pytest.mark.parametrize("loop", LOOPS)
def test_base_exception_mid_batch_delivers_the_rest_later(loop: str, exc: str, mode: str) -> None:
    """KeyboardInterrupt/SystemExit mid-batch: the rest runs when the loop runs again, counted."""
    r = child(MID_BATCH, loop, exc, mode)
    assert r["first"] == exc, r
    got = r["got"]
    assert "usr1-raise" in r["seen_then"], r
    assert got[: len(r["seen_then"])] == r["seen_then"], r
    if loop == "asyncio":  # it stops at once (uvloop ends the iteration first)
        assert r["seen_then"][-1] == "usr1-raise", r
    usr1 = [g for g in got if g.startswith("usr1")]
    assert usr1 == ["usr1-a", "usr1-raise", "usr1-c", "usr1-async"], got
    assert sorted(got) == sorted([*usr1, "hup", "rt0", "rt1", "rt2"]), got
    assert [g for g in got if g.startswith("rt")] == ["rt0", "rt1", "rt2"], got
    if mode == "self":  # one drain, in time order
        assert got == ["usr1-a", "usr1-raise", "usr1-c", "usr1-async", "hup", "rt0", "rt1", "rt2"]
    usr1_sig, hup_sig, rt_sig = r["sigs"]
    for sig, sends in ((usr1_sig, 1), (hup_sig, 1), (rt_sig, 3)):
        st = r["stats"][str(sig)]
        assert st["received"] == sends, (sig, st)
        assert st["delivered"] == sends, (sig, st)  # the resumed event is not counted twice
        assert st["received"] == (
            st["coalesced"] + st["overflowed"] + st["delivered"] + st["unclaimed"]
        ), (sig, st)
    assert r["restored"], r
    assert r["bridged"] == [], r


# -- storms, and an interrupt landing while a handler task starts -------------------------

STORM = """
import asyncio, json, os, signal, subprocess, sys, time, traceback
import uvloop
import aiosigbridge as asb

loop_name, DUR = sys.argv[1], float(sys.argv[2])
errors, problems = [], []
calls = {"usr1": 0, "usr2": 0}

async def many(ev):
    calls["usr1"] += 1

def on_usr2(ev):
    calls["usr2"] += 1

def uncancel():
    t = asyncio.current_task()
    while hasattr(t, "uncancel") and t.cancelling():
        t.uncancel()

async def calm(make, what):
    # Late interrupts may still cancel main at an await: take them and go on.
    for _ in range(1000):
        try:
            return await make()
        except asyncio.CancelledError:
            uncancel()
    problems.append(f"{what}: interrupted 1000 times after the storm")

async def main():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda lp, ctx: errors.append(repr(ctx)[:300]))
    b = asb.get_bridge()
    for _ in range(50):
        b.add_handler(signal.SIGUSR1, many)
    b.add_handler(signal.SIGUSR2, on_usr2, interrupt=True)
    sender = subprocess.Popen([sys.executable, "-c", f'''
import os, signal, time
end = time.monotonic() + {DUR}
while time.monotonic() < end:
    os.kill({os.getpid()}, signal.SIGUSR1)
    os.kill({os.getpid()}, signal.SIGUSR2)
'''])
    interrupts = steps = 0
    try:
        while sender.poll() is None:
            try:
                try:
                    await asyncio.sleep(0.001)
                    steps += 1
                except asyncio.CancelledError:
                    interrupts += 1
                    uncancel()
            except asyncio.CancelledError:  # raised in our own code: documented
                uncancel()
    finally:
        sender.kill()
    await calm(lambda: loop.run_in_executor(None, sender.wait, 10), "sender")
    storm = dict(calls)
    # The loop keeps working: a fresh SIGUSR1 reaches all 50 handlers, timers fire.
    before = calls["usr1"]
    os.kill(os.getpid(), signal.SIGUSR1)
    async def fifty():
        while calls["usr1"] < before + 50:
            await asyncio.sleep(0.001)
    await calm(lambda: asyncio.wait_for(fifty(), 10), "fifty")
    await calm(lambda: asyncio.wait_for(asyncio.sleep(0.01), 5), "timer")
    await calm(b.aclose, "aclose")
    return {"storm": storm, "interrupts": interrupts, "steps": steps}

try:
    out = (uvloop.run if loop_name == "uvloop" else asyncio.run)(main())
    out["outcome"] = "survived"
except BaseException as exc:
    out = {"outcome": f"{type(exc).__name__}: {exc}",
           "tb": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-2000:]}
out["errors"] = errors
out["problems"] = problems
print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.mark.parametrize("loop", LOOPS)
def test_storm_of_interrupts_and_many_async_handlers(loop: str) -> None:
    """Storms of an interrupt signal and of 50 async handlers: no RecursionError, loop goes on."""
    r = child(STORM, loop, "2")
    assert r["outcome"] == "survived", r
    assert r["errors"] == [], r["errors"]
    assert r["problems"] == [], r["problems"]
    assert "RecursionError" not in r["stderr"], r["stderr"][-3000:]
    assert "Cannot enter into task" not in r["stderr"], r["stderr"][-3000:]
    assert r["storm"]["usr1"] >= 50, r  # the storm was delivered
    assert r["storm"]["usr2"] >= 1, r
    assert r["interrupts"] >= 1, r


START_INTERRUPTED = """
import asyncio, json, os, signal, sys
import uvloop
import aiosigbridge as asb

loop_name = sys.argv[1]
errors = []
real_enter = asyncio.tasks._enter_task
armed = [False]
fired = []

def enter_then_signal(loop, task):
    real_enter(loop, task)
    if armed[0]:
        armed[0] = False
        fired.append(task.get_name())
        signal.raise_signal(signal.SIGUSR2)  # lands right after enter() returned

asyncio.tasks._enter_task = enter_then_signal
ran, usr2 = [], []

async def handler(ev):
    ran.append("start")
    await asyncio.sleep(0)
    ran.append("end")

async def main():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda lp, ctx: errors.append(repr(ctx)[:300]))
    b = asb.get_bridge()
    b.add_handler(signal.SIGUSR1, handler)
    b.add_handler(signal.SIGUSR2, lambda ev: usr2.append(ev.pid), interrupt=True)
    armed[0] = True
    os.kill(os.getpid(), signal.SIGUSR1)
    interrupts = 0
    async def until(cond):
        while not cond():
            await asyncio.sleep(0.001)
    for _ in range(100):
        try:
            await asyncio.wait_for(until(lambda: usr2 and len(ran) >= 1), 5)
            break
        except asyncio.CancelledError:  # main interrupted: fine, go on
            interrupts += 1
            t = asyncio.current_task()
            while hasattr(t, "uncancel") and t.cancelling():
                t.uncancel()
    # Not wedged: tasks still start and step, timers fire, signals still come.
    os.kill(os.getpid(), signal.SIGUSR1)
    await asyncio.wait_for(until(lambda: ran.count("start") >= 2), 5)
    await asyncio.wait_for(asyncio.sleep(0.01), 5)
    await b.aclose()
    return {"ran": ran, "usr2": len(usr2), "fired": fired, "interrupts": interrupts}

try:
    out = (uvloop.run if loop_name == "uvloop" else asyncio.run)(main())
    out["outcome"] = "survived"
except BaseException as exc:
    out = {"outcome": f"{type(exc).__name__}: {exc}"}
out["errors"] = errors
print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="3.12+ starts tasks eagerly in C: no such window"
)
@pytest.mark.parametrize("loop", LOOPS)
def test_interrupt_while_a_handler_task_starts_does_not_wedge(loop: str) -> None:
    """An interrupt right after a handler task was entered does not wedge the loop."""
    r = child(START_INTERRUPTED, loop)
    assert r["outcome"] == "survived", r
    assert r["fired"], r  # the signal did land inside the task start
    assert r["errors"] == [], r["errors"]
    assert r["usr2"] >= 1, r
    assert r["ran"].count("start") >= 2, r
    assert "Cannot enter into task" not in r["stderr"], r["stderr"][-3000:]


# A child's loop, of the kind argv[1] names.
NEW_LOOP = """
import asyncio, sys
import uvloop
loop = (uvloop.new_event_loop if sys.argv[1] == "uvloop" else asyncio.new_event_loop)()
"""

KI_FIRST_STEP = NEW_LOOP + """
import gc, json, os, signal
import aiosigbridge as asb
calls, rounds = [], []

async def first(ev):
    calls.append("first")
    if len(calls) == 1:
        raise KeyboardInterrupt   # in the first step: no await before it

def second(ev):
    calls.append("second")

async def setup():
    b = asb.get_bridge()
    b.add_handler(signal.SIGUSR1, first)
    b.add_handler(signal.SIGUSR1, second)
    return b

async def wait(n):
    while calls.count("second") < n:
        await asyncio.sleep(0.001)

async def deliver(n):
    os.kill(os.getpid(), signal.SIGUSR1)
    await wait(n)

def run(coro):
    # uvloop (0.23) may stop the next run early after a callback raised KeyboardInterrupt
    # ("Event loop stopped before Future completed"; reproduced without aiosigbridge, a
    # reader raising it once): run it again until the future is done.
    fut = asyncio.ensure_future(coro, loop=loop)
    while True:
        try:
            return loop.run_until_complete(fut)
        except RuntimeError as exc:
            if "stopped before Future completed" not in str(exc) or fut.done():
                raise

b = run(setup())
for n in (1, 2):
    try:
        run(deliver(n))
        rounds.append("returned")
    except KeyboardInterrupt:
        rounds.append("KeyboardInterrupt")
        run(wait(n))   # the rest of that delivery comes after
st = b.stats()[signal.SIGUSR1]
run(b.aclose())
loop.close()
gc.collect()
print("RESULT " + json.dumps({"calls": calls, "rounds": rounds, "delivered": st.delivered}))
"""


@pytest.mark.parametrize("loop", LOOPS)
def test_keyboard_interrupt_in_an_async_handlers_first_step(loop: str) -> None:
    """KeyboardInterrupt raised by an async handler before its first await reaches the
    caller once, the next handler of that event still runs once, and nothing is logged
    as a task exception never retrieved (3.12+ eager tasks raise it from their
    constructor and held it too)."""
    r = child(KI_FIRST_STEP, loop)
    assert r["rounds"] == ["KeyboardInterrupt", "returned"], r
    assert r["calls"] == ["first", "second", "first", "second"], r
    assert r["delivered"] == 2, r
    assert "never retrieved" not in r["stderr"], r["stderr"][-3000:]


SWITCH_AFTER_STOP = NEW_LOOP + """
import json, os, signal, time
import aiosigbridge as asb
orig = sys.getswitchinterval()

async def setup():
    asb.get_bridge().add_handler(signal.SIGUSR2, lambda ev: None, interrupt=True)

async def short_task():
    os.kill(os.getpid(), signal.SIGUSR2)   # recorded: a re-check is asked for
    return sum(range(50))                  # ends long before it

loop.run_until_complete(setup())
try:
    loop.run_until_complete(short_task())
except asyncio.CancelledError:
    pass
# The loop is stopped (not closed): the pending re-check finds no loop running.
deadline = time.monotonic() + 5
while sys.getswitchinterval() != orig and time.monotonic() < deadline:
    pass
back = sys.getswitchinterval() == orig
loop.run_until_complete(asb.get_bridge(loop).aclose())
loop.close()
print("RESULT " + json.dumps({"back": back, "orig": orig, "now": sys.getswitchinterval()}))
"""


@pytest.mark.parametrize("loop", LOOPS)
def test_switch_interval_comes_back_when_the_loop_stops_during_a_recheck(loop: str) -> None:
    """An interrupt waiting for its re-check when the loop stops (its task ended first):
    the switch interval lowered for the re-check (3.10-3.12) is put back without
    waiting for the bridge to close."""
    r = child(SWITCH_AFTER_STOP, loop)
    assert r["back"], r
