"""OpenAI response objects and stream chunks for completions and chat completions, built as dicts."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """The `usage` object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(payload: dict | str) -> str:
    """One server-sent event carrying `payload` (a dict as JSON, or a literal such as `[DONE]`)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


@dataclass
class Formatter:
    """Builds the bodies of one response: `kind` decides between the completion and the chat shapes."""

    kind: Literal["completion", "chat"]
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self):
        if not self.id:
            self.id = ("chatcmpl-" if self.kind == "chat" else "cmpl-") + uuid.uuid4().hex

    @property
    def _object(self) -> str:
        return "chat.completion" if self.kind == "chat" else "text_completion"

    def response(self, choices: list[tuple[int, str, str | None]], prompt_tokens: int, completion_tokens: int
                 ) -> dict:
        """The non-streaming body; `choices` are (index, text, finish_reason)."""
        if self.kind == "chat":
            body = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                     "logprobs": None} for i, text, reason in choices]
        else:
            body = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                    for i, text, reason in choices]
        return {"id": self.id, "object": self._object, "created": self.created, "model": self.model,
                "choices": body, "usage": usage(prompt_tokens, completion_tokens)}

    def chunk(self, index: int, text: str, finish_reason: str | None, first: bool = False,
              with_usage_field: bool = False) -> dict:
        """One stream chunk for choice `index`; chat's first chunk carries the assistant role."""
        if self.kind == "chat":
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}
            obj = "text_completion"
        out = {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}
        if with_usage_field:
            out["usage"] = None
        return out

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        """The final chunk of `stream_options.include_usage`: no choices, the request's token counts."""
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [],
                "usage": usage(prompt_tokens, completion_tokens)}
