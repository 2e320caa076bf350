"""Whole-process behaviour, each in a child Python that prints READY before the parent
signals it: KeyboardInterrupt on SIGINT, giving the default action back, fork."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from .helpers import LOOP_RUNNER

LOOPS = ["asyncio", "uvloop"]


def _start(code: str, loop: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LOOP_RUNNER + textwrap.dedent(code), loop],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"child did not get ready: {line!r}\n{err}")
    return proc


@pytest.mark.parametrize("loop", LOOPS)
def test_sigint_still_raises_keyboard_interrupt(loop: str) -> None:
    """With a bridge handler on SIGINT, Python's own handling still runs: the handler
    sees the signal and asyncio's runner turns it into KeyboardInterrupt."""
    proc = _start(
        """
        import os, signal, aiosigbridge as asb
        async def main():
            asb.add_handler(signal.SIGINT, lambda ev: print("handler", ev.name, ev.pid, flush=True))
            print("READY", flush=True)
            await asyncio.sleep(30)
        run_on(sys.argv[1], main)
        """,
        loop,
    )
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert f"handler SIGINT {os.getpid()}" in out, (out, err)
    assert "KeyboardInterrupt" in err, err
    assert proc.returncode in (-signal.SIGINT, 1), (proc.returncode, err)


@pytest.mark.parametrize("loop", LOOPS)
def test_sigint_consumed_does_not_interrupt(loop: str) -> None:
    """consume=True: the bridge handles SIGINT alone, no KeyboardInterrupt."""
    proc = _start(
        """
        import os, signal, aiosigbridge as asb
        async def main():
            done = asyncio.Event()
            def h(ev):
                print("handler", ev.name, flush=True)
                done.set()
            asb.add_handler(signal.SIGINT, h, consume=True)
            print("READY", flush=True)
            await asyncio.wait_for(done.wait(), 20)
            print("clean exit", flush=True)
        run_on(sys.argv[1], main)
        """,
        loop,
    )
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "handler SIGINT" in out, out
    assert "clean exit" in out, out
    assert "KeyboardInterrupt" not in err


@pytest.mark.parametrize("loop", LOOPS)
def test_default_action_is_given_back(loop: str) -> None:
    """After the bridge closes, SIGTERM kills the process again (its default action)."""
    proc = _start(
        """
        import os, signal, aiosigbridge as asb
        async def main():
            bridge = asb.get_bridge()
            bridge.add_handler(signal.SIGTERM, lambda ev: None)
            await bridge.aclose()
            print("READY", flush=True)
            await asyncio.sleep(30)
            print("still alive", flush=True)
        run_on(sys.argv[1], main)
        """,
        loop,
    )
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGTERM
    assert "still alive" not in out


@pytest.mark.parametrize("loop", LOOPS)
def test_fork_child_starts_clean(loop: str) -> None:
    """A forked child has no subscriptions and the default actions back, can bridge
    its own signals; the parent's loop never sees the child's signals."""
    code = LOOP_RUNNER + textwrap.dedent(
        """
        import os, signal, aiosigbridge as asb
        from aiosigbridge import _native
        import uvloop
        factory = uvloop.new_event_loop if sys.argv[1] == "uvloop" else asyncio.new_event_loop
        parent_got = []
        loop = factory()
        async def setup():
            evt = asyncio.Event()
            def h(ev):
                parent_got.append(ev.pid)
                evt.set()
            asb.get_bridge().add_handler(signal.SIGUSR1, h)
            return evt
        parent_evt = loop.run_until_complete(setup())
        pid = os.fork()
        if pid == 0:
            ok = (signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
                  and _native.disposition(signal.SIGUSR1)[0] == _native.DISP_DEFAULT)
            child_got = []
            async def child_main():
                got = asyncio.Event()
                def h(ev):
                    child_got.append(ev.pid)
                    got.set()
                asb.add_handler(signal.SIGUSR1, h)
                os.kill(os.getpid(), signal.SIGUSR1)
                await asyncio.wait_for(got.wait(), 5)
            try:
                run_on(sys.argv[1], child_main)
            except BaseException as e:
                print("child error", repr(e), flush=True)
                os._exit(2)
            os._exit(0 if ok and child_got == [os.getpid()] else 1)
        _, status = os.waitpid(pid, 0)
        print("child status", os.waitstatus_to_exitcode(status))
        async def check():
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.wait_for(parent_evt.wait(), 5)
        loop.run_until_complete(check())
        print("parent got", parent_got == [os.getpid()], parent_got)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, loop], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert "child status 0" in proc.stdout, proc.stdout + proc.stderr
    assert "parent got True" in proc.stdout, proc.stdout


def test_windows_is_refused_at_import() -> None:
    """On Windows the import fails with a clear message (simulated platform)."""
    code = (
        "import sys; sys.platform = 'win32'\n"
        "try:\n    import aiosigbridge\nexcept ImportError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "Windows is not supported" in proc.stdout, proc.stdout + proc.stderr
