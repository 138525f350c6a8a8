#!/usr/bin/env bash
# Create (or refresh) .venv in the repository root with specserve and its test tools.
# torch==2.13.0 is installed first: it is the local CPU wheel; an unpinned `torch` would pull a
# multi-GB CUDA build from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev,trainer]"
