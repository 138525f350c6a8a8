#!/usr/bin/env bash
# The main job of the README: set up .venv, then serve the OpenAI-compatible API on the bundled demo
# model in embedded mode (gateway, drafter and verifier in one process): the demo Qwen3 target, its
# DSpark draft and the hardware-aware prefix scheduler, on http://127.0.0.1:8000; training jobs too
# (/v1/jobs, a trainer worker child process, job store and queue in SQLite under ./trainer-state).
# Extra arguments go to `specserve serve` (try --help), e.g. `scripts/run.sh --port 9000 --policy fixed`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/specserve serve --target models/demo/target --drafter dspark:models/demo/dspark --trainer "$@"
