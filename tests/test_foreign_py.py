"""Living beside Python code that touches signals: signal.signal() save/restore and
replacement, asyncio.Runner taking SIGINT over, signal.siginterrupt()'s SA_RESTART."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap

import pytest

import aiosigbridge as asb
from aiosigbridge import _native
from aiosigbridge._clib import ffi, lib

from .helpers import PID, Collector, run_script

SIG = signal.SIGUSR1
SIG2 = signal.SIGUSR2
LOOPS = ["asyncio", "uvloop"]
SA_RESTART = 0x10000000  # Linux
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="Linux sigaction flags")

# A child's prelude: run_on(name, main) on a plain loop (asyncio.Runner would take SIGINT
# over), say() result lines, warnings printed as "WARN <category> <message>" lines.
CHILD = """
import asyncio, os, signal, sys, threading, warnings
import aiosigbridge as asb
from aiosigbridge import _native

def say(*args):
    print(*args, flush=True)

WARNED = threading.Event()
def _show(message, category, filename, lineno, file=None, line=None):
    say("WARN", category.__name__, message)
    WARNED.set()
warnings.showwarning = _show
warnings.simplefilter("always")

def factory(name):
    import uvloop
    return uvloop.new_event_loop if name == "uvloop" else asyncio.new_event_loop

def run_on(name, main):
    loop = factory(name)()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

class Got:
    def __init__(self):
        self.events = []
        self.changed = asyncio.Event()
    def __call__(self, ev):
        self.events.append(ev)
        self.changed.set()
    def of(self, sig):
        return [e for e in self.events if e.signum == sig]
    async def wait(self, sig, n):
        async def enough():
            while len(self.of(sig)) < n:
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(enough(), 5)
        return self.of(sig)
"""


def _child(code: str, *args: str) -> tuple[int, list[str], str]:
    script = CHILD + textwrap.dedent(code)
    proc = run_script(f"import sys; sys.argv[1:] = {list(args)!r}\n" + script)
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


def _flags(sig: int) -> int:
    """The sa_flags of sig's current action, as the kernel has them."""
    out = ffi.new("int *")
    assert lib.sb_disposition(sig, ffi.NULL, out) >= 0
    return int(out[0])


# -- A. save / restore with signal.signal() ----------------------------------------------


async def test_save_restore_gives_the_bridge_back() -> None:
    """old = signal.signal(SIGUSR1, h); signal.signal(SIGUSR1, old): the bridge is back."""
    loop = asyncio.get_running_loop()
    before = (_native.disposition(SIG), signal.getsignal(SIG))
    calls: list[int] = []
    ran = asyncio.Event()

    def mine(signum: int, frame: object) -> None:
        calls.append(signum)
        loop.call_soon_threadsafe(ran.set)

    got = Collector()
    bridge = asb.get_bridge()
    bridge.add_handler(SIG, got)
    old = signal.signal(SIG, mine)
    assert old is asb.BRIDGED
    os.kill(PID, SIG)
    await asyncio.wait_for(ran.wait(), 5)
    signal.signal(SIG, old)
    for n in (1, 2, 3):
        os.kill(PID, SIG)
        await got.wait(n)
    first, *later = got.events
    if first.code == asb.SI_UNKNOWN:  # reached through CPython's handler: no siginfo
        assert (first.pid, first.uid) == (0, 0)
    else:
        assert (first.code, first.pid) == (asb.SI_USER, PID)
    assert [(e.code, e.pid) for e in later] == [(asb.SI_USER, PID)] * 2
    assert calls == [SIG]
    assert bridge.check() == ()
    await bridge.aclose()
    assert (_native.disposition(SIG), signal.getsignal(SIG)) == before


@pytest.mark.parametrize("loop", LOOPS)
def test_save_restore_on_sigterm_then_close_gives_the_default_back(loop: str) -> None:
    """SIGTERM saved and restored while bridged: events again, then closing kills on it."""
    rc, out, err = _child(
        """
        async def main():
            before = (_native.disposition(signal.SIGTERM), signal.getsignal(signal.SIGTERM))
            got = Got()
            bridge = asb.get_bridge()
            bridge.add_handler(signal.SIGTERM, got)
            calls = []
            old = signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))
            os.kill(os.getpid(), signal.SIGTERM)
            say("saved", old is asb.BRIDGED, calls == [signal.SIGTERM])
            signal.signal(signal.SIGTERM, old)
            for n in (1, 2):
                os.kill(os.getpid(), signal.SIGTERM)
                await got.wait(signal.SIGTERM, n)
            for ev in got.events:
                say("event", ev.code, ev.pid == (os.getpid() if ev.code == 0 else 0), ev.uid)
            await bridge.aclose()
            after = (_native.disposition(signal.SIGTERM), signal.getsignal(signal.SIGTERM))
            say("as-before", after == before, before[1] == signal.SIG_DFL)
        run_on(sys.argv[1], main)
        os.kill(os.getpid(), signal.SIGTERM)
        say("still alive")
        """,
        loop,
    )
    assert rc == -signal.SIGTERM, (rc, out, err)
    assert out[0] == "saved True True", out
    first, second = (line.split() for line in out[1:3])
    assert first[0] == "event", out
    assert first[1:] in (["0", "True", str(os.getuid())], [str(asb.SI_UNKNOWN), "True", "0"])
    assert second[1:] == ["0", "True", str(os.getuid())], out
    assert out[3:] == ["as-before True True"], out
    assert "race condition" not in err, err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("loop", LOOPS)
def test_save_restore_on_sigint_gives_the_bridge_back(loop: str) -> None:
    """SIGINT (default_int_handler) saved and restored: after the next drain it is bridged."""
    rc, out, err = _child(
        """
        async def main():
            before = (_native.disposition(signal.SIGINT), signal.getsignal(signal.SIGINT))
            got = Got()
            bridge = asb.get_bridge()
            bridge.add_handler(signal.SIGINT, got)
            bridge.add_handler(signal.SIGUSR1, got)
            old = signal.signal(signal.SIGINT, lambda s, f: None)
            say("saved", old is signal.default_int_handler)
            signal.signal(signal.SIGINT, old)
            interrupts = 0
            for n in (1, 2):
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                except KeyboardInterrupt:
                    interrupts += 1
                # The loop drains this one after any SIGINT recorded before it.
                os.kill(os.getpid(), signal.SIGUSR1)
                await got.wait(signal.SIGUSR1, n)
            say("interrupts", interrupts)
            last = got.of(signal.SIGINT)[-1:]
            say("last", [(e.code, e.pid == os.getpid()) for e in last])
            await bridge.aclose()
            after = (_native.disposition(signal.SIGINT), signal.getsignal(signal.SIGINT))
            say("as-before", after == before)
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                say("KeyboardInterrupt")
        run_on(sys.argv[1], main)
        """,
        loop,
    )
    assert rc == 0, (out, err)
    assert out == [
        "saved True",
        "interrupts 2",
        "last [(0, True)]",
        "as-before True",
        "KeyboardInterrupt",
    ], err
    assert "race condition" not in err, err


async def test_replaced_and_not_restored_warns_and_is_left_in_place() -> None:
    """signal.signal() over a bridged SIGUSR2, never undone: warned, bridge stops, kept."""
    loop = asyncio.get_running_loop()
    calls: list[int] = []
    ran = asyncio.Event()

    def theirs(signum: int, frame: object) -> None:
        calls.append(signum)
        loop.call_soon_threadsafe(ran.set)

    got = Collector()
    bridge = asb.get_bridge()
    bridge.add_handler(SIG2, got)
    bridge.add_handler(SIG, got)
    try:
        signal.signal(SIG2, theirs)
        theirs_action = _native.disposition(SIG2)
        os.kill(PID, SIG2)
        await asyncio.wait_for(ran.wait(), 5)
        with pytest.warns(asb.SignalReplacedWarning, match="SIGUSR2"):  # noqa: PT031
            os.kill(PID, SIG)  # the next drain notices
            await got.wait(1)
        assert [e.signum for e in got.events] == [SIG]
        assert bridge.stats()[SIG2].received == 0
        assert bridge.check() == (SIG2,)
        await bridge.aclose()  # warned once already: quiet now
        assert signal.getsignal(SIG2) is theirs
        assert _native.disposition(SIG2) == theirs_action
        ran.clear()
        os.kill(PID, SIG2)
        await asyncio.wait_for(ran.wait(), 5)
        assert calls == [SIG2, SIG2]
    finally:
        await bridge.aclose()
        signal.signal(SIG2, signal.SIG_DFL)


# -- B. asyncio.Runner ---------------------------------------------------------------------


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is 3.11+")
@pytest.mark.parametrize("loop", LOOPS)
def test_runner_takes_sigint_over_from_a_worker_loops_bridge(loop: str) -> None:
    """asyncio.Runner over a worker's bridged SIGINT: warned; bridged again after run()."""
    rc, out, err = _child(
        """
        import concurrent.futures
        MAIN = threading.main_thread().ident
        before = (_native.disposition(signal.SIGINT), signal.getsignal(signal.SIGINT))
        seen, cond = [], threading.Condition()
        def handler(ev):
            with cond:
                seen.append(ev)
                cond.notify_all()
        def wait_for(sig, n):
            with cond:
                assert cond.wait_for(lambda: [e.signum for e in seen].count(sig) >= n, 5)
        ready = concurrent.futures.Future()
        def worker():
            async def main():
                stop = asyncio.Event()
                bridge = asb.get_bridge()
                bridge.add_handler(signal.SIGINT, handler)
                bridge.add_handler(signal.SIGUSR1, handler)
                ready.set_result((asyncio.get_running_loop(), stop))
                await stop.wait()
                await bridge.aclose()
            run_on(sys.argv[1], main)
        thread = threading.Thread(target=worker)
        thread.start()
        wloop, stop = ready.result(5)

        async def runners_main():
            say("runner-took", _native.disposition(signal.SIGINT)[0] != _native.DISP_OURS)
            os.kill(os.getpid(), signal.SIGUSR1)  # the worker's next drain notices
            say("warned", await asyncio.to_thread(WARNED.wait, 5))
            signal.pthread_kill(MAIN, signal.SIGINT)  # Runner's own handling: cancel main
            await asyncio.wait_for(asyncio.Event().wait(), 5)  # cancelled at once
        try:
            with asyncio.Runner(loop_factory=factory(sys.argv[1])) as runner:
                runner.run(runners_main())
        except KeyboardInterrupt:
            say("runner KeyboardInterrupt")
        say("put back", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_for(signal.SIGUSR1, 2)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), wloop).result(5)  # drain done
        say("bridged again", _native.disposition(signal.SIGINT)[0] == _native.DISP_OURS)
        try:
            signal.pthread_kill(MAIN, signal.SIGINT)
        except KeyboardInterrupt:
            say("KeyboardInterrupt")
        wait_for(signal.SIGINT, 1)
        say("sigints", [e.pid == os.getpid() for e in seen if e.signum == signal.SIGINT])
        wloop.call_soon_threadsafe(stop.set)
        thread.join(5)
        after = (_native.disposition(signal.SIGINT), signal.getsignal(signal.SIGINT))
        say("as-before", after == before)
        """,
        loop,
    )
    assert rc == 0, (out, err)
    warns = [line for line in out if line.startswith("WARN")]
    assert len(warns) == 1, out
    assert warns[0].startswith("WARN SignalReplacedWarning the action for SIGINT"), out
    assert [line for line in out if not line.startswith("WARN")] == [
        "runner-took True",
        "warned True",
        "runner KeyboardInterrupt",
        "put back True",
        "bridged again True",
        "KeyboardInterrupt",
        "sigints [True]",
        "as-before True",
    ], err
    assert "Traceback" not in err, err


# -- C. SA_RESTART chosen with signal.siginterrupt() -------------------------------------


@linux_only
@pytest.mark.parametrize(
    "interrupt",
    [False, True],
)
async def test_siginterrupt_before_bridging_keeps_sa_restart(interrupt: bool) -> None:
    """siginterrupt(sig, False) before bridging: SA_RESTART stays, and is given back."""
    signal.signal(SIG, lambda s, f: None)
    try:
        signal.siginterrupt(SIG, False)
        before = (_native.disposition(SIG), _flags(SIG))
        assert before[1] & SA_RESTART
        bridge = asb.get_bridge()
        try:
            bridge.add_handler(SIG, lambda ev: None, interrupt=interrupt)
            assert _native.disposition(SIG)[0] == _native.DISP_OURS
            assert _flags(SIG) & SA_RESTART
            bridge.add_handler(SIG, lambda ev: None, consume=True)
            assert _flags(SIG) & SA_RESTART
            got = Collector()
            bridge.add_handler(SIG2, got)  # a drain, and its check, with SIG bridged
            os.kill(PID, SIG2)
            await got.wait(1)
            assert _flags(SIG) & SA_RESTART
        finally:
            await bridge.aclose()
        assert (_native.disposition(SIG), _flags(SIG)) == before
    finally:
        signal.signal(SIG, signal.SIG_DFL)


@linux_only
@pytest.mark.parametrize(
    "option",
    ["consume", "interrupt"],
)
async def test_siginterrupt_while_bridged_survives_the_next_registration(option: str) -> None:
    """siginterrupt(sig, False) on a bridged signal: SA_RESTART stays through new handlers."""
    signal.signal(SIG, lambda s, f: None)
    try:
        bridge = asb.get_bridge()
        try:
            bridge.add_handler(SIG, lambda ev: None)
            signal.siginterrupt(SIG, False)
            assert _flags(SIG) & SA_RESTART
            bridge.add_handler(SIG, lambda ev: None, **{option: True})
            assert _native.disposition(SIG)[0] == _native.DISP_OURS
            assert _flags(SIG) & SA_RESTART
        finally:
            await bridge.aclose()
    finally:
        signal.signal(SIG, signal.SIG_DFL)
