"""Where the time goes between the C handler and the handler's start: the bridge's
steps timed one by one (not part of run_all; a tool for whoever optimises src/ and cbits/).

A receiver process (paced C sender as in bench_latency, same CPU) runs a coroutine or a
sync handler with the bridge's internals wrapped by timers (each wrapper costs well
under a microsecond, reported as is):

    C handler        ev.timestamp_ns
    reader entry     SignalBridge._on_readable called by the loop
    drain returned   lib.sb_drain() back (the C call: read() the pipe + copy records)
    event built      the same call (drain_events builds the SignalEvents in C)
    handler start    first line of the handler

    python benchmarks/profile_path.py [--loop asyncio|uvloop|both] [--handler coro|sync]
        [--signals N] [--py-spy]      # --py-spy: also record the receiver with py-spy
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import sys
import time
from typing import Any

import _common as C

SIG = int(signal.SIGUSR1)
STAGES = ("C handler", "reader entry", "drain returned", "event built", "handler start")


def receiver(kind: str, handler: str, total: int, ack: int) -> None:
    import aiosigbridge as asb
    from aiosigbridge import _bridge, _native

    mono = time.monotonic_ns
    marks = {s: [0] * total for s in STAGES}
    cur = {"reader": 0, "drain": 0, "event": 0}
    n = 0

    orig_reader = _bridge.SignalBridge._on_readable

    def reader(self: Any) -> None:
        cur["reader"] = mono()
        orig_reader(self)

    _bridge.SignalBridge._on_readable = reader  # type: ignore[method-assign]


    real_drain = _native.drain_events

    def drain_events(*args: Any) -> Any:
        # One C call now drains and builds the events: both stages end here.
        evs = real_drain(*args)
        if evs:
            cur["drain"] = cur["event"] = mono()
        return evs

    _native.drain_events = drain_events

    loop = C.new_loop(kind)
    asyncio.set_event_loop(loop)

    async def amain() -> None:
        done = loop.create_future()

        def record(t: int, ev: Any) -> None:
            nonlocal n
            marks["C handler"][n] = ev.timestamp_ns
            marks["reader entry"][n] = cur["reader"]
            marks["drain returned"][n] = cur["drain"]
            marks["event built"][n] = cur["event"]
            marks["handler start"][n] = t
            n += 1
            os.write(ack, b"a")
            if n == total:
                done.set_result(None)

        async def on_coro(ev: Any) -> None:
            record(mono(), ev)

        def on_sync(ev: Any) -> None:
            record(mono(), ev)

        bridge = asb.get_bridge()
        bridge.add_handler(SIG, on_coro if handler == "coro" else on_sync)
        C.ready()
        await done
        await bridge.aclose()

    loop.run_until_complete(amain())
    C.emit({"marks": marks})


def run(kind: str, handler: str, total: int, py_spy: bool) -> dict[str, Any]:
    C.build_helpers()
    scen = C.scenarios()["same-cpu"]
    argv = [
        C.python(), __file__, "--role", "receiver", "--loop", kind, "--handler", handler,
        "--signals", str(total),
    ]  # fmt: skip
    if py_spy:
        spy = shutil.which("py-spy") or os.path.join(os.path.dirname(C.python()), "py-spy")
        out = C.OUT / f"py-spy-{kind}-{handler}.txt"
        argv = [spy, "record", "-r", "2000", "-f", "raw", "-o", str(out), "--", *argv]
    t0, res = C.paced_run(argv, sig=SIG, total=total, recv_cpu=scen[0], send_cpu=scen[1])
    marks = res["marks"]
    warm = min(200, total // 10)
    out_d: dict[str, Any] = {}
    out_d["kill -> C handler"] = C.summarize_ns(
        [marks["C handler"][i] - t0[i] for i in range(warm, len(t0))]
    )
    for a, b in itertools.pairwise(STAGES):
        out_d[f"{a} -> {b}"] = C.summarize_ns(
            [marks[b][i] - marks[a][i] for i in range(warm, len(t0))]
        )
    return out_d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", default="orchestrator", choices=("orchestrator", "receiver"))
    ap.add_argument("--loop", default="both", choices=("asyncio", "uvloop", "both"))
    ap.add_argument("--handler", default="coro", choices=("coro", "sync"))
    ap.add_argument("--signals", type=int, default=3000)
    ap.add_argument("--ack-fd", type=int, default=-1)
    ap.add_argument("--py-spy", action="store_true")
    args = ap.parse_args()
    if args.role == "receiver":
        receiver(args.loop, args.handler, args.signals, args.ack_fd)
        return
    for kind in C.LOOPS if args.loop == "both" else (args.loop,):
        res = run(kind, args.handler, args.signals, args.py_spy)
        print(f"\n{kind}, {args.handler} handler, same CPU (us)")
        print(f"  {'step':36} {'p50':>7} {'p90':>7} {'p99':>7}")
        for step, s in res.items():
            print(f"  {step:36} {s['p50']:7.2f} {s['p90']:7.2f} {s['p99']:7.2f}")


if __name__ == "__main__":
    sys.exit(main())
