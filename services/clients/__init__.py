"""Synchronous gRPC clients that implement the engine's Drafter and Verifier interfaces.

`SpecEngine(RemoteVerifier([...]), RemoteDrafter(...))` runs unchanged over the services; see
services/README.md.
"""

from services.clients.drafter import RemoteDrafter
from services.clients.verifier import RemoteVerifier

__all__ = ["RemoteDrafter", "RemoteVerifier"]
