#!/usr/bin/env bash
# The main job of the README: set up .venv, then generate with the bundled demo target, speculating
# with prompt lookup. Extra arguments are passed to `specserve generate` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/specserve generate --target models/demo/target --drafter ngram --chat \
  --prompt "${SPECSERVE_PROMPT:-import os
import sys


def main(argv):}" --max-tokens 200 "$@"
