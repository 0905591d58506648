#!/usr/bin/env bash
# Set up the OpenVINO GenAI peer of benchmarks/throughput.py, once (re-running is a no-op).
#
# A venv of its own (OpenVINO's resolver wants versions of transformers and
# friends that corral's venv need not share), outside the repository:
#
#   $CORRAL_PEERS_CACHE/openvino/        (default ~/.cache/corral-peers/openvino)
#     venv/     openvino-genai, optimum-intel[openvino] (optimum-cli), CPU torch
#     ready     written last: names the versions
#
# The model is exported at benchmark time (optimum-cli export openvino --task
# text-generation-with-past) from the very checkpoint the other systems load.
set -euo pipefail

GENAI_VERSION="${OPENVINO_GENAI_VERSION:-2026.4.1.0}"
ROOT="${CORRAL_PEERS_CACHE:-$HOME/.cache/corral-peers}/openvino"
PY="${PYTHON:-python3}"
VENV="$ROOT/venv"
mkdir -p "$ROOT"

log() { printf '[setup_openvino %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

check() {
    "$VENV/bin/python" -c "import openvino_genai, openvino, transformers, optimum.intel" \
        >/dev/null 2>&1
}

if [ -f "$ROOT/ready" ] && grep -qx "openvino_genai=$GENAI_VERSION" "$ROOT/ready" && check; then
    log "already set up: $ROOT"
    exit 0
fi
rm -f "$ROOT/ready"

if [ ! -x "$VENV/bin/python" ]; then
    log "venv"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
# CPU torch first (optimum-cli traces the model with it), the build corral's own
# bootstrap installs; left to the resolver below it would be a CUDA build.
"$VENV/bin/pip" install -q "torch==${TORCH_VERSION:-2.13.0+cpu}"
log "openvino-genai $GENAI_VERSION and optimum-intel"
"$VENV/bin/pip" install -q "openvino-genai==$GENAI_VERSION" "optimum-intel[openvino]"
# The resolver may pull a torchvision built for another torch (CUDA); transformers
# then fails on import. Nothing here needs torchvision: remove it.
if ! "$VENV/bin/python" -c "import transformers.models.llama.modeling_llama" >/dev/null 2>&1 \
    || "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1; then
    log "removing torchvision"
    "$VENV/bin/pip" uninstall -q -y torchvision || true
fi
if ! check; then
    log "the venv does not import openvino_genai, openvino, transformers and optimum.intel:"
    "$VENV/bin/python" -c "import openvino_genai, openvino, transformers, optimum.intel"
    exit 1
fi
{
    echo "openvino_genai=$GENAI_VERSION"
    echo "python=$VENV/bin/python"
    echo "optimum_cli=$VENV/bin/optimum-cli"
    "$VENV/bin/python" -c "import openvino, transformers, torch; print('openvino=' + openvino.__version__); print('transformers=' + transformers.__version__); print('torch=' + torch.__version__)"
} >"$ROOT/ready"
log "ready: $ROOT/ready"
