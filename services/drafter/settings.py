"""Typed settings of the drafter service (environment prefix SPECSERVE_DRAFTER_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServerSettings


class DrafterSettings(ServerSettings):
    """Which drafter to serve. E.g. SPECSERVE_DRAFTER_DRAFTER=model:models/demo/draft."""

    model_config = SettingsConfigDict(env_prefix="SPECSERVE_DRAFTER_")

    port: int = Field(50052, ge=0, le=65535, description="TCP port; 0 picks a free one")
    drafter: str = Field("ngram", description="drafter spec: ngram[:BLOCK] | model:PATH | dspark:PATH | dflash:PATH | "
                                              "eagle3:PATH | auto:PATH (see specserve/drafters/registry.py)")
    target: str | None = Field(None, description="the target (folder or hub id) whose embedding and LM head fill "
                                                 "a DSpark/DFlash/Eagle3 draft saved without them; only those two "
                                                 "tensors are read")
    block_size: int | None = Field(None, ge=1, description="draft tokens per round (γ); default: the drafter's")
    dtype: str = Field("float32", description="dtype of model-based drafters: float32 | bfloat16 | float16")
    device: str = Field("cpu", description="torch device of model-based drafters, e.g. cuda:0")
