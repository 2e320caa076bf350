"""The cffi builder: compiles cbits/*.c into ``aiosigbridge._sigbridge``."""

import os
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

if sys.platform == "win32":  # pragma: no cover - refused before anything is compiled
    raise RuntimeError("aiosigbridge needs POSIX signals (sigaction); Windows is not supported")

# Warnings are errors in our own builds (the Makefile exports AIOSIGBRIDGE_WERROR=1 for
# tests, CI and the sanitizer build), not in a user's build from the sdist, where a newer
# compiler's new warning must not fail the install.  AIOSIGBRIDGE_CFLAGS adds more (the
# sanitizer build uses it).  -Werror=implicit-function-declaration, always: it catches a
# Py_LIMITED_API that hides PyErr_SetInterruptEx (see DESIGN.md, Pitfalls).
CFLAGS = [
    "-std=c11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror=implicit-function-declaration",
    *(["-Werror"] if os.environ.get("AIOSIGBRIDGE_WERROR") == "1" else []),
    *os.environ.get("AIOSIGBRIDGE_CFLAGS", "").split(),
]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "sigbridge.cdef.h").read_text())
ffibuilder.set_source(
    "aiosigbridge._sigbridge",
    '#include "sigbridge.h"',
    # Relative to the project root, where setuptools runs the build.
    sources=[
        "cbits/sigbridge.c",
        "cbits/sb_storage.c",
        "cbits/sb_owner.c",
        "cbits/sb_pyapi.c",
        "cbits/sb_entry.c",
        "cbits/sb_timer.c",
        "cbits/sb_fastpy.c",
    ],
    include_dirs=["cbits"],
    # PyErr_SetInterruptEx is in the stable ABI since 3.10: cffi's default empty
    # Py_LIMITED_API would hide it.
    define_macros=[("Py_LIMITED_API", "0x030A0000")],
    extra_compile_args=CFLAGS,
    extra_link_args=os.environ.get("AIOSIGBRIDGE_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
