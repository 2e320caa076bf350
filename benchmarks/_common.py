"""Shared helpers of the benchmarks: the C helpers, the paced sender protocol,
percentiles, CPU pinning, progress, machine description.

How a paced latency run works (bench_latency, bench_busy, bench_fanout)::

    orchestrator ──spawns──> receiver (Python, pinned)  prints READY, then handles signals
                 ──spawns──> c_floor send (C, pinned)   sleep gap; t0 = now; kill(); wait ack

The receiver takes ``t1 = time.monotonic_ns()`` first thing in its handler, then writes
one ack byte to a pipe; the sender waits for that byte before the next signal, so no two
signals are ever pending together (nothing coalesces) and the receiver is idle when each
arrives.  Latency is ``t1[i] - t0[i]``: both are CLOCK_MONOTONIC, taken in two processes;
the ack round trip is never inside a figure.  The receiver prints its results as one JSON
line on stdout after READY; the sender prints its send times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
C_FLOOR = OUT / "c_floor"
PIPE_HANDLER = OUT / "pipe_handler.so"
MALLOC_COUNT = OUT / "malloc_count.so"
LOOPS = ("asyncio", "uvloop")

_T_START = time.monotonic()


def progress(msg: str) -> None:
    """One progress line on stderr, with the time since the run started."""
    print(f"[{time.monotonic() - _T_START:6.1f}s] {msg}", file=sys.stderr, flush=True)


# -- C helpers --------------------------------------------------------------------------


def _build(src: Path, out: Path, extra: Sequence[str]) -> Path:
    OUT.mkdir(exist_ok=True)
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    cc = os.environ.get("CC", "gcc")
    cmd = [cc, "-O2", "-std=c11", "-Wall", "-Wextra", *extra, str(src), "-o", str(out)]
    subprocess.run(cmd, check=True)
    return out


def build_helpers() -> None:
    """Compile c_floor (floor receiver, paced sender, storm sender) and the malloc
    counter into benchmarks/out/ (gitignored), when missing or older than the source."""
    _build(HERE / "c_floor.c", C_FLOOR, [])
    _build(HERE / "malloc_count.c", MALLOC_COUNT, ["-shared", "-fPIC"])
    _build(HERE / "pipe_handler.c", PIPE_HANDLER, ["-shared", "-fPIC"])


def install_pipe_handler(sig: int, fd: int) -> None:
    """The loop floor's C handler (pipe_handler.c): each ``sig`` writes a byte to ``fd``."""
    import ctypes

    if ctypes.CDLL(str(PIPE_HANDLER)).pipe_handler_install(sig, fd) != 0:
        msg = f"pipe_handler_install({sig}, {fd}) failed"
        raise OSError(msg)


# -- CPU placement ----------------------------------------------------------------------


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def scenarios() -> dict[str, tuple[int, int]]:
    """name -> (receiver CPU, sender CPU)."""
    c = cpus()
    out = {"same-cpu": (c[0], c[0])}
    if len(c) > 1:
        out["diff-cpu"] = (c[0], c[1])
    return out


def _pinned(cpu: int | None) -> Any:
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


# -- statistics -------------------------------------------------------------------------


def percentile(sorted_vals: Sequence[float], q: float) -> float:
    """Nearest-rank-interpolated percentile of already sorted values."""
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)


def summarize_ns(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in microseconds, and the sample count."""
    s = sorted(v / 1000.0 for v in samples_ns)
    if not s:
        return {"n": 0}
    return {
        "n": len(s),
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "p99.9": percentile(s, 99.9),
        "max": s[-1],
        "mean": sum(s) / len(s),
    }


# -- the paced run ----------------------------------------------------------------------


class RunError(RuntimeError):
    pass


def paced_run(
    receiver_argv: Sequence[str],
    *,
    sig: int,
    total: int,
    recv_cpu: int | None,
    send_cpu: int | None,
    gap_us: tuple[int, int] = (100, 150),
    queue: bool = False,
    timeout: float = 120.0,
) -> tuple[list[int], dict[str, Any]]:
    """Start the receiver (``receiver_argv`` plus ``--ack-fd N``), wait for its READY,
    run the C paced sender against it, and return (send times, the receiver's JSON)."""
    r_ack, w_ack = os.pipe()
    try:
        recv = subprocess.Popen(
            [*receiver_argv, "--ack-fd", str(w_ack)],
            stdout=subprocess.PIPE,
            pass_fds=(w_ack,),
            preexec_fn=_pinned(recv_cpu),
            text=True,
        )
    finally:
        os.close(w_ack)
    try:
        assert recv.stdout is not None
        line = recv.stdout.readline()
        if line.strip() != "READY":
            recv.kill()
            rest = recv.stdout.read()
            msg = f"receiver {receiver_argv[-4:]} did not start: {line!r} {rest[-500:]!r}"
            raise RunError(msg)
        send = subprocess.Popen(
            [
                str(C_FLOOR),
                "send",
                str(recv.pid),
                str(sig),
                str(total),
                str(r_ack),
                str(gap_us[0]),
                str(gap_us[1]),
                "1" if queue else "0",
            ],
            stdout=subprocess.PIPE,
            pass_fds=(r_ack,),
            preexec_fn=_pinned(send_cpu),
            text=True,
        )
        try:
            s_out, _ = send.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            send.kill()
            s_out, _ = send.communicate()
        r_out, _ = recv.communicate(timeout=30)
    except BaseException:
        recv.kill()
        recv.wait()
        raise
    finally:
        os.close(r_ack)
    t0 = [int(x) for x in s_out.split()]
    result: dict[str, Any] = {}
    for ln in r_out.splitlines():
        if ln.startswith("{"):
            result = json.loads(ln)
    if recv.returncode != 0 and not result:
        msg = f"receiver exited with {recv.returncode}: {r_out[-500:]!r}"
        raise RunError(msg)
    return t0, result


def floor_run(*, sig: int, total: int, recv_cpu: int | None, send_cpu: int | None) -> list[int]:
    """The C sigwaitinfo floor: latencies in ns (all of them, warm-up included)."""
    r_ack, w_ack = os.pipe()
    try:
        recv = subprocess.Popen(
            [str(C_FLOOR), "floor", str(sig), str(total), str(w_ack)],
            stdout=subprocess.PIPE,
            pass_fds=(w_ack,),
            preexec_fn=_pinned(recv_cpu),
            text=True,
        )
    finally:
        os.close(w_ack)
    try:
        assert recv.stdout is not None
        if recv.stdout.readline().strip() != "READY":
            msg = "c_floor floor did not start"
            raise RunError(msg)
        send = subprocess.run(
            [
                str(C_FLOOR),
                "send",
                str(recv.pid),
                str(sig),
                str(total),
                str(r_ack),
                "100",
                "150",
                "0",
            ],
            stdout=subprocess.PIPE,
            pass_fds=(r_ack,),
            preexec_fn=_pinned(send_cpu),
            text=True,
            timeout=120,
            check=False,
        )
        r_out, _ = recv.communicate(timeout=30)
    except BaseException:
        recv.kill()
        recv.wait()
        raise
    finally:
        os.close(r_ack)
    t0 = [int(x) for x in send.stdout.split()]
    t1 = [int(x) for x in r_out.split()]
    return [b - a for a, b in zip(t0, t1, strict=False)]


# -- receiver side ----------------------------------------------------------------------


def paced_main(
    doc: str,
    default_target: str,
    receiver: Callable[[str, str, int, int], None],
    run: Callable[[bool, tuple[str, ...]], Any],
    format_table: Callable[[Any], str],
) -> None:
    """The command line of a benchmark paced by acknowledgements (bench_latency,
    bench_busy): an orchestrator that prints the table, or one receiver process."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--role", default="orchestrator", choices=("orchestrator", "receiver"))
    ap.add_argument("--target", default=default_target)
    ap.add_argument("--loop", default="both", choices=("asyncio", "uvloop", "both"))
    ap.add_argument("--total", type=int, default=0)
    ap.add_argument("--ack-fd", type=int, default=-1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.role == "receiver":
        receiver(args.target, args.loop, args.total, args.ack_fd)
        return
    loops = LOOPS if args.loop == "both" else (args.loop,)
    print(format_table(run(args.quick, loops)))


def new_loop(kind: str) -> Any:
    """A fresh event loop of ``kind`` ("asyncio" or "uvloop")."""
    import asyncio

    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if kind == "asyncio":
        return asyncio.new_event_loop()
    msg = f"unknown loop {kind!r}: use asyncio or uvloop"
    raise ValueError(msg)


def ready() -> None:
    print("READY", flush=True)


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b != b or b == 0 or a != a:
        return None
    return a / b


# -- machine ----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    model = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import uvloop

        uv = uvloop.__version__
    except ImportError:
        uv = None
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "cpus_usable": cpus(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "uvloop": uv,
    }


def python() -> str:
    return sys.executable
