#!/usr/bin/env bash
# Download the wheels a lent GPU machine lacks (its image has torch, transformers, accelerate,
# peft, pytest, sentencepiece; not bitsandbytes, nbval, ipykernel or ipywidgets) into .whl/,
# for Python 3.12 on x86-64, one version of each, without their dependencies (listed by hand).
# Then, there:  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#               PYTHONPATH=/tmp/site bash scripts/gpu_check.sh --suite
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
  manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 any; do
  plat+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${plat[@]}" -d .whl \
  bitsandbytes nbval ipykernel ipywidgets widgetsnbextension jupyterlab_widgets comm \
  ipython ipython-pygments-lexers jedi parso matplotlib-inline pexpect ptyprocess \
  prompt_toolkit wcwidth stack_data asttokens executing pure_eval decorator traitlets \
  jupyter_client jupyter_core pyzmq tornado nest_asyncio debugpy platformdirs \
  nbformat fastjsonschema jsonschema jsonschema-specifications referencing rpds-py \
  coverage
du -sh .whl
