"""LocalVerifier: batched verification equals one-at-a-time verification; stale calls are refused."""

import pytest
import torch

from specserve.decoding.sampling import SamplingParams, logits_to_probs
from specserve.engine.verifier import LocalVerifier, OpenRequest, VerifyRequest
from specserve.errors import SessionError
from specserve.target.model import CausalLM
from tiny_models import tiny_model

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 9], [i % 32 for i in range(20, 45)], [3, 1, 4, 1, 5]]
DRAFTS = [[5, 6, 7, 8], [], [1, 2], [3, 3, 3, 3, 3, 3]]


def run(params_list, sessions_per_call, with_q):
    model = tiny_model("qwen3", vocab=32)
    verifier = LocalVerifier(CausalLM(model), tap_layers=(1, 2))
    opened = verifier.open([OpenRequest(str(i), p, sp) for i, (p, sp) in enumerate(zip(PROMPTS, params_list))])
    gen = torch.Generator().manual_seed(0)
    items = []
    for i, (prompt, drafts) in enumerate(zip(PROMPTS, DRAFTS)):
        q = logits_to_probs(torch.randn(len(drafts), 32, generator=gen), [params_list[i]] * len(drafts)) \
            if with_q and drafts else None
        items.append(VerifyRequest(str(i), len(prompt) + 1, drafts, q, params_list[i], position=1))
    results = []
    for start in range(0, len(items), sessions_per_call):
        results.extend(verifier.verify(items[start: start + sessions_per_call]))
    return opened, results


@pytest.mark.parametrize("temperature,with_q", [(0.0, False), (1.0, False), (1.0, True), (0.7, True)])
def test_batched_verify_equals_one_at_a_time(temperature, with_q):
    params = [SamplingParams(temperature=temperature, top_k=8 if with_q else 0, seed=10 + i) for i in range(4)]
    opened_a, batched = run(params, sessions_per_call=4, with_q=with_q)
    opened_b, single = run(params, sessions_per_call=1, with_q=with_q)
    assert [o.token for o in opened_a] == [o.token for o in opened_b]
    for a, b in zip(batched, single):
        assert (a.accepted, a.tokens) == (b.accepted, b.tokens)
        torch.testing.assert_close(a.taps, b.taps, atol=2e-5, rtol=1e-4)
        assert a.taps.shape[0] == a.accepted + 1
        assert len(a.tokens) == a.accepted + 1


def test_stale_committed_len_is_refused():
    verifier = LocalVerifier(CausalLM(tiny_model("qwen3", vocab=32)))
    params = SamplingParams(seed=1)
    verifier.open([OpenRequest("s", [1, 2, 3], params)])
    with pytest.raises(SessionError, match="committed_len 3 is stale"):
        verifier.verify([VerifyRequest("s", 3, [1], None, params, position=1)])
    result = verifier.verify([VerifyRequest("s", 4, [1], None, params, position=1)])[0]
    with pytest.raises(SessionError, match="stale"):  # the same call again: the session has moved on
        verifier.verify([VerifyRequest("s", 4, [1], None, params, position=1)])
    verifier.verify([VerifyRequest("s", 4 + len(result.tokens), [], None, params, position=1 + len(result.tokens))])


def test_prompt_taps_returned_on_open():
    model = tiny_model("qwen3", vocab=32)
    verifier = LocalVerifier(CausalLM(model), tap_layers=(0, 2))
    opened = verifier.open([OpenRequest("s", PROMPTS[2], SamplingParams(seed=0))])[0]
    with torch.no_grad():
        hidden = model(torch.tensor([PROMPTS[2]]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(opened.taps, torch.cat([hidden[1], hidden[3]], -1)[0], atol=2e-5, rtol=1e-4)


def test_a_session_that_wants_no_taps_gets_none_and_the_others_theirs():
    """`want_taps=False` (a request that never drafts): no taps for it, the same tokens and the same taps for the
    others; a batch in which no item wants them taps no layer at all."""
    params = SamplingParams(seed=0)
    results = {}
    for wants in ((True, True), (False, True), (False, False)):
        verifier = LocalVerifier(CausalLM(tiny_model("qwen3", vocab=32)), tap_layers=(0, 2))
        opened = verifier.open([OpenRequest(str(i), PROMPTS[i], params, want_taps=w) for i, w in enumerate(wants)])
        verified = verifier.verify([VerifyRequest(str(i), len(PROMPTS[i]) + 1, DRAFTS[i], None, params, position=1,
                                                  want_taps=w) for i, w in enumerate(wants)])
        results[wants] = opened, verified
        for w, o, v in zip(wants, opened, verified):
            assert (o.taps is not None, v.taps is not None) == (w, w)
    (opened_all, verified_all), (opened_one, verified_one) = results[(True, True)], results[(False, True)]
    assert [(v.accepted, v.tokens) for v in verified_one] == [(v.accepted, v.tokens) for v in verified_all]
    assert [o.token for o in results[(False, False)][0]] == [o.token for o in opened_all]
    torch.testing.assert_close(opened_one[1].taps, opened_all[1].taps)
    torch.testing.assert_close(verified_one[1].taps, verified_all[1].taps)


def test_resume_on_a_fresh_replica_continues_identically():
    """Failover: a second verifier re-opened from prompt + committed tokens verifies exactly as the first."""
    model = tiny_model("qwen3", vocab=32)
    params = SamplingParams(temperature=1.0, seed=3)
    first = LocalVerifier(CausalLM(model))
    token = first.open([OpenRequest("s", PROMPTS[0], params)])[0].token
    committed = [*PROMPTS[0], token]
    for position in range(1, 4):
        result = first.verify([VerifyRequest("s", len(committed), [1, 2], None, params, position)])[0]
        committed += result.tokens
    replica = LocalVerifier(CausalLM(model))
    resumed = replica.open([OpenRequest("s", committed[:-1], params, resume_token=committed[-1])])[0]
    assert resumed.token == committed[-1]
    item = VerifyRequest("s", len(committed), [3, 4, 5], None, params, position=len(committed) - len(PROMPTS[0]))
    a, b = first.verify([item])[0], replica.verify([item])[0]
    assert (a.accepted, a.tokens) == (b.accepted, b.tokens)
