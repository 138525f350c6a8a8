"""Request schemas of the OpenAI-compatible API (the subset specserve serves), validated at the edge.

Unknown fields are refused (`extra="forbid"`), so a typo never silently changes the output. Fields the
real `openai` client may send but specserve does not implement are accepted only at their neutral value
(`logprobs=null`, `frequency_penalty=0`, `tools=[]` ...) and refused otherwise, naming the field.
Metadata that cannot change the output (`user`, `metadata`, `store` ...) is accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

_INT64 = 2**63
Seed = Annotated[int, Field(ge=-_INT64, lt=2 * _INT64)]
TokenId = Annotated[int, Field(ge=0)]
Stop = Annotated[str, Field(min_length=1)]
# Schema hints for fields accepted only at their neutral value: the OpenAPI document (and a fuzzer reading
# it) says what is accepted, while the validators below give the error message.
_ZERO = {"minimum": 0, "maximum": 0}
_FALSE = {"enum": [False, None]}
_EMPTY = {"maxItems": 0}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    """`stream_options`: `include_usage` adds a final chunk with the token counts."""

    include_usage: bool | None = False
    include_obfuscation: bool | None = None  # accepted and ignored (no obfuscation padding is sent)


def _is_neutral(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == [] or value == {} or value == "none"


class SamplingFields(_Strict):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str = Field(description="must equal the id served on /v1/models")
    temperature: float | None = Field(None, ge=0.0, allow_inf_nan=False, description="0 = greedy (default 1)")
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=-1, description="extension: keep the k most likely tokens; 0 or -1 = off")
    n: int = Field(1, ge=1, description="choices per prompt, each sampled with seed + index")
    seed: Seed | None = Field(None, description="seed of the counter-based RNG: the same seed, the same output")
    stop: Stop | list[Stop] | None = Field(None, max_length=16)
    stop_token_ids: list[TokenId] | None = Field(None, max_length=64, description="extension: extra stop ids")
    ignore_eos: bool = Field(False, description="extension: keep generating past end-of-sequence tokens")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored
    frequency_penalty: float | None = Field(None, description="only 0 is supported", json_schema_extra=_ZERO)
    presence_penalty: float | None = Field(None, description="only 0 is supported", json_schema_extra=_ZERO)
    logit_bias: dict[str, int] | None = Field(None, description="only empty is supported",
                                              json_schema_extra={"maxProperties": 0})

    @field_validator("frequency_penalty", "presence_penalty", "logit_bias", check_fields=False)
    @classmethod
    def _neutral_only(cls, value: Any) -> Any:
        if not _is_neutral(value):
            raise PydanticCustomError("unsupported", "non-default values are not supported by this server")
        return value

    @property
    def stop_list(self) -> tuple[str, ...]:
        """`stop` as a tuple of strings."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


Prompt = (str | Annotated[list[str], Field(min_length=1)] | Annotated[list[TokenId], Field(min_length=1)]
          | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)])


class CompletionRequest(SamplingFields):
    """POST /v1/completions. `prompt` is text, token ids, or a list of either (one choice group each)."""

    prompt: Prompt = Field(description="text, token ids, or a batch of either")
    max_tokens: int | None = Field(None, ge=1, description="default 16 (as OpenAI)")
    echo: bool | None = Field(None, description="only false is supported", json_schema_extra=_FALSE)
    logprobs: int | None = Field(None, description="only null is supported", json_schema_extra={"enum": [None]})
    best_of: int | None = Field(None, description="only null or 1 is supported", json_schema_extra={"enum": [None, 1]})
    suffix: str | None = Field(None, description="only null is supported", json_schema_extra={"enum": [None, ""]})

    @field_validator("echo", "logprobs", "suffix")
    @classmethod
    def _neutral(cls, value: Any) -> Any:
        if not (value is None or value is False or value == ""):
            raise PydanticCustomError("unsupported", "non-default values are not supported by this server")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise PydanticCustomError("unsupported", "only best_of=1 is supported")
        return value


class TextPart(_Strict):
    """A text content part (images and audio are not supported)."""

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat turn. Tool-call history is not supported."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(None, description="only empty is supported",
                                                    json_schema_extra=_EMPTY)

    @field_validator("tool_calls")
    @classmethod
    def _no_tool_calls(cls, value):
        if value:
            raise PydanticCustomError("unsupported", "tool calls are not supported by this server")
        return value

    def as_template_dict(self) -> dict[str, str]:
        """The `{"role", "content"}` dict a chat template expects (text parts joined)."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": self.role, "content": content}


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions. The prompt is the tokenizer's chat template (thinking disabled)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="deprecated alias of max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1, description="default: the rest of the context")
    logprobs: bool | None = Field(None, description="only false is supported", json_schema_extra=_FALSE)
    top_logprobs: int | None = Field(None, description="only null or 0 is supported", json_schema_extra=_ZERO)
    tools: list[dict[str, Any]] | None = Field(None, description="only empty is supported", json_schema_extra=_EMPTY)
    tool_choice: Literal["none", "auto"] | None = None
    parallel_tool_calls: bool | None = None  # meaningless without tools; accepted
    functions: list[dict[str, Any]] | None = Field(None, description="only empty is supported",
                                                   json_schema_extra=_EMPTY)
    function_call: Literal["none", "auto"] | None = None
    response_format: dict[str, Any] | None = Field(None, description='only {"type": "text"} is supported',
                                                   json_schema_extra={"enum": [None, {"type": "text"}]})
    modalities: list[Literal["text"]] | None = None
    reasoning_effort: str | None = None  # accepted and ignored: thinking is always disabled
    metadata: dict[str, str] | None = None  # accepted and ignored
    store: bool | None = None  # accepted and ignored
    service_tier: str | None = None  # accepted and ignored
    prompt_cache_key: str | None = None  # accepted and ignored
    prompt_cache_retention: str | None = None  # accepted and ignored
    safety_identifier: str | None = None  # accepted and ignored

    @field_validator("logprobs", "top_logprobs", "tools", "functions")
    @classmethod
    def _neutral(cls, value: Any) -> Any:
        if not _is_neutral(value):
            raise PydanticCustomError("unsupported", "non-default values are not supported by this server")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict | None) -> dict | None:
        if value is not None and value != {"type": "text"}:
            raise PydanticCustomError("unsupported", 'only {"type": "text"} is supported')
        return value

    @property
    def requested_max_tokens(self) -> tuple[int | None, str]:
        """(the requested completion length, the field that carried it)."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"
