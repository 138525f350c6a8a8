"""SpecEngine runs unchanged over RemoteVerifier + RemoteDrafter, with the same output as in-process."""

import pytest
import torch
from svc_helpers import PROMPTS, VOCAB, drafter_server, greedy_reference, make_drafter, verifier_server
from tap_drafters import ScriptedCosts, TapCheckingDrafter

from services.clients import RemoteDrafter, RemoteVerifier
from specserve.decoding.budget import FixedK
from specserve.decoding.sampling import SamplingParams
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


class LoadAwareFixedK(FixedK):
    """Fixed k, but the engine consults its round costs every round (ScriptedCosts: who drafts is scripted)."""

    needs_load = True


def tapped_engine(start, servers, drafter, script=None, **client):
    verifier = RemoteVerifier([start(server) for server in servers], timeout_s=10, **client)
    remote = RemoteDrafter(start(drafter_server(drafter)), timeout_s=10)
    if script is None:
        return SpecEngine(verifier, remote, max_batch=8)
    engine = SpecEngine(verifier, remote, LoadAwareFixedK(4), max_batch=8)
    engine._costs = ScriptedCosts(script)  # rounds that draft for all (-1), none (0) or a probe's one (1)
    return engine


@pytest.mark.parametrize("script", [None, [0, 0, -1, 0, 1, 0, 0, -1, 1, 1, 0]], ids=["every-round", "scripted"])
def test_taps_flow_through_both_services(script, model, start):
    """Target taps travel verifier → engine → drafter as raw tensors, aligned with the committed tokens: those of
    rounds a request decodes plainly wait in the verifier (TakeTaps) and reach the drafter, in order, when it runs."""
    drafter = TapCheckingDrafter()
    engine = tapped_engine(start, [verifier_server(model, tap_layers=(1,))], drafter, script)
    requests = engine.generate(PROMPTS, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))
    assert [r.output_ids for r in requests] == greedy_reference(model, PROMPTS, MAX_NEW)
    assert drafter.checked > len(PROMPTS)
    assert all(r.id in drafter.received and len(r.stats.rounds) < MAX_NEW for r in requests), \
        "no request may have lost its drafter"
    for r in requests:
        received = drafter.taps(r.id)
        with torch.no_grad():
            hidden = model(torch.tensor([[*r.prompt_ids, *r.output_ids]]), output_hidden_states=True).hidden_states
        torch.testing.assert_close(received, hidden[2][0, : received.shape[0]], atol=2e-5, rtol=1e-4)
    assert engine.verifier.vocab_size == VOCAB and engine.verifier.tap_layers == (1,)


def test_held_taps_lost_with_a_replica_cost_only_those_requests_their_drafts(model, start, loop_thread, caplog):
    """A replica dies while requests decode plainly with their taps held there: re-opened on the other replica, those
    requests decode on without drafts (their held taps are gone), the others draft again; every output is still the
    target's greedy decoding."""
    drafter = TapCheckingDrafter()
    a, b = (verifier_server(model, tap_layers=(1,)) for _ in range(2))
    engine = tapped_engine(start, [a, b], drafter, [0, 0, 0, 0, *[-1] * 99], retry_down_s=60)
    first = engine.verifier._replicas[0]
    requests = [engine.add_request(p, SamplingParams(max_tokens=MAX_NEW, ignore_eos=True)) for p in PROMPTS]
    for _ in range(3):
        engine.step()
    on_first = {r.id for r in requests if engine.verifier._sessions[r.id].replica is first}
    assert 0 < len(on_first) < len(requests), "sessions are spread over both replicas"
    loop_thread.run(a.stop())
    while engine.has_unfinished():
        engine.step()
    assert [r.output_ids for r in requests] == greedy_reference(model, PROMPTS, MAX_NEW)
    assert {r.id for r in requests if r.id not in drafter.received} == on_first
    assert all(r.stats.accepted > 0 for r in requests if r.id not in on_first), "the others drafted after the fault"
    assert "held tap positions" in caplog.text


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
