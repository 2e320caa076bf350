"""Question 5: memory.  Run in a fresh process per loop kind, with the malloc counter
(benchmarks/out/malloc_count.so) preloaded.

* RSS per bridge: N loops exist first; RSS before and after giving each a bridge
  (C storage, its pipe's fds, Python objects), divided by N; tracemalloc's share of it.
* RSS / Python bytes per handler: 1,000 handlers added to one bridge.
* allocations per signal in C: ``mc_kill_burst`` sends 10,000 signals to the process
  from C with no Python code in between, while a bridge watches them (standard and
  realtime): every malloc/calloc/realloc in the process meanwhile is counted.
* per signal through the whole Python path (dispatch of a sync handler): malloc calls
  (pymalloc serves small objects without malloc, so these are the larger ones) and the
  net bytes retained (tracemalloc, a leak check).

    python benchmarks/bench_memory.py [--loop asyncio|uvloop|both] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import signal
import subprocess
import sys
import tracemalloc
from typing import Any

import _common as C

N_BRIDGES = 32
N_HANDLERS = 1000


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(kind: str, nsig: int) -> dict[str, Any]:
    import aiosigbridge as asb

    mc = ctypes.CDLL(str(C.MALLOC_COUNT))
    mc.mc_allocs.restype = ctypes.c_ulonglong
    mc.mc_kill_burst.restype = ctypes.c_ulonglong
    mc.mc_kill_burst.argtypes = (ctypes.c_int, ctypes.c_int)
    out: dict[str, Any] = {}

    # -- per bridge
    loops = [C.new_loop(kind) for _ in range(N_BRIDGES)]
    gc.collect()
    tracemalloc.start()
    py0 = tracemalloc.get_traced_memory()[0]
    rss0 = _rss()
    bridges = [asb.get_bridge(lp) for lp in loops]
    gc.collect()
    out["rss_per_bridge"] = (_rss() - rss0) / N_BRIDGES
    out["py_bytes_per_bridge"] = (tracemalloc.get_traced_memory()[0] - py0) / N_BRIDGES
    for b in bridges:
        b.close()
    for lp in loops:
        lp.close()
    del bridges, loops

    # -- per handler
    loop = C.new_loop(kind)
    bridge = asb.get_bridge(loop)
    handlers = [(lambda ev: None) for _ in range(N_HANDLERS)]
    gc.collect()
    py0 = tracemalloc.get_traced_memory()[0]
    rss0 = _rss()
    hs = [bridge.add_handler(signal.SIGUSR2, f) for f in handlers]
    gc.collect()
    out["rss_per_handler"] = (_rss() - rss0) / N_HANDLERS
    out["py_bytes_per_handler"] = (tracemalloc.get_traced_memory()[0] - py0) / N_HANDLERS
    for h in hs:
        h.remove()
    del hs
    tracemalloc.stop()

    # -- C path: no Python runs between the signals
    got = [0]
    rt = int(signal.SIGRTMIN)
    bridge.add_handler(signal.SIGUSR1, lambda ev: got.__setitem__(0, got[0] + 1))
    bridge.add_handler(rt, lambda ev: got.__setitem__(0, got[0] + 1))
    mc.mc_kill_burst(int(signal.SIGUSR1), 100)  # warm
    out["c_allocs_per_signal_std"] = mc.mc_kill_burst(int(signal.SIGUSR1), nsig) / nsig
    out["c_allocs_per_signal_rt"] = mc.mc_kill_burst(rt, nsig) / nsig

    # -- whole path, one signal at a time through the loop
    async def through_loop(n: int, traced: bool) -> tuple[int, int]:
        me = os.getpid()
        for _ in range(200):  # warm-up
            os.kill(me, signal.SIGUSR1)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        gc.collect()
        if traced:  # tracemalloc mallocs for its own traces: never in the same pass
            tracemalloc.start()
        py0 = tracemalloc.get_traced_memory()[0]
        a0 = mc.mc_allocs()
        start = got[0]
        for _ in range(n):
            os.kill(me, signal.SIGUSR1)
            while got[0] == start:  # noqa: ASYNC110 - polling on purpose: no extra objects
                await asyncio.sleep(0)
            start = got[0]
        a1 = mc.mc_allocs()
        gc.collect()
        py1 = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return a1 - a0, py1 - py0

    n = min(nsig, 5000)
    allocs, _ = loop.run_until_complete(through_loop(n, traced=False))
    _, retained = loop.run_until_complete(through_loop(n, traced=True))
    out["malloc_calls_per_signal_full_path"] = allocs / n
    out["py_bytes_retained_per_signal"] = retained / n
    out["signals"] = nsig
    bridge.close()
    loop.close()
    return out


def run(quick: bool = False, loops: tuple[str, ...] = C.LOOPS) -> dict[str, Any]:
    C.build_helpers()
    results: dict[str, Any] = {}
    env = dict(os.environ, LD_PRELOAD=str(C.MALLOC_COUNT))
    for kind in loops:
        C.progress(f"memory {kind}: RSS per bridge/handler, allocations per signal")
        p = subprocess.run(
            [C.python(), __file__, "--role", "measure", "--loop", kind,
             "--signals", "2000" if quick else "10000"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        res: dict[str, Any] = {"error": f"exit {p.returncode}: {p.stderr[-400:]}"}
        for ln in p.stdout.splitlines():
            if ln.startswith("{"):
                res = json.loads(ln)
        results[kind] = res
        if "error" not in res:
            C.progress(
                f"    {res['rss_per_bridge'] / 1024:.1f} KiB/bridge, "
                f"{res['c_allocs_per_signal_rt']:.3f} C allocations/signal"
            )
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [
        f"{'loop':8} {'KiB/bridge':>10} {'py B/bridge':>11} {'B/handler':>9} "
        f"{'C allocs/sig':>12} {'mallocs/sig':>11} {'retained B/sig':>14}"
    ]
    for kind, r in results.items():
        if "error" in r:
            lines.append(f"{kind:8} {r['error']}")
            continue
        c_allocs = max(r["c_allocs_per_signal_std"], r["c_allocs_per_signal_rt"])
        lines.append(
            f"{kind:8} {r['rss_per_bridge'] / 1024:10.1f} {r['py_bytes_per_bridge']:11.0f} "
            f"{r['rss_per_handler']:9.0f} {c_allocs:12.3f} "
            f"{r['malloc_calls_per_signal_full_path']:11.3f} "
            f"{r['py_bytes_retained_per_signal']:14.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", default="orchestrator", choices=("orchestrator", "measure"))
    ap.add_argument("--loop", default="both", choices=("asyncio", "uvloop", "both"))
    ap.add_argument("--signals", type=int, default=10000)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.role == "measure":
        C.emit(measure(args.loop, args.signals))
        return
    loops = C.LOOPS if args.loop == "both" else (args.loop,)
    print(format_table(run(args.quick, loops)))


if __name__ == "__main__":
    sys.exit(main())
