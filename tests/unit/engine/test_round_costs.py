"""RoundCosts: measured per-round costs decide whether drafting pays, with probes of the other choice."""

import pytest

from specserve.decoding.budget import LoadReport, sps_at
from specserve.engine.fits import LinearFit
from specserve.engine.round_costs import DraftShare, RoundCosts

SPS = {1: 200.0, 2: 190.0, 4: 180.0, 8: 150.0, 16: 100.0, 32: 60.0, 64: 32.0}


def feed(costs: RoundCosts, *, drafting_s: float, plain_s: float, tau: float, verified: float, requests: int,
         rounds: int = 3) -> None:
    for _ in range(rounds):
        costs.record(True, drafting_s, SPS, requests, tokens=round(requests * (1 + verified)),
                     committed=round(requests * tau))
        costs.record(False, plain_s, SPS, requests, tokens=requests, committed=requests)


def test_measures_plain_then_drafting_before_comparing():
    costs = RoundCosts()
    assert costs.drafting_requests(SPS, 4) == 0, "first a plain round, to measure it"
    costs.record(False, 0.010, SPS, 4, tokens=4, committed=4)
    assert costs.drafting_requests(SPS, 4) == 4, "then a drafting round"
    assert costs.drafting_requests({}, 4) == 4, "without an SPS table the policy alone decides"


def test_drafts_when_it_pays_and_decodes_plainly_when_it_does_not():
    costs = RoundCosts()
    # two requests: a drafting round takes 12 ms and commits 2.5 tokens each; a plain round 6 ms for 1 token each
    feed(costs, drafting_s=0.012, plain_s=0.006, tau=2.5, verified=3, requests=2)
    drafting, plain = costs.rates(SPS, 2)
    assert drafting == pytest.approx(5 / 0.012) and plain == pytest.approx(2 / 0.006)
    assert costs.drafting_requests(SPS, 2) == 2
    # the same costs at 32 requests: verifying 4 tokens each is a 128-token forward, far slower than 32 tokens
    costs = RoundCosts()
    feed(costs, drafting_s=0.050, plain_s=0.020, tau=1.6, verified=3, requests=32)
    assert costs.drafting_requests(SPS, 32) == 0


def test_probes_the_other_choice_less_often_while_probes_confirm_the_preference():
    costs = RoundCosts(probe_every=2, max_probe_every=4, clear_probe_factor=1)
    feed(costs, drafting_s=0.050, plain_s=0.020, tau=1.6, verified=3, requests=32)
    choices = [costs.drafting_requests(SPS, 32) for _ in range(16)]
    probes = [i for i, c in enumerate(choices) if c]
    assert probes == [2, 3, 8, 9, 14, 15], ("2 plain rounds, a two-round probe of drafting (the first catches up), "
                                            "then 4 plain rounds (doubled, capped) between probes")
    assert {choices[i] for i in probes} == {4}, "a probe of drafting drafts for an eighth of the requests"
    # drafting becomes much cheaper: the preference flips and the interval starts again
    feed(costs, drafting_s=0.004, plain_s=0.020, tau=4.0, verified=3, requests=32, rounds=60)
    choices = [costs.drafting_requests(SPS, 32) for _ in range(4)]
    assert choices == [32, 32, 0, 32], "preferred, drafting is every request's; a probe of plain decoding is whole"


def test_plain_decoding_gives_way_only_to_drafting_predicted_clearly_faster():
    """Each switch to drafting costs a catch-up round that no steady round prices: where plain decoding is preferred,
    drafting takes over only when predicted `switch_gap` (5 %) faster; preferred, it holds while at least as fast.
    (The predicted rates are set directly here: how they are measured is tested above.)"""
    costs = RoundCosts()
    feed(costs, drafting_s=0.050, plain_s=0.020, tau=1.6, verified=3, requests=32)
    assert costs.drafting_requests(SPS, 32) == 0
    choices = []
    for drafting in (1.03, 1.03, 1.06, 1.01, 1.01, 0.99, 1.03):
        costs.rates = lambda *args, rate=drafting, **kwargs: (rate, 1.0)
        choices.append(costs.drafting_requests(SPS, 32))
    assert choices == [0, 0, 32, 32, 32, 0, 0]
    with pytest.raises(ValueError, match="switch_gap"):
        RoundCosts(switch_gap=-0.01)


@pytest.mark.parametrize(("share", "drafters"), [(0.25, 8), (0.01, 1)])
def test_a_probe_drafts_for_its_share_of_the_requests_and_at_least_one(share, drafters):
    costs = RoundCosts(probe_every=2, max_probe_every=4, clear_probe_factor=1, probe_share=share)
    feed(costs, drafting_s=0.050, plain_s=0.020, tau=1.6, verified=3, requests=32)
    assert [costs.drafting_requests(SPS, 32) for _ in range(6)] == [0, 0, drafters, drafters, 0, 0]


def test_a_partial_probe_measures_tau_on_the_requests_that_drafted():
    """4 of 32 requests drafted, budgets 3 each, and committed 10 tokens between them: τ is 2.5 and 3 tokens were
    verified per drafting request, not diluted by the 28 requests that decoded plainly (their padding is the
    probe's, not drafting's)."""
    costs = RoundCosts()
    costs.record(True, 0.03, SPS, 32, tokens=44, committed=38, padded=84, padding_cost=0.5,
                 share=DraftShare(4, 10, 12.0))
    assert costs.tau == pytest.approx(2.5) and costs.verified == pytest.approx(3.0)


def test_a_partial_probe_prices_the_drafters_call_by_the_requests_that_drafted():
    """Probes drafting 1 to 3 slots for 2 to 8 of 32 requests, the drafter's call costing 1 ms per request that
    drafted and 0.1 ms per slot: the call is fitted against those requests, so drafting 3 slots for all 32 is priced
    at 41.6 ms. Fitted against the round's 32 (as before), the slots took the requests' share and the call looked
    cheaper, and drafting the whole batch under load was priced too cheap (the gateway's log at 32 requests over
    gRPC: ~990 tokens/s predicted, ~750 measured for fixed-2)."""
    costs = RoundCosts()
    for drafting in (2, 4, 6, 8) * 5:
        for k in (1, 2, 3):
            costs.record(True, 0.03, SPS, 32, tokens=32 + k * drafting, committed=32 + drafting,
                         propose_s=0.001 * drafting + 0.0001 * k * drafting, slots=k * drafting,
                         share=DraftShare(drafting, 2 * drafting, k * drafting))
    assert costs.propose(32, 96) == pytest.approx(0.0416)
    whole, probe = costs.priced(LoadReport(sps=SPS), 32, 3), costs.priced(LoadReport(sps=SPS), 32, 3, drafting=4)
    assert whole.round_overhead_s - probe.round_overhead_s == pytest.approx(0.0416 - 0.0052), "a probe sees its call"


def test_a_clear_preference_is_probed_less_often():
    """Drafting predicted far slower than plain decoding (a catch-up round per probe under load): the intervals
    between probes are clear_probe_factor times longer; close predictions keep the short ones."""
    clear = RoundCosts(probe_every=2, max_probe_every=4, clear_probe_factor=3)
    feed(clear, drafting_s=0.050, plain_s=0.020, tau=1.6, verified=3, requests=32)
    drafting, plain = clear.rates(SPS, 32)
    assert plain > 1.1 * drafting
    probes = [i for i in range(40) if clear.drafting_requests(SPS, 32)]
    assert probes == [6, 7, 20, 21, 34, 35], "6 plain rounds (2 x 3), a probe of 2, then 12 (doubled, capped at 4 x 3)"
    close = RoundCosts(probe_every=2, max_probe_every=4, clear_probe_factor=3, clear_gap=10.0)
    feed(close, drafting_s=0.050, plain_s=0.020, tau=1.6, verified=3, requests=32)
    assert [i for i in range(16) if close.drafting_requests(SPS, 32)] == [2, 3, 8, 9, 14, 15]


def test_a_preference_is_clear_only_at_a_load_both_choices_were_tried_at():
    """Measured at 2 requests only, both costs are extrapolated to 8: however far apart the predictions, the other
    choice is probed within probe_every rounds (whatever interval the engine had grown at 2 requests) until a round
    at 8 requests has been measured."""
    costs = RoundCosts(probe_every=2, max_probe_every=4, clear_probe_factor=3)
    feed(costs, drafting_s=0.004, plain_s=0.010, tau=2.5, verified=3, requests=2)
    assert [i for i in range(40) if not costs.drafting_requests(SPS, 2)] == [6, 19, 32], \
        "clear at 2: 12-round intervals"
    drafting, plain = costs.rates(SPS, 8)
    assert drafting > 1.1 * plain
    assert [i for i in range(6) if not costs.drafting_requests(SPS, 8)] == [2, 5], "at 8: plain probed every 2 rounds"
    costs.record(False, 0.010, SPS, 8, tokens=8, committed=8)
    costs.record(True, 0.030, SPS, 8, tokens=32, committed=20, steady=False)  # a catch-up round counts as tried
    assert costs.rates(SPS, 8)[0] > 1.1 * costs.rates(SPS, 8)[1]
    assert [i for i in range(30) if not costs.drafting_requests(SPS, 8)] == [4, 13, 26], \
        "measured at 8, the preference is clear: the intervals double past max_probe_every (4, 8, 12 = 4 x 3 rounds)"


def test_a_load_between_two_tried_loads_is_not_tried():
    """Both choices measured at 2 and at 32 requests, never at 8: at 8 their costs are interpolated, a guess, so the
    other choice is probed within probe_every rounds however far apart the predictions (a range from the fewest to
    the most requests tried counted 8 as tried, and the interval grew to max_probe_every x clear_probe_factor)."""
    costs = RoundCosts(probe_every=2, max_probe_every=4, clear_probe_factor=3)
    for requests in (2, 32):
        feed(costs, drafting_s=0.002 * requests, plain_s=0.004 * requests, tau=2.5, verified=3, requests=requests)
    drafting, plain = costs.rates(SPS, 8)
    assert drafting > 1.1 * plain
    assert [i for i in range(12) if not costs.drafting_requests(SPS, 8)] == [2, 5, 8, 11], \
        "at 8: plain probed every 2 rounds"
    costs.record(False, 0.032, SPS, 8, tokens=8, committed=8)
    costs.record(True, 0.016, SPS, 8, tokens=32, committed=20)
    assert [i for i in range(30) if not costs.drafting_requests(SPS, 8)] == [4, 13, 26], \
        "tried at 8, the preference is clear: the intervals double past max_probe_every (4, 8, 12 = 4 x 3 rounds)"


def test_a_batch_alternating_between_two_loads_is_probed_as_one():
    """Drafting clearly slower at 12 and at 16 requests (two bins, both tried): a probe at either restarts the other's
    count, so the batch is probed about as often as at one load (independent counts probed at 12, 15, 40, 43, 68 and
    71: six probes in 80 rounds, against three and a half)."""
    costs = RoundCosts(probe_every=2, max_probe_every=4, clear_probe_factor=3)
    for requests in (12, 16):
        feed(costs, drafting_s=0.050 * requests / 32, plain_s=0.020 * requests / 32 + 0.002, tau=1.6, verified=3,
             requests=requests)
    assert all(plain > 1.1 * drafting for drafting, plain in (costs.rates(SPS, 12), costs.rates(SPS, 16)))
    loads = [12 if i % 2 else 16 for i in range(80)]
    assert [i for i, r in enumerate(loads) if costs.drafting_requests(SPS, r)] == [12, 13, 27, 28, 53, 54, 79], \
        "6 rounds at each load (2 x 3), then 12 and 24 counted at the load that probes (doubled, capped at 4 x 3)"


def test_a_load_the_other_choice_was_never_tried_at_keeps_its_own_count():
    """Alternating with a load whose probes restart the counts, a load where drafting was never tried is still probed
    within probe_every rounds of its own (its costs there are a guess until then)."""
    costs = RoundCosts(probe_every=2, max_probe_every=4, clear_probe_factor=1)
    feed(costs, drafting_s=0.050, plain_s=0.020, tau=1.6, verified=3, requests=32)
    for _ in range(3):
        costs.record(False, 0.010, SPS, 8, tokens=8, committed=8)
    loads = [8 if i % 2 else 32 for i in range(12)]
    probes = [(i, r) for i, r in enumerate(loads) if costs.drafting_requests(SPS, r)]
    assert probes[:4] == [(4, 32), (5, 8), (7, 8), (8, 32)], \
        "a probe at 32 (2 rounds), then one at 8 at its 3rd decision (2 rounds), not restarted by 32's"


def test_the_drafters_intake_of_arriving_prompts_is_priced_into_drafting():
    """Steady rounds: drafting 4 % faster than plain decoding (417 vs 400 tokens/s at 8 requests). But rounds that
    take in a backlog show the drafter's call growing by 0.1 ms per position taken in, and 1,000 prompt positions
    arrive per second: a tenth of a drafting engine's time goes to taking in prompts, which plain decoding never
    pays, and plain decoding is the faster choice."""
    costs = RoundCosts()
    for _ in range(20):
        costs.record(False, 0.020, SPS, 8, tokens=8, committed=8, admitted=20)
        costs.record(True, 0.048, SPS, 8, tokens=24, committed=20, propose_s=0.010, slots=16, admitted=48)
    drafting, plain = costs.rates(SPS, 8, 2)
    assert drafting == pytest.approx(20 / 0.048) and plain == pytest.approx(400)
    assert costs.intake_share == 0.0, "no intake measured yet"
    for backlog in (100, 200, 300):
        wall = 0.048 + 1e-4 * backlog
        costs.record(True, wall, SPS, 8, tokens=24, committed=20, steady=False, propose_s=0.010 + 1e-4 * backlog,
                     slots=16, backlog=backlog, admitted=round(1000 * wall))
    assert costs.intake.coefficients() == pytest.approx((0.0, 1e-4), abs=1e-9)
    assert costs.intake_share == pytest.approx(0.1, rel=0.01)
    drafting, plain = costs.rates(SPS, 8, 2)
    assert drafting == pytest.approx(0.9 * 20 / 0.048, rel=0.01) and drafting < plain
    assert costs.drafting_requests(SPS, 8, 2) == 0


def test_a_rarely_probed_kind_is_averaged_not_pinned_to_its_first_round():
    """The first drafting round accepts nothing (τ 1); three later probes commit 4 tokens: the estimate is their
    mean (3.25), not a small step away from 1."""
    costs = RoundCosts()
    for committed in (1, 4, 4, 4):
        costs.record(True, 0.012, SPS, 1, tokens=8, committed=committed)
    assert costs.tau == pytest.approx(3.25)
    for _ in range(20):
        costs.record(True, 0.012, SPS, 1, tokens=8, committed=2)
    assert costs.tau == pytest.approx((1 + 3 * 4 + 20 * 2) / 24), "τ is the plain mean of its first 64 rounds"
    for _ in range(200):
        costs.record(True, 0.012, SPS, 1, tokens=8, committed=3)
    assert 2.9 < costs.tau < 3.0, "then a moving average over about 64 rounds"


def test_catching_up_rounds_do_not_price_drafting():
    """The first drafting round after plain ones also feeds the drafter the rounds it missed: its τ counts, its
    cost does not (else one long catch-up makes drafting look slower than it is, and it is never chosen)."""
    costs = RoundCosts()
    costs.record(True, 0.012, SPS, 1, tokens=8, committed=3)
    costs.record(True, 0.090, SPS, 1, tokens=8, committed=1, steady=False)  # 256 positions to take in
    assert costs.overhead_drafting(1) == pytest.approx(0.012 - 1 / 150.0)
    assert costs.tau == pytest.approx(2.0)
    costs.record(False, 0.006, SPS, 1, tokens=1, committed=1, steady=False)  # plain rounds are always priced
    assert costs.plain_s(SPS, 1) == pytest.approx(0.006)


def test_drafts_only_as_far_as_budgets_reach():
    """Under load the scheduler verifies a token or two: the drafter is asked for two more than the longest budgets
    of late, so the budgets can still grow, and never for more than the policy's cap."""
    costs = RoundCosts()
    assert costs.draft_cap(7) == 7, "nothing measured yet: the policy's cap"
    for _ in range(100):
        costs.record(True, 0.02, SPS, 8, tokens=16, committed=12, longest=1)
    assert costs.draft_cap(7) == 3
    for _ in range(400):
        costs.record(True, 0.02, SPS, 8, tokens=40, committed=20, longest=7)
    assert costs.draft_cap(7) == 7 and costs.draft_cap(4) == 4
    assert costs.draft_cap(0) == 0, "a drafter that drafts nothing is never asked for a token"
    before = costs.longest
    costs.record(False, 0.01, SPS, 8, tokens=8, committed=8)  # plain rounds say nothing about budgets
    assert costs.longest == before


def test_verify_time_is_fitted_and_the_rest_of_a_round_is_overhead():
    """Verification here takes 2 ms + 1.5x the profiled forward (sampling, padding, transport); the rest of a drafting
    round (drafting, scheduling) is overhead; a plain round takes its forward, 3 ms and 0.2 ms a request. The fits
    recover them, and the predicted rates use them."""
    costs = RoundCosts()
    assert costs.verify.coefficients() == (0.0, 1.0), "nothing measured: the profiled forward alone"

    def verify_s(tokens):
        return 0.002 + 1.5 / sps_at(SPS, tokens)

    def plain_s(requests):  # a plain round: the forward, 3 ms a round and 0.2 ms a request
        return 1 / sps_at(SPS, requests) + 0.003 + 0.0002 * requests

    for requests in (1, 2, 4, 8, 16) * 4:
        tokens = requests * 4
        costs.record(True, verify_s(tokens) + 0.004, SPS, requests, tokens=tokens, committed=2 * requests,
                     verify_s=verify_s(tokens))
        costs.record(False, plain_s(requests), SPS, requests, tokens=requests, committed=requests,
                     verify_s=verify_s(requests))
    c0, m = costs.verify.coefficients()
    assert c0 == pytest.approx(0.002) and m == pytest.approx(1.5)
    assert costs.overhead_drafting(8) == pytest.approx(0.004)
    assert costs.plain.coefficients() == pytest.approx((0.003, 0.0002)), "a plain round beyond its forward"
    drafting, plain = costs.rates(SPS, 8)
    assert drafting == pytest.approx(16 / (0.004 + verify_s(32))) and plain == pytest.approx(8 / plain_s(8))
    # rounds that all verify about as many tokens say nothing about the slope
    flat = RoundCosts()
    for _ in range(10):
        flat.record(False, 0.01, SPS, 4, tokens=4, committed=4, verify_s=0.009)
    assert flat.verify.coefficients() == (pytest.approx(0.009 - 1 / 180.0), 1.0)


def test_overheads_follow_the_batch_size():
    """A drafting round's overhead is mostly the drafter's, which grows with the requests: measured at 4 and 32
    requests, it is predicted in between and below; measured at 32 only, it is taken as proportional (an optimistic
    guess at 1 request, so that a lone request drafts and corrects it)."""
    costs = RoundCosts()
    for requests in (4, 32) * 10:
        costs.record(True, 0.002 + 0.0004 * requests + 0.01, SPS, requests, tokens=2 * requests,
                     committed=2 * requests, verify_s=0.01)
    assert costs.overhead_drafting(16) == pytest.approx(0.002 + 0.0004 * 16)
    assert costs.overhead_drafting(1) == pytest.approx(0.0024)
    under_load = RoundCosts()
    for _ in range(5):
        under_load.record(True, 0.024, SPS, 32, tokens=64, committed=64, verify_s=0.01)
    assert under_load.overhead_drafting(32) == pytest.approx(0.014)
    assert under_load.overhead_drafting(1) == pytest.approx(0.014 / 32)


def test_linear_fit_forgets_old_samples():
    fit = LinearFit(decay=0.5, fallback_slope=1.0)
    assert fit.empty and fit.coefficients() == (0.0, 1.0)
    for _ in range(40):
        fit.add(2.0, 5.0)
    assert fit.coefficients() == (pytest.approx(3.0), 1.0), "x never varied: the fallback slope"
    for _ in range(40):
        fit.add(4.0, 1.0)
    assert fit(4.0) == pytest.approx(1.0, abs=1e-6), "the old samples weigh nothing any more"


def test_the_verify_fit_keeps_its_measured_slope_through_a_plain_stretch():
    """A probe's drafting rounds measure what a verified token costs beyond the profiled forward (here 1.5 of it);
    in the plain stretch after the probe those rounds decay away and x stops varying. The fit then keeps the slope
    it measured, not the bare forward's, so a drafting round is not priced too cheap."""
    kept, bare = LinearFit(decay=0.1, fallback_slope=1.0, keep_slope=True), LinearFit(decay=0.1, fallback_slope=1.0)
    for fit in (kept, bare):
        for x in (0.006, 0.010) * 10:  # plain (forward 6 ms) and drafting rounds (10 ms): verify = 2 ms + 1.5·forward
            fit.add(x, 0.002 + 1.5 * x)
        assert fit.coefficients() == pytest.approx((0.002, 1.5))
        for _ in range(200):  # a plain stretch
            fit.add(0.006, 0.011)
    assert kept(0.010) == pytest.approx(0.017), "a drafting-sized verify keeps its measured cost"
    assert kept(0.006) == pytest.approx(0.011) and bare(0.006) == pytest.approx(0.011)
    assert bare(0.010) == pytest.approx(0.015), "without it: the forward's slope, 2 ms too cheap"


def test_padded_slots_count_toward_verified_tokens():
    """A ragged verify pads every request to the longest budget; a padded slot costs the verifier's padding_cost of a
    token."""
    costs = RoundCosts()
    costs.record(True, 0.02, SPS, 4, tokens=8, committed=8, longest=3, padded=8, padding_cost=0.5)  # budgets 3,1,0,0
    assert costs.verified == pytest.approx((4 + 0.5 * 8) / 4)


def train(survival, per_request_s, per_slot_s, lengths=None, per_call_s=0.0):
    """Drafting rounds at 4 and 8 requests drafting each of `lengths` slots (default: all of `survival`)."""
    costs = RoundCosts()
    for _ in range(10):
        for k in lengths or [len(survival)]:
            for requests in (4, 8):
                propose_s = per_call_s + per_request_s * requests + per_slot_s * requests * k
                verify_s = 1 / sps_at(SPS, requests * (1 + k))  # the profiled forward, exactly
                costs.record(True, 0.001 + propose_s + verify_s, SPS, requests, tokens=requests * (1 + k),
                             committed=requests * 2, longest=2, verify_s=verify_s, propose_s=propose_s,
                             slots=requests * k, survival=survival[:k])
    return costs


def test_the_draft_cap_is_the_fastest_fixed_k_for_the_measured_survival_and_slot_cost():
    """Once the drafter's cost per slot and the drafts' survival per slot are measured, the cap is the k a fixed-k
    policy would find fastest: confident drafts are drafted far, weak ones a slot or two, and a costlier drafter
    shortens the cap. Slots past those drafted lately are extrapolated, so the cap can grow."""
    assert train([0.9, 0.85, 0.8], 0.0005, 0.0002).draft_cap(7, SPS, 8) > 3, "confident: past the slots seen"
    assert train([0.5, 0.2, 0.05], 0.0005, 0.0002).draft_cap(7, SPS, 8) <= 2
    cheap = train([0.8, 0.6, 0.45], 0.0005, 0.00005, lengths=[1, 2, 3])
    dear = train([0.8, 0.6, 0.45], 0.0005, 0.002, lengths=[1, 2, 3])
    assert dear.draft_cap(7, SPS, 8) < cheap.draft_cap(7, SPS, 8)
    assert cheap.propose.coefficients() == pytest.approx((0.0, 0.0005, 0.00005)), "per request and per slot, apart"
    assert cheap.overhead_drafting(8) == pytest.approx(0.001), "the drafter's call is not the round's other overhead"
    assert train([0.9], 0.0005, 0.0002).draft_cap(0, SPS, 8) == 0, "a policy that drafts nothing"
    assert cheap.draft_cap(7) == 4, "without an SPS table: two beyond the longest budgets"


def test_a_cap_learned_at_one_slot_can_grow_back():
    """Drafting one slot at a steady load, the drafter's cost cannot be split into per request and per slot: the
    per-slot share is taken as 0, so confident drafts are drafted further, not pinned at one slot for good; a slot
    seen again after a short cap starts from its new survival, not the stale one."""
    costs = train([0.9, 0.9, 0.9], 0.002, 0.0, lengths=[1])
    assert costs.propose.coefficients() == pytest.approx((0.0, 0.002, 0.0))
    assert costs.draft_cap(7, SPS, 8) > 1
    costs = train([0.1, 0.05, 0.01], 0.0005, 0.0)  # the third slot was nearly never accepted...
    costs.record(True, 0.02, SPS, 8, tokens=16, committed=12, survival=[0.9])
    costs.record(True, 0.02, SPS, 8, tokens=16, committed=12, survival=[0.9, 0.8, 0.7])  # ...now it is
    assert costs.survival[2] == pytest.approx(0.7)


def test_the_drafters_cost_per_call_is_not_charged_to_its_slots():
    """A drafter call costs a fixed part (Python, small kernels) besides its requests and slots. Fitted apart, the
    slots keep their own small price, and a cost the round pays whatever k is never shortens the cap; charged to
    slots and requests (no intercept), every slot looked dear and the cap stayed short."""
    survival = [0.8, 0.6, 0.45]
    fixed = train(survival, 0.0002, 0.0001, lengths=[1, 2, 3], per_call_s=0.003)
    assert fixed.propose.coefficients() == pytest.approx((0.003, 0.0002, 0.0001))
    assert fixed.propose(8, 16) == pytest.approx(0.003 + 8 * 0.0002 + 16 * 0.0001)
    without = train(survival, 0.0002, 0.0001, lengths=[1, 2, 3])
    assert fixed.draft_cap(7, SPS, 8) >= without.draft_cap(7, SPS, 8) > 1
    one_load = RoundCosts()  # one batch size, k varying: the per-slot slope is still measured
    for k in (1, 2, 3) * 5:
        one_load.propose.add(4, 4 * k, 0.003 + 4 * k * 0.0001)
    c, a, b = one_load.propose.coefficients()
    assert b == pytest.approx(0.0001) and c + 4 * a == pytest.approx(0.003)


def test_probe_settings_are_checked():
    with pytest.raises(ValueError, match="drafting_probe"):
        RoundCosts(drafting_probe=0)
    with pytest.raises(ValueError, match="probe_every"):
        RoundCosts(probe_every=16, max_probe_every=8)
    with pytest.raises(ValueError, match="clear_probe_factor"):
        RoundCosts(clear_probe_factor=0)
    with pytest.raises(ValueError, match="probe_share"):
        RoundCosts(probe_share=0.0)
    with pytest.raises(ValueError, match="probe_cap"):
        RoundCosts(probe_cap=0)


def test_a_plain_round_is_priced_by_its_own_fit_in_which_a_stall_is_one_round_among_many():
    """The verify fit is shared with the more numerous drafting rounds and misprices a small plain verify (over gRPC
    at 2 requests: 8.4 ms predicted, 7.1 measured): plain rounds are fitted on their own, as a whole round against
    the profiled forward. A stalled round (48 ms among rounds of 6) moves the price by its share of the recent
    rounds, not to the stall: a price read from the last few rounds at exactly R swung with each stall and switched
    the engine to drafting at a loss."""
    costs = RoundCosts()
    for _ in range(20):  # the verify fit sees drafting rounds only: 4 ms fixed + 1.5 x the profiled forward
        tokens = 8
        costs.record(True, 0.004 + 1.5 / sps_at(SPS, tokens), SPS, 2, tokens=tokens, committed=5,
                     verify_s=0.004 + 1.5 / sps_at(SPS, tokens))
    for requests in (1, 2, 4) * 20:  # plain rounds: 1 ms + the profiled forward
        costs.record(False, 0.001 + 1 / sps_at(SPS, requests), SPS, requests, tokens=requests, committed=requests,
                     verify_s=0.0005 + 1 / sps_at(SPS, requests))
    assert costs.rates(SPS, 2)[1] == pytest.approx(2 / (0.001 + 1 / sps_at(SPS, 2)))
    assert costs.rates(SPS, 8)[1] == pytest.approx(8 / (0.001 + 1 / sps_at(SPS, 8))), "and at loads between"
    before = costs.plain_s(SPS, 2)
    costs.record(False, 0.048, SPS, 2, tokens=2, committed=2, verify_s=0.047)  # a stall
    assert before < costs.plain_s(SPS, 2) < before + 0.002


def test_a_plain_rounds_cost_per_request_is_not_taken_for_a_slope_on_the_forward():
    """The demo's SPS(B) is flat up to 8 requests; a plain round takes its forward, 3 ms and 0.25 ms a request.
    Fitted against the forward, rounds at 16 and 32 gave the per-request part to the forward's slope (1.5) and priced
    plain decoding back at 8 requests 14 % too slow, and the engine drafted there at a loss. Fitted as what a round
    takes beyond its forward, against R, every load is priced right, whatever load the recent rounds ran at."""
    demo = {1: 77.0, 2: 77.0, 4: 77.0, 8: 77.0, 16: 64.0, 32: 50.0, 64: 34.0}

    def plain_s(requests):
        return 1 / sps_at(demo, requests) + 0.003 + 0.00025 * requests

    costs = RoundCosts()
    for loads in ((1, 2, 4, 8) * 10, (16,) * 40, (32,) * 120, (8,) * 5):
        for requests in loads:
            costs.record(False, plain_s(requests), demo, requests, tokens=requests, committed=requests)
        for requests in (1, 8, 16, 32):
            assert costs.plain_s(demo, requests) == pytest.approx(plain_s(requests), rel=0.01), (loads[0], requests)
    old = LinearFit(0.02, fallback_slope=1.0, min_slope=0.5, keep_slope=True)  # the fit against the forward
    for requests in (1, 2, 4, 8) * 10 + (16,) * 40 + (32,) * 120 + (8,) * 5:
        old.add(1 / sps_at(demo, requests), plain_s(requests))
    assert old(1 / sps_at(demo, 8)) > 1.1 * plain_s(8), "the old fit's error, for the record"


def test_a_plain_round_is_priced_from_the_plain_rounds_profile_where_the_verifier_has_one():
    """A plain round's forward lays R tokens out in R sessions, which the verify's table (few sessions of several
    tokens) prices too cheap beyond 8 on the demo. With the verifier's plain table, what a round takes beyond its
    forward stays the 3 ms it is at every load, and each load is priced right."""
    plain_table = {1: 75.0, 8: 75.0, 16: 57.0, 32: 43.0}

    def plain_s(requests):
        return 1 / sps_at(plain_table, requests) + 0.003

    costs = RoundCosts()
    for requests in (1, 8) * 10 + (32,) * 100:
        costs.record(False, plain_s(requests), SPS, requests, tokens=requests, committed=requests,
                     plain_sps=plain_table)
    assert costs.plain.coefficients() == pytest.approx((0.003, 0.0), abs=1e-9)
    for requests in (1, 8, 16, 32):
        assert costs.plain_s(SPS, requests, plain_table) == pytest.approx(plain_s(requests))
    assert costs.rates(SPS, 8, plain_sps=plain_table) is None, "no drafting round measured yet"


def test_drafting_is_priced_with_the_acceptance_verification_measured_not_only_the_confidences():
    """Confidences that promise more accepted tokens than verification accepts would price drafting too high: Σ a_j
    is scaled by accepted / promised over recent drafting rounds, and left alone until a token's worth was promised."""
    honest, optimistic = train([0.8, 0.6, 0.45], 0.0005, 0.0001), train([0.8, 0.6, 0.45], 0.0005, 0.0001)
    assert optimistic.acceptance_scale == 1.0
    for _ in range(200):
        honest.record(True, 0.02, SPS, 8, tokens=32, committed=23, promised=15.2, accepted=15,
                      survival=[0.8, 0.6, 0.45])
        optimistic.record(True, 0.02, SPS, 8, tokens=32, committed=20, promised=15.2, accepted=12,
                          survival=[0.8, 0.6, 0.45])
    assert honest.acceptance_scale == pytest.approx(15 / 15.2)
    assert optimistic.acceptance_scale == pytest.approx(12 / 15.2)
    extra = lambda costs: costs._fixed_k_rate(SPS, 8, 3) * costs._drafting_s(SPS, 8, 32, 3) / 8 - 1
    assert extra(honest) == pytest.approx(15 / 15.2 * 1.85) and extra(optimistic) == pytest.approx(12 / 15.2 * 1.85)


def test_each_load_keeps_its_own_choice_and_probe_interval():
    """Every burst of arrivals ramps the batch through the low loads, where drafting pays. The choice at 32 requests
    (plain decoding: drafting clearly slower there) keeps the probe interval it grew through such a ramp; with one
    choice for all loads the ramp flipped it twice and restarted the interval, and probes came every few rounds."""
    costs = RoundCosts(probe_every=2, max_probe_every=8, clear_probe_factor=1)
    for _ in range(3):
        costs.record(True, 0.004, SPS, 1, tokens=4, committed=3, verify_s=0.003)
        costs.record(True, 0.060, SPS, 32, tokens=128, committed=64, verify_s=0.03)
        costs.record(False, 0.008, SPS, 1, tokens=1, committed=1, verify_s=0.007)
        costs.record(False, 0.020, SPS, 32, tokens=32, committed=32, verify_s=0.015)
    assert costs.rates(SPS, 1)[0] > costs.rates(SPS, 1)[1] and costs.rates(SPS, 32)[0] < costs.rates(SPS, 32)[1]
    choices = [costs.drafting_requests(SPS, 32) for _ in range(40)]
    assert choices[-8:].count(0) >= 6
    at_32 = costs._choices[(32).bit_length()]
    grown = at_32.interval
    assert grown == 8
    for _ in range(3):
        costs.drafting_requests(SPS, 1)
    assert costs._choices[(1).bit_length()].preferred is True, "at 1 request drafting is preferred"
    assert at_32.interval == grown and at_32.preferred is False, "the choice at 32 did not restart"


def test_a_probes_lone_request_weighs_as_one_request_in_the_mean_survival():
    """Survival per slot is a mean over requests: a probe drafting for 1 request moves it an eighth as far as a round
    of 8 requests does (weighed per round, one request's confidences swung the drafting estimate by ±10 %)."""
    probe, full = RoundCosts(), RoundCosts()
    for costs in (probe, full):
        costs.record(True, 0.02, SPS, 8, tokens=32, committed=20, survival=[0.8, 0.6, 0.45])
    probe.record(True, 0.02, SPS, 8, tokens=12, committed=9, survival=[0.2, 0.05, 0.01], share=DraftShare(1, 2, 3.0))
    full.record(True, 0.02, SPS, 8, tokens=32, committed=10, survival=[0.2, 0.05, 0.01])
    assert probe.survival[0] == pytest.approx(0.8 - 0.0125 * 0.6)
    assert full.survival[0] == pytest.approx(0.8 - (1 - 0.9875 ** 8) * 0.6)
