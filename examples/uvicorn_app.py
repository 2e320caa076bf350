"""uvicorn under aiosigbridge.run(): reload on SIGHUP, graceful drain on SIGTERM.

Run it (``LISTENING <port>`` is printed once connections are taken; port 0 picks one)::

    python examples/uvicorn_app.py --loop uvloop --port 8000
    curl 127.0.0.1:8000/hello            # "hello from generation 0"
    curl '127.0.0.1:8000/slow?id=1' &    # held until SIGUSR1
    kill -HUP <pid>                      # reload: the generation goes up, the sender is logged
    kill -USR1 <pid>                     # the held /slow requests are answered
    kill -TERM <pid>                     # drain, then exit 143; a second SIGTERM exits at once

What hands signals to aiosigbridge (the rest is the demo app):

* ``Server.capture_signals`` is overridden to do nothing: uvicorn would otherwise put
  its own SIGINT/SIGTERM handlers in with ``signal.signal()`` (taking them from the
  bridge) and re-raise the signal at the end;
* ``server.serve()`` runs in a task that main() shields: run() cancels main() on the
  first SIGTERM, and main()'s cleanup asks uvicorn for its own graceful shutdown
  (``server.should_exit = True``: stop listening, finish the requests in flight).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import uvicorn

import aiosigbridge as asb

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SLOW_BODY = b"x" * 65536  # a body big enough to need several writes


def log(message: str) -> None:
    print(message, flush=True)


class App:
    """A small ASGI app: ``/hello`` answers at once, ``/slow?id=N`` is held until
    SIGUSR1 (so a test controls when in-flight requests finish)."""

    def __init__(self) -> None:
        self.generation = 0  # bumped by each reload
        self.release = asyncio.Event()

    def on_sighup(self, ev: asb.SignalEvent) -> None:
        self.generation += 1  # stands for re-reading a config file
        log(f"RELOADED generation {self.generation} on {ev.name} from pid {ev.pid} uid {ev.uid}")

    def on_sigusr1(self, ev: asb.SignalEvent) -> None:
        self.release.set()
        log(f"RELEASED on {ev.name} from pid {ev.pid}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/hello":
            await respond(send, 200, f"hello from generation {self.generation}\n".encode())
        elif scope["path"] == "/slow":
            n = parse_qs(scope["query_string"].decode()).get("id", ["?"])[0]
            log(f"IN FLIGHT {n}")
            await self.release.wait()
            await respond(send, 200, f"slow {n} done\n".encode() + SLOW_BODY)
        else:
            await respond(send, 404, b"not found\n")


async def respond(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # aiosigbridge.run() owns SIGINT/SIGTERM: uvicorn must not take them


async def main(port: int, grace: float) -> None:
    app = App()
    asb.add_handler(signal.SIGHUP, app.on_sighup)
    asb.add_handler(signal.SIGUSR1, app.on_sigusr1)
    asb.add_handler(signal.SIGTERM, lambda ev: log(f"SHUTDOWN on {ev.name} from pid {ev.pid}"))
    # Bound here, once the handlers are in, so that the port is known (port 0) and
    # connections queue before uvicorn starts.
    sock = socket.create_server(("127.0.0.1", port))
    log(f"LISTENING {sock.getsockname()[1]}")
    config = uvicorn.Config(app, lifespan="on", timeout_graceful_shutdown=math.ceil(grace))
    server = Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(serving)  # cancelled by run() on SIGTERM; uvicorn is not
    finally:
        log("DRAINING")
        server.should_exit = True  # uvicorn's graceful shutdown: stop listening, drain
        await serving
        log("DRAINED")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds to drain")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    # uvicorn's drain is bounded by --grace; run()'s watchdog a few seconds later.
    try:
        asb.run(main(args.port, args.grace), grace=args.grace + 5, loop_factory=factory)
    except KeyboardInterrupt:  # Ctrl-C: run() keeps asyncio's contract; exit quietly
        sys.exit(128 + signal.SIGINT)
