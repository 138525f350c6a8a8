"""The verifier service: the target model behind gRPC (`specserve.v1.Verifier`)."""
