#!/usr/bin/env bash
# Create a virtualenv and install llama2-colab into it.
#   bash scripts/setup.sh                  .venv: the newest releases, and the demo's needs
#   bash scripts/setup.sh --dev            .venv: also the test tools, bitsandbytes and the
#                                          serving packages (fastapi, uvicorn, openai, ...)
#   bash scripts/setup.sh --dev --stack colab
#                                          .venv-colab: every package at the version a Colab GPU
#                                          runtime ships (constraints/colab.txt), torch 2.11.0
#                                          included; the packages Colab lacks at their declared
#                                          lower bounds. CI runs the tests in both.
# torch: installed only if missing. The default spec is the CPU-friendly torch==2.13.0; set
# TORCH_SPEC (e.g. TORCH_SPEC=torch) for your own CUDA build. On Colab you never run this:
# Colab ships torch, and the notebooks install the helper themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dev=0 stack=latest extra_pkgs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --stack) stack=${2:?--stack needs latest or colab}; shift ;;
    *) echo "setup.sh: unknown option $1 (use --dev, --stack latest|colab)" >&2; exit 2 ;;
  esac
  shift
done
extras="notebooks"
[ "$dev" = 1 ] && extras="notebooks,dev,quant,serve"
case "$stack" in
  latest) venv=.venv; pins=(); torch_spec=${TORCH_SPEC:-torch==2.13.0} ;;
  # Colab's torch is the CUDA build; PyPI's 2.11.0 is that build (about 5 GB with its CUDA
  # libraries, cached by pip after the first time). It runs on a CPU.
  colab) venv=.venv-colab; pins=(-c constraints/colab.txt); torch_spec=torch
         # Colab ships httpx2 beside httpx, and huggingface_hub 1.x uses it when it is there;
         # no requirement pulls it in, so it is named here or the stack would lack it.
         extra_pkgs=(httpx2)
         # Colab's front end for its widget versions: the classic Notebook 6.5.
         [ "$dev" = 1 ] && extra_pkgs+=(notebook) ;;
  *) echo "setup.sh: unknown stack $stack (use latest or colab)" >&2; exit 2 ;;
esac
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  "$venv/bin/python" -m pip install -q "${pins[@]}" "$torch_spec"
fi
"$venv/bin/python" -m pip install -q "${pins[@]}" -e ".[${extras}]" "${extra_pkgs[@]}"
