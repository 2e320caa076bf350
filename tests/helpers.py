"""Shared test helpers: child processes that send or receive real signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

TIMEOUT = 5.0


class Collector:
    """A sync handler that records events; ``await c.wait(n)`` until it has ``n``."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, ev: Any) -> None:
        self.events.append(ev)
        self._changed.set()

    async def wait(self, n: int = 1, timeout: float = TIMEOUT) -> list[Any]:
        async def enough() -> None:
            while len(self.events) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.events


async def run_python(code: str, *args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """Run ``python -c code`` in a child, wait for it without blocking the loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(code),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def run_script(code: str, *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` to completion (for tests that need a whole process)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# Runs a coroutine on the loop named by argv[1] ("asyncio" or "uvloop") in a child.
LOOP_RUNNER = """
import asyncio, sys
def run_on(name, coro_fn):
    if name == "uvloop":
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(coro_fn())
    loop = factory()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro_fn())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
"""


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


PID = os.getpid()


def wait_not_pending(pid: int, sig: int, timeout: float = 10.0) -> None:
    """Wait (bounded) until ``sig`` is no longer pending in process ``pid`` (its
    /proc status ShdPnd): delivered, so that the next one sent is a delivery of its own,
    not coalesced with it.  A process that ended counts as delivered."""
    status = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fields = dict(ln.split(":", 1) for ln in status.read_text().splitlines())
        except OSError:
            return  # gone
        with contextlib.suppress(KeyError, ValueError):
            if "zombie" in fields["State"] or not int(fields["ShdPnd"], 16) >> (sig - 1) & 1:
                return
        time.sleep(0.001)
    msg = f"signal {sig} still pending in process {pid} after {timeout} s"
    raise AssertionError(msg)
