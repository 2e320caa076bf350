"""Repro: a bridge stops waking its loop (records stay in C storage, the pipe is empty)
after a storm of realtime signals taken by another thread.  Introduced with the "one
wake byte per drain" flag (`woken`, commit a601d5c).

sb_drain clears `woken`, *then* reads the pipe.  A handler on another thread that runs
between the two sets `woken` and writes a byte, which that same read() swallows; the
drain's scan may still see its record, but from then on `woken` stays 1 with no byte
in the pipe: every later delivery skips the write, and the loop never wakes again for
that bridge (its records wait until the ring overflows).  Fix: read the pipe first,
then clear `woken`, then scan the state.

    python tests/stress/repro_lost_wakeup.py   # exit 1 and "STUCK" when it happens
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from typing import Any

import uvloop

import aiosigbridge as asb

SIG = int(signal.SIGRTMIN) + 1
N = 20_000
SENDER = """
import sys, time
import aiosigbridge as asb
pid, sig, n = map(int, sys.argv[1:])
for q in range(n):
    while True:
        try:
            asb.sigqueue(pid, sig, q)
            break
        except BlockingIOError:
            time.sleep(0.0002)
"""


def attempt() -> bool:
    """One storm; True when some bridge was left with records and no wake-up."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {SIG})  # inherited by the threads below
    stop = threading.Event()
    ready = threading.Barrier(3)
    infos: dict[str, dict[str, Any]] = {"asyncio": {}, "uvloop": {}}

    async def main(name: str, capacity: int) -> None:
        info = infos[name]
        bridge = asb.SignalBridge(asyncio.get_running_loop(), capacity=capacity)
        info["bridge"], info["seen"] = bridge, 0

        def on_signal(ev: asb.SignalEvent) -> None:
            info["seen"] += 1

        h = bridge.add_handler(SIG, on_signal)
        ready.wait()
        while not stop.is_set():
            info["stats"] = bridge.stats()[SIG]
            await asyncio.sleep(0.02)
        h.remove()
        await bridge.aclose()

    def taker() -> None:  # the one thread that takes the signals
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {SIG})
        stop.wait()

    threads = [
        threading.Thread(target=lambda: asyncio.run(main("asyncio", 1024))),
        threading.Thread(target=lambda: uvloop.run(main("uvloop", 8192))),
    ]
    for t in threads:
        t.start()
    ready.wait()
    tk = threading.Thread(target=taker)
    tk.start()
    args = [str(os.getpid()), str(SIG), str(N // 4)]
    senders = [subprocess.Popen([sys.executable, "-c", SENDER, *args]) for _ in range(4)]
    for p in senders:
        p.wait()
    time.sleep(2)  # far more than a drain needs
    stuck = False
    for name, info in infos.items():
        st = info["stats"]
        missing = st.received - info["seen"] - st.overflowed
        raw = fcntl.ioctl(info["bridge"]._sub.read_fd, termios.FIONREAD, b"\0\0\0\0")
        pipe_bytes = struct.unpack("i", raw)[0]
        verdict = "STUCK" if missing and not pipe_bytes else "ok"
        stuck |= verdict == "STUCK"
        print(
            f"  {name}: received {st.received}, delivered {info['seen']}, overflowed "
            f"{st.overflowed}, waiting in storage {missing}, bytes in pipe {pipe_bytes}: "
            f"{verdict}"
        )
    stop.set()
    for t in [*threads, tk]:
        t.join()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {SIG})
    return stuck


if __name__ == "__main__":
    for i in range(5):
        print(f"attempt {i + 1}")
        if attempt():
            sys.exit(1)
    print("no lost wake-up in 5 attempts")
