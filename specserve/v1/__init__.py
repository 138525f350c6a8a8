"""Generated gRPC stubs of `proto/specserve/v1` (run `scripts/gen-proto.sh`; do not edit by hand)."""
