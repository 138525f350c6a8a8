"""The trainer service's typed settings (API and worker read the same object): flags and `SPECSERVE_TRAINER_*`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.common.settings import comma_list


class TrainerSettings(BaseSettings):
    """Where jobs are stored and queued, and how they are run.

    The embedded default needs no server: the job store is SQLite and Celery's broker is kombu's SQLAlchemy
    transport on SQLite, both under `state_dir`. Scale-out points `database_url` at PostgreSQL and `broker_url`
    at Redis, e.g. `SPECSERVE_TRAINER_DATABASE_URL=postgresql+psycopg://u:p@db/specserve
    SPECSERVE_TRAINER_BROKER_URL=redis://redis:6379/0`. API and workers must share `state_dir` (a volume):
    each job's config, log and checkpoints live in `state_dir/jobs/<id>/`.
    """

    model_config = SettingsConfigDict(env_prefix="SPECSERVE_TRAINER_", extra="forbid")

    host: str = Field("127.0.0.1", description="API bind address")
    port: int = Field(8100, ge=0, le=65535, description="API port")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False,
        description="Bearer keys accepted on /v1/*; empty = no authentication. Env: comma-separated.")
    state_dir: Path = Field(Path("trainer-state"), description="job folders (config, log, checkpoints), and the "
                                                               "SQLite files of the embedded default")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the job store; default SQLite in state_dir",
                                     repr=False)
    broker_url: str | None = Field(None, description="Celery broker; default kombu's SQLAlchemy transport on SQLite "
                                                     "in state_dir", repr=False)
    allowed_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="folders the files a job names (target, data, drafts, suites) must lie "
                                          "in; empty = any file the worker can read. Env: comma-separated.")
    queue: str = Field("specserve-training", description="Celery queue the jobs go to")
    max_queued: int = Field(64, ge=1, description="jobs waiting beyond this are refused (429)")
    max_nproc: int = Field(8, ge=1, description="largest `nproc` (training processes, torchrun) a job may ask for")
    heartbeat_s: float = Field(5.0, gt=0, description="a running job's worker reports this often")
    lease_s: float = Field(60.0, gt=0, description="a running job not reported for this long is taken as lost "
                                                   "(its worker died) and queued again; it resumes from its "
                                                   "latest checkpoint")
    max_lost_workers: int = Field(3, ge=1, description="a job whose worker is lost this many times fails instead "
                                                       "of being queued again (a release on shutdown is no loss)")
    stop_grace_s: float = Field(30.0, ge=0, description="stopping a job's command (cancel, shutdown, lost lease): "
                                                         "SIGTERM, then SIGKILL after this long")
    resend_s: float = Field(900.0, gt=0, description="a job queued this long since its message was sent is sent "
                                                      "again (the message may be lost; a duplicate is dropped)")

    @field_validator("api_keys", "allowed_roots", mode="before")
    @classmethod
    def _split_keys(cls, value):
        return comma_list(value)

    @model_validator(mode="after")
    def _leases(self):
        if self.lease_s <= 2 * self.heartbeat_s + self.stop_grace_s:
            raise ValueError(f"lease_s ({self.lease_s}) must exceed twice heartbeat_s ({self.heartbeat_s}) plus "
                             f"stop_grace_s ({self.stop_grace_s}): a live job would be taken for lost between two "
                             "reports, or while its command is being stopped")
        return self

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    @property
    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.state_dir / 'jobs.db').resolve()}"

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.state_dir / 'broker.db').resolve()}"
