"""End to end, speculative sampling is lossless: the engine's tokens are distributed as the target's.

On an 8-token vocabulary the exact law of the first four generated tokens is computed from the target's
own forward passes (4096 cells) and compared, by a chi-square test, with thousands of seeded engine runs
that draft with a different LM (the target with noisy weights, so drafts are accepted about half the
time) or with prompt lookup (one-hot q). With max_tokens = 4 the first round verifies 2 drafts and a
round after a rejection verifies 1, so accepted drafts, residual resamples and bonus tokens all occur.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from goodness_of_fit import chi2_pvalue, counts_of
from reference_decoding import exact_joint, greedy_continuation

from specserve.decoding.sampling import SamplingParams
from specserve.drafters.draft_lm import DraftModelDrafter
from specserve.drafters.ngram import NgramDrafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.target.model import CausalLM
from tiny_models import tiny_model

pytestmark = pytest.mark.slow

VOCAB = 8
PROMPT = [1, 2, 3, 1, 2, 3]
N_TOKENS = 4
RUNS_PER_SETTING = 6_000
N_GREEDY = 16
SETTINGS = {
    "temperature": SamplingParams(temperature=1.0, max_tokens=N_TOKENS, ignore_eos=True),
    "top_k_top_p": SamplingParams(temperature=1.0, top_k=3, top_p=0.8, max_tokens=N_TOKENS, ignore_eos=True),
}
GREEDY = SamplingParams(max_tokens=N_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def target():
    return tiny_model("qwen3", vocab=VOCAB, layers=2, seed=0)


@pytest.fixture(scope="module")
def draft_model():
    """The target with every weight perturbed: close enough to be accepted often, never identical.
    (An independent random model agrees with this target too rarely under top-k/top-p.)"""
    model = tiny_model("qwen3", vocab=VOCAB, layers=2, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(0.5 * weight.std() * torch.randn(weight.shape, generator=gen))
    return model


def _drafter(kind: str, draft_model):
    if kind == "draft_lm":
        return DraftModelDrafter(CausalLM(draft_model), max_block=3)
    return NgramDrafter(max_block=3)


def _request_params() -> list[tuple[str, SamplingParams]]:
    """Every setting interleaved with distinct seeds, plus greedy rows, all in one batch."""
    named = [(name, replace(params, seed=i * len(SETTINGS) + j))
             for i in range(RUNS_PER_SETTING) for j, (name, params) in enumerate(SETTINGS.items())]
    return named + [("greedy", GREEDY)] * N_GREEDY


@pytest.fixture(scope="module", params=["draft_lm", "ngram"])
def engine_run(request, target, draft_model) -> dict[str, list]:
    """One large mixed batch through the engine; the finished requests grouped by setting."""
    engine = SpecEngine(LocalVerifier(CausalLM(target)), _drafter(request.param, draft_model), max_batch=4096)
    named = _request_params()
    requests = engine.generate([PROMPT] * len(named), [params for _, params in named])
    grouped: dict[str, list] = {}
    for (name, _), r in zip(named, requests, strict=True):
        grouped.setdefault(name, []).append(r)
    return grouped


@pytest.fixture(scope="module")
def reference(target):
    """Exact joint laws, memoised by sampling params."""
    cache: dict[SamplingParams, np.ndarray] = {}

    def joint(params: SamplingParams) -> np.ndarray:
        if params not in cache:
            cache[params] = exact_joint(target, PROMPT, params, N_TOKENS).numpy()
        return cache[params]

    return joint


def _cell_counts(requests) -> np.ndarray:
    tokens = np.array([r.output_ids for r in requests])
    assert tokens.shape == (len(requests), N_TOKENS)
    return counts_of(np.ravel_multi_index(tokens.T, [VOCAB] * N_TOKENS), VOCAB**N_TOKENS)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_engine_tokens_follow_plain_target_sampling(engine_run, reference, setting):
    """The joint law of the first four tokens equals plain target sampling with the same processing."""
    counts = _cell_counts(engine_run[setting])
    assert chi2_pvalue(counts, reference(SETTINGS[setting])) > 1e-3


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_the_same_test_rejects_a_wrong_reference(engine_run, reference, setting):
    """Power check: the law at temperature 1.2 instead of 1 is clearly rejected by the same test."""
    counts = _cell_counts(engine_run[setting])
    assert chi2_pvalue(counts, reference(replace(SETTINGS[setting], temperature=1.2))) < 1e-6


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_runs_exercise_acceptance_and_rejection(engine_run, setting):
    """The statistical test is only meaningful if drafts were both accepted and rejected, including rounds
    verifying more than one draft."""
    requests = engine_run[setting]
    accepted = sum(r.stats.accepted for r in requests)
    verified = sum(r.stats.verified for r in requests)
    assert 0.1 * verified < accepted < 0.9 * verified
    assert max(rnd.verified for r in requests for rnd in r.stats.rounds) >= 2


def test_greedy_rows_in_a_sampling_batch_match_greedy_decoding(engine_run, target):
    """Greedy requests verified in the same batch as sampling requests still decode the argmax path."""
    expected = greedy_continuation(target, PROMPT, N_TOKENS)
    assert [r.output_ids for r in engine_run["greedy"]] == [expected] * N_GREEDY
