"""RoundCosts: measured per-round costs decide whether drafting pays, with probes of the other choice."""

import pytest

from specserve.engine.round_costs import RoundCosts

SPS = {1: 200.0, 2: 190.0, 4: 180.0, 8: 150.0, 16: 100.0, 32: 60.0, 64: 32.0}


def feed(costs: RoundCosts, *, drafting_s: float, plain_s: float, tau: float, verified: float, requests: int,
         rounds: int = 3) -> None:
    for _ in range(rounds):
        costs.record(True, drafting_s, SPS, requests, tokens=round(requests * (1 + verified)),
                     committed=round(requests * tau))
        costs.record(False, plain_s, SPS, requests, tokens=requests, committed=requests)


def test_measures_plain_then_drafting_before_comparing():
    costs = RoundCosts()
    assert costs.should_draft(SPS, 4) is False, "first a plain round, to measure it"
    costs.record(False, 0.010, SPS, 4, tokens=4, committed=4)
    assert costs.should_draft(SPS, 4) is True, "then a drafting round"
    assert costs.should_draft({}, 4) is True, "without an SPS table the policy alone decides"


def test_drafts_when_it_pays_and_decodes_plainly_when_it_does_not():
    costs = RoundCosts()
    # two requests: a drafting round takes 12 ms and commits 2.5 tokens each; a plain round 6 ms for 1 token each
    feed(costs, drafting_s=0.012, plain_s=0.006, tau=2.5, verified=3, requests=2)
    drafting, plain = costs.rates(SPS, 2)
    assert drafting == pytest.approx(5 / 0.012) and plain == pytest.approx(2 / 0.006)
    assert costs.should_draft(SPS, 2) is True
    # the same costs at 32 requests: verifying 4 tokens each is a 128-token forward, far slower than 32 tokens
    costs = RoundCosts()
    feed(costs, drafting_s=0.050, plain_s=0.020, tau=1.6, verified=3, requests=32)
    assert costs.should_draft(SPS, 32) is False


def test_probes_the_other_choice_less_often_while_probes_confirm_the_preference():
    costs = RoundCosts(probe_every=2, max_probe_every=4)
    feed(costs, drafting_s=0.050, plain_s=0.020, tau=1.6, verified=3, requests=32)
    choices = [costs.should_draft(SPS, 32) for _ in range(16)]
    probes = [i for i, c in enumerate(choices) if c]
    assert probes == [2, 7, 12], "2 plain rounds, a probe, then 4 (doubled, capped) between probes"
    # drafting becomes much cheaper: the preference flips and the interval starts again
    feed(costs, drafting_s=0.004, plain_s=0.020, tau=4.0, verified=3, requests=32, rounds=60)
    choices = [costs.should_draft(SPS, 32) for _ in range(4)]
    assert choices == [True, True, False, True]


def test_a_rarely_probed_kind_is_averaged_not_pinned_to_its_first_round():
    """The first drafting round accepts nothing (τ 1); three later probes commit 4 tokens: the estimate is their
    mean (3.25), not 10 % of the way from 1."""
    costs = RoundCosts()
    for committed in (1, 4, 4, 4):
        costs.record(True, 0.012, SPS, 1, tokens=8, committed=committed)
    assert costs.tau == pytest.approx(3.25)
    for _ in range(20):
        costs.record(True, 0.012, SPS, 1, tokens=8, committed=2)
    assert 2.0 < costs.tau < 2.3, "after 1/EMA rounds it is a moving average again"
