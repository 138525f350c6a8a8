#!/usr/bin/env bash
# Regenerate the Python gRPC stubs of proto/specserve/v1/*.proto into specserve/v1/ (committed).
# Usage: scripts/gen-proto.sh [OUT_DIR]   (OUT_DIR defaults to the repository root; the drift test
# passes a temporary folder and compares). Needs grpcio-tools (a dev dependency).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
mkdir -p "$out/specserve/v1"
"$python" -m grpc_tools.protoc -I proto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/specserve/v1/*.proto
