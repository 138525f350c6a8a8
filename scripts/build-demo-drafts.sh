#!/usr/bin/env bash
# Train the demo's DSpark, DFlash and Eagle3 drafts against models/demo/target into models/demo/<algorithm>/
# (recipe: specserve/demo/drafts.py; about an hour on 2 CPU cores). Regeneration and training resume
# after an interruption (work files under $TMPDIR/specserve-demo-drafts). Extra arguments go to the module
# (--only ALGORITHM, --rows N, --steps N, --work-dir DIR; try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
export OMP_WAIT_POLICY=PASSIVE  # no spinning OpenMP threads on a shared machine
exec "$python" -m specserve.demo.drafts --target models/demo/target --out models/demo "$@"
