#!/usr/bin/env bash
# Install what tests/test_browser.py needs for the Python given as $1 (default: .venv/bin/python):
# Debian's chromium (apt-get, only when missing), playwright (pip; it drives that chromium, so no
# browser download), and JupyterLab when that environment has no Jupyter front end at all (an
# environment with the classic Notebook, like Colab's widget stack, keeps it). Idempotent, quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if ! "$PY" -c "import playwright" 2>/dev/null; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PY" -m pip install -q playwright
fi
if ! "$PY" -c "import jupyterlab" 2>/dev/null && ! "$PY" -c "import notebook" 2>/dev/null; then
  "$PY" -m pip install -q "jupyterlab>=4"
fi
