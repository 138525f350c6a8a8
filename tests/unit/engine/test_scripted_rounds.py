"""Rounds whose drafting requests are scripted (who drafts is otherwise the measured choice of `RoundCosts`).

Deferred taps: the verifier holds back the taps of the prompt and of the rounds a request does not draft in, and
the drafter still receives every committed position's taps, in order, when it next runs. Probes: a round in which
only some requests draft drafts a short block for them."""

import torch
from reference_decoding import greedy_continuation
from tap_drafters import ScriptedCosts, TapCheckingDrafter

from specserve.decoding.budget import FixedK
from specserve.decoding.sampling import SamplingParams
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier, OpenRequest, VerifyRequest
from specserve.target.model import CausalLM
from tiny_models import tiny_model

PROMPTS = [[1, 5, 7, 9, 11, 13, 2, 3, 4, 5, 6, 7], [3, 4, 5], [4, 5, 4, 5, 4, 5], [33] * 9]
MAX_NEW = 24


def test_held_taps_are_the_taps_a_returning_verifier_gives_in_position_order():
    model = tiny_model("qwen3", vocab=64)
    params = SamplingParams(temperature=1.0, seed=4)
    returning, holding = (LocalVerifier(CausalLM(model), tap_layers=(0, 2)) for _ in range(2))
    returned = [returning.open([OpenRequest("s", PROMPTS[0], params)])[0].taps]
    opened = holding.open([OpenRequest("s", PROMPTS[0], params, defer_taps=True)])[0]
    assert opened.taps is None
    committed = len(PROMPTS[0]) + 1
    for position, drafts in enumerate(([5, 6, 7], [], [1, 2]), start=1):
        a = returning.verify([VerifyRequest("s", committed, drafts, None, params, position)])[0]
        b = holding.verify([VerifyRequest("s", committed, drafts, None, params, position, defer_taps=True)])[0]
        assert (b.accepted, b.tokens, b.taps) == (a.accepted, a.tokens, None)
        returned.append(a.taps)
        committed += len(a.tokens)
    [taken] = holding.take_taps(["s"])
    torch.testing.assert_close(taken, torch.cat(returned))
    assert taken.shape == (committed - 1, 2 * 64)
    assert holding.take_taps(["s"])[0].shape == (0, 2 * 64), "taking releases them"
    assert holding.take_taps(["never-opened"]) == [None]


def test_a_call_that_wants_no_taps_drops_what_was_held_and_close_forgets_the_session():
    verifier = LocalVerifier(CausalLM(tiny_model("qwen3", vocab=64)), tap_layers=(1,))
    params = SamplingParams(seed=1)
    verifier.open([OpenRequest("s", PROMPTS[1], params, defer_taps=True)])
    result = verifier.verify([VerifyRequest("s", len(PROMPTS[1]) + 1, [], None, params, 1, want_taps=False)])[0]
    assert result.taps is None and verifier.take_taps(["s"])[0].shape[0] == 0
    verifier.close("s")
    assert verifier.take_taps(["s"]) == [None]


class LoadAwareFixedK(FixedK):
    """Fixed k, but the engine fetches the load and consults its round costs every round (ScriptedCosts)."""

    needs_load = True


def scripted_engine(model, script, drafter):
    engine = SpecEngine(LocalVerifier(CausalLM(model), tap_layers=(1,)), drafter, LoadAwareFixedK(4), max_batch=8)
    engine._costs = ScriptedCosts(script)  # the choice of who drafts, forced round by round
    return engine


def test_a_drafter_receives_every_positions_taps_across_plain_rounds_and_probes():
    """Rounds alternate between drafting for all, none and one request (a probe): the taps a drafter receives after
    plain rounds are exactly the target's hidden states of layer 1 at every committed position, in order."""
    model = tiny_model("qwen3", vocab=64)
    drafter = TapCheckingDrafter()
    engine = scripted_engine(model, [0, 0, -1, 0, 1, 0, 0, -1, 1, 1, 0], drafter)
    requests = engine.generate(PROMPTS, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))
    assert [r.output_ids for r in requests] == [greedy_continuation(model, p, MAX_NEW) for p in PROMPTS]
    assert sum(r.stats.accepted for r in requests) > 0, "drafts were verified and accepted"
    for r in requests:
        received = drafter.taps(r.id)
        assert received.shape[0] > len(r.prompt_ids), "the drafter ran after plain rounds"
        sequence = torch.tensor([[*r.prompt_ids, *r.output_ids]])
        with torch.no_grad():
            expected = model(sequence, output_hidden_states=True).hidden_states[2][0, : received.shape[0]]
        torch.testing.assert_close(received, expected, atol=2e-5, rtol=1e-4)
    assert engine.verifier._held == {}, "every finished request's held taps were freed"


def test_plain_rounds_return_no_taps_and_a_drafting_round_returns_its_own():
    """What crosses from the verifier each round: nothing for requests that do not draft in it."""
    model = tiny_model("qwen3", vocab=64)
    script = [0, 0, -1]
    engine = scripted_engine(model, script, TapCheckingDrafter())
    rounds = []
    engine.verify_observers.append(lambda items, results: rounds.append((items, results)))
    engine.generate(PROMPTS[:2], SamplingParams(max_tokens=12, ignore_eos=True))
    assert len(rounds) > len(script)
    for n, (items, results) in enumerate(rounds):
        plain = script[n % len(script)] == 0
        for i, res in zip(items, results, strict=True):
            assert (i.want_taps, i.defer_taps, res.taps is None) == (True, plain, plain)


def test_a_probe_drafts_at_most_probe_cap_slots_and_a_drafting_round_its_full_cap():
    model = tiny_model("qwen3", vocab=64)
    drafter = TapCheckingDrafter()
    asked = []
    propose = drafter.propose
    drafter.propose = lambda batch: asked.append([r.max_tokens for r in batch]) or propose(batch)
    script = [1, -1]  # a probe (one request drafts), then a round in which every request drafts
    engine = scripted_engine(model, script, drafter)
    requests = engine.generate(PROMPTS, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))
    assert [r.output_ids for r in requests] == [greedy_continuation(model, p, MAX_NEW) for p in PROMPTS]
    probes, full = asked[0::2], asked[1::2]
    assert all(len(a) == 1 and a[0] <= engine._costs.probe_cap for a in probes)
    assert max(max(a) for a in full) == 4 and all(len(a) == len(PROMPTS) for a in full[:3])
