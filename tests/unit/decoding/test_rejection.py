"""Lossless rejection sampling (algorithms.md section 1) and its greedy special case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from goodness_of_fit import chi2_pvalue, counts_of
from scipy.stats import binomtest

from specserve.decoding.rejection import greedy_verify, rejection_sample
from specserve.decoding.rng import Stream, uniforms
from specserve.decoding.sampling import sample_from

_ALMOST_ONE = 1 - 2**-53


def _one_round(p, drafts, q, u_accept, u_sample, n_drafts=None):
    """rejection_sample for a single sequence given as plain lists."""
    p = torch.tensor([p], dtype=torch.float32)
    draft_ids = torch.tensor([drafts], dtype=torch.long).reshape(1, len(drafts))
    n = torch.tensor([len(drafts) if n_drafts is None else n_drafts])
    q = None if q is None else torch.tensor([q], dtype=torch.float32)
    result = rejection_sample(p, draft_ids, n, q, torch.tensor([u_accept], dtype=torch.float64).reshape(1, -1),
                              torch.tensor([u_sample], dtype=torch.float64))
    return int(result.accepted[0]), int(result.next_token[0])


# ---- hand-made cases -----------------------------------------------------------------------------
@pytest.mark.parametrize("u", [0.0, 0.5, _ALMOST_ONE])
@pytest.mark.parametrize("q_draft", [0.1, 0.4])
def test_draft_is_always_accepted_when_q_at_most_p(u, q_draft):
    """q(d) <= p(d): accepted whatever the uniform; the bonus is then drawn from p at the next position."""
    p = [[0.1, 0.4, 0.5], [0.0, 0.0, 1.0]]
    q = [[0.9 - q_draft, q_draft, 0.1]]
    assert _one_round(p, [1], q, [u], [0.3, 0.3]) == (1, 2)


@pytest.mark.parametrize(("u", "accepted"), [(0.0, 1), (0.1999, 1), (0.2001, 0), (_ALMOST_ONE, 0)])
def test_draft_is_accepted_with_probability_p_over_q(u, accepted):
    """q(d) > p(d): accepted exactly when u < p(d) / q(d) (here 0.1 / 0.5 = 0.2)."""
    p = [[0.1, 0.6, 0.3, 0.0], [1.0, 0.0, 0.0, 0.0]]
    q = [[0.5, 0.2, 0.3, 0.0]]
    assert _one_round(p, [0], q, [u], [0.5, 0.5])[0] == accepted


@pytest.mark.parametrize(("u_sample", "token"), [(0.0, 1), (0.66, 1), (0.67, 2), (_ALMOST_ONE, 2)])
def test_rejection_resamples_from_the_residual(u_sample, token):
    """After a rejection the token comes from normalize(max(p - q, 0)) = [0, 2/3, 1/3, 0] here: never the
    rejected draft, never a token where q >= p."""
    p = [[0.1, 0.5, 0.4, 0.0], [0.0, 0.0, 0.0, 1.0]]
    q = [[0.7, 0.1, 0.2, 0.0]]
    assert _one_round(p, [0], q, [0.9], [u_sample, 0.0]) == (0, token)


def test_negligible_residual_falls_back_to_p():
    """When p and q agree up to rounding, a rejection samples from p rather than from float noise."""
    p = [[0.5, 0.5], [1.0, 0.0]]
    q = [[0.5 + 2e-7, 0.5 - 2e-7]]
    assert _one_round(p, [0], q, [_ALMOST_ONE], [0.25, 0.0]) == (0, 0)


@pytest.mark.parametrize(("u", "expected"), [(0.29, (1, 3)), (0.31, (0, 0))])
def test_missing_q_means_one_hot(u, expected):
    """q None (deterministic drafts): accept with probability p(d); a rejection samples p without d."""
    p = [[0.2, 0.3, 0.0, 0.5], [0.0, 0.0, 0.0, 1.0]]
    assert _one_round(p, [1], None, [u], [0.1, 0.1]) == expected


def test_padding_beyond_n_drafts_is_ignored():
    """Pad tokens past a row's draft count are never accepted; the bonus comes right after the real ones."""
    p = [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    assert _one_round(p, [1, 1, 2], None, [0.0, 0.0, 0.0], [0.5] * 4, n_drafts=1) == (1, 1)


def test_no_drafts_samples_from_p():
    """A round without drafts is plain sampling from p_1."""
    p = torch.tensor([[[0.25, 0.75]], [[0.25, 0.75]]])
    result = rejection_sample(p, torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 0]), None,
                              torch.zeros(2, 0), torch.tensor([[0.2], [0.3]]))
    assert result.accepted.tolist() == [0, 0] and result.next_token.tolist() == [0, 1]


def test_batched_rows_equal_rows_verified_alone():
    """Rows with different draft counts and dense/one-hot q do not influence each other."""
    gen = torch.Generator().manual_seed(1)
    rows, width, vocab = 6, 3, 5
    p = torch.softmax(torch.randn(rows, width + 1, vocab, generator=gen), -1)
    q = torch.softmax(torch.randn(rows, width, vocab, generator=gen), -1)
    drafts = torch.randint(vocab, (rows, width), generator=gen)
    n = torch.tensor([0, 1, 2, 3, 3, 2])
    u_a, u_s = torch.rand(rows, width, generator=gen), torch.rand(rows, width + 1, generator=gen)
    batch = rejection_sample(p, drafts, n, q, u_a, u_s)
    for r in range(rows):
        alone = rejection_sample(p[r:r + 1], drafts[r:r + 1], n[r:r + 1], q[r:r + 1], u_a[r:r + 1], u_s[r:r + 1])
        assert (int(batch.accepted[r]), int(batch.next_token[r])) == (int(alone.accepted), int(alone.next_token))


# ---- the distribution is the target's ------------------------------------------------------------
class MarkovPair:
    """A target chain P and a different draft chain Q over V tokens: p_i = P[previous token]. Speculating
    with Q must still produce P's chain exactly."""

    def __init__(self, vocab: int = 5, seed: int = 0):
        gen = np.random.default_rng(seed)
        self.P = torch.tensor(gen.dirichlet(np.ones(vocab), size=vocab), dtype=torch.float32)
        self.Q = torch.tensor(gen.dirichlet(np.full(vocab, 0.7), size=vocab), dtype=torch.float32)
        self.vocab = vocab

    def joint(self, chain: torch.Tensor, start: int) -> np.ndarray:
        """Exact P(x1 = a, x2 = b) of `chain` from state `start`."""
        return (chain[start][:, None] * chain).double().numpy()

    def draft(self, state, seeds, position, k, dense: bool):
        """k drafts per row: sampled from Q with the DRAFT stream (dense q) or Q's argmax (no q)."""
        u = uniforms(seeds, Stream.DRAFT, position, k)
        ids, dists, prev = [], [], state
        for i in range(k):
            nxt = sample_from(self.Q[prev], u[:, i]) if dense else self.Q[prev].argmax(-1)
            ids.append(nxt)
            dists.append(self.Q[prev])
            prev = nxt
        return torch.stack(ids, 1), (torch.stack(dists, 1) if dense else None)

    def round(self, state, seeds, position, k, dense):
        """One speculative round for every row; returns the committed tokens of each row."""
        drafts, q = self.draft(state, seeds, position, k, dense)
        prev = torch.cat([state[:, None], drafts], 1)
        p = self.P[prev]  # [R, k + 1, V]
        result = rejection_sample(p, drafts, torch.full((len(state),), k), q,
                                  uniforms(seeds, Stream.ACCEPT, position, k),
                                  uniforms(seeds, Stream.SAMPLE, position, k + 1))
        return [[*drafts[r, :a].tolist(), t] for r, (a, t) in
                enumerate(zip(result.accepted.tolist(), result.next_token.tolist()))]

    def generate(self, n_rows: int, n_tokens: int, k: int, dense: bool, start: int = 0,
                 first_seed: int = 0) -> np.ndarray:
        """Speculative generation of at least n_tokens per row (row r uses seed first_seed + r); returns the
        first n_tokens, [rows, n]."""
        out = [[] for _ in range(n_rows)]
        while todo := [r for r in range(n_rows) if len(out[r]) < n_tokens]:
            state = torch.tensor([out[r][-1] if out[r] else start for r in todo])
            position = [len(out[r]) for r in todo]
            seeds = [first_seed + r for r in todo]
            for r, tokens in zip(todo, self.round(state, seeds, position, k, dense)):
                out[r].extend(tokens)
        return np.array([row[:n_tokens] for row in out])


@pytest.fixture(scope="module")
def chains() -> MarkovPair:
    return MarkovPair()


@pytest.mark.parametrize("dense", [True, False], ids=["dense_q", "one_hot_q"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_first_two_committed_tokens_follow_the_target(chains, k, dense):
    """The joint law of the first two committed tokens of speculative generation with k drafts per round
    equals the target chain's (chi-square over 20k seeds); the draft chain's law is rejected."""
    n = 20_000
    tokens = chains.generate(n, 2, k, dense, start=2, first_seed=n * (2 * k + dense))  # fresh seeds per case
    counts = counts_of(tokens[:, 0] * chains.vocab + tokens[:, 1], chains.vocab**2)
    assert chi2_pvalue(counts, chains.joint(chains.P, 2)) > 1e-3
    assert chi2_pvalue(counts, chains.joint(chains.Q, 2)) < 1e-6


@pytest.mark.parametrize("dense", [True, False], ids=["dense_q", "one_hot_q"])
def test_first_draft_acceptance_rate_is_sum_of_min(chains, dense):
    """P(accept d_1) = sum_v min(p(v), q(v)) for sampled drafts, and p(d) for a fixed draft d."""
    state, n = 3, 20_000
    p, q = chains.P[state], chains.Q[state]
    rate = torch.minimum(p, q).sum() if dense else p[q.argmax()]
    seeds = list(range(n))
    drafts, q_rows = chains.draft(torch.full((n,), state), seeds, [0] * n, 1, dense)
    result = rejection_sample(p.expand(n, 2, -1), drafts, torch.ones(n, dtype=torch.long), q_rows,
                              uniforms(seeds, Stream.ACCEPT, [0] * n, 1), uniforms(seeds, Stream.SAMPLE, [0] * n, 2))
    assert binomtest(int(result.accepted.sum()), n, float(rate)).pvalue > 1e-3


# ---- greedy ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("drafts", "n_drafts", "accepted", "next_token"),
    [([4, 2, 7], 3, 3, 1),  # all match: the bonus is the argmax after the last draft
     ([4, 2, 0], 3, 2, 7),  # mismatch at the third: the target's own token replaces it
     ([5, 2, 7], 3, 0, 4),  # first mismatches: nothing accepted
     ([4, 9, 7], 3, 1, 2),  # a later match after a mismatch does not count
     ([4, 2, 7], 1, 1, 2),  # padding past n_drafts is ignored even when it matches
     ([], 0, 0, 4)],  # no drafts: the target's next argmax
)
def test_greedy_accepts_while_drafts_equal_argmax(drafts, n_drafts, accepted, next_token):
    """Greedy verification: accept the longest prefix equal to the target argmaxes, then commit the
    target's argmax at the first position not accepted."""
    argmax = torch.tensor([[4, 2, 7, 1]])[:, : len(drafts) + 1]
    result = greedy_verify(argmax, torch.tensor([drafts], dtype=torch.long).reshape(1, -1), torch.tensor([n_drafts]))
    assert (int(result.accepted[0]), int(result.next_token[0])) == (accepted, next_token)
