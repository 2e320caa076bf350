"""The public surface: __all__ complete, documented, typed."""

from __future__ import annotations

import inspect
import signal
from pathlib import Path

import aiosigbridge as asb


def test_all_lists_every_public_name() -> None:
    """__all__ holds exactly the public names the package defines."""
    public = {n for n in vars(asb) if not n.startswith("_")}
    assert set(asb.__all__) == public
    assert len(asb.__all__) == len(set(asb.__all__))


def test_every_public_callable_is_documented() -> None:
    """Every public class and function has a docstring with an example or fields."""
    for name in asb.__all__:
        obj = getattr(asb, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_typed_package() -> None:
    """py.typed and the compiled module's stub ship with the package."""
    pkg = Path(asb.__file__).parent
    assert (pkg / "py.typed").exists()
    assert (pkg / "_sigbridge.pyi").exists()


def test_cdef_matches_header() -> None:
    """cffi's declarations and the C header declare the same functions."""
    root = Path(__file__).resolve().parents[1] / "cbits"
    header = (root / "sigbridge.h").read_text()
    cdef = (root / "sigbridge.cdef.h").read_text()

    def decls(text: str) -> set[str]:
        return {
            " ".join(line.split())
            for line in text.splitlines()
            if line.startswith(("int ", "void ", "int64_t "))
        }

    assert decls(cdef) == decls(header)


def test_event_fields_match_contract() -> None:
    """SignalEvent has the contract's fields, in a stable order."""
    assert asb.SignalEvent._fields == (
        "signum",
        "code",
        "pid",
        "uid",
        "value",
        "status",
        "timestamp_ns",
        "coalesced",
    )
    ev = asb.SignalEvent(signal.SIGHUP, asb.SI_USER, 1, 0, None, None, 0, 1)
    assert ev.name == "SIGHUP"
    assert not ev.queued
