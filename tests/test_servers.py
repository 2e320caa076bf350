"""End to end: uvicorn, hypercorn and aiohttp under aiosigbridge.run(), on both loops.

Each test runs one of examples/{uvicorn,hypercorn,aiohttp}_app.py in a child process
(``--loop asyncio`` or ``--loop uvloop``), talks HTTP/1.1 to it over raw sockets, and
signals it from other processes (``kill``), so that the sender's pid is known.  The
apps' ``/slow?id=N`` handler prints ``IN FLIGHT N`` when it starts and then waits until
the app gets SIGUSR1: a request is in flight for as long as the test wants, and the test
knows the server has taken it on.  Nothing is synchronised by sleeping: every wait is
for a line of the child's output, a socket, or a process, and bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SERVERS = ["uvicorn", "hypercorn", "aiohttp"]
LOOPS = ["asyncio", "uvloop"]
HOST = "127.0.0.1"
WAIT = 10.0  # bound on every single wait
GRACE = 30.0  # the apps' drain limit: far beyond WAIT, so it never ends a test by itself
SLOW_BODY = b"x" * 65536  # what the apps append to a /slow answer
SIGTERM_STATUS = 128 + signal.SIGTERM
KILL = shutil.which("kill")


def send_signal(pid: int, sig: signal.Signals) -> int:
    """Send ``sig`` to ``pid`` from a process of its own; returns that sender's pid."""
    if KILL is not None:
        argv = [KILL, f"-{sig.name.removeprefix('SIG')}", str(pid)]
    else:
        argv = [sys.executable, "-c", f"import os; os.kill({pid}, {int(sig)})"]
    sender = subprocess.Popen(argv)
    assert sender.wait(timeout=WAIT) == 0, f"{argv} failed"
    return sender.pid


die_with_parent: Callable[[], object] | None = None
if sys.platform == "linux":
    # Run in the child before exec: SIGKILL it when the test process dies (even by
    # os._exit, as pytest-timeout ends it), so that no server outlives the run.  The
    # function is looked up here, in the parent: the forked child only calls it.
    PR_SET_PDEATHSIG = 1
    die_with_parent = functools.partial(
        ctypes.CDLL(None, use_errno=True).prctl, PR_SET_PDEATHSIG, int(signal.SIGKILL)
    )


def deadline_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


class ServerChild:
    """An example app in a child process.  Its stdout is split into lines that can be
    waited for; its stderr is collected (both are read, so neither pipe fills up)."""

    def __init__(self, server: str, loop: str) -> None:
        self.name = f"{server}/{loop}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLES / f"{server}_app.py"),
                *("--loop", loop, "--port", "0", "--grace", str(GRACE)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._fds = {self.proc.stdout.fileno(): b"", self.proc.stderr.fileno(): b""}
        self._out_fd = self.proc.stdout.fileno()
        self._err_fd = self.proc.stderr.fileno()
        self._open = set(self._fds)
        self.lines: list[str] = []
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return self._fds[self._err_fd].decode(errors="replace")

    def _pump(self, timeout: float) -> None:
        """Read what the child wrote (waiting up to ``timeout`` for something)."""
        if not self._open:
            return
        ready, _, _ = select.select(list(self._open), [], [], timeout)
        for fd in ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                self._open.discard(fd)
                continue
            self._fds[fd] += chunk
            if fd == self._out_fd:
                *complete, rest = self._fds[fd].split(b"\n")
                self.lines.extend(line.decode(errors="replace") for line in complete)
                self._fds[fd] = rest

    def expect(self, pattern: str) -> re.Match[str]:
        """The first stdout line (from the start) matching ``pattern``, once it is there."""
        deadline = time.monotonic() + WAIT
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if m := re.fullmatch(pattern, line):
                    return m
            seen = len(self.lines)
            if self._out_fd not in self._open:
                self.fail(f"stdout ended without {pattern!r}")
            try:
                self._pump(deadline_left(deadline))
            except TimeoutError:
                self.fail(f"never printed {pattern!r}")

    def wait_stopped_listening(self) -> None:
        """Poll (bounded) until the child's listening socket is closed, reading its output
        meanwhile.  Not by connecting until refused: asyncio accepts a connection, then
        builds its transport in a later loop iteration, which fails once the server is
        closed, so a connect() in the instant of the close is left open, neither served
        nor closed, until the garbage collector runs (CPython 3.10-3.13; 3.12+ then
        print an "Exception ignored" traceback from _SelectorTransport.__del__)."""
        if not PROC_NET_TCP.exists():
            pytest.skip("needs /proc/net/tcp (Linux) to watch the listening socket")
        deadline = time.monotonic() + WAIT
        while listens(self.port):
            try:
                self._pump(min(0.005, deadline_left(deadline)))  # paces the polling
            except TimeoutError:
                self.fail(f"still listens on port {self.port} {WAIT:g} s after SIGTERM")

    def start(self) -> int:
        self.port = int(self.expect(r"LISTENING (\d+)")[1])
        return self.port

    def finish(self) -> tuple[int, str]:
        """Wait (bounded) for the child's end: its status and all of its stderr."""
        deadline = time.monotonic() + WAIT
        try:
            while self._open:
                self._pump(deadline_left(deadline))
            status = self.proc.wait(timeout=deadline_left(deadline))
        except (TimeoutError, subprocess.TimeoutExpired):
            self.fail("did not exit")
        return status, self.stderr

    def fail(self, what: str) -> NoReturn:
        self.kill()
        pytest.fail(f"{self.name} {what}; stdout: {self.lines}\nstderr:\n{self.stderr}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError, TimeoutError):
            while self._open:  # whatever is left in the pipes, for the report
                self._pump(0)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        self._open.clear()


class Client:
    """HTTP/1.1 over raw sockets; every socket it opened is closed at the end."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []

    def connect(self, port: int) -> socket.socket:
        sock = socket.create_connection((HOST, port), timeout=WAIT)
        self.socks.append(sock)
        return sock

    def send(self, port: int, path: str, *, keep_alive: bool = False) -> socket.socket:
        sock = self.connect(port)
        connection = "keep-alive" if keep_alive else "close"
        head = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: {connection}\r\n\r\n"
        sock.sendall(head.encode())
        return sock

    def get(self, port: int, path: str) -> tuple[int, bytes]:
        return read_response(self.send(port, path))

    def close_all(self) -> None:
        for sock in self.socks:
            sock.close()


def read_response(sock: socket.socket, *, then_closed: bool = True) -> tuple[int, bytes]:
    """One whole response (status, body), its length checked against Content-Length;
    with ``then_closed``, the server must then close the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a whole response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(body)} of {length} body bytes"
        body += chunk
    assert len(body) == length, f"{len(body) - length} bytes past Content-Length"
    if then_closed:
        assert_closed_by_server(sock)
    return int(status_line.split()[1]), body


def assert_closed_by_server(sock: socket.socket) -> None:
    """The server closes the connection (end of stream or reset) with nothing more."""
    try:
        rest = sock.recv(65536)
    except ConnectionResetError:
        return
    assert rest == b"", f"unexpected bytes after the response: {rest[:200]!r}"


PROC_NET_TCP = Path("/proc/net/tcp")


def listens(port: int) -> bool:
    """Whether a TCP socket listens on ``port`` (IPv4), read from /proc/net/tcp (Linux),
    without connecting: a connect() that races with the server's close() can leave an
    accepted connection neither served nor closed (see wait_stopped_listening)."""
    with PROC_NET_TCP.open() as table:
        next(table)  # the header
        for row in table:
            fields = row.split()
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
                return True
    return False


def assert_quiet(err: str) -> None:
    """No traceback, error or warning (a SignalReplacedWarning, say) on stderr: only the
    servers' INFO lines."""
    for word in ("traceback", "error", "warning", "exception"):
        assert word not in err.lower(), f"{word!r} on stderr:\n{err}"


StartServer = Callable[[], tuple[ServerChild, Client]]


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    pytest.importorskip(name)
    return name


@pytest.fixture(params=LOOPS)
def start(server: str, request: pytest.FixtureRequest) -> Iterator[StartServer]:
    """Starts the example app of ``server`` on loop ``request.param``; whatever happens,
    the child is killed and every client socket closed at the end."""
    children: list[ServerChild] = []
    clients: list[Client] = []

    def start_server() -> tuple[ServerChild, Client]:
        child = ServerChild(server, request.param)
        children.append(child)
        clients.append(Client())
        child.start()
        return child, clients[-1]

    try:
        yield start_server
    finally:
        for client in clients:
            client.close_all()
        for child in children:
            child.kill()


def test_sighup_reloads_and_serving_goes_on(start: StartServer) -> None:
    """SIGHUP from another process: the app's reload handler runs and names that
    process; a request in flight across the reload is answered, new requests see the
    new configuration; a SIGTERM then ends it with 143."""
    child, client = start()
    assert client.get(child.port, "/hello") == (200, b"hello from generation 0\n")
    held = client.send(child.port, "/slow?id=1")
    child.expect("IN FLIGHT 1")

    sender = send_signal(child.pid, signal.SIGHUP)
    child.expect(rf"RELOADED generation 1 on SIGHUP from pid {sender} uid {os.getuid()}")
    assert client.get(child.port, "/hello") == (200, b"hello from generation 1\n")

    send_signal(child.pid, signal.SIGUSR1)
    assert read_response(held) == (200, b"slow 1 done\n" + SLOW_BODY)

    send_signal(child.pid, signal.SIGTERM)
    status, err = child.finish()
    assert status == SIGTERM_STATUS
    assert_quiet(err)


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(start: StartServer) -> None:
    """SIGTERM with requests in flight and an idle keep-alive connection: the listening
    socket is closed (connections are refused) while the requests are still held, the
    idle connection is closed, every request in flight is answered in full, and the
    process exits 143 with nothing alarming on stderr."""
    child, client = start()
    idle = client.send(child.port, "/hello", keep_alive=True)
    assert read_response(idle, then_closed=False) == (200, b"hello from generation 0\n")
    held = {n: client.send(child.port, f"/slow?id={n}") for n in range(1, 4)}
    for n in held:
        child.expect(f"IN FLIGHT {n}")

    sender = send_signal(child.pid, signal.SIGTERM)
    child.expect(f"SHUTDOWN on SIGTERM from pid {sender}")
    child.expect("DRAINING")
    child.wait_stopped_listening()
    with pytest.raises(ConnectionRefusedError):
        client.connect(child.port)
    assert_closed_by_server(idle)
    assert "DRAINED" not in child.lines  # the held requests keep the drain going

    send_signal(child.pid, signal.SIGUSR1)
    for n, sock in held.items():
        assert read_response(sock) == (200, f"slow {n} done\n".encode() + SLOW_BODY)
    status, err = child.finish()
    assert status == SIGTERM_STATUS
    assert "DRAINED" in child.lines
    assert_quiet(err)


def test_second_sigterm_ends_a_stuck_drain_at_once(start: StartServer) -> None:
    """A request that never finishes holds the drain; a second SIGTERM ends the process
    at once (within WAIT, far less than the apps' grace) with status 143."""
    child, client = start()
    held = client.send(child.port, "/slow?id=1")
    child.expect("IN FLIGHT 1")

    send_signal(child.pid, signal.SIGTERM)
    child.expect("DRAINING")
    child.wait_stopped_listening()  # the drain is under way, and stuck on /slow

    second = send_signal(child.pid, signal.SIGTERM)
    status, err = child.finish()
    assert status == SIGTERM_STATUS
    assert f"second shutdown signal (SIGTERM from pid {second})" in err
    assert "Traceback" not in err
    assert "DRAINED" not in child.lines
    with contextlib.suppress(ConnectionResetError):
        assert held.recv(65536) == b"", "the stuck request got an answer"
