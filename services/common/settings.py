"""Settings shared by the drafter and verifier servers (pydantic-settings; each service adds its own prefix)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from services.common.transport import DEFAULT_MAX_MESSAGE_BYTES


def comma_list(value):
    """A settings validator's input: "a, b" (an environment variable) -> ["a", "b"]; lists pass through."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class ServerSettings(BaseSettings):
    """Transport and lifecycle of one model server. Environment variables use the service's prefix,
    e.g. SPECSERVE_VERIFIER_PORT=50051; tuple-valued fields take JSON, e.g. SPECSERVE_VERIFIER_TAP_LAYERS='[1, 5]'."""

    host: str = Field("0.0.0.0", description="interface to bind ('0.0.0.0' all IPv4, '[::]' all, '127.0.0.1' local)")
    port: int = Field(0, ge=0, le=65535, description="TCP port; 0 picks a free one (the server reports it)")
    lease_ttl_s: float = Field(60.0, gt=0, description="a session idle for longer is closed (its caller vanished)")
    max_sessions: int = Field(256, ge=1, description="open sessions beyond this are refused (RESOURCE_EXHAUSTED)")
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1 << 20,
                                   description="largest request or response; clients must use the same limit")
    shutdown_delay_s: float = Field(1.0, ge=0, description="on shutdown, report NOT_SERVING this long before "
                                                           "refusing new calls, so health watchers move away")
    grace_s: float = Field(10.0, ge=0, description="then let in-flight calls finish for at most this long")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads of the model; default: "
                                                        "OMP_NUM_THREADS, else one per usable core")
