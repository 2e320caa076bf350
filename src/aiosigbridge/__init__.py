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

from ._bridge import HandlerHandle as HandlerHandle
from ._bridge import SignalBridge as SignalBridge
from ._bridge import SignalStats as SignalStats
from ._bridge import add_handler as add_handler
from ._bridge import get_bridge as get_bridge
from ._diagnostics import TaskDump as TaskDump
from ._diagnostics import enable_task_dump as enable_task_dump
from ._event import SignalEvent as SignalEvent
from ._native import BRIDGED as BRIDGED
from ._native import CLD_CODES as CLD_CODES
from ._native import DEFAULT_CAPACITY as DEFAULT_CAPACITY
from ._native import SI_KERNEL as SI_KERNEL
from ._native import SI_QUEUE as SI_QUEUE
from ._native import SI_TKILL as SI_TKILL
from ._native import SI_USER as SI_USER
from ._native import SignalReplacedWarning as SignalReplacedWarning
from ._native import sigqueue as sigqueue
from ._receiver import SignalReceiver as SignalReceiver
from ._receiver import open_receiver as open_receiver
from ._runner import run as run
from ._senders import Senders as Senders

__version__ = "0.1.0"

__all__ = (
    "BRIDGED",
    "CLD_CODES",
    "DEFAULT_CAPACITY",
    "SI_KERNEL",
    "SI_QUEUE",
    "SI_TKILL",
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
    "open_receiver",
    "run",
    "sigqueue",
)
