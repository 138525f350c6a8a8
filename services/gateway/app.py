"""The gateway's FastAPI app: OpenAI-compatible completions over an injected SpecEngine.

`create_app(settings, engine=...)` or `create_app(settings, engine_factory=...)`: the engine (any
Verifier and Drafter behind it, in-process or remote) is injected, started by the lifespan on its own
thread, and stopped when the app shuts down. Nothing is module-level state: every endpoint reads
`request.app.state.gateway`.

Status codes: bad input 400 (unknown model 404), missing or wrong key 401, admission full 429 with
`Retry-After`, not ready or draining 503, an engine failure while generating 503 with `Retry-After`
(a server fault the client may retry; never a 500 for bad input), a client that disconnected 499.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack, asynccontextmanager

import uvicorn
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from services.common.auth import ApiKeyMiddleware
from services.common.errors import APIError, error_response, install_error_handlers
from services.gateway import serving
from services.gateway.admission import Admission, with_cancellation
from services.gateway.jobs_proxy import jobs_router
from services.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from services.gateway.protocol import ChatCompletionRequest, CompletionRequest
from services.gateway.responses import Formatter
from services.gateway.settings import GatewaySettings
from specserve.engine.async_engine import AsyncSpecEngine
from specserve.engine.engine import SpecEngine
from specserve.errors import ModelLoadError

log = logging.getLogger(__name__)

EngineFactory = Callable[[GatewaySettings], SpecEngine]
router = APIRouter()


def create_app(settings: GatewaySettings, engine: SpecEngine | None = None,
               engine_factory: EngineFactory | None = None) -> FastAPI:
    """Build the app around `engine`, or around the engine `engine_factory(settings)` builds at start-up.

    Speculation metrics are fed by an engine verify observer registered when the app starts.
    """
    if (engine is None) == (engine_factory is None):
        raise ValueError("pass exactly one of engine= or engine_factory=")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with AsyncExitStack() as stack:
            if settings.trainer:
                from services.gateway.trainer_host import hosted_trainer  # the trainer extra, only when asked for

                await stack.enter_async_context(hosted_trainer(app, settings))
            async with _engine_lifespan(app):
                yield

    @asynccontextmanager
    async def _engine_lifespan(app: FastAPI):
        built = engine if engine is not None else await asyncio.to_thread(engine_factory, settings)
        if built.tokenizer is None:
            raise ModelLoadError("the gateway needs a target with a tokenizer (text in, text out)")
        metrics = GatewayMetrics(settings.model_id)
        built.verify_observers.append(metrics.observe_verify)
        metrics.watch_engine(built)
        state = serving.GatewayState(settings, built, AsyncSpecEngine(built), metrics,
                                     Admission(settings.max_waiting, settings.retry_after_s))
        state.aengine.start()
        state.ready = True
        app.state.gateway = state
        log.info("gateway ready: model %r, %s policy, max_waiting %d", settings.model_id, settings.policy,
                 settings.max_waiting)
        try:
            yield
        finally:
            state.ready = False
            await asyncio.to_thread(state.aengine.stop)

    app = FastAPI(title="specserve gateway", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible completions, served losslessly faster with speculative decoding.")
    app.openapi = lambda: _openapi(app, settings)
    install_error_handlers(app)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys, scopes={"/v1/jobs": settings.jobs_api_keys})
    app.include_router(router)
    if settings.trainer:  # the trainer's own /v1/jobs routes, on the state hosted_trainer keeps
        from services.trainer.app import install_store_error_handler
        from services.trainer.app import router as trainer_router

        install_store_error_handler(app)
        app.include_router(trainer_router)
    else:
        app.include_router(jobs_router(settings))
    return app


def _openapi(app: FastAPI, settings: GatewaySettings) -> dict:
    """The OpenAPI document, narrowed to this deployment: `model` is the served id, `n` at most n_limit."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for name in ("CompletionRequest", "ChatCompletionRequest"):
            properties = schema["components"]["schemas"][name]["properties"]
            properties["model"] = {**properties["model"], "enum": [settings.model_id]}
            properties["n"] = {**properties["n"], "maximum": settings.n_limit}
        app.openapi_schema = schema
    return app.openapi_schema


def _state(request: Request, serving_only: bool = True) -> serving.GatewayState:
    """The app's state; 503 before start-up, and (for endpoints that serve) while draining."""
    state: serving.GatewayState | None = getattr(request.app.state, "gateway", None)
    if state is None or (serving_only and (not state.ready or state.draining)):
        retry = "5" if state is None else str(state.settings.retry_after_s)
        raise APIError(503, "the server is starting or draining; retry shortly", None, "not_ready",
                       headers={"Retry-After": retry})
    return state


@router.get("/health", responses={503: {"description": "the engine thread has died"}})
async def health(request: Request) -> dict:
    """Liveness: the process answers and, once started, its engine thread runs."""
    state = getattr(request.app.state, "gateway", None)
    if state is not None and state.ready and not state.aengine.is_alive():
        raise APIError(503, "the engine loop has stopped", headers={"Retry-After": str(state.settings.retry_after_s)})
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "starting or draining"}})
async def ready(request: Request) -> dict:
    """Readiness: 200 once the engine runs, 503 while starting or draining (take it out of rotation)."""
    _state(request)
    return {"status": "ready"}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this gateway (`specserve:` prefix, vLLM names), and its hosted trainer's (--trainer)."""
    body = _state(request, serving_only=False).metrics.render()
    trainer = getattr(request.app.state, "trainer", None)
    if trainer is not None:
        from services.trainer.app import render_metrics

        body += await asyncio.to_thread(render_metrics, trainer)
    return Response(body, media_type=CONTENT_TYPE)


@router.get("/v1/models")
async def models(request: Request) -> dict:
    """The served model (one per gateway), with its context length."""
    state = _state(request, serving_only=False)
    return {"object": "list", "data": [{"id": state.settings.model_id, "object": "model", "created": 0,
                                        "owned_by": "specserve", "max_model_len": state.max_context}]}


@router.post("/v1/completions", responses={400: {}, 401: {}, 404: {}, 429: {}, 503: {}})
async def completions(body: CompletionRequest, request: Request) -> Response:
    """OpenAI text completions: `prompt` (text, ids, or a batch), sampling fields, `n`, `stream`."""
    state = _state(request)
    serving.check_model(state, body.model)
    _check_stream_options(body.stream, body.stream_options)
    fmt = Formatter("completion", state.settings.model_id)
    prompts = serving.completion_prompts(state, body)
    choices = serving.build_choices(state, body, prompts, "prompt", body.max_tokens, "max_tokens",
                                    serving.COMPLETION_DEFAULT_MAX_TOKENS, fmt.id)
    return await _respond(request, state, body, choices, fmt, sum(len(p) for p in prompts))


@router.post("/v1/chat/completions", responses={400: {}, 401: {}, 404: {}, 429: {}, 503: {}})
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """OpenAI chat completions: `messages` through the chat template (thinking off), sampling fields, `n`."""
    state = _state(request)
    serving.check_model(state, body.model)
    _check_stream_options(body.stream, body.stream_options)
    fmt = Formatter("chat", state.settings.model_id)
    prompt = serving.chat_prompt(state, body)
    max_tokens, field = body.requested_max_tokens
    choices = serving.build_choices(state, body, [prompt], "messages", max_tokens, field, None, fmt.id)
    return await _respond(request, state, body, choices, fmt, len(prompt))


def _check_stream_options(stream: bool | None, options) -> None:
    if options is not None and not stream:
        raise APIError.bad_request("stream_options", "is only allowed when stream is true")


async def _respond(request: Request, state: serving.GatewayState, body, choices: list[serving.Choice],
                   fmt: Formatter, prompt_tokens: int) -> Response:
    """Admit the choices (429 when full), then answer with one JSON body or an SSE stream."""
    try:
        reservation = state.admission.reserve(len(choices))
    except APIError:
        state.metrics.rejected.inc()
        raise
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = serving.stream(state, choices, fmt, prompt_tokens, include_usage, reservation)
        # `background` releases the slots even if the client leaves before the body generator starts
        return StreamingResponse(events, media_type="text/event-stream", background=BackgroundTask(
            reservation.release), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        result = await with_cancellation(request, serving.collect(state, choices, fmt, prompt_tokens))
    finally:
        reservation.release()
    if result is None:  # the client disconnected; nobody reads this
        return error_response(499, "client closed the request", None, "client_disconnected")
    return JSONResponse(result)


class DrainingServer(uvicorn.Server):
    """A uvicorn server that marks the gateway as draining (readiness 503, new requests 503) as soon as a
    stop signal arrives, while uvicorn lets in-flight requests finish (`timeout_graceful_shutdown`)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig, frame) -> None:
        state = getattr(self.app.state, "gateway", None)
        if state is not None:
            state.draining = True
        super().handle_exit(sig, frame)


async def serve_app(app: FastAPI, settings: GatewaySettings) -> None:
    """Run `app` with uvicorn on settings.host:settings.port until SIGINT/SIGTERM, then drain and stop."""
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                            timeout_graceful_shutdown=settings.drain_timeout_s)
    await DrainingServer(config, app).serve()
