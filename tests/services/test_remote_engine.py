"""SpecEngine runs unchanged over RemoteVerifier + RemoteDrafter, with the same output as in-process."""

import pytest
from svc_helpers import PROMPTS, VOCAB, drafter_server, greedy_reference, make_drafter, verifier_server

from services.clients import RemoteDrafter, RemoteVerifier
from specserve.decoding.sampling import SamplingParams
from specserve.drafters.base import DraftBlock
from specserve.drafters.ngram import NgramDrafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier, OpenRequest
from specserve.target.model import CausalLM

MAX_NEW = 20


@pytest.mark.parametrize("kind", ["ngram", "model"])
def test_greedy_through_services_equals_target_greedy(kind, model, start):
    verifier = RemoteVerifier(start(verifier_server(model)), timeout_s=10)
    drafter = RemoteDrafter(start(drafter_server(make_drafter(kind, model))), timeout_s=10)
    engine = SpecEngine(verifier, drafter, max_batch=8)
    requests = engine.generate(PROMPTS, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))
    assert [r.output_ids for r in requests] == greedy_reference(model, PROMPTS, MAX_NEW)
    stats = [r.stats for r in requests]
    assert sum(s.accepted for s in stats) > 0, "drafts must be accepted through the services"
    assert sum(s.verified - s.accepted for s in stats) > 0, "and rejected"


@pytest.mark.parametrize("top_k", [0, 8], ids=["dense-q", "sparse-q"])
def test_sampled_output_is_identical_to_in_process(top_k, model, start):
    """Same seeds → the same tokens as the embedded engine: q crosses the wire bit for bit (sparse or dense)."""
    params = [SamplingParams(temperature=1.0, top_k=top_k, seed=100 + i, max_tokens=MAX_NEW, ignore_eos=True)
              for i in range(len(PROMPTS))]
    local = SpecEngine(LocalVerifier(CausalLM(model)), make_drafter("model", model), max_batch=8)
    expected = [r.output_ids for r in local.generate(PROMPTS, params)]
    remote = SpecEngine(RemoteVerifier(start(verifier_server(model)), timeout_s=10),
                        RemoteDrafter(start(drafter_server(make_drafter("model", model))), timeout_s=10), max_batch=8)
    requests = remote.generate(PROMPTS, params)
    assert [r.output_ids for r in requests] == expected
    assert sum(r.stats.accepted for r in requests) > 0


class TapCheckingDrafter(NgramDrafter):
    """Prompt lookup that reads taps of layer 1 and refuses a round whose taps do not line up with the tokens."""

    target_layer_ids = (1,)

    def __init__(self):
        super().__init__(max_block=4)
        self.rows: dict[str, int] = {}
        self.checked = 0

    def open(self, session, token_ids, taps=None):
        assert taps is not None and taps.shape == (len(token_ids) - 1, 64), taps
        self.rows[session] = taps.shape[0]
        super().open(session, token_ids)

    def propose(self, batch):
        blocks = super().propose(batch)
        for i, item in enumerate(batch):
            base = item.committed_len - len(item.new_ids) - 1  # taps held before this round's rollback
            rows = min(self.rows[item.session], base) + (0 if item.new_taps is None else item.new_taps.shape[0])
            if rows != item.committed_len - 1:
                blocks[i] = DraftBlock(ids=[], error=f"{rows} tap rows for {item.committed_len} tokens")
            self.rows[item.session], self.checked = rows, self.checked + 1
        return blocks


def test_taps_flow_through_both_services(model, start):
    """Target taps travel verifier → engine → drafter as raw tensors, aligned with the committed tokens."""
    drafter = TapCheckingDrafter()
    verifier = RemoteVerifier(start(verifier_server(model, tap_layers=(1,))), timeout_s=10)
    engine = SpecEngine(verifier, RemoteDrafter(start(drafter_server(drafter)), timeout_s=10), max_batch=8)
    requests = engine.generate(PROMPTS, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))
    assert [r.output_ids for r in requests] == greedy_reference(model, PROMPTS, MAX_NEW)
    assert drafter.checked > len(PROMPTS)
    assert all(len(r.stats.rounds) < MAX_NEW for r in requests), "no request may have lost its drafter"
    assert verifier.vocab_size == VOCAB and verifier.tap_layers == (1,)


def test_a_gateway_without_a_drafter_asks_a_tapping_verifier_for_no_taps(model, start):
    """A verifier that taps for the drafters of other gateways: an engine with no drafter asks for no taps (they would
    cross the wire for nothing), and its output is still the target's greedy decoding."""
    verifier = RemoteVerifier(start(verifier_server(model, tap_layers=(1,))), timeout_s=10)
    engine = SpecEngine(verifier, None, max_batch=8)
    rounds = []
    engine.verify_observers.append(lambda items, results: rounds.append((items, results)))
    opened = verifier.open([OpenRequest("probe", PROMPTS[0], SamplingParams(), want_taps=False)])
    assert opened[0].error is None and opened[0].taps is None
    verifier.close("probe")
    requests = engine.generate(PROMPTS, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))
    assert [r.output_ids for r in requests] == greedy_reference(model, PROMPTS, MAX_NEW)
    assert rounds and all(not i.want_taps and r.taps is None for items, results in rounds
                          for i, r in zip(items, results, strict=True))
