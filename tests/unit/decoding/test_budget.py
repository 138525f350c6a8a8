"""Budget policies: fixed-k, static threshold, and the prefix scheduler's lossless early stop."""

import pytest
import torch

from specserve.decoding.budget import FixedK, LoadReport, PrefixScheduler, StaticThreshold, sps_at, survival
from specserve.decoding.rejection import rejection_sample

SPS = {1: 1.0, 2: 0.5, 3: 0.45}  # algorithms.md §7 counterexample


def test_fixed_k_caps_at_proposed():
    assert FixedK(3).budget([5, 2, 0], [None, None, None], None) == [3, 2, 0]


def test_static_threshold_keeps_prefix_above_threshold():
    policy = StaticThreshold(threshold=0.5, max_block=4)
    conf = [torch.tensor([0.9, 0.9, 0.5, 0.9]), torch.tensor([0.4, 1.0]), None]
    # survival: 0.9, 0.81, 0.405 -> 2; 0.4 -> 0; no confidence -> everything proposed (capped)
    assert policy.budget([4, 2, 6], conf, None) == [2, 0, 4]


def test_prefix_scheduler_follows_throughput():
    flat = LoadReport(sps={b: 1.0 for b in range(1, 20)})  # verification is free: take every positive a
    policy = PrefixScheduler(max_block=3)
    conf = [torch.tensor([0.9, 0.8, 0.5]), torch.tensor([0.3, 0.0, 1.0])]
    assert policy.budget([3, 3], conf, flat) == [3, 1]
    steep = LoadReport(sps={1: 1.0, 2: 0.5, 3: 0.3, 4: 0.2})  # verification is expensive: nothing pays
    assert policy.budget([3, 3], conf, steep) == [0, 0]


def test_round_overhead_makes_verified_tokens_cheaper():
    """One request, a_1 = 0.5. The forward alone doubles in time from 1 to 2 tokens, so verifying x_1 loses
    (1.5 x 0.5 < 1 x 1); when the rest of a round costs 1 s, the round goes from 1.1 s to 1.2 s and it pays."""
    policy, conf = PrefixScheduler(max_block=1), [torch.tensor([0.5])]
    sps = {1: 10.0, 2: 5.0}
    assert policy.budget([1], conf, LoadReport(sps=sps)) == [0]
    assert policy.budget([1], conf, LoadReport(sps=sps, round_overhead_s=1.0)) == [1]
    assert LoadReport(sps=sps, round_overhead_s=1.0).round_rate(2) == pytest.approx(1 / 1.2)


def test_prefix_scheduler_needs_load():
    with pytest.raises(ValueError, match="SPS table"):
        PrefixScheduler(max_block=2).budget([2], [torch.tensor([0.5, 0.5])], None)


def test_sps_interpolation_and_extrapolation():
    table = {1: 10.0, 4: 7.0, 8: 4.0}
    assert sps_at(table, 4) == 7.0
    assert sps_at(table, 2) == pytest.approx(9.0)
    assert sps_at(table, 16) == pytest.approx(2.0)  # constant tokens/s beyond the profile


def first_token_is_a(policy, trials: int, seed: int) -> float:
    """Simulate the counterexample: V = {A, B}, p_t = (0.7, 0.3), q = (0.5, 0.5), c_1 = 0.8,
    c_2 = 0.9 if the first draft is A else 0. Returns the frequency of A as the first committed token."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.tensor([0.7, 0.3])
    q = torch.tensor([0.5, 0.5])
    load = LoadReport(sps=SPS)
    hits = 0
    for _ in range(trials):
        drafts = torch.multinomial(q.expand(2, 2), 1, generator=gen).squeeze(-1)
        confidence = torch.tensor([0.8, 0.9 if drafts[0] == 0 else 0.0])
        n = policy.budget([2], [confidence], load)[0]
        u = torch.rand(2 * n + 1, generator=gen, dtype=torch.float64)
        result = rejection_sample(p.expand(1, n + 1, 2), drafts[None, :n], torch.tensor([n]), q.expand(1, n, 2),
                                  u[None, :n], u[None, n:])
        first = drafts[0] if result.accepted[0] > 0 else result.next_token[0]
        hits += int(first == 0)
    return hits / trials


def test_prefix_scheduler_early_stop_is_lossless_and_its_absence_is_not():
    """The early stop keeps P(A) = 0.7; searching past the drop biases it to 0.85 (algorithms.md §7)."""
    trials = 6000
    tolerance = 4 * (0.7 * 0.3 / trials) ** 0.5
    assert abs(first_token_is_a(PrefixScheduler(max_block=2), trials, seed=1) - 0.7) < tolerance
    biased = first_token_is_a(PrefixScheduler(max_block=2, early_stop=False), trials, seed=1)
    assert abs(biased - 0.85) < tolerance


def test_survival_is_cumulative_product():
    assert survival(torch.tensor([0.5, 0.5, 1.0])) == pytest.approx([0.5, 0.25, 0.25])



def test_prefix_scheduler_prices_tokens_at_the_measured_verify_cost():
    """A token that costs twice the profiled forward (verify_scale 2) is worth verifying less often."""
    sps = {8: 100.0, 16: 80.0, 32: 50.0, 64: 30.0}
    confidences = [torch.full((4,), 0.95)] + [torch.tensor([0.1])] * 7
    policy = PrefixScheduler(max_block=4)
    assert policy.budget([4] + [1] * 7, confidences, LoadReport(sps=sps)) == [4] + [0] * 7
    scaled = LoadReport(sps=sps, round_overhead_s=0.001, verify_scale=2.0)
    assert scaled.round_rate(8) == pytest.approx(1 / (0.001 + 2.0 / 100.0))
    assert policy.budget([4] + [1] * 7, confidences, LoadReport(sps=sps, round_overhead_s=0.02)) == [4] + [0] * 7
    assert policy.budget([4] + [1] * 7, confidences, LoadReport(sps=sps, verify_scale=2.0)) == [4] + [0] * 7


def test_prefix_scheduler_gives_every_equally_confident_request_its_token():
    """Eight rows with one confident draft each: verifying all eight (15.2 expected tokens at SPS(16)) beats
    verifying none (8 at SPS(8)), and nothing stops the scheduler before the last row."""
    sps = {8: 150.0, 16: 100.0}
    budgets = PrefixScheduler(max_block=1).budget([1] * 8, [torch.tensor([0.9])] * 8, LoadReport(sps=sps))
    assert budgets == [1] * 8


def test_prefix_scheduler_fills_the_padding_of_a_ragged_batch():
    """Algorithm 1 stops at row 1's first slot (a full token at SPS(5) does not pay); a verifier that pads to the
    longest row charges 0.9 of that slot anyway, so it is filled, and so is the next while it pays; a slot with
    survival 0 stops the fill. Without padding cost (a packing verifier) the budgets are Algorithm 1's."""
    sps = {2: 1.0, 3: 0.95, 4: 0.9, 5: 0.6, 6: 0.55}
    policy = PrefixScheduler(max_block=2)
    conf = [torch.tensor([0.99, 0.99]), torch.tensor([0.8, 0.9])]
    assert policy.budget([2, 2], conf, LoadReport(sps=sps)) == [2, 0]
    assert policy.budget([2, 2], conf, LoadReport(sps=sps, padding_cost=0.9)) == [2, 2]
    stopped = [torch.tensor([0.99, 0.99]), torch.tensor([0.8, 0.0])]
    assert policy.budget([2, 2], stopped, LoadReport(sps=sps, padding_cost=0.9)) == [2, 1]
    assert policy.budget([2, 1], conf, LoadReport(sps=sps, padding_cost=0.9)) == [2, 1]  # no more than proposed
    # padding that costs little leaves row 1's slots as expensive as Algorithm 1 found them
    assert policy.budget([2, 2], conf, LoadReport(sps=sps, padding_cost=0.1)) == [2, 0]


def stopping_time_violations(policy, instances: int, seed: int) -> int:
    """Budgets whose decision to verify slot j of a request changes when that request's confidences from slot j+1 on
    (which read its draft x_j) are replaced: 0 for a lossless policy. Random batches, loads and padding costs."""
    gen = torch.Generator().manual_seed(seed)
    violations = 0
    for _ in range(instances):
        rows, slots = int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(1, 6, (1,), generator=gen))
        steps = torch.rand(12, generator=gen).cumsum(0)
        load = LoadReport(sps={b + 1: float(1.0 / (1.0 + steps[b] / 4)) for b in range(12)},
                          round_overhead_s=float(torch.rand(1, generator=gen)),
                          padding_cost=float(torch.tensor([0.0, 0.5, 0.9, 1.0])[torch.randint(4, (1,), generator=gen)]))
        conf = [torch.rand(slots, generator=gen) ** 0.3 for _ in range(rows)]
        base = policy.budget([slots] * rows, conf, load)
        for r in range(rows):
            for j in range(1, slots + 1):
                changed = [c.clone() for c in conf]
                changed[r][j:] = torch.rand(slots - j, generator=gen) ** 0.3
                violations += (policy.budget([slots] * rows, changed, load)[r] >= j) != (base[r] >= j)
    return violations


def test_the_scheduler_decides_each_slot_before_seeing_the_draft_it_verifies():
    """Lossless needs ℓ_r ≥ j to depend on request r's drafts before x_j only, so on its confidences up to c_j
    (c_{j+1} reads x_j): the early stop and the padding fill never look further; searching past the drop does."""
    assert stopping_time_violations(PrefixScheduler(max_block=5), instances=150, seed=3) == 0
    assert stopping_time_violations(PrefixScheduler(max_block=5, early_stop=False), instances=150, seed=3) > 0
