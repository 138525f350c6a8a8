"""From a validated request to engine requests and back: prompts, sampling, n choices, streaming.

Everything a request asks for is checked here, before anything reaches the engine: the model name,
`n`, the prompt (ids in the vocabulary, room in the context), `max_tokens` against the context. Each
choice becomes one engine request; their deltas are merged into one response or one SSE stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

from services.common.errors import APIError, error_body
from services.gateway.admission import Admission, Reservation
from services.gateway.metrics import GatewayMetrics, RequestTimer
from services.gateway.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from services.gateway.responses import Formatter, sse
from services.gateway.settings import GatewaySettings
from specserve.decoding.sampling import SamplingParams
from specserve.engine.async_engine import AsyncSpecEngine
from specserve.engine.engine import SpecEngine
from specserve.engine.request import RequestOutput
from specserve.errors import InvalidRequestError

log = logging.getLogger(__name__)

_GREEDY_BELOW = 1e-5  # temperatures this small are greedy (as vLLM): 1/T would overflow the logits
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class GatewayState:
    """What the endpoints share, created by the app's lifespan and kept on `app.state.gateway`."""

    settings: GatewaySettings
    engine: SpecEngine
    aengine: AsyncSpecEngine
    metrics: GatewayMetrics
    admission: Admission
    ready: bool = False
    draining: bool = False

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_context(self) -> int:
        return self.engine.verifier.max_context


@dataclass
class Choice:
    """One engine request: a prompt, its sampling parameters, and what has come back so far."""

    index: int
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str
    texts: list[str] = field(default_factory=list)
    n_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None

    def absorb(self, out: RequestOutput) -> None:
        """Add one delta."""
        self.texts.append(out.new_text)
        self.n_tokens += len(out.new_token_ids)
        if out.finished:
            self.finish_reason, self.error = out.finish_reason, out.error

    @property
    def text(self) -> str:
        return "".join(self.texts)


# ---- requests in --------------------------------------------------------------------------------------
def check_model(state: GatewayState, model: str) -> None:
    """404 unless `model` is the served model id."""
    if model != state.settings.model_id:
        raise APIError(404, f"model {model!r} does not exist; this server serves {state.settings.model_id!r}",
                       "model", "model_not_found")


def completion_prompts(state: GatewayState, req: CompletionRequest) -> list[list[int]]:
    """`prompt` (text, ids, or a batch of either) -> token id lists."""
    prompt = req.prompt
    if isinstance(prompt, str):
        prompts = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts:
        raise APIError.bad_request("prompt", "must not be empty")
    return [p if isinstance(p, list) else state.tokenizer(p)["input_ids"] for p in prompts]


def chat_prompt(state: GatewayState, req: ChatCompletionRequest) -> list[int]:
    """The chat template applied to `messages`, with the assistant turn opened and thinking disabled."""
    tokenizer = state.tokenizer
    if getattr(tokenizer, "chat_template", None) is None:
        raise APIError.bad_request("messages", "this model has no chat template; use /v1/completions")
    try:
        ids = tokenizer.apply_chat_template([m.as_template_dict() for m in req.messages], add_generation_prompt=True,
                                            tokenize=True, enable_thinking=False, return_dict=False)
    except Exception as exc:  # the template rejected the conversation (role order, empty turns ...)
        raise APIError.bad_request("messages", f"the chat template refused these messages: {exc}") from None
    return list(ids)


def build_choices(state: GatewayState, req: SamplingFields, prompts: Sequence[list[int]], prompt_field: str,
                  max_tokens: int | None, max_tokens_field: str, default_max_tokens: int | None,
                  request_id: str) -> list[Choice]:
    """Validate prompts and limits and build `n` choices per prompt (choice j is seeded `seed + j`)."""
    limit = state.settings.n_limit
    if req.n > limit:
        raise APIError.bad_request("n", f"must be <= {limit} on this server, got {req.n}")
    if len(prompts) * req.n > limit:
        raise APIError.bad_request(prompt_field, f"{len(prompts)} prompts x n={req.n} exceed the server's limit "
                                                 f"of {limit} choices per request")
    context = state.max_context
    choices = []
    for p, ids in enumerate(prompts):
        try:
            state.engine.check_prompt(ids)
        except InvalidRequestError as exc:
            raise APIError.from_engine(exc, {"prompt": prompt_field}) from None
        room = context - len(ids)
        if max_tokens is not None and max_tokens > room:
            raise APIError.bad_request(max_tokens_field, f"{len(ids)} prompt tokens + {max_tokens} requested exceed "
                                       f"the context of {context} tokens", "context_length_exceeded")
        length = max_tokens or min(default_max_tokens or room, room)
        for j in range(req.n):
            params = _sampling_params(req, length, None if req.seed is None else req.seed + j)
            index = p * req.n + j
            choices.append(Choice(index, ids, params, f"{request_id}-{index}"))
    return choices


def _sampling_params(req: SamplingFields, max_tokens: int, seed: int | None) -> SamplingParams:
    temperature = 1.0 if req.temperature is None else req.temperature
    try:
        return SamplingParams(temperature=0.0 if temperature < _GREEDY_BELOW else temperature,
                              top_p=1.0 if req.top_p is None else req.top_p,
                              top_k=0 if req.top_k in (None, -1) else req.top_k, seed=seed, max_tokens=max_tokens,
                              stop=req.stop_list, stop_token_ids=tuple(req.stop_token_ids or ()),
                              ignore_eos=req.ignore_eos)
    except InvalidRequestError as exc:
        raise APIError.from_engine(exc) from None


# ---- engine requests out -------------------------------------------------------------------------------
async def run_choices(state: GatewayState, choices: list[Choice]) -> AsyncIterator[tuple[Choice, RequestOutput]]:
    """Run every choice as its own engine request and yield (choice, delta) as the deltas arrive.

    Closing this iterator early (a disconnect, a cancelled handler) cancels the per-choice tasks, which
    leaves the engine streams and so aborts the requests still running.
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(choice: Choice) -> None:
        timer, finished = RequestTimer(state.metrics), False
        try:
            async with aclosing(state.aengine.generate(choice.prompt_ids, choice.params, choice.request_id)) as it:
                async for out in it:
                    timer.delta(len(out.new_token_ids))
                    if out.finished:
                        finished = True
                        timer.finish(out.finish_reason or "stop")
                    queue.put_nowait((choice, out))
        except asyncio.CancelledError:
            if not finished:
                timer.finish("abort")
            raise
        except Exception as exc:  # add_request refused it (validation), or the stream broke
            queue.put_nowait((choice, exc))

    tasks = [asyncio.create_task(pump(c)) for c in choices]
    try:
        remaining = len(choices)
        while remaining:
            choice, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            remaining -= item.finished
            yield choice, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _engine_failure(state: GatewayState, choice: Choice) -> APIError:
    log.error("engine request %s failed: %s", choice.request_id, choice.error)
    return APIError(503, "the engine failed while generating this request; retry it", None, "engine_error",
                    headers={"Retry-After": str(state.settings.retry_after_s)})


async def collect(state: GatewayState, choices: list[Choice], fmt: Formatter, prompt_tokens: int) -> dict:
    """Run the choices to the end and build the non-streaming body (503 if the engine failed one)."""
    try:
        async with aclosing(run_choices(state, choices)) as stream:
            async for choice, out in stream:
                choice.absorb(out)
    except InvalidRequestError as exc:
        raise APIError.from_engine(exc) from None
    failed = next((c for c in choices if c.finish_reason == "error"), None)
    if failed is not None:
        raise _engine_failure(state, failed)
    return fmt.response([(c.index, c.text, c.finish_reason) for c in choices], prompt_tokens,
                        sum(c.n_tokens for c in choices))


async def stream(state: GatewayState, choices: list[Choice], fmt: Formatter, prompt_tokens: int,
                 include_usage: bool, reservation: Reservation) -> AsyncIterator[str]:
    """The SSE body: chunks as deltas arrive, an optional usage chunk, then `[DONE]`.

    Headers are already sent when the engine fails a request, so the failure becomes an OpenAI error
    event (the `openai` client raises `APIError` on it) and the stream ends without `[DONE]`.
    """
    try:
        if fmt.kind == "chat":
            for c in choices:
                yield sse(fmt.chunk(c.index, "", None, first=True, with_usage_field=include_usage))
        async with aclosing(run_choices(state, choices)) as deltas:
            async for choice, out in deltas:
                choice.absorb(out)
                if out.finish_reason == "error":
                    err = _engine_failure(state, choice)
                    yield sse(error_body(err.status, err.message, err.param, err.code))
                    return
                if out.new_text or out.finished:
                    yield sse(fmt.chunk(choice.index, out.new_text, out.finish_reason,
                                        with_usage_field=include_usage))
        if include_usage:
            yield sse(fmt.usage_chunk(prompt_tokens, sum(c.n_tokens for c in choices)))
        yield sse("[DONE]")
    except InvalidRequestError as exc:
        err = APIError.from_engine(exc)
        yield sse(error_body(err.status, err.message, err.param, err.code))
    finally:
        reservation.release()
