"""Drafter faults never change the output: the affected requests continue with plain decoding.

The faulty drafters here wrap a real NgramDrafter and inject the fault (an exception, garbage ids, a
wrong block count) — faults a healthy in-process drafter cannot be made to produce otherwise.
"""

import pytest

from specserve.decoding.sampling import SamplingParams
from specserve.drafters.base import DraftBlock
from specserve.drafters.ngram import NgramDrafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.target.model import CausalLM
from tiny_models import tiny_model

PROMPTS = [[1, 2, 3, 1, 2, 3, 1, 2], [5, 6, 5, 6, 5], [7, 8, 9]]
PARAMS = SamplingParams(max_tokens=20, ignore_eos=True)


class FaultyDrafter(NgramDrafter):
    """Behaves like NgramDrafter until call `fail_at`, then injects `fault` on every later call."""

    def __init__(self, fault: str, fail_at: int = 2):
        super().__init__(max_block=4)
        self.fault, self.fail_at, self.calls = fault, fail_at, 0

    def propose(self, batch):
        self.calls += 1
        blocks = super().propose(batch)
        if self.calls < self.fail_at:
            return blocks
        if self.fault == "raise":
            raise ConnectionError("drafter went away")
        if self.fault == "garbage":
            return [DraftBlock(ids=[10_000] * 3) for _ in batch]
        if self.fault == "short":
            return blocks[:-1]
        return [DraftBlock(ids=[], error="session lost") for _ in batch]


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen3", vocab=64)


@pytest.fixture(scope="module")
def reference(model):
    engine = SpecEngine(LocalVerifier(CausalLM(model)))
    return [r.output_ids for r in engine.generate(PROMPTS, PARAMS)]


@pytest.mark.parametrize("fault", ["raise", "garbage", "short", "item-error"])
def test_drafter_faults_fall_back_to_plain_decoding(model, reference, fault):
    drafter = FaultyDrafter(fault)
    engine = SpecEngine(LocalVerifier(CausalLM(model)), drafter)
    requests = engine.generate(PROMPTS, PARAMS)
    assert [r.output_ids for r in requests] == reference
    assert all(r.finish_reason == "length" for r in requests)
    assert all(r.stats.rounds[-1].drafted == 0 for r in requests), "after the fault no drafts are used"
    assert drafter.calls == drafter.fail_at, "failed sessions are not asked again"


def test_new_requests_use_the_drafter_again(model, reference):
    drafter = FaultyDrafter("raise", fail_at=2)
    engine = SpecEngine(LocalVerifier(CausalLM(model)), drafter)
    engine.generate(PROMPTS[:1], PARAMS)
    drafter.fail_at = 10_000  # healthy again
    later = engine.generate(PROMPTS, PARAMS)
    assert [r.output_ids for r in later] == reference
    assert any(r.stats.accepted > 0 for r in later)


class RefusingDrafter(NgramDrafter):
    """Refuses to open a session for one prompt (an injected fault: a healthy drafter opens every session)."""

    def __init__(self, refused_prompt):
        super().__init__(max_block=4)
        self.refused_prompt = refused_prompt

    def open(self, session, token_ids, taps=None):
        if token_ids[:len(self.refused_prompt)] == self.refused_prompt:
            raise RuntimeError("out of session memory")
        super().open(session, token_ids, taps)


def test_a_drafter_that_refuses_to_open_a_session_leaves_that_request_decoding_plainly(model, reference):
    engine = SpecEngine(LocalVerifier(CausalLM(model)), RefusingDrafter(PROMPTS[1]))
    requests = engine.generate(PROMPTS, PARAMS)
    assert [r.output_ids for r in requests] == reference
    assert all(r.stats.verified == 0 for r in requests[1:2]), "never drafted"
    assert all(r.stats.accepted > 0 for r in requests[::2]), "the others draft"


class OneBadItemVerifier(LocalVerifier):
    """Reports a per-item error for one session at its `fail_round`-th verify (an injected fault: a healthy
    in-process verifier has no per-item failures; remote replicas do)."""

    def __init__(self, target, bad_prompt, fail_round=2):
        super().__init__(target)
        self.bad_prompt, self.fail_round, self.rounds, self.bad = bad_prompt, fail_round, 0, None

    def open(self, batch):
        results = super().open(batch)
        self.bad = next((i.session for i in batch if i.prompt_ids == self.bad_prompt), self.bad)
        return results

    def verify(self, batch):
        self.rounds += 1
        results = super().verify(batch)
        if self.rounds == self.fail_round:
            for res in results:
                if res.session == self.bad:
                    res.error = "replica lost the session and could not rebuild it"
        return results


def test_a_per_item_verify_error_fails_only_that_request(model, reference):
    verifier = OneBadItemVerifier(CausalLM(model), PROMPTS[1])
    engine = SpecEngine(verifier, NgramDrafter(max_block=4))
    requests = engine.generate(PROMPTS, PARAMS)
    assert [r.finish_reason for r in requests] == ["length", "error", "length"]
    assert "could not rebuild" in requests[1].error
    assert [requests[0].output_ids, requests[2].output_ids] == [reference[0], reference[2]]
    assert len(verifier.target.cache) == 0
