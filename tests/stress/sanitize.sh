#!/usr/bin/env bash
# make sanitize: the C layer under AddressSanitizer + UndefinedBehaviorSanitizer, then
# a short valgrind memcheck run (issue 5, §2).  Fails on any report.
#
# The sanitizer build goes into its own venv (.venv-asan) with a NON-editable install,
# so the source tree's src/aiosigbridge/_sigbridge.abi3.so (the main .venv's build) is
# never rebuilt in place.  Tests run from a temporary directory against that installed
# copy (--import-mode=importlib, no rootdir conftest import of src/).
#
#   ASAN_VENV=.venv-asan   SKIP_VALGRIND=1   PYTHON=python3
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${ASAN_VENV:-$ROOT/.venv-asan}"
PY="$VENV/bin/python"
LOGDIR="$(mktemp -d "${TMPDIR:-/tmp}/aiosigbridge-sanitize.XXXXXX")"
trap 'rm -rf "$LOGDIR"' EXIT
t_all=$(date +%s)

say() { printf '\n== %s\n' "$*"; }

# -- 1. the sanitizer build ------------------------------------------------------------
say "building the extension with -fsanitize=address,undefined into $VENV"
LIBASAN="$(gcc -print-file-name=libasan.so)"
LIBUBSAN="$(gcc -print-file-name=libubsan.so)"
if [ ! -e "$LIBASAN" ]; then
    echo "sanitize: libasan not found (gcc -print-file-name=libasan.so gave $LIBASAN)" >&2
    exit 2
fi
if [ ! -x "$PY" ]; then
    "$PYTHON" -m venv "$VENV"
    "$PY" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel cffi
fi
# Test dependencies only (the package itself is installed below, non-editable).
"$PY" -m pip install -q --disable-pip-version-check \
    "uvloop>=0.19" "pytest>=8.4" "pytest-asyncio>=1.4" "pytest-timeout>=2.3" "hypothesis>=6.100"
SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g"
# --no-build-isolation: build with this venv's setuptools/cffi, offline-friendly;
# --force-reinstall --no-deps: always rebuild from the current sources, from a clean copy
# of them (the tree's build/ holds the plain build's objects, which setuptools would
# reuse: an uninstrumented extension).
SRC_COPY="$LOGDIR/src-copy"
mkdir -p "$SRC_COPY"
tar -C "$ROOT" -cf - --exclude='./.venv*' --exclude=./.git --exclude=./build \
    --exclude=./dist --exclude='*/__pycache__' --exclude='*.so' --exclude='*.egg-info' \
    --exclude=./.hypothesis --exclude=./benchmarks/out . | tar -C "$SRC_COPY" -xf -
AIOSIGBRIDGE_CFLAGS="$SAN_FLAGS" AIOSIGBRIDGE_LDFLAGS="-fsanitize=address,undefined" \
    "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation \
    --force-reinstall --no-deps --no-cache-dir "$SRC_COPY"
# Located without importing the package (that would load the instrumented .so before
# LD_PRELOAD is set, which ASan refuses).
SO="$("$PY" - <<'EOF'
import importlib.util, pathlib
spec = importlib.util.find_spec("aiosigbridge")
print(next(pathlib.Path(spec.origin).parent.glob("_sigbridge*.so")))
EOF
)"
case "$SO" in
    "$ROOT"/src/*) echo "sanitize: the asan venv imports the source tree's build ($SO)" >&2; exit 2 ;;
esac
if ! nm -D "$SO" | grep __asan_ >/dev/null; then  # not -q: nm would die of SIGPIPE (pipefail)
    echo "sanitize: $SO is not instrumented (no __asan_ symbols)" >&2
    exit 2
fi
echo "instrumented build: $SO"

export LD_PRELOAD="$LIBASAN"
# CPython leaks at exit by design; signals: ASan must not take over any handler.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:allow_user_segv_handler=1:handle_segv=0:handle_sigbus=0:handle_sigfpe=0:handle_sigill=0:handle_abort=0:log_path=$LOGDIR/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87:log_path=$LOGDIR/ubsan"
# No PYTHONFAULTHANDLER here: its small sigaltstack plus nested handlers kills the
# process (a library issue reproduced by the stress suite's "altstack" section).

reports() {
    # Every ASan/UBSan report lands in a log file named after its process.
    local found=0
    for f in "$LOGDIR"/asan.* "$LOGDIR"/ubsan.*; do
        [ -e "$f" ] || continue
        found=1
        echo "---- $f" >&2
        cat "$f" >&2
    done
    return $found
}

status=0
summary=()

# -- 2. the core test suite under the sanitizers --------------------------------------
say "pytest tests (sanitized build)"
t0=$(date +%s)
WORK="$LOGDIR/run"
mkdir -p "$WORK"
# The repository without src/ (so only the installed, instrumented copy can be
# imported), the venvs and build output: tests read cbits/, examples/, pyproject.toml.
tar -C "$ROOT" -cf - --exclude=./src --exclude='./.venv*' --exclude=./.git \
    --exclude=./build --exclude=./dist --exclude='*/__pycache__' --exclude='*.so' \
    --exclude=./.hypothesis --exclude=./.pytest_cache --exclude=./.mypy_cache \
    --exclude=./.ruff_cache --exclude=./benchmarks/out . | tar -C "$WORK" -xf -
set +e
(cd "$WORK" && "$PY" -m pytest -p no:cacheprovider -q \
    --timeout=300 tests) 2>&1 | tail -25
rc=${PIPESTATUS[0]}
set -e
secs=$(($(date +%s) - t0))
if [ "$rc" -ne 0 ]; then status=1; summary+=("pytest: FAILED (exit $rc), ${secs}s"); else summary+=("pytest: passed, ${secs}s"); fi
if ! reports; then status=1; summary+=("sanitizer reports after pytest: YES"); rm -f "$LOGDIR"/asan.* "$LOGDIR"/ubsan.*; else summary+=("sanitizer reports after pytest: 0"); fi

# -- 3. the quick stress suite under the sanitizers ----------------------------------
say "stress --quick (sanitized build)"
t0=$(date +%s)
set +e
# Every section but "altstack" (a stack-depth crash, not a memory error; the plain
# `make stress-quick` runs it).  RSS is not judged under ASan (quarantine).
(cd "$WORK" && "$PY" "$ROOT/tests/stress/run.py" --quick --sanitized \
    --only storm1 --only storm --only standard --only soak)
rc=$?
set -e
secs=$(($(date +%s) - t0))
if [ "$rc" -ne 0 ]; then status=1; summary+=("stress --quick: FAILED (exit $rc), ${secs}s"); else summary+=("stress --quick: passed, ${secs}s"); fi
if ! reports; then status=1; summary+=("sanitizer reports after stress: YES"); else summary+=("sanitizer reports after stress: 0"); fi

unset LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS

# -- 4. valgrind memcheck of a small signal workload ---------------------------------
if [ "${SKIP_VALGRIND:-0}" = "1" ]; then
    summary+=("valgrind: skipped (SKIP_VALGRIND=1)")
elif ! command -v valgrind >/dev/null; then
    summary+=("valgrind: not installed, skipped")
else
    say "valgrind memcheck (plain build from the main venv, PYTHONMALLOC=malloc)"
    MAIN_PY="$ROOT/.venv/bin/python"
    [ -x "$MAIN_PY" ] || { echo "sanitize: $MAIN_PY missing: make venv" >&2; exit 2; }
    t0=$(date +%s)
    VG_LOG="$LOGDIR/valgrind.log"
    set +e
    PYTHONMALLOC=malloc valgrind --tool=memcheck --error-exitcode=88 \
        --suppressions="$ROOT/tests/stress/valgrind-python.supp" \
        --leak-check=no --track-origins=yes --num-callers=30 \
        --log-file="$VG_LOG" \
        "$MAIN_PY" "$ROOT/tests/stress/vg_workload.py"
    rc=$?
    set -e
    secs=$(($(date +%s) - t0))
    # One summary per process (the workload forks): add them up.
    errors=$(grep -Eo 'ERROR SUMMARY: [0-9]+' "$VG_LOG" | grep -Eo '[0-9]+$' | paste -sd+ | bc)
    [ -n "$errors" ] || errors="?"
    ours=$(grep -cE 'sigbridge|_sigbridge' "$VG_LOG" || true)
    grep -E 'ERROR SUMMARY|suppressed' "$VG_LOG" | tail -3
    if [ "$rc" -ne 0 ] || [ "$errors" != "0" ]; then
        status=1
        summary+=("valgrind: ${errors} errors (exit $rc; frames in our code: $ours), ${secs}s")
        sed -n '1,200p' "$VG_LOG" >&2
    else
        summary+=("valgrind: 0 errors, ${secs}s")
    fi
fi

say "summary"
for line in "${summary[@]}"; do echo "  $line"; done
echo "  total wall time: $(($(date +%s) - t_all))s"
if [ "$status" -ne 0 ]; then
    echo "sanitize: FAILED" >&2
fi
exit "$status"
