"""Smoke test of an installed aiosigbridge (make dist runs it in a clean venv).

Run it from a directory outside the source tree, with the venv's python:

    python smoke.py --version 0.1.0 --prefix /path/to/venv

It checks that the package imported is the installed one (inside --prefix, not a source
tree), that ``__version__`` and the distribution's metadata agree with --version, and
that a handler registered on the running loop sees a SIGUSR1 this process sends itself,
with this process's pid as the sender. Exit status 0 on success; prints one line per
check.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import signal
import sys
from pathlib import Path


def fail(msg: str) -> None:
    print(f"smoke: FAIL: {msg}", flush=True)
    sys.exit(1)


async def deliver_usr1() -> object:
    import aiosigbridge

    loop = asyncio.get_running_loop()
    got: asyncio.Future[aiosigbridge.SignalEvent] = loop.create_future()

    def on_usr1(ev: aiosigbridge.SignalEvent) -> None:
        if not got.done():
            got.set_result(ev)

    handle = aiosigbridge.add_handler(signal.SIGUSR1, on_usr1)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        return await asyncio.wait_for(got, timeout=10)
    finally:
        handle.remove()
        await aiosigbridge.get_bridge().aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", required=True, help="the version the wheel should carry")
    ap.add_argument("--prefix", required=True, help="the venv the package must come from")
    ap.add_argument("--source", help="a source tree the package must not come from")
    args = ap.parse_args()

    prefix = Path(args.prefix).resolve()
    cwd = Path.cwd().resolve()
    if args.source and cwd.is_relative_to(Path(args.source).resolve()):
        fail(f"run from {cwd}, inside the source tree {args.source}")

    import aiosigbridge
    from aiosigbridge import _sigbridge

    for mod in (aiosigbridge, _sigbridge):
        where = Path(mod.__file__ or "").resolve()
        if not where.is_relative_to(prefix):
            fail(f"{mod.__name__} imported from {where}, not from the venv {prefix}")
        if args.source and where.is_relative_to(Path(args.source).resolve()):
            fail(f"{mod.__name__} imported from the source tree: {where}")
        print(f"smoke: {mod.__name__} from {where}")

    meta = importlib.metadata.version("aiosigbridge")
    if aiosigbridge.__version__ != args.version or meta != args.version:
        fail(
            f"version: __version__ {aiosigbridge.__version__!r}, metadata {meta!r},"
            f" expected {args.version!r}"
        )
    print(f"smoke: version {aiosigbridge.__version__} (metadata {meta})")

    ev = asyncio.run(deliver_usr1())
    assert isinstance(ev, aiosigbridge.SignalEvent)
    if ev.signum != signal.SIGUSR1 or ev.pid != os.getpid() or ev.code != aiosigbridge.SI_USER:
        fail(f"event {ev!r}: expected SIGUSR1 from pid {os.getpid()} with SI_USER")
    print(f"smoke: handler saw {ev.name} from pid {ev.pid} (this process), uid {ev.uid}")
    if signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL:
        fail(f"SIGUSR1 not given back: {signal.getsignal(signal.SIGUSR1)!r}")
    impl = sys.implementation.name
    print(f"smoke: OK on {impl} {'.'.join(map(str, sys.version_info[:3]))}")


if __name__ == "__main__":
    main()
