"""A uvloop TCP server that reloads its config on SIGHUP and drains on SIGTERM.

Run it (port 0 picks a free port; ``LISTENING <port>`` is printed once it accepts)::

    echo '{"greeting": "Hello", "delay": 2.0}' > /tmp/greeter.json
    python examples/uvloop_server.py --port 8888 --config /tmp/greeter.json
    # or: GREETER_PORT=8888 GREETER_CONFIG=/tmp/greeter.json python examples/uvloop_server.py

Talk to it with ``nc 127.0.0.1 8888``.  The protocol is one request per line, any
number of requests per connection::

    hello alice          <- the request
    ACCEPTED 1           <- at once: the server has taken the request on and will answer it
    Hello, alice!        <- after the configured delay (the "work")

The config file is JSON: ``greeting`` (str) and ``delay`` (seconds each request takes).
A request keeps the config that was current when it was accepted.

Signals (send them with ``kill -HUP <pid>``, ``kill -TERM <pid>``, or Ctrl-C):

* SIGHUP: re-read the config file; the log names the sender (pid and uid), as the
  kernel reported it.  A bad file is reported on stderr and the old config kept.
* SIGTERM (or SIGINT): stop accepting at once (the listening socket is closed, so new
  connections are refused), close idle connections, finish every accepted request,
  then exit with status 143 (128 + SIGTERM; 130 after SIGINT) without a traceback.
  If requests are still running when the grace period (``--grace``) runs out,
  aiosigbridge.run() prints their stacks to stderr and exits anyway; a second SIGTERM
  exits at once.

Everything the server logs goes to stdout, one line per event, flushed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import uvloop

import aiosigbridge as asb


def log(message: str) -> None:
    print(message, flush=True)


@dataclass(frozen=True)
class Config:
    greeting: str = "Hello"
    delay: float = 0.0  # seconds each request "works" before it is answered

    @classmethod
    def load(cls, path: Path | None) -> Config:
        if path is None:
            return cls()
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            msg = f"{path}: expected a JSON object, got {type(data).__name__}"
            raise ValueError(msg)
        greeting = data.get("greeting", cls.greeting)
        delay = data.get("delay", cls.delay)
        if not isinstance(greeting, str):
            msg = f"{path}: greeting must be a string, got {greeting!r}"
            raise ValueError(msg)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            msg = f"{path}: delay must be a number of seconds >= 0, got {delay!r}"
            raise ValueError(msg)
        return cls(greeting, float(delay))


class Greeter:
    """The server's state: the current config, the open connections, the requests in
    flight, and whether it is shutting down."""

    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self.config = Config.load(config_path)
        self.accepted = 0  # requests taken on since start
        self.in_flight = 0
        self.idle: set[asyncio.StreamWriter] = set()  # connections waiting for a request
        self.connections: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.drained = asyncio.Event()  # set whenever nothing is in flight
        self.drained.set()

    # -- signals --------------------------------------------------------------------------

    def on_sighup(self, ev: asb.SignalEvent) -> None:
        """Reload the config file.  A plain function: aiosigbridge calls it inline in the
        loop, so requests accepted after this line see the new config."""
        try:
            config = Config.load(self.config_path)
        except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            print(f"RELOAD FAILED ({exc}); keeping the old config", file=sys.stderr, flush=True)
            return
        self.config = config
        log(
            f"RELOADED {self.config_path} on {ev.name} from pid {ev.pid} uid {ev.uid}: "
            f"greeting={config.greeting!r} delay={config.delay:g}"
        )

    def on_sigterm(self, ev: asb.SignalEvent) -> None:
        """Only logs: run() cancels main() for this signal, and main()'s cleanup drains."""
        log(f"SHUTDOWN on {ev.name} from pid {ev.pid} uid {ev.uid}")

    # -- connections ----------------------------------------------------------------------

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            with contextlib.suppress(ConnectionError):  # the client went away
                await self._requests(reader, writer)
        finally:
            self.idle.discard(writer)
            self.connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not self.stopping:
            self.idle.add(writer)
            line = await reader.readline()
            self.idle.discard(writer)
            if not line.endswith(b"\n") or self.stopping:
                return  # end of stream, or a request that came after SIGTERM: not taken on
            command, _, name = line.decode(errors="replace").strip().partition(" ")
            if command.lower() != "hello" or not name:
                writer.write(b"ERROR expected: hello <name>\n")
                await writer.drain()
                continue
            await self._answer(writer, name)

    async def _answer(self, writer: asyncio.StreamWriter, name: str) -> None:
        # Accepting is synchronous (no await between the check above and here), so a
        # request is either refused by the shutdown or counted in flight and finished.
        config = self.config
        self.accepted += 1
        self.in_flight += 1
        self.drained.clear()
        try:
            writer.write(f"ACCEPTED {self.accepted}\n".encode())
            await asyncio.sleep(config.delay)  # the work
            writer.write(f"{config.greeting}, {name}!\n".encode())
            await writer.drain()
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.drained.set()

    async def drain(self) -> None:
        """After the listening socket is closed: no new requests, finish the running ones."""
        self.stopping = True
        for writer in list(self.idle):
            writer.close()  # their readline() sees the end of the stream
        log(f"STOPPED ACCEPTING; draining {self.in_flight} requests in flight")
        await self.drained.wait()  # bounded by run()'s grace period
        await asyncio.gather(*self.connections, return_exceptions=True)
        log(f"DRAINED; {self.accepted} requests served")


async def main(port: int, config_path: Path | None) -> None:
    greeter = Greeter(config_path)
    asb.add_handler(signal.SIGHUP, greeter.on_sighup)
    asb.add_handler(signal.SIGTERM, greeter.on_sigterm)
    asb.add_handler(signal.SIGINT, greeter.on_sigterm)
    server = await asyncio.start_server(greeter.serve_connection, "127.0.0.1", port)
    log(f"LISTENING {server.sockets[0].getsockname()[1]}")
    try:
        await asyncio.Future()  # serve until run() cancels us on SIGTERM/SIGINT
    finally:
        server.close()  # refuse new connections from now on
        await greeter.drain()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A uvloop TCP server: reloads its config on SIGHUP, drains on SIGTERM."
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GREETER_PORT", "8888")),
        help="TCP port on 127.0.0.1; 0 picks a free one (env GREETER_PORT, default 8888)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("GREETER_CONFIG"),
        help="JSON config file, re-read on SIGHUP (env GREETER_CONFIG)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds after SIGTERM before unfinished requests are abandoned (default 10)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    try:
        asb.run(
            main(args.port, args.config),
            shutdown_signals=(signal.SIGINT, signal.SIGTERM),
            grace=args.grace,
            loop_factory=uvloop.new_event_loop,
        )
    except KeyboardInterrupt:  # Ctrl-C: run() keeps asyncio's contract; exit quietly
        sys.exit(128 + signal.SIGINT)
