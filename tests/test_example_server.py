"""End to end: examples/uvloop_server.py under load, reloaded by SIGHUP, drained by SIGTERM.

The server runs in a child process; the client side runs in the test's own loop (so on
both loops).  No sleep synchronises anything: the test waits for the server's log lines
and for its per-request ``ACCEPTED`` acknowledgements, every wait bounded.  The one
timing assumption: a request accepted with a 2 s delay is still running a few
milliseconds later, when SIGTERM is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "uvloop_server.py"
HOST = "127.0.0.1"
WAIT = 10.0  # bound on every single wait

OLD = {"greeting": "Hello", "delay": 1.0}
NEW = {"greeting": "Howdy", "delay": 2.0}  # long enough to be in flight at SIGTERM
BATCH = 60  # connections opened before the reload, and again after it
HAMMERS = 10  # clients opening connections back to back while SIGTERM comes
HAMMER_CAP = 2000  # a bound in case the server never stops accepting
HAMMERED_BEFORE_SIGTERM = 40  # requests of theirs acknowledged before SIGTERM is sent


class ServerProcess:
    """The example server in a child; its stdout lines can be waited for."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._stdout = asyncio.ensure_future(self._read_lines(proc.stdout))
        self._stderr = asyncio.ensure_future(proc.stderr.read())

    @classmethod
    async def start(cls, config: Path) -> ServerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLE),
            "--port",
            "0",
            "--config",
            str(config),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return cls(proc)

    async def _read_lines(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode().rstrip("\n"))
            self._changed.set()
        self._changed.set()

    async def expect(self, pattern: str) -> re.Match[str]:
        """The first stdout line matching ``pattern``, once it is there.  Lines are
        searched from the start: the order in which the server logs things that happen
        in the same loop iteration (a handler's line, main()'s cleanup) is not part of
        what is tested."""

        async def scan() -> re.Match[str]:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if m := re.fullmatch(pattern, line):
                        return m
                seen = len(self.lines)
                if self._stdout.done():
                    msg = f"server stdout ended without {pattern!r}: {self.lines}"
                    raise AssertionError(msg)
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(scan(), WAIT)
        except asyncio.TimeoutError:
            msg = f"server never printed {pattern!r}; stdout so far: {self.lines}"
            raise AssertionError(msg) from None

    async def finish(self) -> tuple[int, str]:
        """Wait for the exit: its status and everything it wrote to stderr."""
        status = await asyncio.wait_for(self.proc.wait(), WAIT)
        await asyncio.wait_for(self._stdout, WAIT)
        err = await asyncio.wait_for(self._stderr, WAIT)
        return status, err.decode()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for t in (self._stdout, self._stderr):
            t.cancel()
        await asyncio.gather(self._stdout, self._stderr, return_exceptions=True)


@dataclass
class Request:
    """One request, on its own connection, acknowledged by the server."""

    name: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    answer: bytes = b""

    async def finish(self) -> Request:
        """Read the answer, then close the connection."""
        try:
            self.answer = await asyncio.wait_for(self.reader.readline(), WAIT)
        finally:
            await close(self.writer)
        return self


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


class Clients:
    """Connections to the server; all of them are closed at the end, whatever happens
    (an unclosed uvloop transport is a ResourceWarning, an error here)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.writers: list[asyncio.StreamWriter] = []

    async def send(self, name: str) -> Request | None:
        """Connect, send ``hello <name>``, wait for the acknowledgement.  None when the
        server did not take the request on (the connection was reset or closed first);
        ConnectionRefusedError when nothing listens any more."""
        # A connection still in the listen backlog when the server closes the listening
        # socket is reset: while connecting, or before this task runs again (uvloop then
        # refuses writes with RuntimeError).  Such a request was never taken on.
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.port), WAIT)
        except ConnectionRefusedError:
            raise
        except ConnectionError:
            return None
        self.writers.append(writer)
        ack = b""
        if not writer.transport.is_closing():
            with contextlib.suppress(ConnectionError):
                writer.write(f"hello {name}\n".encode())
                ack = await asyncio.wait_for(reader.readline(), WAIT)
        if not ack:
            await close(writer)
            return None
        assert re.fullmatch(rb"ACCEPTED \d+\n", ack), ack
        return Request(name, reader, writer)

    async def close_all(self) -> None:
        await asyncio.gather(*(close(w) for w in self.writers), return_exceptions=True)


@dataclass
class Hammer:
    """Clients that open connections back to back until they are refused."""

    clients: Clients
    accepted: list[asyncio.Task[Request]] = field(default_factory=list)
    not_taken: int = 0
    refused: int = 0
    some_accepted: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, number: int) -> None:
        for k in range(HAMMER_CAP):
            try:
                req = await self.clients.send(f"c{number}-{k}")
            except ConnectionRefusedError:
                self.refused += 1
                return
            if req is None:
                self.not_taken += 1
            else:
                self.accepted.append(asyncio.ensure_future(req.finish()))
                if len(self.accepted) >= HAMMERED_BEFORE_SIGTERM:
                    self.some_accepted.set()


async def test_reload_on_sighup_and_drain_on_sigterm_under_load(tmp_path: Path) -> None:
    """SIGHUP reloads the config (the log names this process as the sender), SIGTERM
    refuses new connections at once, every acknowledged request is answered in full,
    and the server exits 143 with nothing on stderr."""
    config = tmp_path / "greeter.json"
    config.write_text(json.dumps(OLD))
    server = await ServerProcess.start(config)
    clients = Clients(0)
    hammer = Hammer(clients)
    hammer_tasks: list[asyncio.Task[None]] = []
    try:
        port = clients.port = int((await server.expect(r"LISTENING (\d+)"))[1])

        # Load with the old config: all acknowledged, hence in flight (1 s of work each).
        old = await asyncio.gather(*(clients.send(f"a{i}") for i in range(BATCH)))

        # Reload: the log names us; requests accepted from now on use the new config.
        config.write_text(json.dumps(NEW))
        os.kill(server.proc.pid, signal.SIGHUP)
        await server.expect(
            rf"RELOADED {re.escape(str(config))} on SIGHUP from pid {os.getpid()} "
            rf"uid {os.getuid()}: greeting='Howdy' delay=2"
        )
        new = await asyncio.gather(*(clients.send(f"b{i}") for i in range(BATCH)))
        assert all(r is not None for r in old + new), "a request was refused before SIGTERM"

        # Mid-load: clients keep connecting while SIGTERM comes.
        hammer_tasks = [asyncio.ensure_future(hammer.client(n)) for n in range(HAMMERS)]
        await asyncio.wait_for(hammer.some_accepted.wait(), WAIT)
        os.kill(server.proc.pid, signal.SIGTERM)
        await server.expect(rf"SHUTDOWN on SIGTERM from pid {os.getpid()} uid {os.getuid()}")
        draining = int((await server.expect(r"STOPPED ACCEPTING; draining (\d+) .*"))[1])

        # The listening socket is closed: every new connection is refused.
        for _ in range(20):
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection(HOST, port), WAIT)
            except ConnectionRefusedError:
                continue
            clients.writers.append(w)
            raise AssertionError("a connection after SIGTERM was accepted")

        # Every acknowledged request gets its full answer, with the config it was
        # accepted under; the clients that kept connecting were all refused at the end.
        await asyncio.wait_for(asyncio.gather(*hammer_tasks), WAIT)
        done_old, done_new, done_hammered = await asyncio.wait_for(
            asyncio.gather(
                asyncio.gather(*(r.finish() for r in old if r is not None)),
                asyncio.gather(*(r.finish() for r in new if r is not None)),
                asyncio.gather(*hammer.accepted),
            ),
            WAIT,
        )
        for r in done_old:
            assert r.answer == f"Hello, {r.name}!\n".encode()
        for r in [*done_new, *done_hammered]:
            assert r.answer == f"Howdy, {r.name}!\n".encode()
        # The new requests were in flight when SIGTERM came, and were drained.
        assert draining >= len(done_new) + len(done_hammered)
        assert hammer.refused == HAMMERS

        await server.expect(rf"DRAINED; {2 * BATCH + len(done_hammered)} requests served")
        status, err = await server.finish()
        assert err == ""
        assert status == 128 + signal.SIGTERM
    finally:
        for t in [*hammer_tasks, *hammer.accepted]:
            t.cancel()
        await asyncio.gather(*hammer_tasks, *hammer.accepted, return_exceptions=True)
        await clients.close_all()
        await server.kill()
