"""The C signal handler's path calls only async-signal-safe functions (issue 5, §3).

``cbits/sigbridge.c`` (the handler) and ``cbits/sb_storage.c`` (what it records into)
are compiled with ``gcc -fcallgraph-info``, which writes the call graph the compiler
really emitted (after inlining, with indirect calls as one placeholder node).  Every
function reachable from ``sb_handler`` through functions defined in those files must be
either one of those functions or on ALLOWED, and every external call must be named in
sigbridge.c's "Async-signal-safety" comment block, so the documentation stays the list
of what the handler does.  The checker is itself tested on
modified copies of the file (a ``malloc`` or ``printf`` added to the handler or to a
helper it calls must fail).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CBITS = ROOT / "cbits"
SOURCE = CBITS / "sigbridge.c"
STORAGE = "sb_storage.c"  # compiled beside SOURCE: the handler records into it
ENTRY = "sb_handler"

# External functions the handler path may call, and why each is safe there.
ALLOWED = {
    "clock_gettime": "POSIX.1-2008 async-signal-safe",
    "getpid": "POSIX async-signal-safe",
    "write": "POSIX async-signal-safe",
    "PyErr_SetInterruptEx": "documented by CPython as callable from a signal handler",
    "sigaction": "POSIX async-signal-safe (reads the action; gives back SIG_DFL)",
    "sigemptyset": "POSIX async-signal-safe",
    "sigaddset": "POSIX async-signal-safe",
    "sigismember": "POSIX async-signal-safe",
    "sigpending": "POSIX async-signal-safe",
    "pthread_sigmask": "POSIX async-signal-safe",
    "raise": "POSIX async-signal-safe",
    "pthread_self": "reads the thread pointer",
    "pthread_equal": "compares two thread ids",
    "memset": "POSIX.1-2008 TC2 async-signal-safe",
    "__errno_location": "how glibc spells `errno`: a thread-local address, no state",
    "__indirect_call": "the chained previous handler (g_original[sig])",
}
# How the comment block may name an allowed call (errno and the chained handler are
# not spelled as functions there).
DOC_NAMES = {
    "__errno_location": "errno",
    "__indirect_call": "chained handler",
}

GCC = shutil.which("gcc")
pytestmark = pytest.mark.skipif(GCC is None, reason="needs gcc for -fcallgraph-info")

_NODE = re.compile(r'node: \{ title: "([^"]+)" label: "[^"]*"( shape : ellipse)?')
_EDGE = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)" label: "([^"]*)"')


def _short(title: str) -> str:
    # Static functions are titled "path/to/file.c:name"; external ones by name only.
    return title.rsplit(":", 1)[-1] if ".c:" in title else title


def callgraph(
    source: Path, tmp: Path, opt: str
) -> tuple[set[str], dict[str, list[tuple[str, str]]]]:
    """Compile ``source`` and the storage beside it; return (functions defined in them,
    caller -> [(callee, where)])."""
    defined: set[str] = set()
    edges: dict[str, list[tuple[str, str]]] = {}
    for src in (source, source.parent / STORAGE):
        d, e = _callgraph_one(src, tmp, opt)
        defined |= d
        for caller, callees in e.items():
            edges.setdefault(caller, []).extend(callees)
    assert ENTRY in defined, f"{ENTRY} not found in the call graph of {source}"
    return defined, edges


def _callgraph_one(
    source: Path, tmp: Path, opt: str
) -> tuple[set[str], dict[str, list[tuple[str, str]]]]:
    include = sysconfig.get_paths()["include"]
    obj = tmp / f"{source.stem}{opt}.o"
    cmd = [
        str(GCC),
        "-std=c11",
        opt,
        "-c",
        str(source),
        f"-I{source.parent}",
        f"-I{include}",
        "-DPy_LIMITED_API=0x030A0000",
        "-fcallgraph-info",
        "-o",
        str(obj),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr}"
    ci = obj.with_suffix(".ci")
    text = ci.read_text()
    defined: set[str] = set()
    edges: dict[str, list[tuple[str, str]]] = {}
    for m in _NODE.finditer(text):
        if not m.group(2):
            defined.add(_short(m.group(1)))
    for m in _EDGE.finditer(text):
        edges.setdefault(_short(m.group(1)), []).append((_short(m.group(2)), m.group(3)))
    return defined, edges


def handler_path_calls(source: Path, tmp: Path, opt: str) -> tuple[set[str], dict[str, str]]:
    """(our functions on the handler path, external callee -> first call site)."""
    defined, edges = callgraph(source, tmp, opt)
    seen = {ENTRY}
    todo = [ENTRY]
    external: dict[str, str] = {}
    while todo:
        fn = todo.pop()
        for callee, where in edges.get(fn, ()):
            if callee in defined:
                if callee not in seen:
                    seen.add(callee)
                    todo.append(callee)
            else:
                external.setdefault(callee, f"{fn} at {where.rsplit('/', 1)[-1]}")
    return seen, external


def safety_comment(source: Path) -> str:
    text = source.read_text()
    m = re.search(r"Async-signal-safety of the handler path.*?\*/", text, re.S)
    assert m, f"{source.name} lost its 'Async-signal-safety of the handler path' comment"
    return m.group(0)


def violations(source: Path, tmp: Path, opt: str) -> list[str]:
    _, external = handler_path_calls(source, tmp, opt)
    return [
        f"{name} (called from {where})"
        for name, where in sorted(external.items())
        if name not in ALLOWED
    ]


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_handler_path_calls_only_allowed_functions(tmp_path: Path, opt: str) -> None:
    """sb_handler and every static helper it reaches call nothing outside ALLOWED."""
    bad = violations(SOURCE, tmp_path, opt)
    assert not bad, f"the signal handler path calls non-allowlisted functions: {bad}"


def test_handler_path_is_what_the_design_says(tmp_path: Path) -> None:
    """At -O0 (no inlining) the path has the helpers and calls that the comment names."""
    ours, external = handler_path_calls(SOURCE, tmp_path, "-O0")
    assert {"sb_now_ns", "sb_store", "ring_push", "std_push", "fill_record"} <= ours
    assert {"clock_gettime", "getpid", "write", "PyErr_SetInterruptEx"} <= set(external)


def test_comment_block_lists_every_call(tmp_path: Path) -> None:
    """Each external call on the handler path is named in the safety comment block."""
    doc = safety_comment(SOURCE)
    _, external = handler_path_calls(SOURCE, tmp_path, "-O0")
    missing = [n for n in external if DOC_NAMES.get(n, n) not in doc]
    assert not missing, f"calls on the handler path missing from the comment block: {missing}"


def _inject(tmp: Path, function: str, code: str, prototypes: str = "") -> Path:
    """A copy of cbits/ whose handler or storage runs ``code`` first thing in
    ``function``; returns the copy's sigbridge.c."""
    src_dir = tmp / "cbits"
    shutil.copytree(CBITS, src_dir)
    pattern = rf"^[A-Za-z_][^;{{}}]*\b{function}\s*\([^;{{}}]*\)\s*\{{"
    for name in ("sigbridge.c", STORAGE):
        path = src_dir / name
        text = path.read_text()
        m = re.search(pattern, text, re.M)
        if m:
            break
    assert m, f"no definition of {function} in sigbridge.c or {STORAGE}"
    text = text[: m.end()] + "\n    " + code + "\n" + text[m.end() :]
    if prototypes:  # after the first #include (Python.h must stay first)
        first = text.index("\n", text.index("#include")) + 1
        text = text[:first] + prototypes + "\n" + text[first:]
    path.write_text(text)
    return src_dir / "sigbridge.c"


def _helper_on_path(tmp: Path) -> str:
    """A static helper that sb_handler reaches (whichever the file has now)."""
    ours, _ = handler_path_calls(SOURCE, tmp, "-O0")
    helpers = sorted(ours - {ENTRY})
    assert helpers, "sb_handler calls no helper any more: update this test"
    for preferred in ("std_push", "ring_push", "fill_record"):
        if preferred in helpers:
            return preferred
    return helpers[0]


MALLOC = "{ void *volatile p = malloc(16); free(p); }"
MUTATIONS = {
    # name: (where ("handler" or "helper"), code, prototypes, expected findings)
    "malloc-in-handler": ("handler", MALLOC, "", {"malloc", "free"}),
    "printf-in-handler": (
        "handler",
        'printf("sig %d\\n", 1);',
        "int printf(const char *, ...);",
        {"printf"},
    ),
    "lock-in-helper": (
        "helper",
        "{ static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER; pthread_mutex_lock(&m);"
        " pthread_mutex_unlock(&m); }",
        "",
        {"pthread_mutex_lock", "pthread_mutex_unlock"},
    ),
    "malloc-in-helper": ("helper", MALLOC, "", {"malloc", "free"}),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_checker_catches_unsafe_calls(tmp_path: Path, name: str, opt: str) -> None:
    """A copy of sigbridge.c with an unsafe call added to the handler path fails."""
    where, code, prototypes, expected = MUTATIONS[name]
    function = ENTRY if where == "handler" else _helper_on_path(tmp_path)
    path = _inject(tmp_path, function, code, prototypes)
    bad = violations(path, tmp_path, opt)
    found = {b.split(" ", 1)[0] for b in bad}
    # printf("...\n") may be compiled as puts: accept any of the stdio spellings.
    if name == "printf-in-handler":
        assert found & {"printf", "puts", "__printf_chk"}, (function, bad)
    else:
        assert expected <= found, (function, bad)


def test_unsafe_call_outside_the_handler_path_is_fine(tmp_path: Path) -> None:
    """Only the handler path is constrained: malloc in sb_lock_free is not reported."""
    path = _inject(tmp_path, "sb_lock_free", MALLOC)
    assert violations(path, tmp_path, "-O0") == []
