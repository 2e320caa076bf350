"""Run every benchmark question and write the comparison.

    python benchmarks/run_all.py            # full: `make bench`, about 2.5 minutes
    python benchmarks/run_all.py --quick    # smoke test: `make bench-quick`, CI (~40 s)

Prints a markdown report (tables with ratios to the C floor and to stock asyncio's
plain callback, and the issue's targets as PASS/MISS; a missed target never fails the
run) and writes benchmarks/out/results.md, results.json and latency.png.  Progress goes
to stderr.  Each question is also a script of its own (bench_*.py, ``--help``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

import _common as C
import bench_busy
import bench_fanout
import bench_instructions
import bench_latency
import bench_memory
import bench_storm
import bench_versions
from _targets import _interrupt_account, gil_bound, targets

QUESTIONS = {
    "latency": bench_latency,
    "instructions": bench_instructions,
    "busy": bench_busy,
    "storm": bench_storm,
    "fanout": bench_fanout,
    "memory": bench_memory,
}


def _f(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


# -- tables -----------------------------------------------------------------------------


def latency_md(lat: dict[str, Any]) -> list[str]:
    out = []
    for scen, res in lat.items():
        floor = res.get("c/floor", {}).get("lat", {})
        stock = res.get("asyncio/stock-cb", {}).get("lat", {})
        out += [
            f"\n### Latency, kill() → handler start, {scen} (µs)\n",
            "| target | n | p50 | p90 | p99 | p99.9 | max | p50 / floor | p99 / floor "
            "| p50 / asyncio cb | p99 / asyncio cb |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in res.items():
            if name.endswith("-split"):
                continue
            if "lat" not in r:
                out.append(f"| {name} | error: {r.get('error')} |||||||||")
                continue
            s = r["lat"]
            out.append(
                f"| {name} | {s['n']} | {_f(s['p50'])} | {_f(s['p90'])} | {_f(s['p99'])} "
                f"| {_f(s['p99.9'])} | {_f(s['max'])} "
                f"| {_x(C.ratio(s['p50'], floor.get('p50')))} "
                f"| {_x(C.ratio(s['p99'], floor.get('p99')))} "
                f"| {_x(C.ratio(s['p50'], stock.get('p50')))} "
                f"| {_x(C.ratio(s['p99'], stock.get('p99')))} |"
            )
    return out


def split_md(lat: dict[str, Any]) -> list[str]:
    out = [
        "\n### In-process split from `ev.timestamp_ns` (µs, p50 / p99)\n",
        "| scenario | target | kill() → C handler | C handler → reader callback "
        "| reader callback → handler | C handler → handler |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for scen, res in lat.items():
        for name, r in res.items():
            sp = r.get("split")
            if not sp:
                continue

            def cell(key: str, sp: dict[str, Any] = sp) -> str:
                s = sp.get(key)
                return f"{_f(s['p50'])} / {_f(s['p99'])}" if s else "-"

            out.append(
                f"| {scen} | {name} | {cell('kill->C handler')} | {cell('C handler->reader')} "
                f"| {cell('reader->handler')} | {cell('C handler->handler')} |"
            )
    return out


def instructions_md(ins: dict[str, Any]) -> list[str]:
    head = "\n### Instructions per delivery (callgrind), signal arrival → handler's first line"
    if "unavailable" in ins:
        return [f"{head}: skipped ({ins['unavailable']})"]
    meta = ins.get("_meta", {})
    out = [
        f"{head}\n",
        f"Median Ir per delivery over {meta.get('deliveries')} deliveries (after "
        f"{meta.get('warmup')} warm-up), CPython {meta.get('python')}, {meta.get('valgrind')}. "
        "*Python side* = total - C signal handler - marker (the bracket's own call); "
        "see benchmarks/bench_instructions.py.\n",
        "| target | Python side | C handler | total | marker | polls "
        "| / python/signal | / loop's stock-cb |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in ins.items():
        if name.startswith("_"):
            continue
        if "error" in r:
            out.append(f"| {name} | error: {r['error']} |||||||")
            continue
        a, b = bench_instructions.ratios(ins, name)
        out.append(
            f"| {name} | {r['python_side']:.0f} | {r['c_handler']:.0f} | {r['total']:.0f} "
            f"| {r['marker']} | {r['polls']:.0f} | {_x(a)} | {_x(b)} |"
        )
    return out


def busy_md(busy: dict[str, Any]) -> list[str]:
    out = [
        "\n### Busy loop: a task burns CPU in 50 ms chunks, same CPU unless said (ms)\n",
        "| target | n | p50 | p99 | max | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, r in busy.items():
        if "lat" in r:
            s = r["lat"]
            note = ""
            if "interrupted" in r:
                note = (
                    f"{r['interrupted']} interrupted ({r.get('exception', '?')}), "
                    f"{r['not_interrupted']} not"
                )
                account = _interrupt_account(r.get("split") or {})
                if account:
                    note += f"; {account}"
            out.append(
                f"| {name} | {s['n']} | {_f(s['p50'] / 1000, 3)} | {_f(s['p99'] / 1000, 3)} "
                f"| {_f(s['max'] / 1000, 3)} | {note} |"
            )
        else:
            why = r.get("unavailable") or r.get("error")
            out.append(f"| {name} | - | - | - | - | **not available**: {why} |")
    return out


def storm_md(storm: dict[str, Any]) -> list[str]:
    out = [
        f"\n### Storm: {bench_storm.SENDERS} sender processes, as fast as they can "
        f"(`rt-paced`: {bench_storm.PACED_RATE:,} signals/s in all)\n",
        "| loop/kind | sent | received (C) | events | overflowed | coalesced | lost "
        "| events/s during storm | receiver CPU µs/signal | load (CPU µs/signal x rate) "
        "| main line's longest stall ms | dispatch capacity events/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in storm.items():
        if "error" in r:
            out.append(f"| {name} | error: {r['error']} ||||||||||")
            continue
        if name.startswith("c/"):
            out.append(
                f"| {name} (C no-op handler) | {r['sent']} | {r['received']} | - | - | - | - "
                f"| - | - | - | {_f(r['stall_ms'], 0)} | - |"
            )
            continue
        cap = _f(r["dispatch_capacity_per_s"], 0) if r["dispatch_capacity_per_s"] else "-"
        std = name.endswith("/std")
        out.append(
            f"| {name} | {r['sent']} | {r['received']} | {r['events']} | {r['overflowed']} "
            f"| {r['coalesced'] if std else r['coalesced_sum'] - r['events']} "
            f"| {r['lost']} | {_f(r['events_per_s'], 0)} | {_f(r['cpu_us_per_signal'], 2)} "
            f"| {_f(bench_storm.load(r), 2)} | {_f(r['stall_ms'], 0)} | {cap} |"
        )
    return out


def fanout_md(fan: dict[str, Any]) -> list[str]:
    out = [
        "\n### Fan-out: N loops in threads, coroutine handler each, same CPU (µs)\n",
        "| loop/N | all woken p50 | all woken p99 | first p50 | vs 1 loop p50 | vs 1 loop p99 "
        "| CPU µs/signal | GIL estimate p50 (vs 1 loop) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in fan.items():
        if "error" in r:
            out.append(f"| {name} | error: {r['error']} |||||||")
            continue
        one = fan.get(name.split("/")[0] + "/1", {}).get("lat_all", {})
        a = r["lat_all"]
        b = gil_bound(fan, name)
        bound = "-" if b is None else f"{_f(b)} ({_x(C.ratio(b, one.get('p50')))})"
        out.append(
            f"| {name} | {_f(a['p50'])} | {_f(a['p99'])} | {_f(r['lat_first']['p50'])} "
            f"| {_x(C.ratio(a['p50'], one.get('p50')))} "
            f"| {_x(C.ratio(a['p99'], one.get('p99')))} | {_f(r['cpu_us_per_signal'])} | {bound} |"
        )
    return out


def memory_md(mem: dict[str, Any]) -> list[str]:
    out = [
        "\n### Memory\n",
        "| loop | RSS KiB / bridge | Python B / bridge | RSS B / handler | Python B / handler "
        "| C allocations / signal | malloc calls / signal (whole path) "
        "| Python B retained / signal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, r in mem.items():
        if "error" in r:
            out.append(f"| {kind} | error: {r['error']} |||||||")
            continue
        c = max(r["c_allocs_per_signal_std"], r["c_allocs_per_signal_rt"])
        out.append(
            f"| {kind} | {_f(r['rss_per_bridge'] / 1024)} | {_f(r['py_bytes_per_bridge'], 0)} "
            f"| {_f(r['rss_per_handler'], 0)} | {_f(r['py_bytes_per_handler'], 0)} "
            f"| {_f(c, 3)} | {_f(r['malloc_calls_per_signal_full_path'], 3)} "
            f"| {_f(r['py_bytes_retained_per_signal'], 2)} |"
        )
    return out


# -- targets ----------------------------------------------------------------------------


def targets_md(tg: list[dict[str, Any]]) -> list[str]:
    out = [
        "\n### Targets (same CPU unless said)\n",
        "| target | measured | result | the machine's bound, measured in this run |",
        "|---|---|:-:|---|",
    ]
    out += [
        f"| {t['target']} | {t['measured']} | **{t['result']}** | {t.get('bound', '')} |"
        for t in tg
    ]
    return out


# -- plot -------------------------------------------------------------------------------


def plot(lat: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scens = list(lat)
    fig, axes = plt.subplots(1, len(scens), figsize=(7 * len(scens), 6.5), squeeze=False)
    for ax, scen in zip(axes[0], scens, strict=True):
        res = lat[scen]
        names = [n for n, r in res.items() if "lat" in r and not n.endswith("-split")]
        p50 = [res[n]["lat"]["p50"] for n in names]
        p99 = [res[n]["lat"]["p99"] for n in names]
        colors = [
            "#555555" if n.startswith(("c/", "python/"))
            else "#4c72b0" if "stock" in n
            else "#dd8452" if n.startswith("asyncio/")
            else "#55a868"
            for n in names
        ]  # fmt: skip
        y = list(range(len(names)))[::-1]
        ax.barh(y, p99, color=colors, alpha=0.35, label="p99")
        ax.barh(y, p50, color=colors, label="p50")
        for yi, a, b in zip(y, p50, p99, strict=True):
            ax.text(b * 1.05, yi, f"{a:.0f} / {b:.0f}", va="center", fontsize=8)
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=9)
        ax.set_xscale("log")
        floor = res.get("c/floor", {}).get("lat", {}).get("p50")
        if floor:
            ax.axvline(floor, color="k", ls=":", lw=1)
            ax.axvline(2.5 * floor, color="r", ls="--", lw=1, label="2.5x floor p50 (target)")
        ax.set_xlabel("µs from kill() to handler start (log); labels: p50 / p99")
        ax.set_title(f"{scen}: solid p50, light p99")
        ax.set_xlim(right=max(p99) * 4)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
    fig.suptitle("aiosigbridge signal latency (stock: loop.add_signal_handler)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------


def report(res: dict[str, Any], loops: tuple[str, ...], quick: bool, wall: float) -> str:
    m = res["machine"]
    lines = [
        f"## aiosigbridge benchmarks ({'quick' if quick else 'full'} mode, {wall:.0f} s)\n",
        f"{m['cpu_model']}, {m['cores']} cores, Linux {m['kernel']}, "
        f"{m['implementation']} {m['python']}, uvloop {m['uvloop']}",
    ]
    sections = {
        "latency": lambda r: latency_md(r) + split_md(r),
        "instructions": instructions_md,
        "versions": lambda r: bench_versions.table_md(r, loops),
        "busy": busy_md,
        "storm": storm_md,
        "fanout": fanout_md,
        "memory": memory_md,
    }
    for name, render in sections.items():
        if name not in res:
            continue
        if "error" in res[name]:  # the question failed: say so, keep the others
            lines.append(f"\n### {name}: FAILED ({res[name]['error']})")
            continue
        lines += render(res[name])
    lines += targets_md(res["targets"])
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few signals: a smoke test")
    ap.add_argument("--loop", default="both", choices=("asyncio", "uvloop", "both"))
    ap.add_argument("--only", action="append", choices=(*QUESTIONS, "versions"),
                    help="run only this question (repeatable)")  # fmt: skip
    args = ap.parse_args()
    loops = C.LOOPS if args.loop == "both" else (args.loop,)
    t_start = time.monotonic()
    C.progress(f"building helpers into {C.OUT}")
    C.build_helpers()
    res: dict[str, Any] = {"machine": C.machine_info(), "quick": args.quick}
    for name, mod in QUESTIONS.items():
        if args.only and name not in args.only:
            continue
        t = time.monotonic()
        try:
            res[name] = mod.run(quick=args.quick, loops=loops)
        except Exception as exc:  # one broken question must not hide the others
            C.progress(f"{name} FAILED: {exc!r}")
            res[name] = {"error": repr(exc)}
        C.progress(f"{name} done in {time.monotonic() - t:.1f} s")
    if not args.only or "versions" in args.only:
        # The headline latency rows per CPython (quick mode: this interpreter's only).
        t = time.monotonic()
        lat = res.get("latency")
        try:
            res["versions"] = bench_versions.run(
                quick=args.quick,
                loops=loops,
                current=None if lat is None or "error" in lat else lat,
            )
        except Exception as exc:
            C.progress(f"versions FAILED: {exc!r}")
            res["versions"] = {"error": repr(exc)}
        C.progress(f"versions done in {time.monotonic() - t:.1f} s")
    ok = {k: v for k, v in res.items() if not (isinstance(v, dict) and "error" in v)}
    res["targets"] = targets(ok, loops)
    wall = time.monotonic() - t_start
    res["wall_s"] = wall
    text = report(res, loops, args.quick, wall)
    C.OUT.mkdir(exist_ok=True)
    (C.OUT / "results.md").write_text(text)
    (C.OUT / "results.json").write_text(json.dumps(res, indent=1))
    if "latency" in res and "error" not in res["latency"]:
        try:
            plot(res["latency"], str(C.OUT / "latency.png"))
        except Exception as exc:
            C.progress(f"plot failed: {exc!r}")
    print(text)
    C.progress(f"wrote {C.OUT}/results.md, results.json, latency.png in {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
