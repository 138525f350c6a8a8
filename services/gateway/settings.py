"""The gateway's typed settings: one object, read from flags (init kwargs) and `SPECSERVE_*` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.common.settings import comma_list


class GatewaySettings(BaseSettings):
    """Everything `specserve serve` needs. Keyword arguments override environment variables.

    Example: `SPECSERVE_POLICY=prefix SPECSERVE_API_KEYS=key1,key2 specserve serve --port 8000`.
    """

    model_config = SettingsConfigDict(env_prefix="SPECSERVE_", extra="forbid")

    # --- server -----------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False,
        description="Bearer keys accepted on /v1/*; empty = no authentication. Env: comma-separated.")
    jobs_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False,
        description="Bearer keys accepted on /v1/jobs* (training jobs, hosted or forwarded) instead of api_keys, "
                    "which then get 403 there; empty = api_keys. Env: comma-separated.")
    drain_timeout_s: int = Field(30, ge=0, description="graceful shutdown: time in-flight requests get to finish")

    # --- models -----------------------------------------------------------------------------------
    target: str = Field("models/demo/target", description="target causal LM: a local folder or a hub id")
    served_model_name: str | None = Field(None, description="the `model` id clients send; default: `target`")
    drafter: str = Field("dspark:models/demo/dspark", description="none | ngram[:BLOCK] | model:PATH | dspark:PATH | "
                         "dflash:PATH | eagle3:PATH | auto:PATH (see specserve.drafters.registry); default: the "
                         "bundled demo DSpark draft")
    block_size: int | None = Field(None, ge=1, le=64, description="draft tokens per round (γ); default: drafter's")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    max_model_len: int | None = Field(None, ge=2, description="cap on the target's context window")
    threads: int | None = Field(
        None, ge=1, description="torch threads of the embedded engine; default: OMP_NUM_THREADS if set, else usable "
                                "cores - 1 (at least 1). The "
                                "event loop needs a core while the engine computes: an OpenMP worker preempted "
                                "inside the many small parallel regions of a speculative round stalls them all "
                                "(demo model on 2 cores, fixed-2 at c=1: 70 tokens/s with 2 threads, 137 with 1)")

    # --- scale-out: remote drafter/verifier services (empty = embedded, in-process) ------------------
    verifier_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="gRPC addresses of verifier replicas (host:port); set = scale-out mode, "
                                          "`target` then only supplies the tokenizer. Env: comma-separated.")
    drafter_url: str | None = Field(None, description="gRPC address of the drafter service (scale-out mode); "
                                                      "unset = no speculation")

    # --- training jobs (served here with `trainer`, or proxied to the trainer API) ----------------------
    trainer: bool = Field(False, description="serve /v1/jobs here, with a trainer worker child process, on the "
                                             "trainer's embedded default (SQLite store and broker in "
                                             "trainer_state_dir); `specserve serve --trainer`")
    trainer_state_dir: Path = Field(Path("trainer-state"), description="the hosted trainer's job folders and "
                                                                       "SQLite files")
    trainer_url: str | None = Field(None, description="the trainer API (http://host:8100); set = /v1/jobs* are "
                                                      "forwarded there; unset = they answer 404")
    trainer_client_key: str | None = Field(None, repr=False, description="the key the gateway sends to the trainer")
    trainer_timeout_s: float = Field(30.0, gt=0, description="how long a proxied jobs call may take")

    # --- verification budget ----------------------------------------------------------------------
    policy: Literal["fixed", "threshold", "prefix"] = Field(
        "prefix", description="fixed-k | static cumulative-confidence threshold | hardware-aware prefix scheduler")
    fixed_k: int | None = Field(None, ge=0, description="k of the fixed policy; default: the block size")
    threshold: float = Field(0.3, ge=0.0, lt=1.0, description="survival threshold of the static policy")

    # --- admission --------------------------------------------------------------------------------
    max_batch: int = Field(32, ge=1, description="requests decoded together in one engine round")
    max_waiting: int = Field(64, ge=1, description="engine requests admitted at once (queued + running)")
    n_limit: int = Field(8, ge=1, description="largest `n` (choices per request) accepted")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 429 and 503 answers")

    @field_validator("api_keys", "jobs_api_keys", "verifier_urls", mode="before")
    @classmethod
    def _split_keys(cls, value):
        return comma_list(value)

    @model_validator(mode="after")
    def _check(self):
        if self.trainer and self.trainer_url:
            raise ValueError("trainer (serve the jobs here) and trainer_url (forward them) exclude each other")
        if self.n_limit > self.max_waiting:
            raise ValueError(f"n_limit ({self.n_limit}) cannot exceed max_waiting ({self.max_waiting}): "
                             "a request with n choices needs n admission slots")
        return self

    @property
    def model_id(self) -> str:
        """The model name served on /v1/models and required in every request."""
        return self.served_model_name or self.target
