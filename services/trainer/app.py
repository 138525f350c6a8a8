"""The trainer's jobs API (FastAPI): submit a training, an answer regeneration or an evaluation, follow it,
read its log, cancel it.

    POST /v1/jobs                 {"config": {...sections of `specserve train --help`...}, "nproc": 1} -> 201
                                  {"kind": "regenerate" | "eval", "args": {...the command's flags...}} -> 201
    GET  /v1/jobs[?status=&limit=&before=]    newest first
    GET  /v1/jobs/{id}            status, attempts, progress, result (the exported draft, data, report) or error
    GET  /v1/jobs/{id}/log        the command's log (text), `?tail=N` lines, `&follow=true` to stream it
    POST /v1/jobs/{id}/cancel     a queued job ends at once, a running one within a heartbeat
    GET  /health, /ready, /metrics

A job is checked here exactly as its command checks it (a config as `specserve train` does: unknown keys,
types, ranges; flags with the command's own parser; a 400 names the field) before anything is queued; the
files it names are read by the worker (inside `allowed_roots` when set), so a missing file fails the job
with the command's own message. `checkpoint.dir` and `--out` belong to the service: each job writes under
its own folder, which is what lets a job resume after its worker dies. Errors are OpenAI-style bodies, as
the gateway's; a store that fails is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import re
from copy import deepcopy
from pathlib import Path
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from sqlalchemy.exc import DBAPIError

from services.common.auth import ApiKeyMiddleware
from services.common.errors import APIError, error_response, install_error_handlers
from services.trainer.runner import LOG_FILE, cli_argv, job_dir, job_progress, log_tail, read_tail
from services.trainer.settings import TrainerSettings
from services.trainer.store import JobFinished, JobNotFound, JobStatus, JobStore, JobView
from services.trainer.worker import enqueue, maintain, make_celery
from specserve.cli import build_parser
from specserve.errors import InvalidRequestError
from specserve.eval.runner import DraftSpec
from specserve.training.config import from_dict

log = logging.getLogger("specserve.trainer")
router = APIRouter()  # /v1/jobs...: what the gateway also serves when it hosts the jobs (`serve --trainer`)
service_router = APIRouter()  # /health, /ready, /metrics of the trainer service itself
JOB_ID = re.compile(r"job-[0-9a-f]{24}")  # as JobStore.submit makes them
FOLLOW_POLL_S = 0.5  # how often a followed log is read again


ArgValue = StrictStr | StrictInt | StrictFloat | StrictBool


class JobRequest(BaseModel):
    """A job: a training (`config`, as JSON) or a regeneration / evaluation (`args`, the command's flags)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["train", "regenerate", "eval"] = Field(
        "train", description="train: `specserve train`; regenerate: `specserve data regenerate` (answers by the "
                             "target); eval: `specserve eval` (τ per benchmark, per-position acceptance, calibration)")
    config: dict[str, Any] | None = Field(None, description="train: sections model, loss, data, optim, train, "
                                          "checkpoint, logging, as in a `specserve train --config` file "
                                          "(`checkpoint.dir` is set by the service)")
    args: dict[str, ArgValue | list[ArgValue]] | None = Field(
        None, description="regenerate / eval: the command's flags by name, e.g. {\"target\": \"PATH\", "
                          "\"max_tokens\": 96, \"suite\": [\"a.jsonl\", \"b.jsonl\"], \"overwrite\": true}; "
                          "`out` is set by the service (the job's folder)")
    nproc: int = Field(1, ge=1, description="training processes (torchrun --nproc_per_node); at most max_nproc")


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


def _check_finite(value: Any, path: str) -> None:
    """NaN and ±Infinity (which Python's JSON reader accepts) are no JSON: PostgreSQL refuses them, and the
    YAML config a training reads would spell them differently."""
    if isinstance(value, float) and not math.isfinite(value):
        raise APIError.bad_request(path, f"must be a finite number, got {value}")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        _check_finite(item, f"{path}.{key}")


def check_job(body: JobRequest, settings: TrainerSettings) -> dict[str, Any]:
    """The job's parameters (a config or flags), refused as its command would refuse them; 400 naming the field."""
    _check_finite(body.config, "config")
    _check_finite(body.args, "args")
    if body.nproc > settings.max_nproc:
        raise APIError.bad_request("nproc", f"at most {settings.max_nproc} processes per job, got {body.nproc}")
    given, other = ("config", "args") if body.kind == "train" else ("args", "config")
    if getattr(body, other) is not None:
        raise APIError.bad_request(other, f"a {body.kind} job takes `{given}`, not `{other}`")
    params = getattr(body, given)
    if params is None:
        raise APIError.bad_request(given, f"a {body.kind} job needs `{given}`", "missing")
    if body.kind == "train":
        check_config(params)
    else:
        if body.nproc != 1:
            raise APIError.bad_request("nproc", f"a {body.kind} job runs one process, got {body.nproc}")
        check_args(body.kind, params)
    check_paths(job_paths(body.kind, params), settings.allowed_roots)
    return params


TRAIN_PATHS = (("model", "target"), ("model", "init_from"), ("data", "train_file"), ("data", "cache"))
ARG_PATHS = {"regenerate": ("target", "input", "drafter"), "eval": ("target", "draft", "suite")}
SPEC_ARGS = ("draft", "drafter")  # drafter specs: [NAME=]KIND[:ARG], ARG a path for these kinds
PATH_KINDS = ("dspark", "dflash", "eagle3", "auto", "model")


def job_paths(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """field -> the file or folder a job's parameters name (None where a field names none)."""
    if kind == "train":
        return {f"config.{section}.{key}": (params.get(section) or {}).get(key) for section, key in TRAIN_PATHS}
    paths = {}
    for key in ARG_PATHS[kind]:
        values = params.get(key)
        for i, value in enumerate(values if isinstance(values, list) else [values]):
            if key in SPEC_ARGS and isinstance(value, str):  # eval reads NAME=SPEC as its DraftSpec does
                spec = DraftSpec.parse(value).spec if key == "draft" else value
                spec_kind, _, arg = spec.partition(":")
                value = arg if spec_kind in PATH_KINDS else None
            paths[f"args.{key}" + (f".{i}" if isinstance(values, list) else "")] = value
    return paths


def check_paths(paths: dict[str, Any], roots: list[Path]) -> None:
    """With `allowed_roots` set, every file a job names must resolve inside one of them (400 naming the field).
    A hub id is refused there too: download the model into a root first."""
    if not roots:
        return
    inside = [root.resolve() for root in roots]
    for field, value in paths.items():
        if not isinstance(value, str) or not value:
            continue
        resolved = Path(value).resolve()
        if not any(resolved.is_relative_to(root) for root in inside):
            raise APIError.bad_request(field, f"{value!r} is outside the folders this trainer may read "
                                              f"(allowed_roots: {', '.join(map(str, roots))})", "path_not_allowed")


def check_args(kind: str, args: dict[str, Any]) -> None:
    """Parse the flags with the command's own parser: what it refuses (exit code 2) is a 400 with its message."""
    for key, why in (("out", "is set by the trainer (the job's own folder)"), ("help", "is not a job argument")):
        if key in args:
            raise APIError.bad_request(f"args.{key}", f"{why}; leave it out")
    command = "data regenerate" if kind == "regenerate" else kind
    argv = cli_argv(kind, args, Path("job"))
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parsed = vars(build_parser().parse_args(argv))
    except SystemExit:
        lines = errors.getvalue().strip().splitlines()
        message = lines[-1].split(": error: ", 1)[-1] if lines else "invalid arguments"
        raise APIError.bad_request("args", f"`specserve {command}`: {message}") from None
    unknown = [key for key in args if key.replace("-", "_") not in parsed]
    if unknown:  # argparse takes an abbreviation of a longer flag; the API takes whole names only
        raise APIError.bad_request(f"args.{unknown[0]}", f"not a flag of `specserve {command}`")


def check_config(config: dict[str, Any]) -> None:
    """Refuse what `specserve train` would refuse, naming the key (as `config.<section>.<key>`)."""
    checkpoint = config.get("checkpoint")
    for key in ("dir", "resume"):
        if isinstance(checkpoint, dict) and key in checkpoint:
            raise APIError.bad_request(f"config.checkpoint.{key}", "is set by the trainer (every job writes its "
                                       "checkpoints in its own folder, where a retry resumes them); leave it out")
    try:
        from_dict(deepcopy(config))
    except InvalidRequestError as exc:
        raise APIError.bad_request(f"config.{exc.field}", str(exc).removeprefix(f"{exc.field}: ")) from None


@router.post("/v1/jobs", status_code=201, response_model=JobObject, responses={400: {}, 401: {}, 429: {}, 503: {}})
def submit(body: JobRequest, request: Request) -> JobObject:
    """Queue a job; 429 with Retry-After when max_queued jobs already wait."""
    state = _state(request)
    params = check_job(body, state.settings)
    if state.store.counts()[JobStatus.QUEUED] >= state.settings.max_queued:
        raise APIError(429, f"{state.settings.max_queued} jobs are already queued; retry later", None,
                       "queue_full", headers={"Retry-After": "60"})
    job = state.store.submit(params, body.nproc, body.kind)
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
        chunk = await asyncio.to_thread(_read_from, path, position, finished)
        position += len(chunk)
        if chunk:
            yield chunk.decode("utf-8", "replace")
        elif finished:
            return
        else:
            await asyncio.sleep(FOLLOW_POLL_S)


def _read_from(path: Path, position: int, everything: bool, limit: int = 1 << 20) -> bytes:
    """Up to `limit` bytes of `path` after `position`; while the job runs, only whole lines (a line being
    written waits for its end, unless it is longer than `limit`)."""
    try:
        with path.open("rb") as f:
            f.seek(position)
            data = f.read(limit)
    except FileNotFoundError:
        return b""
    if everything or len(data) == limit and b"\n" not in data:
        return data
    return data[: data.rfind(b"\n") + 1]


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
