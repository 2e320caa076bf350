"""The issue's targets for `make bench` (run_all.py): each measured value, PASS or MISS,
and the machine's own bound for it, measured in the same run (benchmarks/RESULTS.md)."""

from __future__ import annotations

from typing import Any

import bench_storm


def gil_bound(fan: dict[str, Any], name: str) -> float | None:
    """An estimate (µs) of when all N loops can have started their handler: one loop's
    p50 plus the other loops' mean CPU per delivery, which runs one loop at a time (each
    loop's dispatch holds the GIL): lat(1) + (CPU(N) - CPU(1)).  Not a strict lower
    bound (a p50 plus a mean; part of that CPU is the kernel's, which can overlap)."""
    kind, n = name.split("/")
    one, r = fan.get(f"{kind}/1", {}), fan.get(name, {})
    if "lat_all" not in one or "lat_all" not in r or n == "1":
        return None
    extra = max(0.0, r["cpu_us_per_signal"] - one["cpu_us_per_signal"])
    return float(one["lat_all"]["p50"] + extra)


#: Python-side instructions per delivery before the path was cut (CPython 3.11.7,
#: commit 4efd6e4, benchmarks/RESULTS.md): the target is half of these.
INSTRUCTIONS_BASELINE = {
    "asyncio/asb-sync": 34_629,
    "asyncio/asb-coro": 55_154,
    "asyncio/asb-rx": 60_080,
    "uvloop/asb-sync": 17_677,
    "uvloop/asb-coro": 34_544,
    "uvloop/asb-rx": 32_537,
}


def targets(res: dict[str, Any], loops: tuple[str, ...]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value, PASS/MISS, and what this run
    measured of the machine's own bound for it (the figure a miss is read against)."""
    out: list[dict[str, Any]] = []

    def add(name: str, measured: str, ok: bool | None, bound: str = "") -> None:
        verdict = "n/a" if ok is None else ("PASS" if ok else "MISS")
        out.append({"target": name, "measured": measured, "result": verdict, "bound": bound})

    same = res.get("latency", {}).get("same-cpu", {})

    def lat(key: str) -> dict[str, float]:
        return same.get(key, {}).get("lat", {})

    floor, stock = lat("c/floor"), lat("asyncio/stock-cb")
    plain = lat("python/signal")
    ins = res.get("instructions", {})

    def ins_of(name: str) -> float | None:
        v = ins.get(name, {}).get("python_side")
        return None if v is None else float(v)

    for kind in loops:
        pipe = lat(f"{kind}/pipe-cb")
        sync = lat(f"{kind}/asb-sync")
        if sync and plain:
            r50 = sync["p50"] / plain["p50"]
            bound = ""
            if kind == "asyncio":  # dispatched from Python's handler inside select()
                sync_ins, plain_ins = ins_of("asyncio/asb-sync"), ins_of("python/signal")
                bound = "this path's floor is Python's own handler (1.00x)"
                if sync_ins and plain_ins:
                    bound += (f"; the rest is the bridge's Python: {sync_ins:,.0f} "
                              f"instructions against {plain_ins:,.0f}")  # fmt: skip
            elif pipe:
                bound = (f"the loop floor ({kind}/pipe-cb: a C handler writes a pipe, the "
                         f"reader runs) is {pipe['p50'] / plain['p50']:.2f}x")  # fmt: skip
            add(f"{kind}: sync handler ≤ 1.5x a plain signal.signal handler (p50)",
                f"{r50:.2f}x", r50 <= 1.5, bound)  # fmt: skip
        own, coro0 = lat(f"{kind}/stock-cb"), lat(f"{kind}/asb-coro")
        if kind == "uvloop" and own and coro0:
            r50 = coro0["p50"] / own["p50"]
            add("uvloop: coroutine handler below uvloop's own callback (p50)",
                f"{r50:.2f}x", r50 < 1.0)  # fmt: skip
        floor_ins = ins_of(f"{kind}/pipe-cb")
        for consumer in ("sync", "coro", "rx"):
            name = f"{kind}/asb-{consumer}"
            now, base = ins_of(name), INSTRUCTIONS_BASELINE.get(name)
            if now is None or base is None:
                continue
            same_python = str(ins.get("_meta", {}).get("python", "")).startswith("3.11")
            # The stock loop in the main thread is dispatched from Python's own handler
            # (inside select()): that handler is the floor there, not the loop's wake-up,
            # which only a receiver's consumer waits for.
            plain_ins = ins_of("python/signal")
            if kind == "asyncio" and consumer != "rx" and plain_ins is not None:
                bound = f"Python's own handler {plain_ins:,.0f}"
            else:
                bound = "" if floor_ins is None else f"loop floor {floor_ins:,.0f}"
            if consumer != "sync":
                bound += (" + the task (3.11: asyncio.Task's creation, its call_soon and "
                          "all-tasks WeakSet, ~5k)")  # fmt: skip
            add(f"{name}: instructions ≤ half of {base:,} (3.11, before the work)",
                f"{now:,.0f} ({now / base:.2f}x)",
                now <= base / 2 if same_python else None, bound.strip())  # fmt: skip
        coro, rx = lat(f"{kind}/asb-coro"), lat(f"{kind}/asb-rx")
        if coro and floor:
            r50, r99 = coro["p50"] / floor["p50"], coro["p99"] / floor["p99"]
            bound = "" if not pipe else f"loop floor {pipe['p50'] / floor['p50']:.2f}x"
            add(f"{kind}: coroutine handler ≤ 2.5x / 3x C floor (p50 / p99)",
                f"{r50:.2f}x / {r99:.2f}x", r50 <= 2.5 and r99 <= 3.0, bound)  # fmt: skip
        if coro and stock:
            r50, r99 = coro["p50"] / stock["p50"], coro["p99"] / stock["p99"]
            bound = "" if not pipe else f"loop floor {pipe['p50'] / stock['p50']:.2f}x"
            add(f"{kind}: coroutine handler ≤ 0.5x stock asyncio callback (p50 / p99)",
                f"{r50:.2f}x / {r99:.2f}x", r50 <= 0.5 and r99 <= 0.5, bound)  # fmt: skip
        if coro and rx:
            r50, r99 = rx["p50"] / coro["p50"], rx["p99"] / coro["p99"]
            add(f"{kind}: receiver within 1.2x of coroutine handler (p50 / p99)",
                f"{r50:.2f}x / {r99:.2f}x", r50 <= 1.2 and r99 <= 1.2,
                "the consumer wakes one loop iteration after the dispatch")  # fmt: skip
        busy = res.get("busy", {})
        for suffix, where in (("", "same CPU"), ("/diff-cpu", "sender on the other CPU")):
            b = busy.get(f"{kind}/asb-interrupt{suffix}")
            if b is None:
                continue
            name = f"{kind}: busy loop, interrupt reaches the hogging task ≤ 0.2 ms p99 ({where})"
            if "lat" not in b:
                add(name, "not available", False)
                continue
            p99 = b["lat"]["p99"] / 1000
            add(name, f"{p99:.3f} ms (p50 {b['lat']['p50'] / 1000:.3f})", p99 <= 0.2,
                _interrupt_account(b.get("split") or {}))  # fmt: skip
        storm = res.get("storm", {})
        sink = storm.get("c/sink-rt", {})
        st = storm.get(f"{kind}/rt")
        if st and "error" not in st:
            add(f"{kind}: realtime storm, 0 lost (sent == delivered + overflowed)",
                f"{st['lost']} lost of {st['sent']}", st["lost"] == 0)  # fmt: skip
            bound = ""
            if "stall_ms" in sink:
                ms = sink["storm_s"] * 1000
                bound = (f"a C no-op handler's main line stalls {sink['stall_ms']:.0f} ms of "
                         f"the {ms:.0f} ms storm (0 events/s possible)")  # fmt: skip
            add(f"{kind}: realtime storm (unpaced) ≥ 50k events/s dispatched",
                f"{st['events_per_s']:.0f}/s during the storm "
                f"(capacity {st['dispatch_capacity_per_s']:.0f}/s; load "
                f"{bench_storm.load(st):.2f})", st["events_per_s"] >= 50_000, bound)  # fmt: skip
        sp = storm.get(f"{kind}/rt-paced")
        if sp and "error" not in sp:
            add(f"{kind}: paced storm ({bench_storm.PACED_RATE:,}/s) ≥ 50k events/s, 0 lost",
                f"{sp['events_per_s']:.0f}/s, {sp['lost']} lost, {sp['overflowed']} overflowed",
                sp["events_per_s"] >= 50_000 and sp["lost"] == 0,
                f"load {bench_storm.load(sp):.2f} of one CPU; main line's longest stall "
                f"{sp['stall_ms']:.0f} ms")  # fmt: skip
        ss = storm.get(f"{kind}/std")
        if ss and "error" not in ss:
            add(f"{kind}: standard storm, every C delivery accounted (Σ coalesced == received)",
                f"{ss['lost']} unaccounted of {ss['received']}", ss["lost"] == 0)  # fmt: skip
        fan = res.get("fanout", {})
        one, eight = fan.get(f"{kind}/1", {}), fan.get(f"{kind}/8", {})
        if "lat_all" in one and "lat_all" in eight:
            r50 = eight["lat_all"]["p50"] / one["lat_all"]["p50"]
            r99 = eight["lat_all"]["p99"] / one["lat_all"]["p99"]
            gb = gil_bound(fan, f"{kind}/8")
            bound = "" if gb is None else (
                f"GIL estimate ≈ {gb / one['lat_all']['p50']:.2f}x (one loop's p50 plus the "
                "other loops' CPU per delivery, which runs one loop at a time)")  # fmt: skip
            add(f"{kind}: 8-loop fan-out ≤ 1.5x one loop (p50 / p99)",
                f"{r50:.2f}x / {r99:.2f}x", r50 <= 1.5 and r99 <= 1.5, bound)  # fmt: skip
        m = res.get("memory", {}).get(kind, {})
        if "rss_per_bridge" in m:
            kib = m["rss_per_bridge"] / 1024
            add(f"{kind}: ≤ 64 KiB per bridge", f"{kib:.1f} KiB", kib <= 64)
            c = max(m["c_allocs_per_signal_std"], m["c_allocs_per_signal_rt"])
            add(f"{kind}: no allocation per signal in C", f"{c:.3f} allocations/signal",
                c == 0)  # fmt: skip
    return out


def _interrupt_account(sp: dict[str, Any]) -> str:
    """Where an interrupt's time goes (bench_busy.split), p50 / p99 µs."""
    parts = []
    for key, what in (("to_c_handler", "kill → C handler"),
                      ("to_check", "kill → first check (Python's handler, the interrupt recorded)"),
                      ("recheck", "→ re-check (100 µs of the task's CPU by design, the timer "
                                  "thread's wake-up, before 3.13 a GIL hand-over)"),
                      ("raise", "→ raise")):  # fmt: skip
        if sp.get(key):
            parts.append(f"{what} {sp[key]['p50']:.0f} / {sp[key]['p99']:.0f}")
    return ("p50 / p99 µs: " + ", ".join(parts)) if parts else ""
