"""Typed settings of the verifier service (environment prefix SPECSERVE_VERIFIER_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServerSettings
from specserve.target.profile import DEFAULT_SIZES


class VerifierSettings(ServerSettings):
    """What the verifier serves and how it measures SPS(B). E.g. SPECSERVE_VERIFIER_MODEL=models/demo/target."""

    model_config = SettingsConfigDict(env_prefix="SPECSERVE_VERIFIER_")

    port: int = Field(50051, ge=0, le=65535, description="TCP port; 0 picks a free one")
    model: str = Field("models/demo/target", description="target causal LM: a local folder or a hub id")
    dtype: str = Field("float32", description="float32 (CPU default) | bfloat16 | float16")
    device: str = Field("cpu", description="torch device, e.g. cpu or cuda:0")
    max_len: int | None = Field(None, ge=2, description="context window; default: the model's")
    tap_layers: tuple[int, ...] = Field((), description="decoder layers returned as taps: the drafter's "
                                                        "target_layer_ids (JSON list in the environment)")
    sps: dict[int, float] | None = Field(None, description="a fixed SPS(B) table instead of profiling at start-up")
    plain_sps: dict[int, float] | None = Field(None, description="a fixed SPS(B) table of plain rounds (B sessions of "
                                                                 "one token each); profiled with `sps` when that is")
    sps_sizes: tuple[int, ...] = Field(DEFAULT_SIZES, description="B values (tokens per forward) to profile")
    sps_context: int = Field(128, ge=1, description="cached tokens per session while profiling")
    sps_repeats: int = Field(5, ge=1, description="timed forwards per B (the fastest is kept: noise only adds time)")
