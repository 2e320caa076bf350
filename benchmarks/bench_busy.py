"""Question 2: a task hogs the loop with CPU-bound Python in 50 ms chunks; how late is
the signal seen?

Targets (each in its own receiver process, paced sender as in bench_latency, random
gaps so that signals land anywhere in a chunk):

    <loop>/stock-cb          loop.add_signal_handler callback: runs after the chunk
    <loop>/asb-sync          aiosigbridge sync handler: runs after the chunk
    <loop>/asb-interrupt     add_handler(sig, h, interrupt=True): the hogging task should
                             get CancelledError (or the interrupt exception) promptly,
                             inside its CPU-bound code; the figure is kill() -> the moment
                             the hogging task sees that exception

The interrupt variant reports itself "not available" when add_handler(interrupt=True)
raises, or when the handler runs but the hogging task is never interrupted.  It runs
twice: the sender on the hog's CPU (as a local ``kill`` is) and on the other CPU.  It
also says where the time goes, from the times at which the bridge's interrupt check ran
in the receiver (a private hook, wrapped here for the measure only):

    to the check      kill() -> the first check (kernel delivery, the C handler, the
                      main thread's next bytecode running Python's handler)
    re-check          first -> last check: the task's HOG_NS of CPU (100 µs by design:
                      a task that awaits within it gets the interrupt at its await), the
                      interrupt timer's wake-up, and before 3.13 the GIL hand-over that
                      makes the main thread see the timer's trip
    raise             last check -> the task sees the exception

    python benchmarks/bench_busy.py [--loop asyncio|uvloop|both] [--quick]
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

import _common as C

SIG = int(signal.SIGUSR1)
CHUNK_S = 0.050
TARGETS = ("stock-cb", "asb-sync", "asb-interrupt")


def counts(quick: bool, target: str) -> tuple[int, int]:
    """(measured signals, warm-up signals)."""
    if target == "asb-interrupt":
        return (40, 5) if quick else (400, 20)
    return (8, 2) if quick else (50, 3)


def gaps(target: str) -> tuple[int, int]:
    """Sender gap range in us: anywhere in a chunk."""
    return (1000, 10000) if target == "asb-interrupt" else (0, 50000)


# -- receiver process -------------------------------------------------------------------


def _burn(seconds: float) -> int:
    """CPU-bound Python, no await, for ``seconds``."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1
    return x


def receiver(target: str, kind: str, total: int, ack: int) -> None:
    t1 = [0] * total
    n = 0
    interrupted = 0
    mono = time.monotonic_ns
    loop = C.new_loop(kind)
    asyncio.set_event_loop(loop)
    out: dict[str, Any] = {}

    def record(t: int) -> None:
        nonlocal n
        t1[n] = t
        n += 1
        os.write(ack, b"a")

    async def hog_plain() -> None:
        while n < total:
            _burn(CHUNK_S)
            await asyncio.sleep(0)

    async def amain() -> None:
        nonlocal interrupted
        if target == "stock-cb":
            loop.add_signal_handler(SIG, lambda: record(mono()))
            C.ready()
            await hog_plain()
            loop.remove_signal_handler(SIG)
            return

        import aiosigbridge as asb

        bridge = asb.get_bridge()
        if target == "asb-sync":
            bridge.add_handler(SIG, lambda ev: record(mono()))
            C.ready()
            await hog_plain()
            await bridge.aclose()
            return

        handled = [0]
        stamps: list[int] = []
        out["stamps"] = stamps

        def on_sig(ev: Any) -> None:
            handled[0] += 1
            stamps.append(ev.timestamp_ns)  # the C handler's CLOCK_MONOTONIC stamp

        from aiosigbridge import _interrupt

        checks: list[int] = []
        out["checks"] = checks
        maybe_raise = _interrupt.Interrupts._maybe_raise

        def traced(self: Any, frame: Any) -> None:
            checks.append(mono())
            maybe_raise(self, frame)

        _interrupt.Interrupts._maybe_raise = traced  # type: ignore[method-assign]
        try:
            bridge.add_handler(SIG, on_sig, interrupt=True)
        except Exception as exc:
            out["unavailable"] = f"add_handler(interrupt=True) raised {exc!r}"
            C.ready()
            return
        task = asyncio.current_task()
        assert task is not None
        C.ready()
        missed = 0
        settle = False
        while n < total:
            try:
                if settle:
                    # Two loop iterations: the reader dispatches the delivery (on_sig
                    # keeps its C handler's stamp) before the next chunk.
                    settle = False
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                _burn(CHUNK_S)
                await asyncio.sleep(0)
            except BaseException as exc:
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                t = mono()
                interrupted += 1
                out.setdefault("exception", type(exc).__name__)
                uncancel = getattr(task, "uncancel", None)
                if uncancel is not None:
                    while task.cancelling():
                        uncancel()
                record(t)
                settle = True
                continue
            if handled[0] > n:
                # The handler ran, but only after the chunk: no interrupt happened.
                missed += 1
                record(mono())
                if interrupted == 0 and missed >= 3:
                    out["unavailable"] = (
                        "add_handler(interrupt=True) accepted, the handler ran, but the "
                        "hogging task was never interrupted (3 of 3 signals)"
                    )
                    break
        out["interrupted"] = interrupted
        out["not_interrupted"] = missed
        await bridge.aclose()

    loop.run_until_complete(amain())
    loop.close()
    out["t1"] = t1[:n]
    C.emit(out)


# -- orchestration ----------------------------------------------------------------------


def run_target(target: str, kind: str, quick: bool, scen: tuple[int, int]) -> dict[str, Any]:
    total, warmup = counts(quick, target)
    argv = [
        C.python(), __file__, "--role", "receiver", "--target", target, "--loop", kind,
        "--total", str(total + warmup),
    ]  # fmt: skip
    try:
        t0, res = C.paced_run(
            argv, sig=SIG, total=total + warmup, recv_cpu=scen[0], send_cpu=scen[1],
            gap_us=gaps(target),
        )  # fmt: skip
    except C.RunError as exc:
        return {"error": str(exc)}
    if "unavailable" in res:
        return {"unavailable": res["unavailable"]}
    t1 = res.get("t1", [])
    m = min(len(t0), len(t1))
    if m <= warmup:
        return {"error": f"only {m} of {total + warmup} signals were handled"}
    out: dict[str, Any] = {"lat": C.summarize_ns([t1[i] - t0[i] for i in range(warmup, m)])}
    for k in ("interrupted", "not_interrupted", "exception"):
        if k in res:
            out[k] = res[k]
    if "checks" in res:
        out["split"] = split(t0[warmup:m], t1[warmup:m], res["checks"], res.get("stamps", []))
    return out


def split(t0: list[int], t1: list[int], checks: list[int], stamps: list[int]) -> dict[str, Any]:
    """Per delivery, from the interrupt check times between kill() and the raise: kill ->
    the C handler (its stamp), -> first check, first -> last check, last check -> raise
    (module docstring)."""
    import bisect

    checks, stamps = sorted(checks), sorted(stamps)
    kernel, first, wait, last, count = [], [], [], [], []
    for a, b in zip(t0, t1, strict=True):
        i, j = bisect.bisect_left(checks, a), bisect.bisect_right(checks, b)
        if j <= i:
            continue
        k = bisect.bisect_left(stamps, a)
        if k < len(stamps) and stamps[k] <= checks[i]:
            kernel.append(stamps[k] - a)
        first.append(checks[i] - a)
        wait.append(checks[j - 1] - checks[i])
        last.append(b - checks[j - 1])
        count.append(j - i)
    if not first:
        return {}
    return {
        "to_c_handler": C.summarize_ns(kernel) if kernel else None,
        "to_check": C.summarize_ns(first),
        "recheck": C.summarize_ns(wait),
        "raise": C.summarize_ns(last),
        "checks_p50": sorted(count)[len(count) // 2],
    }


def run(quick: bool = False, loops: tuple[str, ...] = C.LOOPS) -> dict[str, Any]:
    """Same-CPU scenario (the sender competes with the hog for the CPU, as a local
    ``kill`` would), and the interrupt again with the sender on the other CPU
    (``<loop>/asb-interrupt/diff-cpu``).  Returns {name: result}."""
    C.build_helpers()
    scens = C.scenarios()
    results: dict[str, Any] = {}
    for kind in loops:
        runs = [(f"{kind}/{t}", t, scens["same-cpu"]) for t in TARGETS]
        if "diff-cpu" in scens:
            runs.append((f"{kind}/asb-interrupt/diff-cpu", "asb-interrupt", scens["diff-cpu"]))
        for name, target, scen in runs:
            C.progress(f"busy loop (50 ms chunks): {name}")
            r = run_target(target, kind, quick, scen)
            results[name] = r
            if "lat" in r:
                s = r["lat"]
                C.progress(f"    p50 {s['p50'] / 1000:.2f} ms  p99 {s['p99'] / 1000:.2f} ms")
                if r.get("split"):
                    C.progress("    " + split_line(r["split"]))
            else:
                C.progress(f"    {r}")
    return results


def split_line(sp: dict[str, Any]) -> str:
    """p50 / p99 of each part, µs."""
    parts = [f"{k} {sp[k]['p50']:.0f} / {sp[k]['p99']:.0f} µs"
             for k in ("to_c_handler", "to_check", "recheck", "raise") if sp.get(k)]  # fmt: skip
    return ", ".join(parts) + f" ({sp['checks_p50']} checks)"


def format_table(results: dict[str, Any]) -> str:
    lines = [f"{'target':32} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"]
    for name, r in results.items():
        if "lat" in r:
            s = r["lat"]
            lines.append(
                f"{name:32} {s['n']:5d} {s['p50'] / 1000:8.3f} {s['p99'] / 1000:8.3f} "
                f"{s['max'] / 1000:8.3f}"
                + (f"  {split_line(r['split'])}" if r.get("split") else "")
            )
        else:
            lines.append(f"{name:26} not available: {r.get('unavailable') or r.get('error')}")
    return "\n".join(lines)


def main() -> None:
    C.paced_main(__doc__ or "", "asb-interrupt", receiver, run, format_table)


if __name__ == "__main__":
    sys.exit(main())
