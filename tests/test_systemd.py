"""systemd's notify protocol: asb.notify() and what run() tells the service manager,
checked against a real AF_UNIX datagram socket that plays systemd's side."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import aiosigbridge as asb

from .test_runner_edges import LOOPS, Child

TERM, HUP = signal.SIGTERM, signal.SIGHUP


class Systemd:
    """The service manager's end: every datagram the service sends, in order."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind)
        self.address = address
        self.seen: list[list[str]] = []

    def next(self, timeout: float = 20.0) -> list[str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        fields = data.decode().split("\n")
        self.seen.append(fields)
        return fields

    def until(self, field: str, timeout: float = 20.0) -> list[list[str]]:
        """Datagrams up to and including the first with a field starting ``field``."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            fields = self.next(max(0.01, deadline - time.monotonic()))
            got.append(fields)
            if any(f.startswith(field) for f in fields):
                return got


@pytest.fixture(params=["path", "abstract"])
def systemd(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Systemd]:
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
    else:
        address = f"@aiosigbridge-test-{os.getpid()}-{time.monotonic_ns()}"
    sd = Systemd(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sd
    sd.sock.close()


def test_notify_sends_one_datagram(systemd: Systemd) -> None:
    """KEY=VALUE fields, one per line, in one datagram; path and abstract sockets."""
    assert asb.notify("READY=1", "STATUS=serving") is True
    assert systemd.next() == ["READY=1", "STATUS=serving"]


def test_notify_without_systemd_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert asb.notify("READY=1") is False


@pytest.mark.parametrize("bad", [(), ("READY",), ("A=1\nB=2",), ("=1",), ("STATUS=a\0b",)])
def test_notify_refuses_malformed_fields(bad: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        asb.notify(*bad)


def test_notify_takes_str_fields_only() -> None:
    with pytest.raises(TypeError, match="bytes"):
        asb.notify(b"READY=1")  # type: ignore[arg-type]


def test_notify_to_a_dead_socket_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    with pytest.raises(FileNotFoundError):
        asb.notify("READY=1")


SERVICE = """
reload_fails = sys.argv[2] == "fail"
async def main():
    async def reload_config(ev):
        await asyncio.sleep(0.05)
        asb.notify("STATUS=reloaded by pid %d" % ev.pid)
        if reload_fails:
            raise RuntimeError("bad config line 3")
    asb.add_handler(signal.SIGHUP, reload_config)
    asb.notify("READY=1")
    say("READY")
    await asyncio.sleep(60)
asb.run(main(), reload_signals=(signal.SIGHUP,), loop_factory=FACTORY)
"""


@pytest.mark.parametrize("loop", LOOPS)
def test_reload_and_stop_under_systemd(systemd: Systemd, loop: str) -> None:
    """SIGHUP: RELOADING=1 + MONOTONIC_USEC before the handlers, READY=1 after the
    async one finished; SIGTERM: STOPPING=1 + EXTEND_TIMEOUT_USEC, exit 143."""
    child = Child(SERVICE, loop, "ok")
    assert systemd.next() == ["READY=1"]
    child.expect("READY")
    sender = subprocess.run(["kill", "-HUP", str(child.proc.pid)], check=True)
    assert sender.returncode == 0
    got = systemd.until("READY=1")
    assert got[0][0] == "RELOADING=1"
    usec = int(got[0][1].removeprefix("MONOTONIC_USEC="))
    assert abs(usec - time.monotonic_ns() // 1000) < 20_000_000  # CLOCK_MONOTONIC, µs
    assert got[1][0].startswith("STATUS=reloaded by pid ")
    assert got[2] == ["READY=1"]
    assert len(got) == 3
    child.kill(TERM)
    stop = systemd.next()
    assert stop[0] == "STOPPING=1"
    assert int(stop[1].removeprefix("EXTEND_TIMEOUT_USEC=")) >= 10_000_000
    rc, _, err = child.finish()
    assert rc == 128 + TERM, err
    assert "Traceback" not in err


@pytest.mark.parametrize("loop", LOOPS)
def test_failed_reload_handler_is_named_in_status(systemd: Systemd, loop: str) -> None:
    """A reload handler that raises: STATUS= names it, then READY=1 (still serving)."""
    child = Child(SERVICE, loop, "fail")
    assert systemd.next() == ["READY=1"]
    child.expect("READY")
    child.kill(HUP)
    got = systemd.until("READY=1")
    last = got[-1]
    assert last[-1] == "READY=1"
    status = [f for f in last if f.startswith("STATUS=")]
    assert status, got
    assert "reload_config" in status[0]
    assert "bad config line 3" in status[0]
    child.kill(TERM)
    rc, _, _ = child.finish()
    assert rc == 128 + TERM


OVERLAPPING = """
policy = sys.argv[2]
async def main():
    async def reload_config(ev):
        asb.notify("STATUS=reload started")
        await asyncio.sleep(0.3)
        asb.notify("STATUS=reload finished")
    asb.add_handler(signal.SIGHUP, reload_config, policy=policy)
    asb.notify("READY=1")
    await asyncio.sleep(60)
asb.run(main(), reload_signals=(signal.SIGHUP,), loop_factory=FACTORY)
"""


@pytest.mark.parametrize("policy", ["serial", "concurrent", "latest"])
@pytest.mark.parametrize("loop", LOOPS)
def test_overlapping_reloads_are_ready_after_the_last(
    systemd: Systemd, loop: str, policy: str
) -> None:
    """A second SIGHUP while the first reload runs: READY=1 comes once, after every
    run (queued, concurrent or superseding) has ended."""
    child = Child(OVERLAPPING, loop, policy)
    assert systemd.next() == ["READY=1"]
    child.kill_delivered(HUP)
    assert systemd.next()[0] == "RELOADING=1"
    assert systemd.next() == ["STATUS=reload started"]
    child.kill_delivered(HUP)  # while the first run sleeps
    got = systemd.until("READY=1")
    flat = [fields[0] for fields in got]
    assert flat.count("READY=1") == 1
    assert flat[-1] == "READY=1"
    assert "RELOADING=1" in flat
    if policy != "latest":  # a superseded run is cancelled: it never says finished
        assert flat[-2] == "STATUS=reload finished"
        assert flat.count("STATUS=reload finished") == 2
    child.kill(TERM)
    rc, _, _ = child.finish()
    assert rc == 128 + TERM


@pytest.mark.parametrize("loop", LOOPS)
def test_reload_during_the_drain_is_not_announced(systemd: Systemd, loop: str) -> None:
    """After STOPPING=1 a reload signal still runs its handlers, but systemd hears no
    RELOADING=1 / READY=1 any more."""
    child = Child(
        """
        async def main():
            asb.add_handler(signal.SIGHUP, lambda ev: say("RELOAD HANDLER"))
            try:
                say("READY")
                await asyncio.sleep(60)
            finally:
                say("DRAINING")
                await asyncio.sleep(0.5)
                asb.notify("STATUS=drained")
        asb.run(main(), reload_signals=(signal.SIGHUP,), loop_factory=FACTORY)
        """,
        loop,
    )
    child.expect("READY")
    child.kill(TERM)
    assert systemd.next()[0] == "STOPPING=1"
    child.expect("DRAINING")
    child.kill(HUP)
    child.expect("RELOAD HANDLER")
    assert systemd.next() == ["STATUS=drained"]  # nothing about the reload before it
    rc, _, _ = child.finish()
    assert rc == 128 + TERM


WATCHED = """
async def main():
    say("READY")
    await asyncio.sleep(60)
asb.run(main(), loop_factory=FACTORY)
"""


@pytest.mark.parametrize("loop", LOOPS)
def test_watchdog_pings_from_the_loop(
    systemd: Systemd, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WATCHDOG_USEC set for this process: WATCHDOG=1 keeps coming while the loop runs."""
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    child = Child(WATCHED, loop)
    child.expect("READY")
    for _ in range(3):
        assert systemd.next() == ["WATCHDOG=1"]
    child.kill(TERM)
    rc, _, _ = child.finish()
    assert rc == 128 + TERM


def test_watchdog_for_another_pid_is_not_ours(
    systemd: Systemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WATCHDOG_PID names another process (the service's parent): no pings here."""
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    child = Child(
        """
        async def main():
            asb.notify("STATUS=up")
            await asyncio.sleep(0.3)
            asb.notify("STATUS=done")
        asb.run(main(), loop_factory=FACTORY)
        """,
        "asyncio",
    )
    assert systemd.next() == ["STATUS=up"]
    assert systemd.next() == ["STATUS=done"]  # nothing in between
    rc, _, _ = child.finish()
    assert rc == 0


def test_reload_signal_cannot_also_shut_down() -> None:
    async def main() -> None:
        pass  # pragma: no cover - never run

    coro = main()
    with pytest.raises(ValueError, match="SIGHUP cannot both shut down and reload"):
        asb.run(coro, shutdown_signals=(HUP,), reload_signals=(HUP,))


# -- who sent it ---------------------------------------------------------------------


async def test_sender_name_of_a_live_sender_and_of_a_gone_one() -> None:
    """`sh` sends (kill is its builtin) and stays: named; once it exited: None."""
    got = asyncio.get_running_loop().create_future()
    h = asb.add_handler(signal.SIGUSR1, lambda ev: got.done() or got.set_result(ev))
    try:
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", f"kill -USR1 {os.getpid()}; read x", stdin=subprocess.PIPE
        )
        ev = await asyncio.wait_for(got, 5)
        assert ev.pid == proc.pid
        assert ev.sender_name() == "sh"
        assert ev.describe() == f"SIGUSR1 from pid {proc.pid} (sh), uid {os.getuid()}"
        assert proc.stdin is not None
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 5)
        assert ev.sender_name() is None
    finally:
        h.remove()


def test_sender_name_of_an_unreaped_sender_is_none() -> None:
    """A sender that exited but was not waited for (a zombie) is gone: no name."""

    async def receive() -> tuple[asb.SignalEvent, subprocess.Popen[bytes]]:
        got: asyncio.Future[asb.SignalEvent] = asyncio.get_running_loop().create_future()
        h = asb.add_handler(signal.SIGUSR1, lambda ev: got.done() or got.set_result(ev))
        try:
            # Popen, not asyncio's: nothing reaps it until wait() below.
            proc = subprocess.Popen(["kill", "-USR1", str(os.getpid())])  # noqa: ASYNC220
            return await asyncio.wait_for(got, 5), proc
        finally:
            h.remove()

    ev, proc = asyncio.run(receive())
    try:
        stat = Path(f"/proc/{proc.pid}/stat")
        deadline = time.monotonic() + 5
        while stat.read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the sender never exited"
        assert ev.pid == proc.pid
        assert ev.sender_name() is None
    finally:
        proc.wait()


async def test_sender_name_of_the_kernel_is_none() -> None:
    """SIGALRM from an interval timer: the kernel sent it (pid 0): no name."""
    got = asyncio.get_running_loop().create_future()
    h = asb.add_handler(signal.SIGALRM, lambda ev: got.done() or got.set_result(ev))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.001)
        ev = await asyncio.wait_for(got, 5)
        assert ev.pid == 0
        assert ev.sender_name() is None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        h.remove()


@pytest.mark.parametrize("loop", LOOPS)
def test_run_logs_who_stopped_it(loop: str) -> None:
    """run() logs the shutdown signal with the sender's pid, name and uid."""
    child = Child(
        """
        import logging
        logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
        async def main():
            say("READY")
            await asyncio.sleep(60)
        asb.run(main(), loop_factory=FACTORY)
        """,
        loop,
    )
    child.expect("READY")
    sender = subprocess.Popen(
        ["sh", "-c", f"kill -TERM {child.proc.pid}; read x"], stdin=subprocess.PIPE
    )
    try:
        rc, _, err = child.finish()
    finally:
        assert sender.stdin is not None
        sender.stdin.close()
        sender.wait(5)
    assert rc == 128 + TERM
    want = f"aiosigbridge aiosigbridge.run(): SIGTERM from pid {sender.pid} (sh), uid {os.getuid()}"
    assert want in err, err
