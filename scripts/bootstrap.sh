#!/usr/bin/env bash
# Create .venv and install hf_cagul with its dev and docs tools and the app's Gradio, once.
# Safe to re-run.
#
# torch goes in first and only if it is missing: the pinned CPU wheel (TORCH_SPEC) is taken
# from the local wheel cache where one exists; a later unpinned dependency would otherwise pull
# a multi-GB CUDA build. A torch already importable by python3 is reused, never installed twice.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.hf_cagul-ready

if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
    exit 0
fi
if [ ! -x .venv/bin/python ]; then
    if "$PYTHON" -c "import torch" 2>/dev/null; then
        echo "Reusing the torch of $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
        "$PYTHON" -m venv --system-site-packages .venv
    else
        "$PYTHON" -m venv .venv
    fi
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "Installing $TORCH_SPEC (CPU wheel where available)"
    .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
fi
.venv/bin/python -m pip install --quiet -e ".[dev,docs,app]"
touch "$stamp"
