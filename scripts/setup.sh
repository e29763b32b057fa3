#!/usr/bin/env bash
# Create a virtualenv and install llama2-colab into it.
#   bash scripts/setup.sh                  .venv: the newest releases, and the demo's needs
#   bash scripts/setup.sh --dev            .venv: also the test tools, bitsandbytes, the
#                                          serving packages (fastapi, uvicorn, openai, ...)
#                                          and JupyterLab (`.venv/bin/jupyter lab`, then
#                                          open notebooks/)
#   bash scripts/setup.sh --dev --stack colab
#                                          .venv-colab: Colab's Python (3.13) and every package
#                                          at the version a Colab GPU runtime ships
#                                          (constraints/colab.txt), torch 2.11.0 included; the
#                                          packages Colab lacks at their declared lower bounds;
#                                          the classic Notebook 6.5 Colab's widgets need.
#                                          CI runs the tests in both.
# Python: .venv uses python3 (3.11 or newer; CI's is 3.11, the floor in pyproject.toml).
# .venv-colab needs Colab's minor version, 3.13: pyenv's newest 3.13.x
# ($(pyenv root)/versions/3.13.*/bin/python3.13), else a working python3.13 on PATH.
# PYTHON=/path/to/python overrides the search for either stack.
# torch: installed only if missing. The default spec is the CPU-friendly torch==2.13.0; set
# TORCH_SPEC (e.g. TORCH_SPEC=torch) for your own CUDA build. On Colab you never run this:
# Colab ships torch, and the notebooks install the helper themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
COLAB_PYTHON=3.13 # the minor version Colab runs (../shared/colab/os-info-gpu.txt: 3.13.15)

# Print the path of a working pythonX.Y: pyenv's newest X.Y.*, else pythonX.Y on PATH (a pyenv
# shim for a version that is not active fails to run, so each candidate must really start).
find_python() {
  local minor=$1 root candidate
  root=${PYENV_ROOT:-$(pyenv root 2>/dev/null || true)}
  for candidate in $( [ -n "$root" ] && ls -d "$root"/versions/"$minor".*/bin/python"$minor" \
      2>/dev/null | sort -V -r) "$(command -v "python$minor" || true)"; do
    if [ -n "$candidate" ] && "$candidate" -c "import sys, venv" >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

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
  latest) venv=.venv; pins=(); torch_spec=${TORCH_SPEC:-torch==2.13.0}; want_minor=""
          PY=${PYTHON:-python3}
          # A Jupyter front end to open the notebooks in: JupyterLab (ipywidgets 8).
          [ "$dev" = 1 ] && extra_pkgs+=("jupyterlab>=4") ;;
  # Colab's torch is the CUDA build; PyPI's 2.11.0 is that build (about 5 GB with its CUDA
  # libraries, cached by pip after the first time). It runs on a CPU.
  colab) venv=.venv-colab; pins=(-c constraints/colab.txt); torch_spec=torch
         want_minor=$COLAB_PYTHON
         if [ -n "${PYTHON:-}" ]; then
           PY=$PYTHON
         elif ! PY=$(find_python "$COLAB_PYTHON"); then
           echo "setup.sh: Colab's stack runs on Python $COLAB_PYTHON, as Colab does, and none" \
             "was found (looked for ${PYENV_ROOT:-\$(pyenv root)}/versions/$COLAB_PYTHON.*/bin/python$COLAB_PYTHON" \
             "and a working python$COLAB_PYTHON on PATH). Install it (pyenv install $COLAB_PYTHON)" \
             "or point PYTHON=/path/to/python$COLAB_PYTHON at one, then run this again." >&2
           exit 1
         fi
         # Colab ships httpx2 beside httpx, and huggingface_hub 1.x uses it when it is there;
         # no requirement pulls it in, so it is named here or the stack would lack it.
         extra_pkgs=(httpx2)
         # Colab's front end for its widget versions: the classic Notebook 6.5 (never
         # JupyterLab 4, whose widget manager needs ipywidgets 8).
         [ "$dev" = 1 ] && extra_pkgs+=(notebook) ;;
  *) echo "setup.sh: unknown stack $stack (use latest or colab)" >&2; exit 2 ;;
esac
if [ -x "$venv/bin/python" ] && [ -n "$want_minor" ] && [ -z "${PYTHON:-}" ]; then
  # A venv made by an older setup.sh may run another Python: say so rather than test on it.
  have=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$have" != "$want_minor" ]; then
    echo "setup.sh: $venv runs Python $have, but this stack needs $want_minor. Remove it" \
      "(rm -rf $venv) and run this again; nothing else is kept there." >&2
    exit 1
  fi
fi
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
echo "setup.sh: $venv runs $("$venv/bin/python" -V 2>&1)"
"$venv/bin/python" -m pip install -q --upgrade pip
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  "$venv/bin/python" -m pip install -q "${pins[@]}" "$torch_spec"
fi
"$venv/bin/python" -m pip install -q "${pins[@]}" -e ".[${extras}]" "${extra_pkgs[@]}"
