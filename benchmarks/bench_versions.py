"""The headline latency rows on every CPython 3.10-3.13 present (deliverable 4 of the
performance issue): kill() → handler start, same CPU, p50 and p99 of

    c/floor, python/signal, <loop>/stock-cb, <loop>/asb-sync, <loop>/asb-coro

for each interpreter.  The running interpreter's row is the latency question's own
(run_all passes it in); the others are measured here with fewer signals (full mode
only; quick mode reports the running interpreter alone).  An interpreter is found as
.ci/run finds it: ``.venv-3.X`` when it already has aiosigbridge and uvloop, else
``python3.X`` on PATH or ``~/.pyenv/versions/3.X*/bin/python``, whose venv is then made
with ``make venv PYTHON=... VENV=.venv-3.X``.  A version that is missing or whose venv
cannot be made is listed as skipped, with why; it never fails the run.

    python benchmarks/bench_versions.py [--quick]
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import subprocess
import sys
from typing import Any

import _common as C
import bench_latency

REPO = C.HERE.parent
VERSIONS = ("3.10", "3.11", "3.12", "3.13")
HEADLINE = ("python/signal", "stock-cb", "asb-sync", "asb-coro")


def counts(quick: bool) -> tuple[int, int]:
    """(measured signals, warm-up signals) per target on the other interpreters."""
    return (300, 50) if quick else (3000, 300)


def headline_names(loops: tuple[str, ...]) -> list[str]:
    out = ["c/floor", "python/signal"]
    for kind in loops:
        out += [f"{kind}/{t}" for t in HEADLINE[1:]]
    return out


def _works(py: str) -> bool:
    r = subprocess.run([py, "-c", "import aiosigbridge, uvloop"], capture_output=True, check=False)
    return r.returncode == 0


def find(version: str) -> tuple[str | None, str]:
    """(interpreter with aiosigbridge and uvloop, how it was found) or (None, why)."""
    venv_py = REPO / f".venv-{version}" / "bin" / "python"
    if venv_py.exists() and _works(str(venv_py)):
        return str(venv_py), f".venv-{version}"
    base = None
    cands = [f"python{version}", *sorted(glob.glob(os.path.expanduser(
        f"~/.pyenv/versions/{version}*/bin/python")))]  # fmt: skip
    for cand in cands:
        # pyenv's shims exist for versions that are not active: ask the interpreter.
        try:
            r = subprocess.run([cand, "-c", "import sys"], capture_output=True, check=False)
        except OSError:
            continue
        if r.returncode == 0:
            base = cand
    if base is None:
        return None, "not installed"
    C.progress(f"versions: make venv PYTHON={base} VENV=.venv-{version}")
    r = subprocess.run(
        ["make", "-C", str(REPO), "venv", f"PYTHON={base}", f"VENV=.venv-{version}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0 or not _works(str(venv_py)):
        tail = str(r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        return None, f"make venv failed with {base}: {tail[0][:200]}"
    return str(venv_py), f".venv-{version} (made from {base})"


def measure(py: str, loops: tuple[str, ...], total: int, warmup: int) -> dict[str, Any]:
    """The headline rows with interpreter ``py``, same CPU."""
    scen = C.scenarios()["same-cpu"]
    sig = bench_latency.SIG
    rows: dict[str, Any] = {}
    lat = C.floor_run(sig=sig, total=total + warmup, recv_cpu=scen[0], send_cpu=scen[1])
    rows["c/floor"] = {"lat": C.summarize_ns(lat[warmup:])}
    for name in headline_names(loops)[1:]:
        kind, target = name.split("/")
        if name == "python/signal":
            kind, target = "asyncio", "signal"
        rows[name] = bench_latency.run_target(target, kind, scen, total, warmup, python=py)
    return rows


def _version_of(py: str) -> str:
    r = subprocess.run(
        [py, "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return r.stdout.strip() or "?"


def run(
    quick: bool = False,
    loops: tuple[str, ...] = C.LOOPS,
    current: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """{"3.X": {"python": version, "found": how, "n": signals, "rows": {name: result}}
    or {"skipped": why}}, the running interpreter first."""
    C.build_helpers()
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    total, warmup = counts(quick)
    out: dict[str, Any] = {}
    names = headline_names(loops)
    same = (current or {}).get("same-cpu")
    if same:
        rows = {n: same[n] for n in names if n in same}
        n = rows.get("c/floor", {}).get("lat", {}).get("n")
        found = "this run's latency question"
    else:
        C.progress(f"versions: {mine} (this interpreter), {total} signals per target")
        rows, n, found = measure(C.python(), loops, total, warmup), total, "measured here"
    out[mine] = {"python": platform.python_version(), "found": found, "n": n, "rows": rows}
    if quick:
        return out
    for v in VERSIONS:
        if v == mine:
            continue
        py, how = find(v)
        if py is None:
            C.progress(f"versions: {v} skipped: {how}")
            out[v] = {"skipped": how}
            continue
        C.progress(f"versions: {v} ({py}), {total} signals per target")
        out[v] = {
            "python": _version_of(py),
            "found": how,
            "n": total,
            "rows": measure(py, loops, total, warmup),
        }
    return dict(sorted(out.items(), key=lambda kv: tuple(int(x) for x in kv[0].split("."))))


def table_md(res: dict[str, Any], loops: tuple[str, ...] = C.LOOPS) -> list[str]:
    names = headline_names(loops)
    out = [
        "\n### Latency by Python version, kill() → handler start, same-cpu, p50 / p99 (µs)\n",
        "| CPython | n | " + " | ".join(names) + " | asb-coro p50 / floor (asyncio, uvloop) |",
        "|---|---:|" + "---:|" * len(names) + "---:|",
    ]
    skipped = []
    for v, r in res.items():
        if "skipped" in r:
            skipped.append(f"{v}: {r['skipped']}")
            continue
        rows = r["rows"]

        def cell(name: str, rows: dict[str, Any] = rows) -> str:
            s = rows.get(name, {}).get("lat")
            if not s:
                return "error" if name in rows else "-"
            return f"{s['p50']:.1f} / {s['p99']:.1f}"

        floor = rows.get("c/floor", {}).get("lat", {}).get("p50")
        ratios = []
        for kind in loops:
            coro = rows.get(f"{kind}/asb-coro", {}).get("lat", {}).get("p50")
            q = C.ratio(coro, floor)
            ratios.append("-" if q is None else f"{q:.2f}x")
        out.append(
            f"| {r['python']} | {r['n']} | " + " | ".join(cell(n) for n in names)
            + f" | {' / '.join(ratios)} |"
        )  # fmt: skip
    if skipped:
        out.append("\nSkipped: " + "; ".join(skipped) + ".")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--loop", default="both", choices=("asyncio", "uvloop", "both"))
    args = ap.parse_args()
    loops = C.LOOPS if args.loop == "both" else (args.loop,)
    res = run(args.quick, loops)
    print("\n".join(table_md(res, loops)))


if __name__ == "__main__":
    sys.exit(main())
