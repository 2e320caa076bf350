"""aiohttp (``web.AppRunner``) under aiosigbridge.run(): reload on SIGHUP, drain on SIGTERM.

Run it (``LISTENING <port>`` is printed once connections are taken; port 0 picks one)::

    python examples/aiohttp_app.py --loop uvloop --port 8000
    curl 127.0.0.1:8000/hello            # "hello from generation 0"
    curl '127.0.0.1:8000/slow?id=1' &    # held until SIGUSR1
    kill -HUP <pid>                      # reload: the generation goes up, the sender is logged
    kill -USR1 <pid>                     # the held /slow requests are answered
    kill -TERM <pid>                     # drain, then exit 143; a second SIGTERM exits at once

What hands signals to aiosigbridge (the rest is the demo app):

* ``web.AppRunner`` + ``web.TCPSite`` instead of ``web.run_app()``, which would install
  its own SIGINT/SIGTERM handlers (``AppRunner``'s ``handle_signals`` is off by default);
* run() cancels main() on the first SIGTERM, and main()'s ``finally`` runs
  ``runner.cleanup()``: stop listening, close idle connections, wait up to
  ``shutdown_timeout`` for the requests in flight (run() cancels main only once, so
  the cleanup is not interrupted).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

from aiohttp import web

import aiosigbridge as asb

SLOW_BODY = b"x" * 65536  # a body big enough to need several writes


def log(message: str) -> None:
    print(message, flush=True)


class App:
    """``/hello`` answers at once, ``/slow?id=N`` is held until SIGUSR1 (so a test
    controls when in-flight requests finish)."""

    def __init__(self) -> None:
        self.generation = 0  # bumped by each reload
        self.release = asyncio.Event()

    def on_sighup(self, ev: asb.SignalEvent) -> None:
        self.generation += 1  # stands for re-reading a config file
        log(f"RELOADED generation {self.generation} on {ev.name} from pid {ev.pid} uid {ev.uid}")

    def on_sigusr1(self, ev: asb.SignalEvent) -> None:
        self.release.set()
        log(f"RELEASED on {ev.name} from pid {ev.pid}")

    async def hello(self, request: web.Request) -> web.Response:
        return web.Response(text=f"hello from generation {self.generation}\n")

    async def slow(self, request: web.Request) -> web.Response:
        n = request.query.get("id", "?")
        log(f"IN FLIGHT {n}")
        await self.release.wait()
        return web.Response(body=f"slow {n} done\n".encode() + SLOW_BODY)


async def main(port: int, grace: float) -> None:
    app = App()
    asb.add_handler(signal.SIGHUP, app.on_sighup)
    asb.add_handler(signal.SIGUSR1, app.on_sigusr1)
    asb.add_handler(signal.SIGTERM, lambda ev: log(f"SHUTDOWN on {ev.name} from pid {ev.pid}"))
    webapp = web.Application()
    webapp.add_routes([web.get("/hello", app.hello), web.get("/slow", app.slow)])
    runner = web.AppRunner(webapp, shutdown_timeout=grace)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        log(f"LISTENING {runner.addresses[0][1]}")
        await asyncio.Future()  # serve until run() cancels us on SIGTERM
    finally:
        log("DRAINING")
        await runner.cleanup()  # stop listening, drain
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
    # aiohttp's drain is bounded by --grace; run()'s watchdog a few seconds later.
    try:
        asb.run(main(args.port, args.grace), grace=args.grace + 5, loop_factory=factory)
    except KeyboardInterrupt:  # Ctrl-C: run() keeps asyncio's contract; exit quietly
        sys.exit(128 + signal.SIGINT)
