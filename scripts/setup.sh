#!/usr/bin/env bash
# Create .venv and install llama2-colab into it. `--dev` adds the test tools.
# torch: installed only if missing. Default spec is the CPU-friendly torch==2.13.0;
# set TORCH_SPEC (e.g. TORCH_SPEC=torch) for your own CUDA build. On Colab you never run this:
# Colab ships torch, and the notebooks install the helper themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
extras="notebooks"
[ "${1:-}" = "--dev" ] && extras="notebooks,dev,quant"
.venv/bin/python -m pip install -q -e ".[${extras}]"
