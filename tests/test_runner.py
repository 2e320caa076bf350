"""run(): graceful shutdown, exit statuses, chained tracebacks, the second signal, the
grace period, and the task dump, each in a child process on both loops."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import aiosigbridge as asb

from .helpers import wait_not_pending

LOOPS = ["asyncio", "uvloop"]

PRELUDE = """
import asyncio, os, signal, sys, time
import aiosigbridge as asb
import uvloop
FACTORY = uvloop.new_event_loop if sys.argv[1] == "uvloop" else None
def ready():
    print("READY", flush=True)
"""


class Child:
    """A child Python running ``code``; lines of its stdout can be waited for."""

    def __init__(self, code: str, loop: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(code), loop],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self._pending = b""

    def expect(self, line: str, timeout: float = 20.0) -> None:
        """Block until stdout shows ``line`` (bounded).  Reads the fd itself: a buffered
        reader could hold the next line where select() cannot see it."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\n" in self._pending:
                got, self._pending = self._pending.split(b"\n", 1)
                self.out.append(got.decode() + "\n")
                if got.decode().strip() == line:
                    return
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self._pending += chunk
        self.proc.kill()
        _, err = self.proc.communicate()
        pytest.fail(f"child never printed {line!r}; stdout={self.out!r}\nstderr:\n{err}")

    def kill(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill_delivered(self, sig: int) -> None:
        """Send ``sig``, then wait (bounded) until it is delivered (helpers.wait_not_pending)."""
        self.kill(sig)
        wait_not_pending(self.proc.pid, sig)

    def finish(self, timeout: float = 20.0) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.out) + self._pending.decode() + out, err


@pytest.mark.parametrize("loop", LOOPS)
def test_sigterm_with_good_handlers_exits_quietly_143(loop: str) -> None:
    """SIGTERM: main is cancelled, its cleanup and the handlers run, exit 143, no
    traceback."""
    child = Child(
        """
        async def main():
            async def hook(ev):
                await asyncio.sleep(0.01)
                print("hook ran, sender", ev.pid, flush=True)
            asb.add_handler(signal.SIGTERM, hook)
            try:
                ready()
                await asyncio.sleep(60)
            finally:
                print("cleanup done", flush=True)
        asb.run(main(), loop_factory=FACTORY)
        """,
        loop,
    )
    child.expect("READY")
    child.kill(signal.SIGTERM)
    rc, out, err = child.finish()
    assert rc == 128 + signal.SIGTERM, err
    assert f"hook ran, sender {os.getpid()}" in out
    assert "cleanup done" in out
    assert err == ""


@pytest.mark.parametrize("loop", LOOPS)
def test_one_failing_handler_is_chained_once(loop: str) -> None:
    """A failing shutdown hook: non-zero status, one traceback with the failure once,
    as the cause of the main task's CancelledError."""
    child = Child(
        """
        def flush_cache(ev):
            raise ValueError("cache flush failed")
        async def main():
            asb.add_handler(signal.SIGTERM, flush_cache)
            ready()
            await asyncio.sleep(60)
        asb.run(main(), loop_factory=FACTORY)
        """,
        loop,
    )
    child.expect("READY")
    child.kill(signal.SIGTERM)
    rc, _, err = child.finish()
    assert rc == 1
    assert err.count("ValueError: cache flush failed") == 1, err
    # The failure, then main's CancelledError (3.10: and the awaiter's fresh copy of it).
    assert err.count("Traceback (most recent call last)") == (
        2 if sys.version_info >= (3, 11) else 3
    )
    assert "The above exception was the direct cause" in err
    assert "CancelledError: aiosigbridge: interrupted by SIGTERM" in err
    assert "handler flush_cache for SIGTERM" in err


@pytest.mark.parametrize("loop", LOOPS)
def test_several_failing_handlers_become_one_group(loop: str) -> None:
    """Several failing hooks (sync and async): one exception group, each failure once."""
    child = Child(
        """
        def first(ev):
            raise ValueError("first failed")
        async def second(ev):
            await asyncio.sleep(0.01)
            raise KeyError("second failed")
        async def main():
            asb.add_handler(signal.SIGTERM, first)
            asb.add_handler(signal.SIGTERM, second)
            ready()
            await asyncio.sleep(60)
        asb.run(main(), loop_factory=FACTORY)
        """,
        loop,
    )
    child.expect("READY")
    child.kill(signal.SIGTERM)
    rc, _, err = child.finish()
    assert rc == 1
    assert err.count("ValueError: first failed") == 1, err
    assert err.count("KeyError: 'second failed'") == 1, err
    assert "2 handlers for SIGTERM failed" in err
    assert "Task exception was never retrieved" not in err


@pytest.mark.parametrize("loop", LOOPS)
def test_sigint_keeps_the_runner_contract(loop: str) -> None:
    """SIGINT: the main task is cancelled, then KeyboardInterrupt."""
    child = Child(
        """
        async def main():
            try:
                ready()
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                print("main cancelled", flush=True)
                raise
        asb.run(main(), loop_factory=FACTORY)
        """,
        loop,
    )
    child.expect("READY")
    child.kill(signal.SIGINT)
    rc, out, err = child.finish()
    assert "main cancelled" in out
    assert "KeyboardInterrupt" in err
    assert rc in (-signal.SIGINT, 1, 130), (rc, err)


@pytest.mark.parametrize("loop", LOOPS)
def test_cpu_bound_main_is_interrupted(loop: str) -> None:
    """A main task that never awaits is interrupted by the first SIGTERM."""
    child = Child(
        """
        async def main():
            deadline = time.monotonic() + 60
            try:
                ready()
                # Not `while time.monotonic() < deadline: pass`: on 3.13 an exception
                # raised by a signal handler in a tight loop condition can skip the
                # enclosing finally (CPython issue 130279; KeyboardInterrupt too).
                while True:
                    if time.monotonic() >= deadline:
                        break
            finally:
                print("left the loop at", round(deadline - time.monotonic()), flush=True)
        asb.run(main(), loop_factory=FACTORY)
        """,
        loop,
    )
    child.expect("READY")
    child.kill(signal.SIGTERM)
    rc, out, err = child.finish()
    assert rc == 128 + signal.SIGTERM, err
    assert "left the loop at" in out
    assert "left the loop at 0" not in out


@pytest.mark.parametrize("loop", LOOPS)
def test_second_signal_forces_the_end(loop: str) -> None:
    """A second shutdown signal ends the process whatever the cleanup does."""
    child = Child(
        """
        async def main():
            try:
                ready()
                await asyncio.sleep(60)
            finally:
                print("CLEANUP", flush=True)
                await asyncio.sleep(60)   # a cleanup that hangs
        asb.run(main(), grace=60, loop_factory=FACTORY)
        """,
        loop,
    )
    child.expect("READY")
    child.kill(signal.SIGTERM)
    child.expect("CLEANUP")
    child.kill(signal.SIGTERM)
    rc, _, err = child.finish(timeout=10)
    assert rc == 128 + signal.SIGTERM
    assert "second shutdown signal (SIGTERM" in err


@pytest.mark.parametrize("loop", LOOPS)
def test_grace_expiry_prints_the_stragglers(loop: str) -> None:
    """When the grace period runs out, every unfinished task's stack is printed with
    its coroutine names, then the process ends."""
    child = Child(
        """
        async def stuck_worker():
            await asyncio.sleep(60)
        async def main():
            worker = asyncio.create_task(stuck_worker())
            try:
                ready()
                await asyncio.sleep(60)
            finally:
                await asyncio.shield(worker)   # cleanup waits for a worker forever
        asb.run(main(), grace=0.3, loop_factory=FACTORY)
        """,
        loop,
    )
    child.expect("READY")
    child.kill(signal.SIGTERM)
    rc, _, err = child.finish()
    assert rc == 128 + signal.SIGTERM
    assert "grace period of 0.3 s after SIGTERM ran out" in err
    assert "stuck_worker" in err
    assert re.search(r"line \d+, in main\b", err), err


needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@needs_gcc
@pytest.mark.parametrize("loop", LOOPS)
def test_third_signal_kills_a_process_stuck_in_c(loop: str, tmp_path: Path) -> None:
    """Stuck in C code holding the GIL, no Python runs: the C handler gives back the
    default action after the second delivery, and the third signal kills."""
    src = tmp_path / "spin.c"
    src.write_text(
        "#include <unistd.h>\n"
        'void spin(void) { (void)!write(1, "SPINNING\\n", 9);\n'
        '                  for (;;) { __asm__ volatile(""); } }\n'
    )
    lib = tmp_path / "libspin.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    child = Child(
        f"""
        import ctypes
        spin = ctypes.PyDLL({str(lib)!r}).spin   # PyDLL: the GIL stays held
        async def main():
            ready()
            spin()
        asb.run(main(), loop_factory=FACTORY)
        """,
        loop,
    )
    child.expect("READY")
    child.expect("SPINNING")  # written by spin() itself, from C
    for _ in range(3):
        child.kill_delivered(signal.SIGTERM)  # three deliveries, not one coalesced
    rc, _, _ = child.finish(timeout=10)
    assert rc == -signal.SIGTERM


@pytest.mark.parametrize("loop", LOOPS)
def test_task_dump_while_stuck(loop: str) -> None:
    """enable_task_dump prints every task's await chain and the main thread's stack
    even while the loop is stuck in CPU-bound code."""
    child = Child(
        """
        async def sleeper_task():
            await asyncio.sleep(60)
        def crunch_numbers(deadline):
            ready()   # from in here: the dump must find the main thread in this frame
            while time.monotonic() < deadline:
                pass
        async def main():
            asb.enable_task_dump(signal.SIGUSR1)
            asyncio.create_task(sleeper_task())
            await asyncio.sleep(0)
            crunch_numbers(time.monotonic() + 60)
        asb.run(main(), loop_factory=FACTORY)
        """,
        loop,
    )
    child.expect("READY")
    child.kill(signal.SIGUSR1)
    assert child.proc.stderr is not None
    deadline = time.monotonic() + 20
    err = ""
    while "crunch_numbers" not in err and time.monotonic() < deadline:
        ready, _, _ = select.select([child.proc.stderr], [], [], 0.5)
        if ready:
            err += os.read(child.proc.stderr.fileno(), 65536).decode()
    child.kill(signal.SIGKILL)
    child.finish()
    assert "task dump on SIGUSR1" in err
    assert "sleeper_task" in err
    assert "crunch_numbers" in err


def test_run_bad_arguments() -> None:
    """run() refuses a coroutine function, a negative grace, impossible signals."""

    async def main() -> None:
        pass

    with pytest.raises(TypeError, match=r"run\(main\(\)\), not run\(main\)"):
        asb.run(main)  # type: ignore[arg-type]
    for kwargs, exc, msg in [
        ({"grace": -1}, ValueError, "0 or more seconds"),
        ({"grace": "10"}, TypeError, "number of seconds"),
        ({"shutdown_signals": (signal.SIGKILL,)}, ValueError, "SIGKILL cannot be caught"),
    ]:
        coro = main()
        with pytest.raises(exc, match=msg):
            asb.run(coro, **kwargs)  # type: ignore[arg-type]
        assert coro.cr_frame is None  # closed: no "never awaited" warning


@pytest.mark.parametrize("loop", LOOPS)
def test_run_returns_mains_value_without_signals(loop: str) -> None:
    """Without a shutdown signal, run() is asyncio.run(): it returns main's value."""
    child = Child(
        """
        async def main():
            return 42
        print("RESULT", asb.run(main(), loop_factory=FACTORY), flush=True)
        print("getsignal", signal.getsignal(signal.SIGTERM), flush=True)
        """,
        loop,
    )
    rc, out, err = child.finish()
    assert rc == 0, err
    assert "RESULT 42" in out
    assert "getsignal Handlers.SIG_DFL" in out or "getsignal 0" in out
