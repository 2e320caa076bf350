"""Question 1: latency from kill() in a separate sender process to the handler's start.

Each target runs in its own receiver process; the C paced sender (see _common) sends
SIGUSR1 and waits for an ack before the next one, so nothing coalesces and the receiver
is idle in its loop when each signal arrives.  Targets:

    c/floor                  C sigwaitinfo() (the floor; no handler at all)
    python/signal            signal.signal() handler, main thread in select.poll()
    <loop>/pipe-cb           the loop floor: a C handler writes a byte to a pipe, the
                             loop's reader callback (pipe_handler.c): what any delivery
                             through a loop costs, whatever the library
    <loop>/stock-cb          loop.add_signal_handler(sig, callback)
    <loop>/stock-coro        loop.add_signal_handler(sig, lambda: loop.create_task(coro()))
    <loop>/asb-sync          aiosigbridge: def handler(ev)
    <loop>/asb-coro          aiosigbridge: async def handler(ev)
    <loop>/asb-rx            aiosigbridge: async for ev in open_receiver(sig)
    <loop>/asb-coro-split    asb-coro, with the bridge's reader callback timed too

For the aiosigbridge targets, ev.timestamp_ns (taken in the C handler) splits the
latency into kill() -> C handler -> (reader callback ->) handler start.

    python benchmarks/bench_latency.py [--loop asyncio|uvloop|both] [--quick]
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import sys
import time
from typing import Any

import _common as C

SIG = int(signal.SIGUSR1)
STOCK = ("pipe-cb", "stock-cb", "stock-coro")
ASB = ("asb-sync", "asb-coro", "asb-rx")


def counts(quick: bool) -> tuple[int, int]:
    """(measured signals, warm-up signals)."""
    return (300, 50) if quick else (5000, 500)


# -- receiver process -------------------------------------------------------------------


def receiver(target: str, kind: str, total: int, ack: int) -> None:
    t1 = [0] * total
    tc = [0] * total
    tr = [0] * total
    n = 0
    mono = time.monotonic_ns

    if target == "signal":

        def on_signal(signum: int, frame: Any) -> None:
            t = mono()
            nonlocal n
            t1[n] = t
            n += 1
            os.write(ack, b"a")

        signal.signal(SIG, on_signal)
        C.ready()
        p = select.poll()
        while n < total:
            p.poll(1000)
        C.emit({"t1": t1})
        return

    loop = C.new_loop(kind)
    asyncio.set_event_loop(loop)
    last_reader = [0]

    async def amain() -> None:
        nonlocal n
        done = loop.create_future()

        def record(t: int, ev: Any = None) -> None:
            nonlocal n
            t1[n] = t
            if ev is not None:
                tc[n] = ev.timestamp_ns
                tr[n] = last_reader[0]
            n += 1
            os.write(ack, b"a")
            if n == total:
                done.set_result(None)

        if target == "pipe-cb":
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

            def on_pipe() -> None:
                t = mono()
                os.read(r, 64)
                record(t)

            C.install_pipe_handler(SIG, w)
            loop.add_reader(r, on_pipe)
            C.ready()
            await done
            loop.remove_reader(r)
            return
        if target == "stock-cb":

            def cb() -> None:
                record(mono())

            loop.add_signal_handler(SIG, cb)
            C.ready()
            await done
            loop.remove_signal_handler(SIG)
            return
        if target == "stock-coro":

            async def coro() -> None:
                record(mono())

            def start() -> None:
                loop.create_task(coro())

            loop.add_signal_handler(SIG, start)
            C.ready()
            await done
            loop.remove_signal_handler(SIG)
            return

        import aiosigbridge as asb

        if target == "asb-coro-split":
            from aiosigbridge import _bridge

            orig = _bridge.SignalBridge._on_readable

            def timed(self: Any) -> None:
                last_reader[0] = mono()
                orig(self)

            _bridge.SignalBridge._on_readable = timed  # type: ignore[method-assign]

        bridge = asb.get_bridge()
        if target == "asb-sync":

            def on_sync(ev: Any) -> None:
                record(mono(), ev)

            bridge.add_handler(SIG, on_sync)
        elif target in ("asb-coro", "asb-coro-split"):

            async def on_coro(ev: Any) -> None:
                record(mono(), ev)

            bridge.add_handler(SIG, on_coro)
        elif target == "asb-rx":
            async with asb.open_receiver(SIG, maxsize=16) as rx:
                C.ready()
                async for ev in rx:
                    record(mono(), ev)
                    if n == total:
                        break
            await bridge.aclose()
            return
        else:
            msg = f"unknown target {target!r}"
            raise ValueError(msg)
        C.ready()
        await done
        await bridge.aclose()

    loop.run_until_complete(amain())
    loop.close()
    out: dict[str, Any] = {"t1": t1}
    if target.startswith("asb"):
        out["tc"] = tc
    if target == "asb-coro-split":
        out["tr"] = tr
    C.emit(out)


# -- orchestration ----------------------------------------------------------------------


def _diff(a: list[int], b: list[int], warmup: int) -> list[int]:
    n = min(len(a), len(b))
    return [b[i] - a[i] for i in range(warmup, n)]


def run_target(
    target: str,
    kind: str,
    scen: tuple[int, int],
    total: int,
    warmup: int,
    python: str | None = None,
) -> dict[str, Any]:
    """One target in one scenario: {"lat": summary, "split": {...}} or {"error": ...}.
    ``python``: the receiver's interpreter (default: this one)."""
    argv = [
        python or C.python(), __file__, "--role", "receiver", "--target", target, "--loop", kind,
        "--total", str(total + warmup),
    ]  # fmt: skip
    try:
        t0, res = C.paced_run(
            argv, sig=SIG, total=total + warmup, recv_cpu=scen[0], send_cpu=scen[1]
        )
    except C.RunError as exc:
        return {"error": str(exc)}
    if len(t0) < total + warmup or "t1" not in res:
        return {"error": f"only {len(t0)} of {total + warmup} signals were handled"}
    out: dict[str, Any] = {"lat": C.summarize_ns(_diff(t0, res["t1"], warmup))}
    if "tc" in res:
        split = {
            "kill->C handler": C.summarize_ns(_diff(t0, res["tc"], warmup)),
            "C handler->handler": C.summarize_ns(_diff(res["tc"], res["t1"], warmup)),
        }
        if "tr" in res:
            split["C handler->reader"] = C.summarize_ns(_diff(res["tc"], res["tr"], warmup))
            split["reader->handler"] = C.summarize_ns(_diff(res["tr"], res["t1"], warmup))
        out["split"] = split
    return out


def run(quick: bool = False, loops: tuple[str, ...] = C.LOOPS) -> dict[str, Any]:
    """All targets, all scenarios.  Returns {scenario: {name: result}}."""
    C.build_helpers()
    total, warmup = counts(quick)
    results: dict[str, Any] = {}
    for scen_name, scen in C.scenarios().items():
        res: dict[str, Any] = {}
        C.progress(f"latency {scen_name}: c/floor ({total} signals + {warmup} warm-up)")
        lat = C.floor_run(sig=SIG, total=total + warmup, recv_cpu=scen[0], send_cpu=scen[1])
        res["c/floor"] = {"lat": C.summarize_ns(lat[warmup:])}
        names: list[tuple[str, str]] = [("python/signal", "signal")]
        for kind in loops:
            names += [(f"{kind}/{t}", t) for t in (*STOCK, *ASB)]
            if scen_name == "same-cpu":
                names.append((f"{kind}/asb-coro-split", "asb-coro-split"))
        for name, target in names:
            kind = name.split("/")[0] if "/" in name else "asyncio"
            C.progress(f"latency {scen_name}: {name}")
            r = run_target(target, kind if kind in C.LOOPS else "asyncio", scen, total, warmup)
            res[name] = r
            if "lat" in r:
                s = r["lat"]
                C.progress(
                    f"    p50 {s['p50']:.1f} us  p99 {s['p99']:.1f} us  max {s['max']:.0f} us"
                )
            else:
                C.progress(f"    ERROR {r['error']}")
        results[scen_name] = res
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = []
    for scen, res in results.items():
        floor = res.get("c/floor", {}).get("lat", {})
        lines.append(f"\n{scen}: latency kill() -> handler start, us")
        lines.append(
            f"{'target':28} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>8}"
            f" {'p50/floor':>9}"
        )
        for name, r in res.items():
            if "lat" not in r:
                lines.append(f"{name:28} {r.get('error', '?')}")
                continue
            s = r["lat"]
            rf = C.ratio(s["p50"], floor.get("p50"))
            lines.append(
                f"{name:28} {s['p50']:8.1f} {s['p90']:8.1f} {s['p99']:8.1f} {s['p99.9']:8.1f} "
                f"{s['max']:8.1f} {rf or 0:9.2f}"
            )
    return "\n".join(lines)


def main() -> None:
    C.paced_main(__doc__ or "", "asb-coro", receiver, run, format_table)


if __name__ == "__main__":
    sys.exit(main())
