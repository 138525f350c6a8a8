"""Session bookkeeping of the tap-reading drafters: rollback, stale inputs, open validation, batching."""

from __future__ import annotations

import pytest
import torch
from deepspec_reference import REFERENCE, tensors

from specserve.decoding.sampling import SamplingParams
from specserve.drafters.base import DraftRequest
from specserve.drafters.checkpoint import load_drafter
from specserve.drafters.dspark_drafter import DSparkDrafter
from specserve.drafters.eagle3_drafter import Eagle3Drafter
from specserve.drafters.tap_session import BatchSampler
from specserve.errors import SessionError

DRAFTERS = {"dspark": lambda: DSparkDrafter(load_drafter(REFERENCE / "dspark_rnn" / "checkpoint")),
            "eagle3": lambda: Eagle3Drafter(load_drafter(REFERENCE / "eagle3" / "checkpoint"))}


@pytest.fixture(scope="module")
def sequence():
    inputs = tensors("inputs.safetensors")
    return inputs["target_hidden_states"][0], inputs["input_ids"][0].tolist()


def request(session, new_ids, committed_len, taps=None, max_tokens=4, **sampling):
    return DraftRequest(session, list(new_ids), committed_len, max_tokens, SamplingParams(**sampling),
                        position=committed_len, new_taps=taps)


def fresh_proposal(kind, sequence, n_committed, **sampling):
    taps, ids = sequence
    drafter = DRAFTERS[kind]()
    drafter.open("fresh", ids[:n_committed], taps[: n_committed - 1])
    return drafter.propose([request("fresh", [], n_committed, **sampling)])[0]


@pytest.mark.parametrize("kind", list(DRAFTERS))
def test_rollback_of_committed_tokens_equals_a_fresh_session(kind, sequence):
    taps, ids = sequence
    drafter = DRAFTERS[kind]()
    drafter.open("s", ids[:21], taps[:20])
    drafter.propose([request("s", [], 21)])
    drafter.propose([request("s", ids[21:24], 24, taps[20:23])])
    # the engine re-sends from token 19 (e.g. a retried round): everything after it is replaced
    again = drafter.propose([request("s", ids[19:26], 26, taps[18:25])])[0]
    assert again.error is None
    assert again.ids == fresh_proposal(kind, sequence, 26).ids


@pytest.mark.parametrize("kind", list(DRAFTERS))
def test_taps_that_do_not_reach_the_newest_token_are_refused_per_session(kind, sequence):
    taps, ids = sequence
    drafter = DRAFTERS[kind]()
    drafter.open("bad", ids[:21], taps[:20])
    drafter.open("good", ids[:21], taps[:20])
    drafter.propose([request("bad", [], 21), request("good", [], 21)])
    blocks = drafter.propose([request("bad", ids[21:23], 23, taps[20:21]),  # two tokens, one tap
                              request("good", ids[21:23], 23, taps[20:22])])
    assert blocks[0].error is not None and "taps" in blocks[0].error and blocks[0].ids == []
    assert blocks[1].error is None and blocks[1].ids == fresh_proposal(kind, sequence, 23).ids
    unknown = drafter.propose([request("nobody", [], 21)])[0]
    assert unknown.error is not None and "nobody" in unknown.error


@pytest.mark.parametrize("kind", list(DRAFTERS))
def test_open_checks_the_taps_shape(kind, sequence):
    taps, ids = sequence
    drafter = DRAFTERS[kind]()
    with pytest.raises(SessionError, match=r"shape \(20, 320\)"):
        drafter.open("s", ids[:21], taps[:21])
    with pytest.raises(SessionError, match="taps"):
        drafter.open("s", ids[:21], None)
    drafter.open("s", ids[:21], taps[:20])
    with pytest.raises(SessionError, match="already open"):
        drafter.open("s", ids[:21], taps[:20])
    drafter.close("s")
    drafter.close("s")  # closing twice is a no-op
    drafter.open("s", ids[:21], taps[:20])


@pytest.mark.parametrize("kind", list(DRAFTERS))
def test_a_ragged_batch_with_mixed_sampling_equals_one_session_at_a_time(kind, sequence):
    taps, ids = sequence
    other = tensors("inputs.safetensors")
    taps2, ids2 = other["target_hidden_states"][1], other["input_ids"][1].tolist()
    specs = [("a", ids[:21], taps[:20], {}), ("b", ids2[:33], taps2[:32], {"temperature": 1.0, "seed": 5}),
             ("c", ids[:12], taps[:11], {"temperature": 0.6, "top_k": 20, "seed": 9})]
    batched = DRAFTERS[kind]()
    for name, tokens, t, _ in specs:
        batched.open(name, tokens, t)
    blocks = batched.propose([request(name, [], len(tokens), max_tokens=2 + i, **s)
                              for i, (name, tokens, _, s) in enumerate(specs)])
    for i, (name, tokens, t, s) in enumerate(specs):
        alone = DRAFTERS[kind]()
        alone.open(name, tokens, t)
        single = alone.propose([request(name, [], len(tokens), max_tokens=2 + i, **s)])[0]
        assert blocks[i].ids == single.ids and len(single.ids) == min(2 + i, alone.max_block)
        assert (blocks[i].q is None) == (single.q is None) == (not s)
        if single.q is not None:
            assert torch.allclose(blocks[i].q, single.q, atol=1e-5)


@pytest.mark.parametrize("kind", list(DRAFTERS))
def test_a_round_without_budget_keeps_the_new_taps_for_the_next(kind, sequence):
    taps, ids = sequence
    drafter = DRAFTERS[kind]()
    drafter.open("s", ids[:21], taps[:20])
    drafter.propose([request("s", [], 21)])
    skipped = drafter.propose([request("s", ids[21:23], 23, taps[20:22], max_tokens=0)])[0]
    assert skipped.ids == [] and skipped.error is None
    later = drafter.propose([request("s", ids[23:25], 25, taps[22:24])])[0]
    assert later.ids == fresh_proposal(kind, sequence, 25).ids


@pytest.mark.parametrize("kind", list(DRAFTERS))
def test_proposing_again_without_new_tokens_repeats_the_proposal(kind, sequence):
    """Nothing of a round's drafts (block K/V, speculative slots) survives into the next round."""
    taps, ids = sequence
    drafter = DRAFTERS[kind]()
    drafter.open("s", ids[:21], taps[:20])
    first = drafter.propose([request("s", [], 21)])[0]
    assert drafter.propose([request("s", [], 21)])[0].ids == first.ids
    assert drafter.propose([request("s", [], 21)])[0].ids == first.ids


def test_a_greedy_batch_takes_the_first_argmax_and_returns_no_q():
    logits = torch.randn(3, 50)
    logits[1, 7] = logits[1, 30] = logits[1].max() + 1.0  # a tie: the first index wins, as logits_to_probs' one-hot
    greedy = BatchSampler([request(f"s{i}", [], 5) for i in range(3)], 2)
    ids, q = greedy(logits, 1)
    assert ids.tolist() == logits.argmax(-1).tolist() and ids[1] == 7 and q is None
    mixed = BatchSampler([request("a", [], 5), request("b", [], 5, temperature=1.0, seed=3)], 2)
    ids, q = mixed(logits[:2], 1)
    assert ids[0] == logits[0].argmax() and q.shape == (2, 50) and q[0, ids[0]] == 1.0
