"""The job store: one SQLAlchemy model, the same on SQLite (embedded) and PostgreSQL (scale-out).

A job is claimed by one worker at a time. `claim` is a single conditional UPDATE (queued -> running under
this owner), so two workers that receive the same job (a broker redelivery, a message sent again) cannot
both run it: the database decides. The owner keeps its lease with `heartbeat`; a running job whose lease
expired goes back to queued only through `requeue_lost` (which counts the lost worker), and every write of
an owner is conditional on still owning the job, so a worker that lost its lease (paused past `lease_s`,
then woke up) can no longer change the job's state. `enqueued_at` records when the job's message was last
sent: a queued job whose message was lost (a broker restarted empty, a send that failed after the job was
stored) is found by `unsent` and sent again.
Times are UNIX seconds (floats) read from the database's clock (`now`; PostgreSQL and SQLite), so a lease
means the same on every host whatever its own clock says (another backend falls back to the hosts' clocks,
which must then agree to well within `lease_s`).
"""

from __future__ import annotations

import enum
import fcntl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    Float,
    Integer,
    String,
    Text,
    cast,
    create_engine,
    event,
    false,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from specserve.errors import SpecServeError


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Claim(enum.Enum):
    CLAIMED = "claimed"  # this owner runs it now
    BUSY = "busy"  # another owner holds it (even with its lease expired: the reaper takes it back)
    DONE = "done"  # finished or cancelled: nothing to run
    MISSING = "missing"


class JobNotFound(SpecServeError):
    def __init__(self, job_id: str):
        super().__init__(f"no job {job_id!r}")
        self.job_id = job_id


class JobFinished(SpecServeError):
    """The job has already ended (a cancel came too late)."""


class QueueFull(SpecServeError):
    """`max_queued` jobs already wait; nothing was stored."""

    def __init__(self, max_queued: int):
        super().__init__(f"{max_queued} jobs are already queued; retry later")
        self.max_queued = max_queued


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "specserve_trainer_jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    config: Mapped[dict] = mapped_column(JSON)
    nproc: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)  # first claim
    finished_at: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims so far (> 1: resumed after a lost worker
    # or a release on worker shutdown)
    lost: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # workers lost while running it
    enqueued_at: Mapped[float | None] = mapped_column(Float)  # when its message was last sent
    owner: Mapped[str | None] = mapped_column(String(200))  # worker holding the lease (host:pid:task)
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict | None] = mapped_column(JSON)


@dataclass(frozen=True)
class JobView:
    """A job as read (detached from the session)."""

    id: str
    kind: str
    status: JobStatus
    config: dict
    nproc: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    lost: int
    enqueued_at: float | None
    owner: str | None
    heartbeat_at: float | None
    cancel_requested: bool
    exit_code: int | None
    error: str | None
    result: dict | None

    @classmethod
    def of(cls, row: Job) -> JobView:
        fields = {name: getattr(row, name) for name in cls.__dataclass_fields__}
        return cls(**fields | {"status": JobStatus(row.status)})


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # API and workers read while one writes
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "specserve_trainer_alembic_version"  # its own name: the database may be shared with other apps
_PG_MIGRATION_LOCK = 0x5EC5E7  # pg_advisory_xact_lock key: one migrator at a time
_PG_SUBMIT_LOCK = 0x5EC5E8  # ...and one submission at a time, so that two cannot both see room in the queue


def alembic_config(connection) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (API and workers all do at start, one at a time: PostgreSQL
    serialises them on an advisory lock, SQLite (one machine) on a lock file next to the database)."""
    database = engine.url.database
    lock = None
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        lock = open(f"{database}.migrate.lock", "w")  # noqa: SIM115 (held until the migration is done)
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})"))
            command.upgrade(alembic_config(connection), "head")
    finally:
        if lock is not None:
            lock.close()


class JobStore:
    """Jobs in one table; every method is one short transaction."""

    def __init__(self, url: str):
        self.url = url
        sqlite = url.startswith("sqlite")
        database = make_url(url).database
        if sqlite and database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, pool_pre_ping=not sqlite,
                                            connect_args={"check_same_thread": False} if sqlite else {})
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        migrate(self.engine)

    def now(self) -> ColumnElement[float]:
        """The database's clock in UNIX seconds, as SQL: every lease is judged by one clock, whatever the hosts'
        clocks say (SQLite lives on one machine; another backend falls back to this host's clock)."""
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            return cast(func.extract("epoch", func.clock_timestamp()), Float)
        if dialect == "sqlite":
            return (func.julianday("now") - 2440587.5) * 86400.0
        return literal(time.time(), Float)

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        with Session(self.engine) as s:
            s.execute(select(1))

    # --- API side -------------------------------------------------------------------------------------
    def submit(self, config: dict, nproc: int = 1, kind: str = "train", max_queued: int | None = None) -> JobView:
        """Store a queued job; with `max_queued`, raise QueueFull when that many already wait. Counting and storing
        are one transaction that holds the submission lock (PostgreSQL: an advisory lock; SQLite: the write lock,
        taken first), so concurrent submissions cannot overshoot the limit."""
        row = Job(id=f"job-{uuid.uuid4().hex[:24]}", kind=kind, status=JobStatus.QUEUED.value, config=config,
                  nproc=nproc, created_at=self.now(), attempts=0, lost=0, cancel_requested=False)
        with Session(self.engine) as s, s.begin():
            if max_queued is not None:
                if self.engine.dialect.name == "postgresql":
                    s.execute(text(f"SELECT pg_advisory_xact_lock({_PG_SUBMIT_LOCK})"))
                elif self.engine.dialect.name == "sqlite":  # a write that changes nothing takes the write lock
                    s.execute(update(Job).where(false()).values(kind=Job.kind))
                queued = s.scalar(select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED.value))
                if queued >= max_queued:
                    raise QueueFull(max_queued)
            s.add(row)
            s.flush()
            s.refresh(row)  # created_at, as the database's clock set it
            return JobView.of(row)

    def get(self, job_id: str) -> JobView:
        with Session(self.engine) as s:
            row = s.get(Job, job_id)
            if row is None:
                raise JobNotFound(job_id)
            return JobView.of(row)

    def list(self, status: JobStatus | None = None, limit: int = 20, before: float | None = None) -> list[JobView]:
        """Newest first; `before` pages on created_at."""
        query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        if status is not None:
            query = query.where(Job.status == status.value)
        if before is not None:
            query = query.where(Job.created_at < before)
        with Session(self.engine) as s:
            return [JobView.of(row) for row in s.scalars(query)]

    def counts(self) -> dict[JobStatus, int]:
        with Session(self.engine) as s:
            found = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        return {status: int(found.get(status.value, 0)) for status in JobStatus}

    def cancel(self, job_id: str) -> JobView:
        """A queued job is cancelled at once; a running one is flagged, and its worker stops it."""
        now = self.now()
        with Session(self.engine) as s, s.begin():
            queued = s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
                               .values(status=JobStatus.CANCELLED.value, finished_at=now, cancel_requested=True))
            if not queued.rowcount:
                s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
                          .values(cancel_requested=True))
            row = s.get(Job, job_id)
            if row is None:
                raise JobNotFound(job_id)
            view = JobView.of(row)
        if view.status.finished and not view.cancel_requested:
            raise JobFinished(f"job {job_id!r} has already {view.status.value}")
        return view

    def requeue_lost(self, lease_s: float, max_lost: int) -> tuple[list[str], list[str]]:
        """Running jobs whose lease expired (their worker died) go back to queued, unless their worker was lost
        `max_lost` times: those fail (a job that takes its worker down every time must not loop).
        Returns (requeued ids, failed ids), as the UPDATEs changed them (concurrent reapers split them)."""
        with Session(self.engine) as s, s.begin():
            now = s.scalar(select(self.now()))  # one reading: the three UPDATEs must agree on which leases expired
            lost = (Job.status == JobStatus.RUNNING.value, Job.heartbeat_at < now - lease_s)
            s.execute(update(Job).where(*lost, Job.cancel_requested.is_(True)).values(  # cancelled while lost
                status=JobStatus.CANCELLED.value, finished_at=now, lost=Job.lost + 1, owner=None,
                error="cancelled on request (its worker was lost meanwhile)"))
            again = s.scalars(update(Job).where(*lost, Job.lost + 1 < max_lost)
                              .values(status=JobStatus.QUEUED.value, owner=None, lost=Job.lost + 1)
                              .returning(Job.id)).all()
            failed = s.scalars(update(Job).where(*lost).values(
                status=JobStatus.FAILED.value, finished_at=now, lost=Job.lost + 1,
                error=f"its worker was lost {max_lost} times (the last one: " + func.coalesce(Job.owner, "?")
                + f"); not retried past max_lost_workers={max_lost} (see the log)", owner=None).returning(Job.id)).all()
        return list(again), list(failed)

    def unsent(self, older_than_s: float) -> list[str]:
        """Queued jobs whose message was last sent (or never) more than `older_than_s` ago."""
        cutoff = self.now() - older_than_s
        with Session(self.engine) as s:  # cancel-flagged ones too: the claim of their message cancels them
            return list(s.scalars(select(Job.id).where(
                Job.status == JobStatus.QUEUED.value,
                (Job.enqueued_at.is_(None) & (Job.created_at < cutoff)) | (Job.enqueued_at < cutoff))))

    def mark_enqueued(self, job_id: str) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(update(Job).where(Job.id == job_id).values(enqueued_at=self.now()))

    # --- worker side ----------------------------------------------------------------------------------
    def claim(self, job_id: str, owner: str) -> Claim:
        """Queued -> running under `owner` (a running job, even one whose lease expired, is BUSY: only
        `requeue_lost` takes a job from a lost worker, and counts it)."""
        now = self.now()
        with Session(self.engine) as s, s.begin():
            done = s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED.value,
                                               Job.cancel_requested.is_(False))
                             .values(status=JobStatus.RUNNING.value, owner=owner, heartbeat_at=now,
                                     attempts=Job.attempts + 1, started_at=func.coalesce(Job.started_at, now)))
            if done.rowcount:
                return Claim.CLAIMED
            row = s.get(Job, job_id)
            if row is None:
                return Claim.MISSING
            if row.status == JobStatus.QUEUED.value and row.cancel_requested:
                row.status, row.finished_at = JobStatus.CANCELLED.value, now
            return Claim.DONE if JobStatus(row.status).finished else Claim.BUSY

    def heartbeat(self, job_id: str, owner: str) -> tuple[bool, bool]:
        """Renew the lease: (still the owner, cancel requested)."""
        with Session(self.engine) as s, s.begin():
            done = s.execute(update(Job).where(Job.id == job_id, Job.owner == owner,
                                               Job.status == JobStatus.RUNNING.value)
                             .values(heartbeat_at=self.now()))
            row = s.get(Job, job_id)
            return bool(done.rowcount), bool(row is not None and row.cancel_requested)

    def finish(self, job_id: str, owner: str, status: JobStatus, exit_code: int | None = None,
               error: str | None = None, result: dict[str, Any] | None = None) -> bool:
        """End the job if `owner` still holds it; False when its lease was lost meanwhile."""
        if not status.finished:
            raise ValueError(f"finish needs a final status, got {status}")
        with Session(self.engine) as s, s.begin():
            done = s.execute(update(Job).where(Job.id == job_id, Job.owner == owner,
                                               Job.status == JobStatus.RUNNING.value)
                             .values(status=status.value, finished_at=self.now(), exit_code=exit_code, error=error,
                                     result=result))
            return bool(done.rowcount)

    def release(self, job_id: str, owner: str) -> bool:
        """Give a running job back to the queue (its worker is shutting down); it resumes elsewhere."""
        with Session(self.engine) as s, s.begin():
            done = s.execute(update(Job).where(Job.id == job_id, Job.owner == owner,
                                               Job.status == JobStatus.RUNNING.value)
                             .values(status=JobStatus.QUEUED.value, owner=None))
            return bool(done.rowcount)
