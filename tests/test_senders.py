"""senders=: only the given senders reach a handler; the others are counted."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys

import aiosigbridge as asb

from .helpers import Collector, run_python, run_script

SIG = signal.SIGUSR1
KILL_PARENT = "import os, signal; os.kill(os.getppid(), signal.SIGUSR1)"


async def test_this_process_only() -> None:
    """this_process=True: the process's own kill() is accepted, a child's is dropped
    and counted as filtered, while an unfiltered handler sees both."""
    mine, everyone = Collector(), Collector()
    bridge = asb.get_bridge()
    bridge.add_handler(SIG, mine, senders=asb.Senders(this_process=True))
    bridge.add_handler(SIG, everyone)
    rc, _, err = await run_python(KILL_PARENT)
    assert rc == 0, err
    await everyone.wait(1)
    os.kill(os.getpid(), SIG)
    await everyone.wait(2)
    assert [e.pid for e in mine.events] == [os.getpid()]
    assert bridge.stats()[SIG].filtered == 1


async def test_by_pid_and_parent() -> None:
    """pids= accepts exactly that process; parent=True refuses a child (the sender is
    not this process's parent)."""
    by_pid, by_other_pid, by_parent, everyone = Collector(), Collector(), Collector(), Collector()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; sys.stdin.readline(); " + KILL_PARENT,
        stdin=asyncio.subprocess.PIPE,
    )
    bridge = asb.get_bridge()
    bridge.add_handler(SIG, by_pid, senders=asb.Senders(pids={proc.pid}))
    bridge.add_handler(SIG, by_other_pid, senders=asb.Senders(pids={proc.pid + 1}))
    bridge.add_handler(SIG, by_parent, senders=asb.Senders(parent=True))
    bridge.add_handler(SIG, everyone)
    await proc.communicate(b"go\n")
    assert proc.returncode == 0
    await everyone.wait(1)
    assert [e.pid for e in by_pid.events] == [proc.pid]
    assert by_other_pid.events == []
    assert by_parent.events == []
    assert bridge.stats()[SIG].filtered == 2


async def test_by_uid() -> None:
    """uids= compares the sender's real uid."""
    same, other, everyone = Collector(), Collector(), Collector()
    bridge = asb.get_bridge()
    bridge.add_handler(SIG, same, senders=asb.Senders(uids={os.getuid()}))
    bridge.add_handler(SIG, other, senders=asb.Senders(uids={os.getuid() + 4242}))
    bridge.add_handler(SIG, everyone)
    os.kill(os.getpid(), SIG)
    await everyone.wait(1)
    assert len(same.events) == 1
    assert other.events == []


async def test_kernel_sent() -> None:
    """kernel=True accepts what the kernel sends (SIGCHLD of an exiting child) and
    refuses user kill()s."""
    kernel, everyone = Collector(), Collector()
    bridge = asb.get_bridge()
    bridge.add_handler(signal.SIGCHLD, kernel, senders=asb.Senders(kernel=True))
    bridge.add_handler(signal.SIGCHLD, everyone)
    os.kill(os.getpid(), signal.SIGCHLD)  # user-sent: refused
    await everyone.wait(1)
    assert kernel.events == []
    # Not through the loop: uvloop's subprocess support takes SIGCHLD over.
    loop = asyncio.get_running_loop()
    child = await loop.run_in_executor(None, functools.partial(run_script, "pass"))
    assert child.returncode == 0
    await everyone.wait(2)
    assert [e.code for e in kernel.events] == [everyone.events[1].code]
    assert kernel.events[0].code in asb.CLD_CODES
