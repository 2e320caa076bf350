"""Living beside C code that touches signals: an action put back without SA_SIGINFO
(as prompt_toolkit does), faulthandler.register(chain=True), chained and one-shot
(SA_RESETHAND) C handlers compiled at test time."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import aiosigbridge as asb

from .helpers import PID, Collector, run_script
from .test_foreign_py import CHILD

SIG = signal.SIGUSR1
LOOPS = ["asyncio", "uvloop"]
SA_SIGINFO = 0x4  # Linux
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux sigaction layout")

# What C code does with libc's signal(): no SA_SIGINFO on the action it installs.
C_SIGNAL = """
import ctypes
from aiosigbridge._clib import ffi, lib
libc = ctypes.CDLL(None, use_errno=True)
libc.signal.restype = ctypes.c_void_p
libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
def action(sig):
    addr, flags = ffi.new("uintptr_t *"), ffi.new("int *")
    kind = lib.sb_disposition(sig, addr, flags)
    return kind, int(addr[0]), int(flags[0])
def c_save_and_restore(sig):
    saved = libc.signal(sig, 1)  # SIG_IGN for a moment, then the saved handler back
    libc.signal(sig, saved)
    return saved
"""

# A foreign C library: a chaining SA_SIGINFO handler (saves the previous action and
# calls it) and a one-shot counting one (SA_RESETHAND).
FOREIGN_C = r"""
#include <signal.h>
#include <string.h>
static struct sigaction prev[65];
static volatile sig_atomic_t count[65];
static void chained(int sig, siginfo_t *info, void *uc)
{
    count[sig]++;
    const struct sigaction *p = &prev[sig];
    if (p->sa_flags & SA_SIGINFO)
        p->sa_sigaction(sig, info, uc);
    else if (p->sa_handler != SIG_DFL && p->sa_handler != SIG_IGN)
        p->sa_handler(sig);
}
static void counting(int sig, siginfo_t *info, void *uc)
{
    (void)info;
    (void)uc;
    count[sig]++;
}
static int install(int sig, void (*fn)(int, siginfo_t *, void *), int flags)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fn;
    sa.sa_flags = SA_SIGINFO | flags;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, &prev[sig]);
}
int fh_install_chained(int sig) { return install(sig, chained, SA_RESTART); }
int fh_install_oneshot(int sig) { return install(sig, counting, SA_RESETHAND); }
int fh_uninstall(int sig) { return sigaction(sig, &prev[sig], NULL); }
int fh_count(int sig) { return count[sig]; }
"""


@pytest.fixture(scope="module")
def foreign_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The foreign C library, compiled with gcc (skipped without it)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed to build the foreign C handler")
    tmp = tmp_path_factory.mktemp("foreign")
    (tmp / "foreign.c").write_text(FOREIGN_C)
    lib = tmp / "libforeign.so"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(lib), str(tmp / "foreign.c")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return lib


def _child(code: str, *args: str) -> tuple[int, list[str], str]:
    script = CHILD + C_SIGNAL + textwrap.dedent(code)
    proc = run_script(f"import sys; sys.argv[1:] = {list(args)!r}\n" + script)
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


def _warnings(out: list[str]) -> tuple[list[str], list[str]]:
    """(WARN lines, the other lines) of a child's output."""
    warns = [line for line in out if line.startswith("WARN")]
    return warns, [line for line in out if not line.startswith("WARN")]


# -- D. our action put back by C code without SA_SIGINFO ---------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_action_put_back_without_siginfo_then_taken_back_and_given_back(loop: str) -> None:
    """SIGINT put back with libc signal(): events without a sender, taken back, Ctrl-C after."""
    rc, out, err = _child(
        """
        async def main():
            before = (_native.disposition(signal.SIGINT), signal.getsignal(signal.SIGINT))
            got = Got()
            bridge = asb.get_bridge()
            bridge.add_handler(signal.SIGINT, got, consume=True)
            ours = action(signal.SIGINT)
            saved = c_save_and_restore(signal.SIGINT)
            now = action(signal.SIGINT)
            say("put back", saved == ours[1], now[:2] == ours[:2], not now[2] & 4)
            os.kill(os.getpid(), signal.SIGINT)
            (ev,) = await got.wait(signal.SIGINT, 1)
            say("first", ev.code, ev.pid == (os.getpid() if ev.code == 0 else 0), ev.uid)
            say("check", bridge.check(), action(signal.SIGINT) == ours)
            os.kill(os.getpid(), signal.SIGINT)
            ev = (await got.wait(signal.SIGINT, 2))[1]
            say("second", ev.code, ev.pid == os.getpid())
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
    assert out[0] == "put back True True True", out
    assert out[1] in (f"first 0 True {os.getuid()}", f"first {asb.SI_UNKNOWN} True 0"), out
    assert out[2:] == ["check () True", "second 0 True", "as-before True", "KeyboardInterrupt"]
    assert "Traceback" not in err, err


async def test_action_put_back_without_siginfo_is_taken_back_at_the_next_drain() -> None:
    """After the first sender-less event is drained, deliveries carry their sender again."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
    got = Collector()
    bridge = asb.get_bridge()
    bridge.add_handler(SIG, got)
    try:
        saved = libc.signal(SIG, 1)  # SIG_IGN
        libc.signal(SIG, saved)
        os.kill(PID, SIG)
        (first,) = await got.wait(1)
        assert (first.code, first.pid, first.uid) in (
            (asb.SI_UNKNOWN, 0, 0),
            (asb.SI_USER, PID, os.getuid()),
        )
        os.kill(PID, SIG)
        second = (await got.wait(2))[1]
        assert (second.code, second.pid) == (asb.SI_USER, PID)
    finally:
        await bridge.aclose()


# -- E. faulthandler.register(chain=True) -------------------------------------------------


@pytest.mark.parametrize("order", ["before", "after"])
@pytest.mark.parametrize("loop", LOOPS)
def test_faulthandler_chain_dumps_and_reaches_the_bridge(
    loop: str, order: str, tmp_path: Path
) -> None:
    """faulthandler.register(chain=True) before or after bridging: dump, event, survival."""
    dump = tmp_path / "dump.txt"
    rc, out, err = _child(
        """
        import faulthandler
        async def main():
            with open(sys.argv[3], "w") as f:
                before = (_native.disposition(signal.SIGUSR1), signal.getsignal(signal.SIGUSR1))
                if sys.argv[2] == "before":
                    faulthandler.register(signal.SIGUSR1, file=f, all_threads=False, chain=True)
                got = Got()
                bridge = asb.get_bridge()
                bridge.add_handler(signal.SIGUSR1, got)
                if sys.argv[2] == "after":
                    faulthandler.register(signal.SIGUSR1, file=f, all_threads=False, chain=True)
                for n in (1, 2):
                    os.kill(os.getpid(), signal.SIGUSR1)
                    await got.wait(signal.SIGUSR1, n)
                say("events", [e.pid == os.getpid() for e in got.events])
                if sys.argv[2] == "after":  # undone in reverse order
                    faulthandler.unregister(signal.SIGUSR1)
                    await bridge.aclose()
                else:
                    await bridge.aclose()
                    faulthandler.unregister(signal.SIGUSR1)
                after = (_native.disposition(signal.SIGUSR1), signal.getsignal(signal.SIGUSR1))
                say("as-before", after == before)
        run_on(sys.argv[1], main)
        say("exit")
        """,
        loop,
        order,
        str(dump),
    )
    assert rc == 0, (out, err)
    warns, lines = _warnings(out)
    assert lines == ["events [True, True]", "as-before True", "exit"], (out, err)
    if order == "before":
        assert warns == [], out
    else:  # faulthandler's action did replace the bridge's (it chains back to it)
        assert all(w.startswith("WARN SignalReplacedWarning the action for SIGUSR1") for w in warns)
    text = dump.read_text()
    assert text.count("(most recent call first)") == 2, text
    assert "in main" in text, text
    assert "Traceback" not in err, err


# -- F. foreign C handlers: chained over the bridge, one-shot under it -------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_chained_c_handler_still_reaches_python_handler_after_close(
    loop: str, foreign_lib: Path
) -> None:
    """A C handler chaining to the bridge: events, then Python's own handler after close."""
    rc, out, err = _child(
        """
        foreign = ctypes.CDLL(sys.argv[2])
        async def main():
            loop = asyncio.get_running_loop()
            calls, ran = [], asyncio.Event()
            def python_handler(signum, frame):
                calls.append(signum)
                loop.call_soon_threadsafe(ran.set)
            async def deliver():
                ran.clear()
                os.kill(os.getpid(), signal.SIGUSR1)
                await asyncio.wait_for(ran.wait(), 5)
            signal.signal(signal.SIGUSR1, python_handler)
            got = Got()
            bridge = asb.get_bridge()
            bridge.add_handler(signal.SIGUSR1, got)
            say("installed", foreign.fh_install_chained(signal.SIGUSR1))
            await deliver()
            (ev,) = await got.wait(signal.SIGUSR1, 1)
            count = foreign.fh_count(signal.SIGUSR1)
            say("bridged", ev.code, ev.pid == os.getpid(), len(calls), count)
            await bridge.aclose()
            foreign_on_top = _native.disposition(signal.SIGUSR1)[0] == _native.DISP_OTHER
            say("closed", foreign_on_top, signal.getsignal(signal.SIGUSR1) is python_handler)
            await deliver()
            await deliver()
            say("after close", len(calls), foreign.fh_count(signal.SIGUSR1), len(got.events))
            foreign.fh_uninstall(signal.SIGUSR1)  # puts back what it saved: the bridge's
            await deliver()
            say("uninstalled", len(calls), foreign.fh_count(signal.SIGUSR1))
        run_on(sys.argv[1], main)
        """,
        loop,
        str(foreign_lib),
    )
    assert rc == 0, (out, err)
    warns, lines = _warnings(out)
    assert lines == [
        "installed 0",
        "bridged 0 True 1 1",
        "closed True True",
        "after close 3 3 1",
        "uninstalled 4 3",
    ], (out, err)
    assert len(warns) <= 1, out  # C code replaced the bridge's action: warned once at most
    assert all(w.startswith("WARN SignalReplacedWarning the action for SIGUSR1") for w in warns)
    assert "Traceback" not in err, err


@pytest.mark.parametrize("loop", LOOPS)
def test_one_shot_c_handler_runs_once_and_is_not_rearmed(loop: str, foreign_lib: Path) -> None:
    """An SA_RESETHAND C handler under the bridge: runs at the first delivery only."""
    rc, out, err = _child(
        """
        foreign = ctypes.CDLL(sys.argv[2])
        async def main():
            foreign.fh_install_oneshot(signal.SIGUSR2)
            foreign.fh_install_oneshot(signal.SIGHUP)  # never delivered while bridged
            unfired = action(signal.SIGHUP)
            got = Got()
            bridge = asb.get_bridge()
            bridge.add_handler(signal.SIGUSR2, got)
            bridge.add_handler(signal.SIGHUP, got)
            for n in (1, 2, 3):
                os.kill(os.getpid(), signal.SIGUSR2)
                await got.wait(signal.SIGUSR2, n)
            count = foreign.fh_count(signal.SIGUSR2)
            say("bridged", [e.pid == os.getpid() for e in got.events], count)
            await bridge.aclose()
            usr2 = (_native.disposition(signal.SIGUSR2), signal.getsignal(signal.SIGUSR2))
            say("usr2 default", usr2 == ((_native.DISP_DEFAULT, 0), signal.SIG_DFL))
            say("hup armed", action(signal.SIGHUP) == unfired)
            os.kill(os.getpid(), signal.SIGHUP)
            say("hup", foreign.fh_count(signal.SIGHUP), action(signal.SIGHUP)[1] == 0)  # SIG_DFL
        run_on(sys.argv[1], main)
        say("count", foreign.fh_count(signal.SIGUSR2))
        os.kill(os.getpid(), signal.SIGUSR2)
        say("still alive")
        """,
        loop,
        str(foreign_lib),
    )
    assert rc == -signal.SIGUSR2, (rc, out, err)
    assert out == [
        "bridged [True, True, True] 1",
        "usr2 default True",
        "hup armed True",
        "hup 1 True",
        "count 1",
    ], err


@pytest.mark.parametrize("loop", LOOPS)
def test_one_shot_c_handler_spent_before_bridging_is_the_default(
    loop: str, foreign_lib: Path
) -> None:
    """A one-shot C handler that fired before bridging: the bridge sees SIG_DFL under it."""
    rc, out, err = _child(
        """
        foreign = ctypes.CDLL(sys.argv[2])
        async def main():
            foreign.fh_install_oneshot(signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGUSR2)  # runs once; the kernel resets it
            say("spent", foreign.fh_count(signal.SIGUSR2), action(signal.SIGUSR2)[1] == 0)
            got = Got()
            bridge = asb.get_bridge()
            bridge.add_handler(signal.SIGUSR2, got)
            for n in (1, 2):
                os.kill(os.getpid(), signal.SIGUSR2)
                await got.wait(signal.SIGUSR2, n)
            count = foreign.fh_count(signal.SIGUSR2)
            say("bridged", [e.pid == os.getpid() for e in got.events], count)
            await bridge.aclose()
            say("closed", action(signal.SIGUSR2)[1] == 0)
        run_on(sys.argv[1], main)
        os.kill(os.getpid(), signal.SIGUSR2)
        say("still alive")
        """,
        loop,
        str(foreign_lib),
    )
    assert rc == -signal.SIGUSR2, (rc, out, err)
    assert out == ["spent 1 True", "bridged [True, True] 1", "closed True"], err
