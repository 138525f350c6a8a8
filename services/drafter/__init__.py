"""The drafter service: one specserve drafter behind gRPC (`specserve.v1.Drafter`)."""
