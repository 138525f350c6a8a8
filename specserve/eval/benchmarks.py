"""Benchmark prompt files and the evaluation protocol's prompt formatting (algorithms.md section 6).

A benchmark is a JSONL file, one `{"turns": ["first user message", ...]}` object per line; evaluation
uses the first user turn only, formatted with the target's chat template (`add_generation_prompt`,
thinking disabled). An empty or malformed file is an error naming the file and line, never a skip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from specserve.errors import InvalidRequestError, SpecServeError


class BenchmarkFileError(SpecServeError, ValueError):
    """A benchmark file is missing, empty or malformed; `path` and `line` (1-based, or None) locate it."""

    def __init__(self, path: Path, line: int | None, message: str):
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")
        self.path = path
        self.line = line


@dataclass(frozen=True)
class Benchmark:
    """The first-turn prompts of one benchmark file; `name` is the file stem (gsm8k, humaneval, ...)."""

    name: str
    path: Path
    prompts: list[str]


def _first_turn(line: str, path: Path, lineno: int) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BenchmarkFileError(path, lineno, f"not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict) or "turns" not in row:
        raise BenchmarkFileError(path, lineno, 'expected an object with a "turns" list')
    turns = row["turns"]
    if not isinstance(turns, list) or not turns:
        raise BenchmarkFileError(path, lineno, f'"turns" must be a non-empty list, got {turns!r:.60}')
    if not isinstance(turns[0], str) or not turns[0].strip():
        raise BenchmarkFileError(path, lineno, f'"turns"[0] must be a non-empty string, got {turns[0]!r:.60}')
    return turns[0]


def load_benchmark(path: str | Path, limit: int | None = None) -> Benchmark:
    """Read and validate every row of `path`, then keep the first `limit` prompts (all when None).

    Blank lines are ignored; anything else that is not a valid row raises BenchmarkFileError.
    """
    path = Path(path)
    if limit is not None and limit < 1:
        raise InvalidRequestError("limit", f"must be >= 1, got {limit}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchmarkFileError(path, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkFileError(path, None, f"not readable as UTF-8 text ({exc})") from None
    prompts = [_first_turn(line, path, i) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not prompts:
        raise BenchmarkFileError(path, None, "no prompts (an empty benchmark is an error, not a skip)")
    return Benchmark(name=path.stem, path=path, prompts=prompts[:limit])


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as the first user turn: chat template, generation prompt on, thinking off."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise InvalidRequestError("chat_template", "the target's tokenizer has no chat template; the evaluation "
                                                   "protocol formats every prompt with it")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True, enable_thinking=False, return_dict=False)
    return [int(t) for t in ids]
