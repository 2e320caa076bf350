"""run()'s edge cases, each in a child process on both loops: inherited SIG_IGN, a signal
during the teardown, the watchdog past 1024 fds, grace expiry with a broken or closed
stderr, _thread.interrupt_main(), a main cancelled before Ctrl-C, several run()s in
threads, run() in a worker thread, and a CPU-bound main."""

from __future__ import annotations

import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import wait_not_pending

LOOPS = ["asyncio", "uvloop"]
TERM, INT = signal.SIGTERM, signal.SIGINT
KI_STATUS = (-INT, 128 + INT)  # CPython's end on an unhandled KeyboardInterrupt

PRELUDE = """
import asyncio, os, signal, sys, threading, time
import aiosigbridge as asb
import uvloop
FACTORY = uvloop.new_event_loop if sys.argv[1] == "uvloop" else None
def say(*what):
    print(*what, flush=True)
"""


_children: list[Child] = []


@pytest.fixture(autouse=True)
def _no_child_left() -> Iterator[None]:
    """A test that fails half-way leaves no child running nor pipe open."""
    yield
    while _children:
        _children.pop().close()


class Child:
    """A child Python running ``code``; lines of its stdout can be waited for."""

    def __init__(self, code: str, *args: object, ignored: int = 0, stdin: bool = False) -> None:
        argv = [sys.executable, "-c", PRELUDE + textwrap.dedent(code), *map(str, args)]
        if ignored:  # inherited at exec as SIG_IGN, as by nohup or a shell's background job
            argv = ["sh", "-c", f'trap \'\' {int(ignored)}; exec "$0" "$@"', *argv]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out: list[str] = []
        self._pending = b""
        _children.append(self)

    def expect(self, start: str | tuple[str, ...], timeout: float = 20.0) -> str:
        """Block until a line of stdout starts with ``start`` (bounded); return it.
        Reads the fd itself: a buffered reader could hold a line select() cannot see."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\n" in self._pending:
                got, self._pending = self._pending.split(b"\n", 1)
                self.out.append(got.decode())
                if got.decode().startswith(start):
                    return got.decode()
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self._pending += chunk
        self.proc.kill()
        _, err = self.proc.communicate()
        pytest.fail(f"child never printed {start!r}; stdout={self.out!r}\nstderr:\n{err!r}")

    def kill(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill_delivered(self, sig: int) -> None:
        """Send ``sig``, then wait (bounded) until it is delivered (helpers.wait_not_pending)."""
        self.kill(sig)
        wait_not_pending(self.proc.pid, sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()

    def finish(self, timeout: float = 20.0) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"child still running after {timeout} s; stderr:\n{err!r}")
        text = "\n".join(self.out) + "\n" + (self._pending + out).decode()
        return self.proc.returncode, text, (err or b"").decode()


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(("ignored", "other"), [(TERM, INT), (INT, TERM)])
def test_inherited_sig_ign_stays_ignored(loop: str, ignored: int, other: int) -> None:
    """A shutdown signal inherited as SIG_IGN does nothing; the other one still works."""
    child = Child(
        """
        async def main():
            asb.add_handler(signal.SIGUSR1, lambda ev: say("ALIVE"))
            try:
                say("READY")
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                say("main cancelled")
                raise
        try:
            asb.run(main(), loop_factory=FACTORY)
        finally:
            say("after run", signal.getsignal(int(sys.argv[2])) == signal.SIG_IGN)
        """,
        loop,
        int(ignored),
        ignored=ignored,
    )
    child.expect("READY")
    for _ in range(3):
        child.kill_delivered(ignored)
    child.kill(signal.SIGUSR1)
    child.expect("ALIVE")  # still running
    assert "main cancelled" not in child.out
    child.kill(other)
    rc, out, err = child.finish()
    assert "main cancelled" in out
    assert "after run True" in out  # still ignored after run()
    assert "second shutdown signal" not in err
    if other == INT:
        assert rc in KI_STATUS, (rc, err)
        assert "KeyboardInterrupt" in err
    else:
        assert rc == 128 + TERM, err
        assert err == ""


TEARDOWN = """
import logging
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(message)s")
async def proceed():   # until the test closes our stdin
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
async def lingering():
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        say("TEARDOWN")   # cancelled by run()'s teardown: slow to finish
        await proceed()
        raise
async def agen():
    try:
        yield 1
    finally:
        say("TEARDOWN")   # finalised by run()'s shutdown_asyncgens(): slow too
        await proceed()
KEEP = []
async def main():
    if sys.argv[2] == "task":
        asyncio.create_task(lingering())
    else:
        KEEP.append(agen())   # alive after main: run() finalises it
        await KEEP[0].__anext__()
    await asyncio.sleep(0)
    return "main's result"
try:
    say("RETURNED", asb.run(main(), loop_factory=FACTORY))
except KeyboardInterrupt:
    say("RAISED KeyboardInterrupt")
    raise
"""


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("slow", ["task", "asyncgen"])
@pytest.mark.parametrize("sig", [TERM, INT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_teardown_is_not_swallowed(loop: str, slow: str, sig: int) -> None:
    """A shutdown signal during a slow teardown ends run(): 143 quietly, or KeyboardInterrupt."""
    child = Child(TEARDOWN, loop, slow, stdin=True)
    child.expect("TEARDOWN")
    child.kill(sig)  # during the teardown; once run() has seen it (logged it, or Python
    # raised KeyboardInterrupt at once), the teardown may finish.
    child.expect((f"LOG aiosigbridge.run(): {signal.Signals(sig).name} from pid", "RAISED"))
    rc, out, err = child.finish()  # closes the child's stdin: proceed() returns
    assert "RETURNED main's result" not in out
    if sig == TERM:
        assert rc == 128 + TERM, err
        assert "Traceback" not in err
    else:
        assert rc in KI_STATUS, (rc, err)
        assert err.rstrip().endswith("KeyboardInterrupt"), err


@pytest.mark.parametrize("loop", LOOPS)
def test_sigterm_delivered_while_async_generators_close_is_not_swallowed(loop: str) -> None:
    """A SIGTERM delivered in shutdown_asyncgens() ends run() with 143, 50 times of 50."""
    # Sent by the process to itself: delivered before kill() returns, so it lands at a
    # chosen point of the teardown, which a signal from the parent cannot.  On one CPU
    # (a small container) run()'s watchdog thread is rarely scheduled before it ends.
    child = Child(
        """
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        KEEP = []
        async def agen():
            try:
                yield 1
            finally:
                await asyncio.sleep(0)   # the bridge's own closer has run by now
                os.kill(os.getpid(), signal.SIGTERM)   # run() is tearing down
        async def main():
            KEEP.append(agen())
            await KEEP[-1].__anext__()
            return "main's result"
        swallowed = 0
        for _ in range(50):
            try:
                asb.run(main(), loop_factory=FACTORY)
                swallowed += 1
            except SystemExit as exc:
                assert exc.code == 143, exc.code
        say("SWALLOWED", swallowed)
        """,
        loop,
    )
    rc, out, err = child.finish()
    assert rc == 0, err
    assert "SWALLOWED 0" in out


STUBBORN = """
import resource
if sys.argv[3] == "1100 fds":
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # a busy server's
    say("FDS", max(held))
elif sys.argv[3] == "closed":
    os.close(2)   # a daemon without stderr
elif sys.argv[3] == "SIGPIPE default":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # as many command-line tools do
async def stubborn_worker():
    while True:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            say("CANCELLED")   # a main that does not end when cancelled
async def main():
    say("READY")
    await stubborn_worker()
asb.run(main(), grace=float(sys.argv[2]), loop_factory=FACTORY)
"""


@pytest.mark.skipif(resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4096, reason="needs 4096 fds")
@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("end", ["second signal", "grace"])
def test_watchdog_past_1024_fds(loop: str, end: str) -> None:
    """With 1100 open fds the second signal and the end of grace still exit with 143."""
    child = Child(STUBBORN, loop, 60 if end == "second signal" else 0.5, "1100 fds")
    assert int(child.expect("FDS").split()[1]) > 1024
    child.expect("READY")
    child.kill(TERM)
    child.expect("CANCELLED")
    if end == "second signal":
        child.kill(TERM)
    rc, _, err = child.finish(timeout=15)
    assert rc == 128 + TERM, err
    if end == "second signal":
        assert "second shutdown signal (SIGTERM" in err
    else:
        assert "grace period of 0.5 s after SIGTERM ran out" in err
        assert "stubborn_worker" in err


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(
    "stderr",
    ["broken", "closed", "SIGPIPE default"],
)
def test_grace_expiry_with_unusable_stderr(loop: str, stderr: str) -> None:
    """The end of grace exits with 143 even when stderr is a broken pipe or closed."""
    child = Child(STUBBORN, loop, 0.5, stderr)
    child.expect("READY")
    if stderr != "closed":
        assert child.proc.stderr is not None
        child.proc.stderr.close()  # every write to it now fails (EPIPE, or SIGPIPE)
        child.proc.stderr = None
    sent = time.monotonic()
    child.kill(TERM)
    child.expect("CANCELLED")
    rc, _, _ = child.finish(timeout=15)
    assert rc == 128 + TERM
    assert time.monotonic() - sent < 0.5 + 10


@pytest.mark.parametrize("loop", LOOPS)
def test_interrupt_main_acts_as_ctrl_c(loop: str) -> None:
    """_thread.interrupt_main(): main cancelled, then KeyboardInterrupt, without a stall."""
    child = Child(
        """
        import _thread
        async def main():
            try:
                threading.Thread(target=_thread.interrupt_main).start()
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                say("main cancelled")
                raise
        say("READY")
        asb.run(main(), handler_timeout=30, grace=60, loop_factory=FACTORY)
        """,
        loop,
    )
    child.expect("READY")
    started = time.monotonic()
    rc, out, err = child.finish(timeout=25)
    assert time.monotonic() - started < 10  # a wait for handler_timeout would take 30 s
    assert "main cancelled" in out
    assert rc in KI_STATUS, (rc, err)
    assert err.rstrip().endswith("KeyboardInterrupt"), err


@pytest.mark.parametrize("loop", LOOPS)
def test_ctrl_c_after_main_was_cancelled_raises_cancelled_error(loop: str) -> None:
    """Ctrl-C after someone else cancelled main: CancelledError, as asyncio.Runner (3.11+)."""
    child = Child(
        """
        async def main():
            me = asyncio.current_task()
            async def canceller():
                me.cancel()
            asyncio.create_task(canceller())
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                say("READY")   # cancelled by another task; a long cleanup
                await asyncio.sleep(60)
        try:
            asb.run(main(), loop_factory=FACTORY)
        except BaseException as exc:
            say("RAISED", type(exc).__name__)
            raise
        """,
        loop,
    )
    child.expect("READY")
    child.kill(INT)
    rc, out, err = child.finish()
    if sys.version_info >= (3, 11):
        assert "RAISED CancelledError" in out, (out, err)
        assert rc == 1
    else:  # no cancel counts: run() cannot tell (asyncio.Runner is 3.11+)
        assert "RAISED KeyboardInterrupt" in out, (out, err)
        assert rc in KI_STATUS, (rc, err)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("loop", LOOPS)
def test_finished_run_in_a_thread_keeps_the_escalation(loop: str, tmp_path: Path) -> None:
    """A worker's run() ending leaves the others' escalation: the third SIGTERM kills."""
    src = tmp_path / "stuck.c"
    src.write_text(
        "#include <unistd.h>\n"
        'void stuck(void) { (void)!write(1, "STUCK\\n", 6); for (;;) pause(); }\n'
    )
    lib = tmp_path / "libstuck.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    child = Child(
        f"""
        import ctypes
        stuck = ctypes.PyDLL({str(lib)!r}).stuck   # PyDLL: the GIL stays held
        armed, leave = [threading.Event(), threading.Event()], threading.Event()
        def worker(i):
            async def wmain():
                armed[i].set()
                await asyncio.to_thread(leave.wait if i == 0 else threading.Event().wait)
            asb.run(wmain(), shutdown_signals=(signal.SIGTERM,), loop_factory=FACTORY)
        workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in (0, 1)]
        for t in workers:
            t.start()
        async def main():
            for ev in armed:
                await asyncio.to_thread(ev.wait)   # both run()s armed
            leave.set()
            await asyncio.to_thread(workers[0].join)   # and one ended
            stuck()
        asb.run(main(), loop_factory=FACTORY)
        """,
        loop,
    )
    child.expect("STUCK")  # written by stuck() itself, from C
    for _ in range(3):
        child.kill_delivered(TERM)
    rc, _, _ = child.finish(timeout=10)
    assert rc == -TERM


@pytest.mark.parametrize("loop", LOOPS)
def test_sigterm_to_run_in_a_worker_thread_ends_the_process(loop: str) -> None:
    """run() in a worker thread: SIGTERM ends the run, then the process dies by SIGTERM."""
    child = Child(
        """
        async def main():
            try:
                say("READY")
                await asyncio.sleep(60)
            finally:
                say("cleanup done")
        t = threading.Thread(target=asb.run, args=(main(),), kwargs={"loop_factory": FACTORY})
        t.start()
        t.join()
        say("thread ended, process still alive")
        """,
        loop,
    )
    child.expect("READY")
    child.kill(TERM)
    rc, out, err = child.finish()
    assert "cleanup done" in out
    assert "process still alive" not in out
    assert rc == -TERM, err


@pytest.mark.parametrize("loop", LOOPS)
def test_ctrl_c_to_run_in_a_worker_thread_reaches_the_main_thread_once(loop: str) -> None:
    """run() in a worker thread, one Ctrl-C (SIGINT from another process) a round: run()
    consumes it (main cancelled, KeyboardInterrupt in the worker) and hands it back once,
    so Python's handler in the main thread runs exactly once, 12 rounds of 12.

    The C handler runs in the main thread (the kernel's first choice), which here is
    pinned with the worker to one CPU at nice 19: the worker it wakes preempts it in the
    middle of the handler, and run() may end and let go of SIGINT before the handler
    decides whether to forward the delivery.  It must not forward one that run()
    consumed (it used to, about 1 round in 5: twice in the main thread)."""
    rounds = 12
    child = Child(
        """
        import queue
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        calls = []
        signal.signal(signal.SIGINT, lambda s, f: calls.append(s))
        def checkpoint():   # a Python call: tripped handlers run before it returns
            pass
        # Workers are started by a thread at nice 0 (a thread inherits its creator's).
        starts, started = queue.Queue(), queue.Queue()
        def spawner():
            for target in iter(starts.get, None):
                t = threading.Thread(target=target)
                t.start()
                started.put(t)
        threading.Thread(target=spawner, daemon=True).start()
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        for i in range(int(sys.argv[2])):
            running, res = threading.Event(), []
            async def main():
                running.set()
                await asyncio.sleep(60)
            def worker():
                try:
                    asb.run(main(), loop_factory=FACTORY)
                except BaseException as e:
                    res.append(type(e).__name__)
            starts.put(worker)
            t = started.get()
            running.wait()
            before = len(calls)
            say("READY", i)
            t.join()
            checkpoint()
            say("ROUND", i, len(calls) - before, *res)
        """,
        loop,
        rounds,
    )
    for i in range(rounds):
        child.expect(f"READY {i}")
        child.kill(INT)
        child.expect(f"ROUND {i}")
    rc, out, err = child.finish()
    assert rc == 0, err
    got = [ln for ln in out.splitlines() if ln.startswith("ROUND")]
    wrong = [ln for i, ln in enumerate(got) if ln != f"ROUND {i} 1 KeyboardInterrupt"]
    assert len(got) == rounds, got
    assert not wrong, f"{len(wrong)} of {rounds} rounds wrong: {wrong}"


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("other_thread", ["idle", "busy"])
def test_cpu_bound_main_is_interrupted_promptly(loop: str, other_thread: str) -> None:
    """A main that never awaits is interrupted by the first SIGTERM at once; exit 143.

    "busy": another Python thread competes for the GIL the whole time, so the main
    thread runs in 5 ms turns (the interrupt timer's re-checks land while BRIDGED runs
    and nest, and a thread that waits for the GIL can starve)."""
    child = Child(
        """
        import threading
        def spin():
            n = 0
            while True:
                n += 1
        if sys.argv[3] == "busy":
            threading.Thread(target=spin, daemon=True).start()
        def crunch(deadline):
            n = 0
            while True:
                n += 1
                if time.monotonic() >= deadline:
                    return n
        async def main():
            try:
                say("READY")
                crunch(time.monotonic() + 60)
            finally:
                say("LEFT")
        asb.run(main(), loop_factory=FACTORY)
        """,
        loop,
        "x",
        other_thread,
    )
    child.expect("READY")
    sent = time.monotonic()
    child.kill(TERM)
    child.expect("LEFT")
    assert time.monotonic() - sent < 2.0  # not at crunch()'s own end, 60 s on
    rc, _, err = child.finish()
    assert rc == 128 + TERM, err
    assert err == ""
