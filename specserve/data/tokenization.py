"""Training tokenisation: the target's chat template, `input_ids`, and the assistant loss mask.

The whole conversation is rendered once by the chat template (thinking off by default), then tokenised
with character offsets. The loss mask is 1 on tokens overlapping an assistant message's content or the
end-of-turn marker that closes it, 0 elsewhere (system, user, role headers, template-inserted empty
think blocks). Locating content in the rendered text, rather than rendering prefixes, works with
templates that render earlier turns differently from the last one (Qwen3 drops their think blocks).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from specserve.data.errors import DataFormatError
from specserve.data.prompts import ON_ERROR, Message, PromptRow
from specserve.errors import InvalidRequestError, ModelLoadError

log = logging.getLogger(__name__)

_PROBE = "\u2063probe-assistant-content\u2063"


@dataclass(frozen=True)
class TokenizedRow:
    """One training sequence. `index` is the source row's index."""

    index: int
    input_ids: np.ndarray  # [L] int32
    loss_mask: np.ndarray  # [L] uint8, 1 on assistant content + end-of-turn

    def __len__(self) -> int:
        return len(self.input_ids)


class ChatTokenizer:
    """Applies a tokenizer's chat template and builds the loss mask. Needs a fast (offset-mapping) tokenizer."""

    def __init__(self, tokenizer, max_length: int = 4096, enable_thinking: bool = False):
        if not getattr(tokenizer, "is_fast", False):
            raise ModelLoadError("the loss mask needs a fast tokenizer (character offsets); this one is not")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ModelLoadError("the tokenizer has no chat template")
        if max_length < 2:
            raise InvalidRequestError("max_length", f"must be >= 2, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.enable_thinking = enable_thinking
        self.end_of_turn = self._find_end_of_turn()

    def render(self, messages: Sequence[Message]) -> str:
        """The chat template's text for a full conversation (no generation prompt)."""
        return self.tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                                  tokenize=False, add_generation_prompt=False,
                                                  enable_thinking=self.enable_thinking)

    def __call__(self, row: PromptRow) -> TokenizedRow:
        """Tokenise one conversation; truncated to `max_length`. Raises ValueError if content is not found."""
        text = self.render(row.messages)
        spans = self._assistant_spans(text, row.messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"][: self.max_length], dtype=np.int32)
        offsets = np.asarray(enc["offset_mapping"][: self.max_length], dtype=np.int64).reshape(-1, 2)
        mask = np.zeros(len(ids), dtype=bool)
        for start, end in spans:
            mask |= (offsets[:, 0] < end) & (offsets[:, 1] > start)
        return TokenizedRow(index=row.index, input_ids=ids, loss_mask=mask.astype(np.uint8))

    def _assistant_spans(self, text: str, messages: Sequence[Message]) -> list[tuple[int, int]]:
        """Character spans [start, end) of each assistant content plus its end-of-turn marker.

        An assistant content is matched only where the end-of-turn marker follows it, so a short answer
        is never found inside a role header; other messages only move the cursor past themselves.
        """
        spans, cursor = [], 0
        eot = re.escape(self.end_of_turn)
        for turn, m in enumerate(messages):
            core = m.content.strip()
            if m.role != "assistant":
                at = text.find(core, cursor) if core else -1
                cursor = at + len(core) if at >= 0 else cursor
                continue
            match = re.compile(re.escape(core) + r"\s*" + eot).search(text, cursor)
            if match is None:
                raise ValueError(f"assistant message {turn} followed by the end-of-turn marker "
                                 f"{self.end_of_turn!r} was not found in the chat template's rendering")
            spans.append(match.span())
            cursor = match.end()
        return spans

    def _find_end_of_turn(self) -> str:
        """The special token the template puts right after an assistant message (`<|im_end|>` for Qwen)."""
        probe = [Message("user", "hi"), Message("assistant", _PROBE)]
        text = self.render(probe)
        at = text.find(_PROBE)
        if at >= 0:
            suffix = text[at + len(_PROBE):]
            ids = self.tokenizer(suffix, add_special_tokens=False)["input_ids"]
            if ids and ids[0] in set(self.tokenizer.all_special_ids) | set(self._added_ids()):
                return self.tokenizer.convert_ids_to_tokens(ids[0])
        if self.tokenizer.eos_token is None:
            raise ModelLoadError("cannot tell the chat template's end-of-turn marker (no eos token)")
        return self.tokenizer.eos_token

    def _added_ids(self) -> list[int]:
        return [i for i, t in getattr(self.tokenizer, "added_tokens_decoder", {}).items() if t.special]


def tokenize_rows(rows: Iterable[PromptRow], chat: ChatTokenizer, path: str, on_error: str = "stop",
                  skipped: list | None = None) -> Iterator[TokenizedRow]:
    """Tokenise rows lazily. A row the template cannot be matched on raises `DataFormatError` (file:line),
    or with `on_error="skip"` is left out and appended to `skipped`."""
    if on_error not in ON_ERROR:
        raise InvalidRequestError("on_error", f"must be one of {ON_ERROR}, got {on_error!r}")
    for row in rows:
        try:
            yield chat(row)
        except ValueError as exc:
            error = DataFormatError(path, row.line, str(exc))
            if on_error == "stop":
                raise error from None
            if skipped is not None:
                skipped.append(error)
            log.warning("skipping row: %s", error)
