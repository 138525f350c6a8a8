"""Prompt sets: both formats, malformed rows reported as file:line (stop or skip), deterministic split."""

import json
from pathlib import Path

import pytest

from specserve.data.errors import DataFormatError
from specserve.data.prompts import PromptRow, parse_row, read_prompts, select_split, split_rows
from specserve.errors import InvalidRequestError, SpecServeError

FIXTURES = Path(__file__).parents[2] / "fixtures" / "data"

MALFORMED = [
    '{"turns": ["fine"]}',  # line 1
    "",  # line 2: blank lines are not rows
    '{"turns": ["also fine", "second turn"]}',  # line 3
    '{"turns": ["unterminated"',  # line 4: invalid JSON
    '{"prompt": "wrong key"}',  # line 5
    '{"turns": []}',  # line 6
    '{"conversations": [{"role": "robot", "content": "x"}]}',  # line 7
    '{"conversations": [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]}',  # line 8
    '{"conversations": [{"role": "user", "content": "the last good row"}]}',  # line 9
]


@pytest.fixture
def malformed(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(MALFORMED) + "\n")
    return path


def test_reads_turns_and_chat_rows():
    prompts = read_prompts(FIXTURES / "prompts.jsonl")
    assert len(prompts.rows) == 8 and not prompts.skipped
    assert prompts.rows[0].user_turns == ("x+y = 4z, x*y = 4z^2, express x-y in z", "Express z-x in y")
    chat = read_prompts(FIXTURES / "chat.jsonl").rows
    assert chat[0].system == "You are a terse assistant."
    assert chat[0].user_turns == ("What is 2 + 2?", "And 3 + 3?")
    assert [m.role for m in chat[1].messages] == ["user", "assistant"]  # ShareGPT human/gpt spelling
    assert chat[1].messages[1].content == "7 is prime."


def test_malformed_row_stops_with_file_and_line(malformed):
    with pytest.raises(DataFormatError) as info:
        read_prompts(malformed, on_error="stop")
    assert info.value.line == 4
    assert str(info.value).startswith(f"{malformed}:4: invalid JSON")
    assert isinstance(info.value, SpecServeError)


def test_malformed_rows_skipped_and_counted(malformed):
    prompts = read_prompts(malformed, on_error="skip")
    assert [r.line for r in prompts.rows] == [1, 3, 9]
    assert [e.line for e in prompts.skipped] == [4, 5, 6, 7, 8]
    reasons = [e.reason for e in prompts.skipped]
    assert "'turns' or a 'conversations'" in reasons[1] and "robot" in reasons[3] and "system" in reasons[4]
    # a row keeps its index (its seed and split) whatever happens to other rows
    assert [r.index for r in prompts.rows] == [0, 1, 7]


def test_non_utf8_row_is_a_row_error(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"turns": ["ok"]}\n{"turns": ["caf\xe9"]}\n')
    prompts = read_prompts(path, on_error="skip")
    assert len(prompts.rows) == 1 and prompts.skipped[0].line == 2 and "UTF-8" in prompts.skipped[0].reason


def test_bad_on_error_value(malformed):
    with pytest.raises(InvalidRequestError, match="on_error"):
        read_prompts(malformed, on_error="ignore")


def _rows(n):
    return [PromptRow(i, i + 1, parse_row(json.dumps({"turns": [f"question {i}"]}))) for i in range(n)]


def test_split_is_deterministic_order_independent_and_sized():
    rows = _rows(4000)
    train, heldout = split_rows(rows, 5.0)
    assert len(train) + len(heldout) == 4000
    assert 0.04 < len(heldout) / 4000 < 0.06
    again_train, again_heldout = split_rows(list(reversed(rows)), 5.0)
    assert {r.index for r in again_heldout} == {r.index for r in heldout}
    assert split_rows(rows, 0.0)[1] == [] and split_rows(rows, 100.0)[0] == []


def test_split_ignores_answers():
    """A prompt set and its regenerated copy (same prompts, new answers) split the same way."""
    prompt = PromptRow(0, 1, parse_row('{"turns": ["q1", "q2"]}'))
    answered = PromptRow(0, 1, parse_row(json.dumps({"conversations": [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]})))
    assert prompt.prompt_key() == answered.prompt_key()


def test_select_split_validates():
    rows = _rows(10)
    assert select_split(rows, "all", 5.0) == rows
    with pytest.raises(InvalidRequestError, match="split"):
        select_split(rows, "test", 5.0)
    with pytest.raises(InvalidRequestError, match="heldout_percent"):
        select_split(rows, "train", 120.0)
