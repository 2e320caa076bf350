"""Question 4: fan-out.  1, 2, 4, 8 event loops, each in its own thread with its own
bridge and a coroutine handler for SIGUSR1; one signal must start the handler on every
loop.  Paced sender as in bench_latency (the ack is written by the last loop to start
its handler), same-CPU scenario.

Figures per loop count: latency kill() -> the *last* loop's handler start (every loop
woken), kill() -> the first, and the receiver process's CPU time per signal
(user + system, all threads, from getrusage).

    python benchmarks/bench_fanout.py [--loop asyncio|uvloop|both] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import sys
import threading
import time
from typing import Any

import _common as C

SIG = int(signal.SIGUSR1)
LOOP_COUNTS = (1, 2, 4, 8)


def counts(quick: bool) -> tuple[int, int]:
    return (150, 30) if quick else (3000, 200)


# -- receiver process -------------------------------------------------------------------


def receiver(kind: str, nloops: int, total: int, warmup: int, ack: int) -> None:
    import aiosigbridge as asb

    times = [[0] * total for _ in range(nloops)]
    seen = [0] * total
    lock = threading.Lock()
    mono = time.monotonic_ns
    started = threading.Barrier(nloops + 1)
    finished = threading.Event()
    ru: list[Any] = []

    def on_started(i: int) -> None:
        with lock:
            seen[i] += 1
            last = seen[i] == nloops
        if last:
            if i == warmup - 1:
                ru.append(resource.getrusage(resource.RUSAGE_SELF))
            if i == total - 1:
                ru.append(resource.getrusage(resource.RUSAGE_SELF))
                finished.set()
            os.write(ack, b"a")

    def worker(k: int) -> None:
        loop = C.new_loop(kind)
        asyncio.set_event_loop(loop)
        mine = times[k]
        n = 0

        async def on_sig(ev: Any) -> None:
            nonlocal n
            t = mono()
            i = n
            n += 1
            mine[i] = t
            on_started(i)
            if n == total:
                done.set_result(None)

        async def amain() -> None:
            nonlocal done
            done = loop.create_future()
            bridge = asb.get_bridge()
            bridge.add_handler(SIG, on_sig)
            started.wait()
            await done
            await bridge.aclose()

        done: Any = None
        loop.run_until_complete(amain())
        loop.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(nloops)]
    for t in threads:
        t.start()
    started.wait()
    C.ready()
    finished.wait()
    for t in threads:
        t.join(5)
    last = [max(times[k][i] for k in range(nloops)) for i in range(total)]
    first = [min(times[k][i] for k in range(nloops)) for i in range(total)]
    cpu = 0.0
    if len(ru) == 2:
        cpu = (ru[1].ru_utime - ru[0].ru_utime) + (ru[1].ru_stime - ru[0].ru_stime)
    C.emit({"t1": last, "first": first, "cpu_s": cpu})


# -- orchestration ----------------------------------------------------------------------


def run_one(kind: str, nloops: int, quick: bool, scen: tuple[int, int]) -> dict[str, Any]:
    total, warmup = counts(quick)
    argv = [
        C.python(), __file__, "--role", "receiver", "--loop", kind, "--nloops", str(nloops),
        "--total", str(total + warmup), "--warmup", str(warmup),
    ]  # fmt: skip
    try:
        t0, res = C.paced_run(
            argv, sig=SIG, total=total + warmup, recv_cpu=scen[0], send_cpu=scen[1]
        )
    except C.RunError as exc:
        return {"error": str(exc)}
    if len(t0) < total + warmup or "t1" not in res:
        return {"error": f"only {len(t0)} of {total + warmup} signals reached every loop"}
    rng = range(warmup, total + warmup)
    return {
        "lat_all": C.summarize_ns([res["t1"][i] - t0[i] for i in rng]),
        "lat_first": C.summarize_ns([res["first"][i] - t0[i] for i in rng]),
        "cpu_us_per_signal": res["cpu_s"] * 1e6 / total,
    }


def run(quick: bool = False, loops: tuple[str, ...] = C.LOOPS) -> dict[str, Any]:
    C.build_helpers()
    scen = C.scenarios()["same-cpu"]
    results: dict[str, Any] = {}
    for kind in loops:
        for nloops in LOOP_COUNTS:
            name = f"{kind}/{nloops}"
            C.progress(f"fan-out {kind}: {nloops} loop(s) in threads")
            r = run_one(kind, nloops, quick, scen)
            results[name] = r
            if "error" in r:
                C.progress(f"    ERROR {r['error']}")
            else:
                s = r["lat_all"]
                C.progress(
                    f"    all woken p50 {s['p50']:.1f} us p99 {s['p99']:.1f} us, "
                    f"CPU {r['cpu_us_per_signal']:.1f} us/signal"
                )
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [f"{'loops':12} {'all p50':>8} {'all p99':>8} {'first p50':>9} {'cpu us/sig':>10}"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:12} {r['error']}")
            continue
        a, f = r["lat_all"], r["lat_first"]
        lines.append(
            f"{name:12} {a['p50']:8.1f} {a['p99']:8.1f} {f['p50']:9.1f} "
            f"{r['cpu_us_per_signal']:10.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", default="orchestrator", choices=("orchestrator", "receiver"))
    ap.add_argument("--loop", default="both", choices=("asyncio", "uvloop", "both"))
    ap.add_argument("--nloops", type=int, default=1)
    ap.add_argument("--total", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--ack-fd", type=int, default=-1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.role == "receiver":
        receiver(args.loop, args.nloops, args.total, args.warmup, args.ack_fd)
        return
    loops = C.LOOPS if args.loop == "both" else (args.loop,)
    print(format_table(run(args.quick, loops)))


if __name__ == "__main__":
    sys.exit(main())
