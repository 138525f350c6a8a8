"""DSpark (every head), DFlash and Eagle3 inside the engine: greedy output equals the target's, sampled
output is distributed as the target's (chi-square), on tiny Qwen3, Gemma3 and Gemma4 targets."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from specserve.decoding.sampling import SamplingParams
from specserve.drafters.checkpoint import model_class
from specserve.drafters.draft_config import DraftConfig, build_draft_config
from specserve.drafters.dspark_drafter import DSparkDrafter
from specserve.drafters.eagle3_drafter import Eagle3Drafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.target.model import CausalLM
from tiny_models import tiny_model

VOCAB = 64
TAPS = (0, 1, 2)
PROMPTS = [[1, 5, 7, 9, 11, 13, 2, 3, 4, 5, 6, 7], [3, 4, 5], [9, 8, 7, 6, 5, 4, 3, 2, 1, 10, 20, 30, 40, 50, 60],
           [4, 5, 4, 5, 4, 5], [33] * 9]
MAX_NEW = 24


@functools.cache
def target_model(arch: str):
    """Built once per architecture: the tiny Gemma4 takes seconds to build, and nothing here modifies it."""
    return tiny_model(arch, vocab=VOCAB)


def make_draft(target, kind: str, head: str | None, seed: int = 0):
    """A random draft for `target`, sharing its frozen embedding and head (as a trained draft does)."""
    raw = build_draft_config(target.config, kind, target_layer_ids=TAPS, num_layers=1 if kind == "eagle3" else 2,
                             mask_token_id=VOCAB - 2, markov_rank=32, markov_head_type=head or "vanilla",
                             block_size=4, ttt_length=3)
    cfg = DraftConfig.from_dict(raw)
    torch.manual_seed(seed)
    model = model_class(cfg)(cfg)
    with torch.no_grad():
        model.embed_tokens.weight.copy_(target.get_input_embeddings().weight)
        model.lm_head.weight.copy_(target.get_output_embeddings().weight)
        if model.cfg.markov_rank:  # make the sequential head matter as much as in a trained DSpark
            model.markov_head.markov_w2.weight.mul_(5.0)
    return model.requires_grad_(False).eval()


def fit(model, target, sequences, steps: int = 30):
    """A few teacher-forced steps on the target's own greedy continuations, so that drafts get accepted."""
    data = []
    for seq in sequences:
        ids = torch.tensor([seq])
        with torch.no_grad():
            hidden = target(ids, output_hidden_states=True).hidden_states
        data.append((ids, torch.cat([hidden[i + 1] for i in TAPS], dim=-1)))
    params = [p for name, p in model.named_parameters() if name not in ("embed_tokens.weight", "lm_head.weight")]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = sum(_loss(model, ids, taps) for ids, taps in data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.requires_grad_(False).eval()


def _loss(model, ids, taps):
    n = ids.shape[1]
    if model.cfg.kind == "eagle3":
        steps = model.ttt_forward(taps, ids)
        labels = [torch.cat([ids[0, 2 + k :], torch.full((2 + k,), -100)]) for k in range(len(steps))]
        return sum(0.8**k * F.cross_entropy(s[0], y, ignore_index=-100) for k, (s, y) in enumerate(zip(steps, labels,
                                                                                                     strict=True)))
    anchors = torch.arange(n - 1)[None]
    out = model.train_forward(taps, ids, anchors)
    inside = anchors[..., None] + torch.arange(model.cfg.block_size) + 1 < n
    labels = torch.where(inside, out.target_ids, -100)
    return F.cross_entropy(out.draft_logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)


def drafter_for(model):
    return Eagle3Drafter(model) if model.cfg.kind == "eagle3" else DSparkDrafter(model)


def engine(target, drafter, max_batch=8):
    return SpecEngine(LocalVerifier(CausalLM(target), tap_layers=drafter.target_layer_ids), drafter,
                      max_batch=max_batch)


GREEDY_CASES = [("qwen3", "dspark", "vanilla"), ("qwen3", "dspark", "gated"), ("qwen3", "dspark", "rnn"),
                ("qwen3", "dflash", None), ("qwen3", "eagle3", None), ("gemma3", "dspark", "rnn"),
                ("gemma3", "eagle3", None), ("gemma4", "dspark", "gated"), ("gemma4", "dflash", None),
                ("gemma4", "eagle3", None)]


@pytest.mark.parametrize(("arch", "kind", "head"), GREEDY_CASES)
def test_greedy_output_equals_the_target_with_accepted_and_rejected_drafts(arch, kind, head):
    target = target_model(arch)
    sequences = [target.generate(torch.tensor([p]), max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0].tolist() for p in PROMPTS]
    # fitted on three of the five prompts: drafts are accepted there and rejected on the other two
    drafter = drafter_for(fit(make_draft(target, kind, head), target, sequences[:3]))
    requests = engine(target, drafter).generate(PROMPTS, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))
    for request, prompt, seq in zip(requests, PROMPTS, sequences, strict=True):
        assert request.output_ids == seq[len(prompt):]
    rounds = [r for request in requests for r in request.stats.rounds]
    assert sum(r.accepted for r in rounds) > 0, "the test must exercise accepted drafts"
    assert sum(r.verified - r.accepted for r in rounds) > 0, "the test must exercise rejections"


def exact_marginals(target, prompt, params: SamplingParams):
    """P(2nd output token) and P(3rd output token) under the target with `params`, by enumeration."""
    from specserve.decoding.sampling import logits_to_probs

    def probs(batch):
        with torch.no_grad():
            logits = target(torch.tensor(batch)).logits[:, -1]
        return logits_to_probs(logits, [params] * len(batch)).double()

    p1 = probs([prompt])[0]
    p2 = probs([[*prompt, a] for a in range(VOCAB)])  # [t1, t2]
    p3 = probs([[*prompt, a, b] for a in range(VOCAB) for b in range(VOCAB)]).reshape(VOCAB, VOCAB, VOCAB)
    return (p1[:, None] * p2).sum(0), (p1[:, None, None] * p2[:, :, None] * p3).sum((0, 1))


def chi_square_pvalue(tokens: list[int], expected: torch.Tensor) -> float:
    counts = np.bincount(tokens, minlength=VOCAB).astype(np.float64)
    exp = expected.numpy() * len(tokens)
    assert counts[exp == 0].sum() == 0, "a token the target can never produce was output"
    big = exp >= 5  # pool the rare categories so the test's approximation holds
    obs, exp_big = counts[big], exp[big]
    if (~big & (exp > 0)).any():
        obs, exp_big = np.append(obs, counts[~big].sum()), np.append(exp_big, exp[~big].sum())
    return chisquare(obs, exp_big * obs.sum() / exp_big.sum()).pvalue


@pytest.mark.parametrize(("arch", "kind", "head", "params"), [
    ("qwen3", "dspark", "rnn", SamplingParams(temperature=1.0, max_tokens=4, ignore_eos=True)),
    ("qwen3", "dspark", "gated", SamplingParams(temperature=0.8, top_k=12, max_tokens=4, ignore_eos=True)),
    ("qwen3", "dflash", None, SamplingParams(temperature=0.8, top_k=20, max_tokens=4, ignore_eos=True)),
    ("qwen3", "eagle3", None, SamplingParams(temperature=1.0, top_p=0.9, max_tokens=4, ignore_eos=True)),
    ("gemma4", "dspark", "vanilla", SamplingParams(temperature=1.0, max_tokens=4, ignore_eos=True)),
])
def test_sampled_output_is_distributed_as_the_target(arch, kind, head, params):
    """Tokens 2 and 3 are the first two draft slots of the first round (token 1 comes from prefill)."""
    target = target_model(arch)
    prompt, n = [3, 4, 5], 2000
    drafter = drafter_for(make_draft(target, kind, head))
    runs = [SamplingParams(**{**params.__dict__, "seed": s}) for s in range(n)]
    requests = engine(target, drafter, max_batch=64).generate([prompt] * n, runs)
    rounds = [r for request in requests for r in request.stats.rounds]
    assert sum(r.accepted for r in rounds) > 100 and sum(r.verified - r.accepted for r in rounds) > 100
    second, third = exact_marginals(target, prompt, params)
    assert chi_square_pvalue([r.output_ids[1] for r in requests], second) > 1e-3
    assert chi_square_pvalue([r.output_ids[2] for r in requests], third) > 1e-3
