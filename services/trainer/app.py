"""The trainer's jobs API (FastAPI): submit a training, an answer regeneration or an evaluation, follow it,
read its log, cancel it.

    POST /v1/jobs                 {"config": {...sections of `specserve train --help`...}, "nproc": 1} -> 201
                                  {"kind": "regenerate" | "eval", "args": {...the command's flags...}} -> 201
    GET  /v1/jobs[?status=&limit=&before=]    newest first
    GET  /v1/jobs/{id}            status, attempts, progress, result (the exported draft, data, report) or error
    GET  /v1/jobs/{id}/log        the command's log (text), `?tail=N` lines, `&follow=true` to stream it
    POST /v1/jobs/{id}/cancel     a queued job ends at once, a running one within a heartbeat
    GET  /health, /ready, /metrics

A job is checked before anything is queued exactly as its command checks it (`jobs.check_job`; a 400 names
the field); the files it names are read by the worker, so a missing file fails the job with the command's
own message. `checkpoint.dir` and `--out` belong to the service: each job writes under
its own folder, which is what lets a job resume after its worker dies. Errors are OpenAI-style bodies, as
the gateway's; a store that fails is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError

from services.common.auth import ApiKeyMiddleware
from services.common.errors import APIError, error_response, install_error_handlers
from services.trainer.jobs import JobRequest, check_job
from services.trainer.runner import LOG_FILE, job_dir, job_progress, log_tail, read_from, read_tail
from services.trainer.settings import TrainerSettings
from services.trainer.store import JobFinished, JobNotFound, JobStatus, JobStore, JobView, QueueFull
from services.trainer.worker import enqueue, maintain, make_celery

log = logging.getLogger("specserve.trainer")
router = APIRouter()  # /v1/jobs...: what the gateway also serves when it hosts the jobs (`serve --trainer`)
service_router = APIRouter()  # /health, /ready, /metrics of the trainer service itself
JOB_ID = re.compile(r"job-[0-9a-f]{24}")  # as JobStore.submit makes them
FOLLOW_POLL_S = 0.5  # how often a followed log is read again


class JobObject(BaseModel):
    id: str
    object: str = "training.job"
    status: JobStatus
    nproc: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int = Field(description="times a worker started it (more than one: resumed after a lost worker or a "
                                      "worker's shutdown)")
    lost: int = Field(description="workers lost while running it (it fails at max_lost_workers)")
    cancel_requested: bool
    exit_code: int | None
    error: str | None = Field(description="why it failed: the end of the command's log")
    kind: str
    result: dict[str, Any] | None = Field(description="train: `draft`, the exported draft's folder (--drafter "
                                                      "auto:PATH); regenerate: `data`, the JSONL; eval: `report`, "
                                                      "`results`; and `summary`, the end of the log")
    progress: dict[str, Any] | None = Field(None, description="a training: `step`, `total_steps` and the newest "
                                            "logged `metrics` (loss, τ, ...); a regeneration: `rows_done`, "
                                            "`total_rows`, `complete`; null before there is any (and for "
                                            "evaluations)")
    config: dict[str, Any] | None = Field(description="a training's config")
    args: dict[str, Any] | None = Field(description="a regeneration's or evaluation's flags")

    @classmethod
    def of(cls, job: JobView, settings: TrainerSettings | None = None) -> JobObject:
        fields = ("id", "kind", "status", "nproc", "created_at", "started_at", "finished_at", "attempts", "lost",
                  "cancel_requested", "exit_code", "error", "result")
        progress = None if settings is None or job.attempts == 0 else job_progress(job.kind, job_dir(settings, job.id))
        params = {"config": job.config, "args": None} if job.kind == "train" else {"config": None, "args": job.config}
        return cls(**{name: getattr(job, name) for name in fields}, **params, progress=progress)


class JobList(BaseModel):
    object: str = "list"
    data: list[JobObject]


class TrainerState:
    def __init__(self, settings: TrainerSettings, store: JobStore):
        self.settings, self.store = settings, store
        self.celery = make_celery(settings)
        self.registry = CollectorRegistry()
        self.submitted = Counter("specserve:trainer_jobs_submitted", "jobs accepted by the API",
                                 registry=self.registry)
        self.jobs = Gauge("specserve:trainer_jobs", "jobs by status (queued: the autoscaling signal of workers)",
                          ["status"], registry=self.registry)
        self.requeued = Counter("specserve:trainer_jobs_requeued", "running jobs queued again after their worker "
                                "stopped reporting", registry=self.registry)


@contextlib.asynccontextmanager
async def trainer_state(app: FastAPI, settings: TrainerSettings):
    """The jobs API's state on `app` (store, Celery app, metrics) and its reaper, for as long as the block runs:
    the trainer app's lifespan, and the gateway's when it serves the jobs itself (`specserve serve --trainer`)."""
    state = TrainerState(settings, await asyncio.to_thread(JobStore, settings.store_url))
    app.state.trainer = state
    reaper = asyncio.create_task(_reap(state))
    log.info("trainer API ready: %d jobs queued", state.store.counts()[JobStatus.QUEUED])
    try:
        yield state
    finally:
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reaper
        state.store.close()


def install_store_error_handler(app: FastAPI) -> None:
    """A failing job store is a 503 with Retry-After, never a 500."""

    @app.exception_handler(DBAPIError)
    async def _store_down(request: Request, exc: DBAPIError):
        log.error("job store error on %s %s: %s", request.method, request.url.path, exc.orig)
        return error_response(503, f"the job store is unreachable or failed ({type(exc.orig).__name__}); retry "
                                   "shortly", None, "store_unavailable", {"Retry-After": "5"})


def create_app(settings: TrainerSettings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with trainer_state(app, settings):
            yield

    app = FastAPI(title="specserve trainer", version="0.1.0", lifespan=lifespan,
                  description="Training jobs for DSpark, DFlash and Eagle3 drafts, run by Celery workers.")
    install_error_handlers(app)
    install_store_error_handler(app)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    app.include_router(router)
    app.include_router(service_router)
    return app


async def _reap(state: TrainerState) -> None:
    """Every lease_s / 2, the reaper's pass (`worker.maintain`): lost jobs requeued, unsent messages sent."""
    while True:
        await asyncio.sleep(state.settings.lease_s / 2)
        try:
            ids = await asyncio.to_thread(maintain, state.celery, state.store, state.settings)
            state.requeued.inc(len(ids))
        except Exception:  # store or broker down: /ready says so; try again next period
            log.exception("the reaper's pass failed")


def _state(request: Request) -> TrainerState:
    state = getattr(request.app.state, "trainer", None)
    if state is None:
        raise APIError(503, "the trainer is starting; retry shortly", None, "not_ready", headers={"Retry-After": "2"})
    return state


def _not_found(job_id: str) -> APIError:
    return APIError(404, f"no job {job_id!r}", "job_id", "job_not_found")


def _job_id(job_id: str) -> str:
    """A well-formed id, or 404 without asking the store (which may refuse odd bytes such as NUL)."""
    if not JOB_ID.fullmatch(job_id):
        raise _not_found(job_id)
    return job_id


def _job(state: TrainerState, job_id: str) -> JobView:
    try:
        return state.store.get(_job_id(job_id))
    except JobNotFound:
        raise _not_found(job_id) from None


@router.post("/v1/jobs", status_code=201, response_model=JobObject, responses={400: {}, 401: {}, 429: {}, 503: {}})
def submit(body: JobRequest, request: Request) -> JobObject:
    """Queue a job; 429 with Retry-After when max_queued jobs already wait."""
    state = _state(request)
    params = check_job(body, state.settings)
    try:
        job = state.store.submit(params, body.nproc, body.kind, max_queued=state.settings.max_queued)
    except QueueFull as exc:
        raise APIError(429, str(exc), None, "queue_full", headers={"Retry-After": "60"}) from None
    try:
        enqueue(state.celery, state.store, job.id)
    except Exception as exc:  # the broker is unreachable: cancel it rather than run it at some later time
        with contextlib.suppress(Exception):  # the store too: the reaper sends it once the broker is back
            state.store.cancel(job.id)
        log.error("job %s: broker unreachable (%s); cancelled", job.id, exc)
        raise APIError(503, f"the job queue is unreachable ({type(exc).__name__}); nothing was queued", None,
                       "broker_unavailable", headers={"Retry-After": "10"}) from None
    state.submitted.inc()
    log.info("job %s queued: %s, %d process(es)", job.id, job.kind, job.nproc)
    return JobObject.of(job)


@router.get("/v1/jobs", response_model=JobList)
def list_jobs(request: Request, status: JobStatus | None = None,
              limit: Annotated[int, Query(ge=1, le=100)] = 20,
              before: Annotated[float | None, Query(description="created_at of the last job of the previous page")]
              = None) -> JobList:
    """Jobs, newest first (`progress` only in GET /v1/jobs/{id}: it reads the job's files)."""
    state = _state(request)
    return JobList(data=[JobObject.of(j) for j in state.store.list(status, limit, before)])


@router.get("/v1/jobs/{job_id}", response_model=JobObject, responses={404: {}})
def get_job(job_id: str, request: Request) -> JobObject:
    state = _state(request)
    return JobObject.of(_job(state, job_id), state.settings)


@router.get("/v1/jobs/{job_id}/log", response_class=PlainTextResponse, responses={404: {}})
def job_log(job_id: str, request: Request, tail: Annotated[int, Query(ge=1, le=100_000)] = 200,
            follow: Annotated[bool, Query(description="keep streaming what the job writes until it ends")] = False
            ) -> Response:
    """The last `tail` lines of the job's log (empty until a worker starts it); with `follow`, then every line
    it writes, until the job has ended and its log is read to the end (or the client goes away)."""
    state = _state(request)
    _job(state, job_id)
    path = job_dir(state.settings, job_id) / LOG_FILE
    if not follow:
        return PlainTextResponse(log_tail(path, tail))
    return StreamingResponse(_follow(state, job_id, path, tail, request), media_type="text/plain; charset=utf-8")


async def _follow(state: TrainerState, job_id: str, path: Path, tail: int, request: Request):
    text, position = read_tail(path, tail)
    yield text
    while not await request.is_disconnected():
        finished = (await asyncio.to_thread(state.store.get, job_id)).status.finished  # before reading: no line lost
        chunk = await asyncio.to_thread(read_from, path, position, finished)
        position += len(chunk)
        if chunk:
            yield chunk.decode("utf-8", "replace")
        elif finished:
            return
        else:
            await asyncio.sleep(FOLLOW_POLL_S)


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobObject, responses={404: {}, 409: {}})
def cancel_job(job_id: str, request: Request) -> JobObject:
    """Cancel: a queued job at once; a running one is stopped by its worker within heartbeat_s (SIGTERM)."""
    state = _state(request)
    try:
        return JobObject.of(state.store.cancel(_job_id(job_id)), state.settings)
    except JobNotFound:
        raise _not_found(job_id) from None
    except JobFinished as exc:
        raise APIError(409, str(exc), "job_id", "job_finished") from None


@service_router.get("/health")
async def health() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@service_router.get("/ready", responses={503: {"description": "the job store or the broker is unreachable"}})
def ready(request: Request) -> dict:
    """Readiness: the job store answers and the broker accepts a connection."""
    state = _state(request)
    try:
        state.store.ping()
    except Exception as exc:
        raise APIError(503, f"the job store is unreachable ({type(exc).__name__})", None, "store_unavailable",
                       headers={"Retry-After": "5"}) from None
    try:
        with state.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        raise APIError(503, f"the job queue is unreachable ({type(exc).__name__})", None, "broker_unavailable",
                       headers={"Retry-After": "5"}) from None
    return {"status": "ready"}


@service_router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus: jobs by status (read from the store at scrape time), submitted and requeued counters."""
    return Response(render_metrics(_state(request)), media_type=CONTENT_TYPE_LATEST)


def render_metrics(state: TrainerState) -> bytes:
    """The trainer's metrics, the jobs by status read from the store now (the gateway appends them with --trainer)."""
    for status, count in state.store.counts().items():
        state.jobs.labels(status=status.value).set(count)
    return generate_latest(state.registry)


def serve(settings: TrainerSettings) -> None:
    """`specserve serve-trainer`: the jobs API on settings.host:settings.port until SIGINT/SIGTERM."""
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
