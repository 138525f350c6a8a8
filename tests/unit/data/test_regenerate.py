"""Answer regeneration: input order, turn-by-turn context, batching independence, and a real kill/resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specserve.data.errors import ResumeMismatchError
from specserve.data.ordered_output import progress_path
from specserve.data.prompts import read_prompts
from specserve.data.regenerate import RegenConfig, Regenerator, row_seed
from specserve.drafters.ngram import NgramDrafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.errors import InvalidRequestError

FIXTURES = Path(__file__).parents[2] / "fixtures" / "data"
CONFIG = dict(max_tokens=16, seed=7, sync_every=1)
IDENTITY = {"input": "prompts.jsonl"}


def regenerate(target, rows, out, max_batch, drafter=None, **kw):
    engine = SpecEngine(LocalVerifier(target), drafter, tokenizer=target.tokenizer, max_batch=max_batch)
    config = RegenConfig(**{**CONFIG, **kw})
    return Regenerator(engine, target.tokenizer, config).run(rows, str(out), IDENTITY, progress=False)


def test_defaults_are_deepspecs():
    cfg = RegenConfig()
    assert (cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_tokens, cfg.enable_thinking) == (0.7, 0.8, 20, 4096, False)
    with pytest.raises(InvalidRequestError, match="top_p"):
        RegenConfig(top_p=0.0)


def test_seeds_depend_on_row_and_turn_only():
    seeds = {row_seed(7, r, t) for r in range(100) for t in range(3)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 for s in seeds)
    assert row_seed(7, 5, 1) == row_seed(7, 5, 1) != row_seed(8, 5, 1)


def test_rows_in_order_and_independent_of_batching(target, prompt_rows, tmp_path):
    summary = regenerate(target, prompt_rows, tmp_path / "a.jsonl", max_batch=8)
    regenerate(target, prompt_rows, tmp_path / "b.jsonl", max_batch=3)
    a = (tmp_path / "a.jsonl").read_bytes()
    assert a == (tmp_path / "b.jsonl").read_bytes()
    rows = [json.loads(x) for x in a.decode().splitlines()]
    assert [r["index"] for r in rows] == list(range(8))
    for src, out in zip(prompt_rows, rows):
        users = [m["content"] for m in out["conversations"] if m["role"] == "user"]
        assert users == list(src.user_turns)
        assert [m["role"] for m in out["conversations"]] == ["user", "assistant"] * len(users)
        assert len(out["finish_reasons"]) == len(users) and all(0 < n <= 16 for n in out["completion_tokens"])
    assert summary.rows_written == 8 and summary.turns == sum(len(r.user_turns) for r in prompt_rows)


def test_each_turn_sees_the_regenerated_answers(target, prompt_rows, tmp_path):
    engine = SpecEngine(LocalVerifier(target), tokenizer=target.tokenizer, max_batch=4)
    prompts = {}
    add = engine.add_request

    def recording_add(prompt_ids, params=None, request_id=None, on_output=None):
        prompts[request_id] = list(prompt_ids)
        return add(prompt_ids, params, request_id, on_output)

    engine.add_request = recording_add
    Regenerator(engine, target.tokenizer, RegenConfig(**CONFIG)).run(prompt_rows[:1], str(tmp_path / "o.jsonl"),
                                                                     IDENTITY, progress=False)
    out = json.loads((tmp_path / "o.jsonl").read_text())
    expected = target.tokenizer.apply_chat_template(out["conversations"][:3], add_generation_prompt=True,
                                                    tokenize=True, enable_thinking=False, return_dict=False)
    assert prompts["row0-turn1"] == list(expected)


def test_speculative_regeneration_is_deterministic(target, prompt_rows, tmp_path):
    first = regenerate(target, prompt_rows[:4], tmp_path / "a.jsonl", 4, NgramDrafter(max_block=4), temperature=0.0)
    regenerate(target, prompt_rows[:4], tmp_path / "b.jsonl", 2, NgramDrafter(max_block=4), temperature=0.0)
    regenerate(target, prompt_rows[:4], tmp_path / "c.jsonl", 4, None, temperature=0.0)
    a = (tmp_path / "a.jsonl").read_bytes()
    assert a == (tmp_path / "b.jsonl").read_bytes()
    assert a == (tmp_path / "c.jsonl").read_bytes()  # greedy: speculation is lossless token for token
    assert first.rows_written == 4


CHILD = """
import json, sys, time
import torch
torch.set_num_threads(1)
from specserve.data.prompts import read_prompts
from specserve.data.regenerate import RegenConfig, Regenerator
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.target.model import CausalLM

target_dir, prompts, out, config, identity = sys.argv[1:6]
target = CausalLM.from_pretrained(target_dir)
engine = SpecEngine(LocalVerifier(target), tokenizer=target.tokenizer, max_batch=2)
step = engine.step
def slow_step():  # leaves the parent time to kill the run in the middle
    time.sleep(0.03)
    return step()
engine.step = slow_step
Regenerator(engine, target.tokenizer, RegenConfig(**json.loads(config))).run(
    read_prompts(prompts).rows, out, json.loads(identity), progress=False)
"""


def test_sigkill_then_resume_equals_uninterrupted_run(target, prompt_rows, tiny_target_dir, tmp_path):
    reference = tmp_path / "reference.jsonl"
    regenerate(target, prompt_rows, reference, max_batch=8)
    out = tmp_path / "killed.jsonl"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(tiny_target_dir), str(FIXTURES / "prompts.jsonl"),
                              str(out), json.dumps(CONFIG), json.dumps(IDENTITY)],
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])})
    try:
        deadline = time.monotonic() + 60
        while _rows_done(out) < 3:
            assert child.poll() is None, "the child exited before it could be killed"
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    state = json.loads(progress_path(out).read_text())
    assert not state["complete"] and 3 <= state["rows_done"] < 8
    summary = regenerate(target, prompt_rows, out, max_batch=3)  # resume, with another batch size
    assert summary.rows_resumed == state["rows_done"]
    assert summary.rows_written == 8 - state["rows_done"]
    assert out.read_bytes() == reference.read_bytes()


def _rows_done(out):
    try:
        return json.loads(progress_path(out).read_text())["rows_done"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_a_turn_that_does_not_fit_the_context_ends_the_row(tiny_target_dir, tmp_path):
    from specserve.data.prompts import PromptRow, parse_row
    from specserve.target.model import CausalLM

    small = CausalLM.from_pretrained(str(tiny_target_dir), max_len=120)
    rows = [PromptRow(0, 1, parse_row(json.dumps({"turns": ["x" * 300]}))),
            PromptRow(1, 2, parse_row(json.dumps({"turns": ["hi", "y" * 150]})))]
    summary = regenerate(small, rows, tmp_path / "o.jsonl", max_batch=2)
    first, second = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert first["finish_reasons"] == ["context_length"] and [m["role"] for m in first["conversations"]] == ["user"]
    assert second["finish_reasons"][1] == "context_length"
    assert [m["role"] for m in second["conversations"]] == ["user", "assistant"]
    assert summary.truncated_turns >= 2


def test_demo_recipe_mixes_samplings_in_prompt_order(target, tmp_path):
    """The demo drafts' recipe answers prompt i with sampling[i % n] and merges the parts in prompt order."""
    from specserve.demo.drafts import DraftsRecipe
    from specserve.demo.drafts import regenerate as regenerate_mixed

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text((FIXTURES / "prompts.jsonl").read_text())
    rows = read_prompts(prompts).rows
    recipe = DraftsRecipe(sampling=((0.0, 1.0, 0), (1.0, 1.0, 0)), max_new_tokens=8, regen_batch=4)
    out = tmp_path / "regenerated.jsonl"
    regenerate_mixed(target, prompts, out, recipe)
    merged = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["index"] for r in merged] == [r.index for r in rows]
    parts = [[json.loads(x) for x in (tmp_path / f"regenerated.{i}.jsonl").read_text().splitlines()] for i in (0, 1)]
    assert merged[0::2] == parts[0] and merged[1::2] == parts[1]
    # the even rows are the greedy answers a plain greedy regeneration gives
    regenerate(target, rows[0::2], tmp_path / "greedy.jsonl", max_batch=2, temperature=0.0, max_tokens=8)
    greedy = [json.loads(x) for x in (tmp_path / "greedy.jsonl").read_text().splitlines()]
    assert [r["conversations"] for r in greedy] == [r["conversations"] for r in parts[0]]
    regenerate_mixed(target, prompts, out, recipe)  # a rerun finds both parts complete and rewrites the same file
    assert [json.loads(x) for x in out.read_text().splitlines()] == merged
    lines = prompts.read_text().splitlines()
    prompts.write_text("\n".join([json.dumps({"turns": ["another prompt"]}), *lines[1:]]) + "\n")
    with pytest.raises(ResumeMismatchError):  # the parts were answered for other prompts
        regenerate_mixed(target, prompts, out, recipe)
