"""Question 6: instructions per delivery, counted by valgrind's callgrind (repeatable to
the instruction, where the latency figures move by ±20 % between runs).

One receiver process per target runs under ``valgrind --tool=callgrind``, idle in its
loop, and gets SIGUSR1 from this process N times (kill(), SI_USER, as in
bench_latency).  Before each signal this process waits until the receiver sleeps in its
poll again (``/proc/<pid>/stat`` and ``/proc/<pid>/syscall`` unchanged over 3 ms), so
every delivery takes the path of a signal arriving at an idle loop.  Callgrind cuts the
run into dumps, with no change to the package (the installed code runs as is):

    --dump-before=epoll_wait, poll, ...   a dump each time the loop goes to sleep
                                          (one per loop iteration)
    --dump-before=os_getppid              and one where the handler's first line,
                                          ``MARK()`` (= os.getppid), enters C

A delivery is the dumps from the poll the loop slept in when the signal came (the one
whose dump holds the C signal handler's cost) to its MARK dump: everything the process
ran from the signal's arrival to the handler's first line, over as many loop
iterations as it takes.  From it: ``total``; ``C handler``, the inclusive cost of the
process's C handler for the signal (``sb_handler``, aiosigbridge's, or CPython's
``signal_handler`` for signal.signal and the loops' add_signal_handler); and ``Python
side`` = total - C handler - marker, the figure to optimise: the interpreter's or the
loop's wake-up, the reader (or Python's handler path, where the bridge dispatches from
there), the drain, the event, the dispatch and the handler's start.  ``marker`` is the
bracket's own cost (MARK()'s call up to os_getppid), measured in the same process as
the dump after ``ZERO(); MARK()`` with ``--zero-before=os_sched_yield
--toggle-collect=os_sched_yield`` (ZERO's own call not counted; what is left of its
return, ~20 instructions, makes the marker a slight overestimate).  The figure per
target is the median over the measured deliveries after a warm-up (the first ~10
deliveries are dearer: caches, the 3.11+ specializing interpreter); every delivery's
figure is in the JSON ("series").  PYTHONHASHSEED=0.

(Zeroing at the signal handler itself does not work: callgrind's --zero-before and
CALLGRIND_ZERO_STATS do nothing in a signal handler's context, and the client request
zeroes only the calling thread; hence the dumps at the poll.)

Targets (the C handler):

    python/signal       signal.signal() handler, main thread in select.poll()  (CPython's)
    <loop>/pipe-cb      the loop floor: a C handler writes a byte to a pipe, the loop's
                        reader callback for it (what any loop-based delivery costs
                        after the kernel: wake-up, poll, one callback)  (pipe_handler)
    <loop>/stock-cb     loop.add_signal_handler(sig, callback)                  (CPython's)
    <loop>/asb-sync     aiosigbridge: def handler(ev)                           (sb_handler)
    <loop>/asb-coro     aiosigbridge: async def handler(ev), its first line     (sb_handler)
    <loop>/asb-rx       aiosigbridge: `async for ev in rx:`, the body's first line

The median delivery's dumps (one file per loop iteration) are kept in
benchmarks/out/callgrind/<loop>-<target>/ for ``callgrind_annotate --inclusive=yes``
or kcachegrind.  Instruction counts leave out what the kernel does (system calls,
wake-ups), which the latency figures include: ratios between the two differ.

    python benchmarks/bench_instructions.py [--loop asyncio|uvloop|both] [--quick]
        [--python PATH] [--runs 2]   # --runs 2: run it twice and print the spread
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _common as C

SIG = int(signal.SIGUSR1)
CG_CLIENT = C.OUT / "cg_client.so"
DUMPS = C.OUT / "callgrind"
MARK_FN = "os_getppid"  # the handler's first line: MARK() = os.getppid()
ZERO_FN = "os_sched_yield"  # the marker's calibration: ZERO(); MARK()
#: The process's C handler for the signal (its inclusive cost is reported apart).
C_HANDLER = {
    "signal": "signal_handler",
    "stock-cb": "signal_handler",
    "pipe-cb": "pipe_handler",
    "asb": "sb_handler",
}
ASB = ("asb-sync", "asb-coro", "asb-rx")
#: The libc calls an idle loop sleeps in: each opens a new dump (one per loop iteration).
POLL_FNS = ("epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect")


def counts(quick: bool) -> tuple[int, int, int]:
    """(measured deliveries, warm-up deliveries, marker calibrations) per target."""
    return (15, 20, 40) if quick else (100, 30, 40)


def targets(loops: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(name, target, loop kind)."""
    out = [("python/signal", "signal", "asyncio")]
    for kind in loops:
        out += [(f"{kind}/{t}", t, kind) for t in ("pipe-cb", "stock-cb", *ASB)]
    return out


# -- receiver process (under valgrind) --------------------------------------------------

MARK = os.getppid
ZERO = os.sched_yield  # returns None: nothing to free after it


def _calibrate(k: int) -> None:
    for _ in range(k):
        ZERO()
        MARK()


def _instrument(calib: int) -> None:
    """Instrumentation on, then the marker counted ``calib`` times: the first dumps.
    Called once the target is set up, right before READY."""
    ctypes.CDLL(str(CG_CLIENT)).cg_start_instrumentation()
    _calibrate(calib)


def receiver(target: str, kind: str, total: int, calib: int, ack: int) -> None:
    n = 0

    if target == "signal":

        def on_signal(signum: int, frame: Any) -> None:
            MARK()
            nonlocal n
            n += 1
            os.write(ack, b"a")

        signal.signal(SIG, on_signal)
        _instrument(calib)
        C.ready()
        p = select.poll()
        while n < total:
            p.poll(1000)
        return

    import asyncio

    loop = C.new_loop(kind)
    asyncio.set_event_loop(loop)

    async def amain() -> None:
        done = loop.create_future()

        def got() -> None:
            nonlocal n
            n += 1
            os.write(ack, b"a")
            if n == total:
                done.set_result(None)

        if target == "pipe-cb":
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

            def on_pipe() -> None:
                MARK()
                os.read(r, 64)
                got()

            C.install_pipe_handler(SIG, w)
            loop.add_reader(r, on_pipe)
            _instrument(calib)
            C.ready()
            await done
            loop.remove_reader(r)
            return

        if target == "stock-cb":

            def cb() -> None:
                MARK()
                got()

            loop.add_signal_handler(SIG, cb)
            _instrument(calib)
            C.ready()
            await done
            loop.remove_signal_handler(SIG)
            return

        import aiosigbridge as asb

        bridge = asb.get_bridge()
        if target == "asb-sync":

            def on_sync(ev: Any) -> None:
                MARK()
                got()

            bridge.add_handler(SIG, on_sync)
        elif target == "asb-coro":

            async def on_coro(ev: Any) -> None:
                MARK()
                got()

            bridge.add_handler(SIG, on_coro)
        elif target == "asb-rx":
            async with asb.open_receiver(SIG, maxsize=16) as rx:
                _instrument(calib)
                C.ready()
                async for _ev in rx:
                    MARK()
                    got()
                    if n == total:
                        break
            await bridge.aclose()
            return
        else:
            msg = f"unknown target {target!r}"
            raise ValueError(msg)
        _instrument(calib)
        C.ready()
        await done
        await bridge.aclose()

    loop.run_until_complete(amain())
    loop.close()


# -- orchestration ----------------------------------------------------------------------


def valgrind() -> str | None:
    return shutil.which("valgrind")


def build_client() -> str | None:
    """Build cg_client.so; None when it is built, else why not."""
    try:
        C._build(C.HERE / "cg_client.c", CG_CLIENT, ["-shared", "-fPIC"])
    except (subprocess.CalledProcessError, OSError) as exc:
        return (
            f"cg_client.c did not build ({exc}): valgrind's headers "
            "(valgrind/callgrind.h) are missing?"
        )
    return None


def _idle_sample(pid: int) -> str | None:
    """What the receiver is blocked in, or None while it runs."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state != "S":
            return None
        try:
            with open(f"/proc/{pid}/syscall") as f:
                sc = f.read().strip()
        except OSError:  # not readable here: the state alone, sampled further apart
            time.sleep(0.02)
            return "S"
        return None if sc.startswith("running") else sc
    except (OSError, IndexError):
        return None


def wait_idle(pid: int, timeout: float = 60.0) -> None:
    """Until the receiver sleeps in the same system call on two looks 3 ms apart."""
    deadline = time.monotonic() + timeout
    prev = None
    while time.monotonic() < deadline:
        cur = _idle_sample(pid)
        if cur is not None and cur == prev:
            return
        prev = cur
        time.sleep(0.003)
    msg = f"receiver {pid} never went idle"
    raise C.RunError(msg)


class Dump:
    """One callgrind dump (written with --compress-strings=no --compress-pos=no): the
    costs since the dump before it, up to its trigger's function entry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.trigger = ""
        self.total = 0
        self._text: list[str] | None = None
        with open(path) as f:
            for ln in f:
                if ln.startswith("desc: Trigger:"):
                    self.trigger = ln.rsplit("=", 1)[-1].strip()
                elif ln.startswith("summary:"):
                    self.total = int(ln.split()[1])
                    break

    def inclusive(self, fn: str) -> int:
        """Inclusive Ir of function ``fn`` in this dump: its cost lines, its own and
        (after calls=) its callees' inclusive ones."""
        incl = 0
        cur = ""
        with open(self.path) as f:
            for ln in f:
                c = ln[:1]
                if c.isdigit() or c in "+-*":
                    if cur == fn:
                        parts = ln.split()
                        if len(parts) >= 2:
                            incl += int(parts[1])
                elif ln.startswith("fn="):
                    cur = ln[3:].strip()
        return incl


def deliveries(
    dumps: list[Dump], handler_fn: str
) -> tuple[list[tuple[int, int]], list[list[Dump]], str | None]:
    """Per delivery (total, C handler) and its dumps, from the dumps after the marker's
    calibration: each delivery ends at a MARK dump, and starts at the poll whose
    dump-before trigger opened the segment in which the C handler ran (the poll the
    loop slept in when the signal came)."""
    out: list[tuple[int, int]] = []
    segs: list[list[Dump]] = []
    prev_mark = -1
    for m, d in enumerate(dumps):
        if d.trigger != MARK_FN:
            continue
        handler = 0
        j = m
        while j > prev_mark:
            handler = dumps[j].inclusive(handler_fn)
            if handler:
                break
            j -= 1
        if not handler:
            return out, segs, f"delivery {len(out) + 1}: no {handler_fn} before its handler"
        if j == 0 or dumps[j - 1].trigger not in POLL_FNS:
            opened = dumps[j - 1].trigger if j else "start"
            why = f"delivery {len(out) + 1} did not arrive in a poll (after {opened})"
            return out, segs, why
        part = dumps[j : m + 1]
        handler += sum(p.inclusive(handler_fn) for p in part[1:])
        out.append((sum(p.total for p in part), handler))
        segs.append(part)
        prev_mark = m
    return out, segs, None


def run_target(
    name: str,
    target: str,
    kind: str,
    *,
    total: int,
    warmup: int,
    calib: int,
    python: str,
) -> dict[str, Any]:
    handler_fn = C_HANDLER["asb" if target.startswith("asb") else target]
    tmp = Path(tempfile.mkdtemp(prefix="cg-", dir=C.OUT))
    cmd = [
        valgrind() or "valgrind",
        "--tool=callgrind",
        "--vgdb=no",
        "--instr-atstart=no",
        f"--callgrind-out-file={tmp}/cg.%p",
        f"--zero-before={ZERO_FN}",
        f"--toggle-collect={ZERO_FN}",  # ZERO()'s own call is not counted
        "--collect-atstart=yes",  # after --toggle-collect, which sets it to no
        f"--dump-before={MARK_FN}",
        *(f"--dump-before={fn}" for fn in POLL_FNS),
        "--compress-strings=no",
        "--compress-pos=no",
        python, __file__, "--role", "receiver", "--target", target, "--loop", kind,
        "--total", str(total + warmup), "--calib", str(calib),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")
    r_ack, w_ack = os.pipe()
    log = open(tmp / "valgrind.log", "w")  # noqa: SIM115 - closed in finally
    try:
        recv = subprocess.Popen(
            [*cmd, "--ack-fd", str(w_ack)],
            stdout=subprocess.PIPE,
            stderr=log,
            pass_fds=(w_ack,),
            env=env,
            text=True,
        )
        os.close(w_ack)
        w_ack = -1
        try:
            assert recv.stdout is not None
            line = recv.stdout.readline()
            if line.strip() != "READY":
                recv.kill()
                recv.wait()
                msg = f"receiver did not start: {line!r}; see {tmp}/valgrind.log"
                raise C.RunError(msg)
            for _ in range(total + warmup):
                wait_idle(recv.pid)
                os.kill(recv.pid, SIG)
                ready, _, _ = select.select([r_ack], [], [], 60)
                if not ready or not os.read(r_ack, 1):
                    msg = "no ack from the receiver within 60 s"
                    raise C.RunError(msg)
            recv.wait(timeout=120)
        except BaseException:
            recv.kill()
            recv.wait()
            raise
    except C.RunError as exc:
        return {"error": str(exc)}
    finally:
        if w_ack >= 0:
            os.close(w_ack)
        os.close(r_ack)
        log.close()
    pid = recv.pid
    files = sorted(
        (p for p in tmp.glob(f"cg.{pid}.*") if p.suffix[1:].isdigit()),
        key=lambda p: int(p.suffix[1:]),
    )
    dumps = [Dump(p) for p in files]
    cal, rest = dumps[:calib], dumps[calib:]
    if len(cal) < calib or any(d.trigger != MARK_FN for d in cal):
        return {"error": f"the marker's calibration dumps are not the first ones ({tmp})"}
    # The last quarter: the interpreter has specialized MARK()'s bytecode by then, as it
    # has in a handler after the warm-up.
    marker = int(statistics.median(d.total for d in cal[-max(1, calib // 4) :]))
    per, segs, why = deliveries(rest, handler_fn)
    if why is not None or len(per) != total + warmup:
        why = why or f"{len(per)} deliveries counted of {total + warmup}"
        return {"error": f"{why} (dumps kept in {tmp})"}
    series = [t - h - marker for t, h in per]  # warm-up included
    per, segs = per[warmup:], segs[warmup:]
    tot = [t for t, _ in per]
    chand = [h for _, h in per]
    py_side = [t - h - marker for t, h in per]
    med = statistics.median(py_side)
    # Keep the median delivery's dumps (one per loop iteration) for callgrind_annotate.
    rep_i = min(range(len(py_side)), key=lambda i: abs(py_side[i] - med))
    rep = DUMPS / name.replace("/", "-")
    shutil.rmtree(rep, ignore_errors=True)
    rep.mkdir(parents=True)
    for k, d in enumerate(segs[rep_i], 1):
        shutil.copyfile(d.path, rep / f"{k}.callgrind")
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "n": len(per),
        "python_side": med,
        "c_handler": statistics.median(chand),
        "total": statistics.median(tot),
        "mean_total": statistics.fmean(tot),
        "min_total": min(tot),
        "max_total": max(tot),
        "marker": marker,
        "c_handler_fn": handler_fn,
        "polls": statistics.median(len(p) for p in segs),
        "series": series,
        "dump": str(rep.relative_to(C.HERE.parent)),
    }


def run(
    quick: bool = False, loops: tuple[str, ...] = C.LOOPS, python: str | None = None
) -> dict[str, Any]:
    """{name: result} plus "_meta"; {"unavailable": why} without valgrind."""
    vg = valgrind()
    if vg is None:
        return {"unavailable": "valgrind is not installed (apt-get install valgrind)"}
    if sys.platform != "linux":
        return {"unavailable": "needs Linux (/proc/<pid>/stat to pace the signals)"}
    C.build_helpers()
    why = build_client()
    if why is not None:
        return {"unavailable": why}
    total, warmup, calib = counts(quick)
    py = python or C.python()
    tg = targets(loops)
    jobs = max(1, min(2, len(C.cpus())))
    C.progress(
        f"instructions: {len(tg)} targets under callgrind, {total} deliveries + {warmup} "
        f"warm-up each, {jobs} at a time"
    )

    def one(t: tuple[str, str, str]) -> tuple[str, dict[str, Any]]:
        name, target, kind = t
        t0 = time.monotonic()
        r = run_target(name, target, kind, total=total, warmup=warmup, calib=calib, python=py)
        if "error" in r:
            C.progress(f"    instructions {name}: ERROR {r['error']}")
        else:
            C.progress(
                f"    instructions {name}: {r['python_side']:.0f} Python side, "
                f"{r['total']:.0f} total ({time.monotonic() - t0:.1f} s)"
            )
        return name, r

    with ThreadPoolExecutor(jobs) as ex:
        res = dict(ex.map(one, tg))
    vg_version = subprocess.run(
        [vg, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    py_version = subprocess.run(
        [py, "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    res["_meta"] = {
        "valgrind": vg_version,
        "python": py_version,
        "deliveries": total,
        "warmup": warmup,
    }
    return res


def ratios(res: dict[str, Any], name: str) -> tuple[float | None, float | None]:
    """(vs python/signal, vs the loop's stock-cb), on the Python side."""
    r = res.get(name, {})
    ref = res.get("python/signal", {}).get("python_side")
    stock = None
    if name != "python/signal":
        stock = res.get(name.split("/")[0] + "/stock-cb", {}).get("python_side")
    v = r.get("python_side")
    return C.ratio(v, ref), C.ratio(v, stock)


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def format_table(res: dict[str, Any]) -> str:
    if "unavailable" in res:
        return f"instructions: skipped: {res['unavailable']}"
    lines = [
        "instructions per delivery (callgrind Ir, median), signal arrival -> handler's first line",
        f"{'target':20} {'Python side':>12} {'C handler':>10} {'total':>8} {'marker':>7} "
        f"{'/ py-signal':>11} {'/ stock-cb':>10}",
    ]
    for name, r in res.items():
        if name.startswith("_"):
            continue
        if "error" in r:
            lines.append(f"{name:20} error: {r['error']}")
            continue
        a, b = ratios(res, name)
        lines.append(
            f"{name:20} {r['python_side']:12.0f} {r['c_handler']:10.0f} {r['total']:8.0f} "
            f"{r['marker']:7d} {_x(a):>11} {_x(b):>10}"
        )
    return "\n".join(lines)


def spread(runs: list[dict[str, Any]]) -> str:
    """The largest run-to-run difference per target, in % of the first run."""
    lines = [f"{'target':20} " + " ".join(f"{'run ' + str(i + 1):>9}" for i in range(len(runs)))
             + f" {'spread':>8}"]  # fmt: skip
    for name in runs[0]:
        if name.startswith("_") or "python_side" not in runs[0][name]:
            continue
        vals = [r.get(name, {}).get("python_side") for r in runs]
        if any(v is None for v in vals):
            continue
        sp = (max(vals) - min(vals)) / vals[0] * 100
        lines.append(f"{name:20} " + " ".join(f"{v:9.0f}" for v in vals) + f" {sp:7.2f}%")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--role", default="orchestrator", choices=("orchestrator", "receiver"))
    ap.add_argument("--target", default="asb-coro")
    ap.add_argument("--loop", default="both", choices=("asyncio", "uvloop", "both"))
    ap.add_argument("--total", type=int, default=0)
    ap.add_argument("--calib", type=int, default=0)
    ap.add_argument("--ack-fd", type=int, default=-1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--python", default=None, help="interpreter of the receivers")
    ap.add_argument("--runs", type=int, default=1, help="repeat, and print the spread")
    args = ap.parse_args()
    if args.role == "receiver":
        receiver(args.target, args.loop, args.total, args.calib, args.ack_fd)
        return
    loops = C.LOOPS if args.loop == "both" else (args.loop,)
    runs = []
    for i in range(args.runs):
        t = time.monotonic()
        res = run(args.quick, loops, args.python)
        runs.append(res)
        print(f"\nrun {i + 1} ({time.monotonic() - t:.0f} s)")
        print(format_table(res))
    if len(runs) > 1 and "unavailable" not in runs[0]:
        print("\nrun-to-run spread of the Python-side figure")
        print(spread(runs))


if __name__ == "__main__":
    sys.exit(main())
