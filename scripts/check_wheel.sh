#!/usr/bin/env bash
# The pip route, as a user without a checkout takes it:
#   1. `python -m build` makes the sdist, then the wheel from the sdist;
#   2. both must hold every file of native/ and the embedded default model;
#   3. a fresh virtual environment outside the checkout gets torch 2.13.0, then the
#      sdist with the test extra (pip builds a wheel from it), then the wheel itself;
#   4. from a folder outside the checkout, with a fresh CORRAL_CACHE_DIR and the
#      environment not activated: load the native extension (compiled there from the
#      packaged sources) and run `corral generate` on the embedded model, offline.
# Needs .venv (scripts/bootstrap) for `build`. Takes a few minutes, most of it pip
# and the one native compile.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-python3}
work="$(mktemp -d "${TMPDIR:-/tmp}/corral-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
step() { printf '== check_wheel: %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
# pip and build are chatty (a warning per missing local index page): show them on failure.
quiet() { "$@" > "$work/step.log" 2>&1 || { cat "$work/step.log" >&2; return 1; }; }

step "python -m build (sdist, then the wheel from it)"
quiet "$repo/.venv/bin/python" -m build --outdir "$work/dist" "$repo"
sdist=$(echo "$work"/dist/corral-*.tar.gz)
wheel=$(echo "$work"/dist/corral-*.whl)

step "contents of $(basename "$sdist") and $(basename "$wheel")"
"$repo/.venv/bin/python" - "$repo" "$sdist" "$wheel" <<'EOF'
import fnmatch
import pathlib
import sys
import tarfile
import zipfile

repo, sdist, wheel = (pathlib.Path(arg) for arg in sys.argv[1:])
junk = ("__pycache__", "*.py[cod]", "*.o", "*.so")  # what setup.py and MANIFEST.in leave out


def is_junk(path: pathlib.Path) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in path.parts for pattern in junk)


native = sorted(
    str(path.relative_to(repo / "native"))
    for path in (repo / "native").rglob("*")
    if path.is_file() and not is_junk(path.relative_to(repo))
)
model = sorted(
    path.name
    for pattern in ("*.json", "*.safetensors", "*.jinja")
    for path in (repo / "src/corral/default_model").glob(pattern)
)
assert any(name.endswith(".cu") for name in native), native
assert {"model.safetensors", "config.json", "chat_template.jinja"} <= set(model), model

with zipfile.ZipFile(wheel) as archive:
    in_wheel = set(archive.namelist())
root = sdist.name.removesuffix(".tar.gz")
with tarfile.open(sdist) as archive:
    in_sdist = {name.removeprefix(f"{root}/") for name in archive.getnames()}

missing = [f"wheel: corral/_native/{name}" for name in native if f"corral/_native/{name}" not in in_wheel]
missing += [f"wheel: corral/default_model/{name}" for name in model if f"corral/default_model/{name}" not in in_wheel]
missing += [f"sdist: native/{name}" for name in native if f"native/{name}" not in in_sdist]
missing += [f"sdist: src/corral/default_model/{name}" for name in model if f"src/corral/default_model/{name}" not in in_sdist]
extra = sorted(name for name in in_wheel if name.startswith("corral/_native/") and name.removeprefix("corral/_native/") not in native)
if missing or extra:
    sys.exit(f"check_wheel: missing {missing}; unexpected in the wheel {extra}")
print(f"check_wheel: both hold the {len(native)} native files and the {len(model)} default model files")
EOF

# From here on nothing runs in the checkout, so nothing can be imported from it; the
# environment is not activated, and nothing is downloaded.
mkdir "$work/elsewhere"
cd "$work/elsewhere"
run=(env -u PYTHONPATH -u VIRTUAL_ENV CORRAL_CACHE_DIR="$work/cache" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1)

step "fresh venv: torch 2.13.0, the sdist with [test], then the wheel"
"$PY" -m venv "$work/venv"
pip=(quiet "$work/venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install "torch==2.13.0"
"${pip[@]}" install "$sdist[test]"
"${run[@]}" "$work/venv/bin/python" -c "import corral.ops.build as b; assert (b.PACKAGED_NATIVE_DIR / 'bindings.cpp').is_file()"
"${pip[@]}" install --force-reinstall --no-deps "$wheel"

step "load the native extension (compiled from the packaged sources)"
"${run[@]}" "$work/venv/bin/python" -c "
import corral, corral.ops, corral.ops.build as build, pytest, hypothesis
assert corral.__file__.startswith('$work/venv/'), corral.__file__
assert build.native_dir() == build.PACKAGED_NATIVE_DIR, build.native_dir()
print('loaded', corral.ops.load_library())
"

step "corral generate on the embedded model"
story=$("${run[@]}" "$work/venv/bin/corral" generate "Once upon a time" --max-tokens 24 --temperature 0)
printf '%s\n' "$story"
[ -n "${story//[[:space:]]/}" ] || { echo "check_wheel: corral generate printed no story" >&2; exit 1; }
step "ok"
