"""Prompt sets: JSONL rows of `{"turns": [...]}` or chat `{"conversations": [{"role", "content"}]}`.

Every non-blank line is one row; its `index` is its ordinal among non-blank lines, so a row keeps its
index (and therefore its regeneration seed and its split) when a malformed row elsewhere is fixed or
skipped. ShareGPT's `{"from": "human"|"gpt", "value"}` messages are accepted as a spelling of the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from specserve.data.errors import DataFormatError
from specserve.errors import InvalidRequestError

log = logging.getLogger(__name__)

ON_ERROR = ("stop", "skip")
ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str  # one of ROLES
    content: str


@dataclass(frozen=True)
class PromptRow:
    """One conversation. For a prompt set the assistant messages (if any) are the ones to regenerate."""

    index: int  # ordinal of the row among the file's non-blank lines (0-based)
    line: int  # 1-based line number in the file
    messages: tuple[Message, ...]

    @property
    def system(self) -> str | None:
        """The system prompt, if the conversation starts with one."""
        first = self.messages[0]
        return first.content if first.role == "system" else None

    @property
    def user_turns(self) -> tuple[str, ...]:
        """The user messages in order: the turns regeneration answers."""
        return tuple(m.content for m in self.messages if m.role == "user")

    def prompt_key(self) -> bytes:
        """Canonical bytes of the prompt part (system + user turns): what the split hashes.

        Answers are left out so that a prompt set and its regenerated copy split the same way.
        """
        return json.dumps({"system": self.system, "turns": self.user_turns}, ensure_ascii=False,
                          sort_keys=True).encode()


@dataclass
class PromptSet:
    """The rows read from one file, and the malformed rows that were skipped."""

    path: str
    rows: list[PromptRow]
    skipped: list[DataFormatError] = field(default_factory=list)


def read_prompts(path: str | Path, on_error: str = "stop") -> PromptSet:
    """Read a JSONL prompt set. A malformed row raises `DataFormatError` (file:line) with `on_error="stop"`,
    or is skipped, logged and counted in `PromptSet.skipped` with `on_error="skip"`."""
    if on_error not in ON_ERROR:
        raise InvalidRequestError("on_error", f"must be one of {ON_ERROR}, got {on_error!r}")
    path = str(path)
    out = PromptSet(path=path, rows=[])
    for index, (line_no, raw) in enumerate(_nonblank_lines(path)):
        try:
            out.rows.append(PromptRow(index=index, line=line_no, messages=parse_row(raw)))
        except ValueError as exc:
            error = DataFormatError(path, line_no, str(exc))
            if on_error == "stop":
                raise error from None
            out.skipped.append(error)
            if len(out.skipped) <= 20:
                log.warning("skipping malformed row: %s", error)
    if out.skipped:
        log.warning("%s: skipped %d malformed rows of %d", path, len(out.skipped), len(out.rows) + len(out.skipped))
    log.info("%s: read %d rows", path, len(out.rows))
    return out


def _nonblank_lines(path: str) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if raw.strip():
                yield line_no, raw


def parse_row(raw: bytes | str) -> tuple[Message, ...]:
    """One JSONL line -> its messages. Raises ValueError naming what is wrong."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if "turns" in row:
        turns = row["turns"]
        if not isinstance(turns, list) or not turns:
            raise ValueError("'turns' must be a non-empty list of strings")
        for i, t in enumerate(turns):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"'turns'[{i}] must be a non-empty string, got {t!r:.60}")
        return tuple(Message("user", t) for t in turns)
    if "conversations" in row:
        return _parse_conversation(row["conversations"])
    raise ValueError(f"expected a 'turns' or a 'conversations' field, found keys {sorted(row)[:8]}")


def _parse_conversation(conv) -> tuple[Message, ...]:
    if not isinstance(conv, list) or not conv:
        raise ValueError("'conversations' must be a non-empty list of messages")
    messages = []
    for i, m in enumerate(conv):
        if not isinstance(m, dict):
            raise ValueError(f"'conversations'[{i}] must be an object with 'role' and 'content'")
        role, content = (m.get("role"), m.get("content")) if "role" in m else (m.get("from"), m.get("value"))
        role = _SHAREGPT_ROLES.get(role) if isinstance(role, str) else None
        if role is None:
            raise ValueError(f"'conversations'[{i}] role must be one of {ROLES} (or human/gpt), got "
                             f"{m.get('role', m.get('from'))!r}")
        if not isinstance(content, str):
            raise ValueError(f"'conversations'[{i}] content must be a string, got {type(content).__name__}")
        if role == "system" and i != 0:
            raise ValueError(f"'conversations'[{i}]: a system message is only allowed first")
        if role == "user" and not content.strip():
            raise ValueError(f"'conversations'[{i}]: empty user message")
        messages.append(Message(role, content))
    if not any(m.role == "user" for m in messages):
        raise ValueError("'conversations' has no user message")
    return tuple(messages)


def is_heldout(row: PromptRow, heldout_percent: float) -> bool:
    """Whether `row` belongs to the held-out split: a hash of its prompt, so duplicates never straddle."""
    bucket = int.from_bytes(hashlib.sha256(row.prompt_key()).digest()[:8], "big") % 10_000
    return bucket < round(heldout_percent * 100)


def split_rows(rows: Sequence[PromptRow], heldout_percent: float = 5.0) -> tuple[list[PromptRow], list[PromptRow]]:
    """Deterministic (train, held-out) split by content hash; `heldout_percent` in [0, 100]."""
    if not 0.0 <= heldout_percent <= 100.0:
        raise InvalidRequestError("heldout_percent", f"must be in [0, 100], got {heldout_percent}")
    train, heldout = [], []
    for row in rows:
        (heldout if is_heldout(row, heldout_percent) else train).append(row)
    return train, heldout


def select_split(rows: Sequence[PromptRow], split: str, heldout_percent: float) -> list[PromptRow]:
    """`split` is "all", "train" or "heldout"."""
    if split == "all":
        return list(rows)
    if split not in ("train", "heldout"):
        raise InvalidRequestError("split", f"must be all, train or heldout, got {split!r}")
    train, heldout = split_rows(rows, heldout_percent)
    return train if split == "train" else heldout
