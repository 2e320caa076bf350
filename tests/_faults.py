"""Helpers of the fault tests: child interpreters that print one RESULT line, bounded
polling, and the interrupt's CancelledError as an awaiter sees it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from typing import Any

from .helpers import TIMEOUT

LOOPS = ["asyncio", "uvloop"]


def child(code: str, *args: str, timeout: float = 40.0) -> dict[str, Any]:
    """Run ``code`` in a child interpreter; return the JSON of its ``RESULT`` line."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert lines, (proc.stdout, proc.stderr[-3000:])
    out: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    out["stderr"] = proc.stderr
    return out


def interrupted(exc: BaseException) -> BaseException:
    """The interrupt's CancelledError (3.10 hands an awaiter a fresh one whose
    __context__ it is)."""
    if sys.version_info < (3, 11) and not exc.args and exc.__context__ is not None:
        return exc.__context__
    return exc


async def until(cond: Any, timeout: float = TIMEOUT) -> None:
    """Wait (bounded) until ``cond()`` is true, letting the loop run."""

    async def poll() -> None:
        # Polled: an Event set by a done-callback would count as awaiting the task.
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


def uncancel() -> None:
    """Let the current task go on after an interrupt it caught (3.11+ counts them)."""
    task = asyncio.current_task()
    while task is not None and hasattr(task, "uncancel") and task.cancelling():
        task.uncancel()
