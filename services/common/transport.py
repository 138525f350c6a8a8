"""gRPC channel/server options and the error a remote call raises, shared by servers and clients."""

from __future__ import annotations

import grpc

from specserve.errors import SpecServeError

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Prefill taps ([prompt, m*H] per session) and dense draft distributions ([γ, V] per session) are
large: 256 MiB covers a batch of long prompts at m*H = 12k in bf16. Both ends must agree."""


def message_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Explicit send/receive limits (gRPC's default receive limit is 4 MiB)."""
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


def client_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Message limits plus short reconnect backoff, so a restarted server is found again within ~1 s."""
    return [*message_options(max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.enable_retries", 0)]  # retries are ours: they must know about sessions


class RemoteCallError(SpecServeError):
    """A call to a drafter or verifier service failed. `code` is the gRPC status code (for a failed item:
    the item's code), `target` the server address, so the gateway can map it to HTTP (UNAVAILABLE → 503...)."""

    def __init__(self, target: str, code: grpc.StatusCode, message: str):
        super().__init__(f"{target}: {code.name}: {message}")
        self.target, self.code = target, code


def grpc_code(code: int) -> grpc.StatusCode:
    """The gRPC status code with this number (per-item `Status` codes use the same numbers)."""
    return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
