"""aiosigbridge: POSIX signals delivered into asyncio and uvloop as coroutine handlers.

::

    import signal
    import aiosigbridge as asb

    async def main() -> None:
        async def on_hup(ev: asb.SignalEvent) -> None:
            print(f"reload requested by pid {ev.pid} (uid {ev.uid})")

        asb.add_handler(signal.SIGHUP, on_hup)
        async with asb.open_receiver(signal.SIGTERM) as rx:
            async for ev in rx:
                break
"""

import sys as _sys

if _sys.platform == "win32":  # pragma: no cover
    raise ImportError(
        "aiosigbridge needs POSIX signals (sigaction, siginfo); Windows is not supported. "
        "Use loop.add_signal_handler() or signal.signal() there."
    )

from ._bridge import SignalBridge as SignalBridge
from ._clib import CLD_CODES as CLD_CODES
from ._clib import DEFAULT_CAPACITY as DEFAULT_CAPACITY
from ._clib import SI_KERNEL as SI_KERNEL
from ._clib import SI_MIXED as SI_MIXED
from ._clib import SI_QUEUE as SI_QUEUE
from ._clib import SI_TKILL as SI_TKILL
from ._clib import SI_UNKNOWN as SI_UNKNOWN
from ._clib import SI_USER as SI_USER
from ._clib import sigqueue as sigqueue
from ._diagnostics import TaskDump as TaskDump
from ._diagnostics import enable_task_dump as enable_task_dump
from ._event import SignalEvent as SignalEvent
from ._handlers import HandlerHandle as HandlerHandle
from ._handlers import SignalStats as SignalStats
from ._loops import add_handler as add_handler
from ._loops import get_bridge as get_bridge
from ._owner import BRIDGED as BRIDGED
from ._owner import SignalReplacedWarning as SignalReplacedWarning
from ._receiver import SignalReceiver as SignalReceiver
from ._receiver import open_receiver as open_receiver
from ._runner import run as run
from ._senders import Senders as Senders
from ._systemd import notify as notify
from ._waiting import open_signal_receiver as open_signal_receiver
from ._waiting import wait_for_signal as wait_for_signal

__version__ = "0.1.0"

__all__ = (
    "BRIDGED",
    "CLD_CODES",
    "DEFAULT_CAPACITY",
    "SI_KERNEL",
    "SI_MIXED",
    "SI_QUEUE",
    "SI_TKILL",
    "SI_UNKNOWN",
    "SI_USER",
    "HandlerHandle",
    "Senders",
    "SignalBridge",
    "SignalEvent",
    "SignalReceiver",
    "SignalReplacedWarning",
    "SignalStats",
    "TaskDump",
    "add_handler",
    "enable_task_dump",
    "get_bridge",
    "notify",
    "open_receiver",
    "open_signal_receiver",
    "run",
    "sigqueue",
    "wait_for_signal",
)
