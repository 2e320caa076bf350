"""Repro: the process dies by SIGSEGV, with nothing printed, when bursts of different
signals arrive while the main thread has a small sigaltstack (faulthandler.enable()
installs one; pytest, PYTHONFAULTHANDLER=1 and -X faulthandler enable it).

aiosigbridge installs its action with SA_ONSTACK and an empty sa_mask, so handlers for
different signals nest on the alternate stack; each level costs ~3 KiB (the kernel's
signal frame with the FPU/xsave state), and about five levels overflow faulthandler's
stack, where the kernel can only kill the process (gdb: sb_handler nested 5 deep).
CPython's own handlers have the same exposure (``control``), but aiosigbridge is the
one that promises storms.  Fix idea: fill sa_mask with every signal the library has
installed (so that its handlers never nest), or leave SA_ONSTACK out.

    python tests/stress/repro_altstack.py           # survives
    python tests/stress/repro_altstack.py fh        # faulthandler on: killed by SIGSEGV
    python tests/stress/repro_altstack.py control   # signal.signal() only, faulthandler on
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import subprocess
import sys
import threading
import time

import aiosigbridge as asb

MODE = sys.argv[1] if len(sys.argv) > 1 else ""
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 8.0
RT = int(signal.SIGRTMIN)
SIGS = [int(signal.SIGUSR1), int(signal.SIGUSR2), int(signal.SIGHUP), RT + 2, RT + 3, RT + 4]
SENDER = """
import os, sys, time
import aiosigbridge as asb
pid, seconds = int(sys.argv[1]), float(sys.argv[2])
sigs = [int(s) for s in sys.argv[3].split(",")]
rt = set(sigs[3:])
end = time.monotonic() + seconds
i = 0
while time.monotonic() < end:
    s = sigs[i % len(sigs)]
    i += 1
    try:
        if s in rt:
            asb.sigqueue(pid, s, i)
        else:
            os.kill(pid, s)
    except OSError:
        time.sleep(0.001)
    if i % len(sigs) == 0:
        time.sleep(0.0005)  # bursts of one of each signal: enough to nest, easy on CPU
"""
count = 0


def on_signal(*args: object) -> None:
    global count
    count += 1


def main() -> None:
    if MODE in ("fh", "control"):
        faulthandler.enable()
    ready = threading.Event()
    stop = threading.Event()

    async def loop_main() -> None:
        bridge = asb.get_bridge()
        handles = [bridge.add_handler(s, on_signal) for s in SIGS]
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        for h in handles:
            h.remove()
        await bridge.aclose()

    if MODE == "control":
        for s in SIGS:
            signal.signal(s, on_signal)
        ready.set()
        t = threading.Thread(target=stop.wait)
    else:
        t = threading.Thread(target=lambda: asyncio.run(loop_main()))
    t.start()
    ready.wait()
    args = [str(os.getpid()), str(SECONDS), ",".join(map(str, SIGS))]
    senders = [subprocess.Popen([sys.executable, "-c", SENDER, *args]) for _ in range(2)]
    for p in senders:
        while p.poll() is None:
            time.sleep(0.001)  # the main thread sleeps, and takes signals, meanwhile
    stop.set()
    t.join()
    print(f"survived; {count} events")


if __name__ == "__main__":
    main()
