#!/usr/bin/env bash
# Set up the llama.cpp peer of benchmarks/throughput.py, once (re-running is a no-op).
#
# Builds llama.cpp from source with native CPU flags (GGML_NATIVE: -march=native)
# through the llama-cpp-python sdist, which vendors llama.cpp together with its
# converter (convert_hf_to_gguf.py, gguf-py). Everything lands in a cache folder
# outside the repository:
#
#   $CORRAL_PEERS_CACHE/llamacpp/        (default ~/.cache/corral-peers/llamacpp)
#     venv/                              python with llama_cpp (ctypes bindings)
#     src/llama_cpp_python-VERSION/      the unpacked sdist (vendor/llama.cpp)
#     build/                             cmake build folder: libllama.so, libggml*.so
#     ready                              written last: names the version and source
#
# throughput.py reads `ready` to find the venv and the converter; without it the
# peer is reported as "not installed".
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="${CORRAL_PEERS_CACHE:-$HOME/.cache/corral-peers}/llamacpp"
PY="${PYTHON:-python3}"
SRC="$ROOT/src/llama_cpp_python-$VERSION"
mkdir -p "$ROOT/sdist" "$ROOT/src"

log() { printf '[setup_llamacpp %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [ -f "$ROOT/ready" ] && grep -qx "version=$VERSION" "$ROOT/ready" \
    && LLAMA_CPP_LIB_PATH="$(sed -n 's/^lib_path=//p' "$ROOT/ready")" \
        "$ROOT/venv/bin/python" -c "import llama_cpp" >/dev/null 2>&1; then
    log "already set up: $ROOT"
    exit 0
fi
rm -f "$ROOT/ready"

if [ ! -x "$ROOT/venv/bin/python" ]; then
    log "venv"
    "$PY" -m venv "$ROOT/venv"
fi
# Build requirements in the venv itself: the build then runs without isolation,
# so its cmake folder can be kept between runs.
"$ROOT/venv/bin/pip" install -q "scikit-build-core[pyproject]>=0.9.2" "numpy>=1.20" \
    "typing-extensions>=4.5" "diskcache>=5.6.1" "jinja2>=2.11.3"

sdist="$ROOT/sdist/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
    log "downloading the llama-cpp-python $VERSION sdist"
    "$ROOT/venv/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation \
        -d "$ROOT/sdist" "llama-cpp-python==$VERSION"
fi
if [ ! -d "$SRC" ]; then
    tar -xzf "$sdist" -C "$ROOT/src"
fi

log "building libllama (GGML_NATIVE=ON, Release); this takes a while on few cores"
# llama-cpp-python's own CMakeLists (the one pip would run), configured here so that
# only the `llama` target and the ggml libraries it links are built: pip's build
# would also compile llama.cpp's `common` library (its CMakeLists forces it on),
# which the Python bindings never load. Tests, examples, tools, the server and the
# multimodal library are off for the same reason.
cmake -S "$SRC" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF >/dev/null
cmake --build "$ROOT/build" --target llama -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
lib="$(find "$ROOT/build" -name 'libllama.so' -print -quit)"
if [ -z "$lib" ]; then
    log "the build produced no libllama.so"
    exit 1
fi
lib_dir="$(dirname "$lib")"

# The Python bindings alone (LLAMA_BUILD=OFF: nothing native is built); they load
# the library above through LLAMA_CPP_LIB_PATH.
if ! LLAMA_CPP_LIB_PATH="$lib_dir" "$ROOT/venv/bin/python" -c "import llama_cpp" >/dev/null 2>&1; then
    CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" \
        "$ROOT/venv/bin/pip" install -q --no-deps --no-build-isolation "$SRC"
fi
LLAMA_CPP_LIB_PATH="$lib_dir" "$ROOT/venv/bin/python" -c \
    "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
for need in convert_hf_to_gguf.py gguf-py; do
    if [ ! -e "$SRC/vendor/llama.cpp/$need" ]; then
        log "the sdist lacks vendor/llama.cpp/$need"
        exit 1
    fi
done
{
    echo "version=$VERSION"
    echo "python=$ROOT/venv/bin/python"
    echo "llama_cpp_dir=$SRC/vendor/llama.cpp"
    echo "lib_path=$lib_dir"
} >"$ROOT/ready"
log "ready: $ROOT/ready"
