"""The network services: gateway, drafter, verifier (transport, validation and lifecycle only)."""
