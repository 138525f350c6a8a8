"""Benchmark JSONL files (first user turn, loud errors) and the protocol's chat formatting."""

from pathlib import Path

import pytest

from specserve.demo.tokenizer import train_tokenizer
from specserve.errors import InvalidRequestError
from specserve.eval.benchmarks import BenchmarkFileError, chat_prompt_ids, load_benchmark

FIXTURES = Path(__file__).parent / "fixtures"


def test_real_format_files_give_the_first_user_turn():
    bench = load_benchmark(FIXTURES / "mt-bench.jsonl")
    assert bench.name == "mt-bench" and len(bench.prompts) == 3
    assert bench.prompts[0].startswith("Compose an engaging travel blog post")
    assert all("Rewrite your previous response" not in p for p in bench.prompts)  # second turns are dropped
    gsm = load_benchmark(FIXTURES / "gsm8k.jsonl", limit=2)
    assert gsm.name == "gsm8k" and len(gsm.prompts) == 2 and gsm.prompts[0].startswith("Janet’s ducks")


def test_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('\n{"turns": ["a"]}\n   \n{"turns": ["b", "c"]}\n\n')
    assert load_benchmark(path).prompts == ["a", "b"]


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_empty_file_is_an_error(tmp_path, text):
    path = tmp_path / "empty.jsonl"
    path.write_text(text)
    with pytest.raises(BenchmarkFileError, match="empty.jsonl: no prompts") as err:
        load_benchmark(path)
    assert err.value.line is None


@pytest.mark.parametrize("row, message", [
    ('{"turns": ["ok"', "not valid JSON"),
    ('["a", "b"]', '"turns" list'),
    ('{"prompt": "a"}', '"turns" list'),
    ('{"turns": []}', "non-empty list"),
    ('{"turns": "abc"}', "non-empty list"),
    ('{"turns": [3]}', "non-empty string"),
    ('{"turns": ["  "]}', "non-empty string"),
])
def test_malformed_row_names_file_and_line(tmp_path, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"turns": ["fine"]}\n\n' + row + "\n")
    with pytest.raises(BenchmarkFileError, match=message) as err:
        load_benchmark(path, limit=1)  # validated even past the limit
    assert err.value.line == 3 and str(err.value).startswith(f"{path}:3: ")


def test_missing_file_and_bad_limit(tmp_path):
    with pytest.raises(BenchmarkFileError, match="no such file"):
        load_benchmark(tmp_path / "nope.jsonl")
    with pytest.raises(InvalidRequestError, match="limit"):
        load_benchmark(FIXTURES / "gsm8k.jsonl", limit=0)


@pytest.fixture
def tokenizer():
    return train_tokenizer(["hello world, how are you today?"] * 20, vocab_size=300)


def test_chat_prompt_ids_use_the_template_with_a_generation_prompt(tokenizer):
    ids = chat_prompt_ids(tokenizer, "hello world")
    expected = "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"
    assert ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    assert all(isinstance(t, int) for t in ids)


def test_chat_prompt_ids_disable_thinking(tokenizer):
    tokenizer.chat_template = ("{{ messages[0]['content'] }}{% if enable_thinking is defined and not enable_thinking %}"
                               "<|mask|>{% endif %}{% if add_generation_prompt %}<|im_start|>{% endif %}")
    ids = chat_prompt_ids(tokenizer, "hello")
    assert ids[-2:] == tokenizer.convert_tokens_to_ids(["<|mask|>", "<|im_start|>"])


def test_tokenizer_without_chat_template_is_an_error(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(InvalidRequestError, match="chat template"):
        chat_prompt_ids(tokenizer, "hello")
