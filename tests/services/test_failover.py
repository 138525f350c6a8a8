"""Faults users must never see: a drafter dying mid-generation, a verifier replica dying mid-stream, lost sessions."""

import time

import grpc
import pytest
from svc_helpers import PROMPTS, VOCAB, drafter_server, greedy_reference, make_drafter, verifier_server

from services.clients import RemoteDrafter, RemoteVerifier
from services.drafter.server import DrafterServer
from specserve.decoding.sampling import SamplingParams
from specserve.drafters.ngram import NgramDrafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.target.model import CausalLM
from specserve.v1 import common_pb2, verifier_pb2_grpc
from tiny_models import tiny_model

MAX_NEW = 24
GREEDY = SamplingParams(max_tokens=MAX_NEW, ignore_eos=True)


def run(engine, prompts, params, fault_after: int, fault) -> list:
    """Generate, injecting `fault()` after `fault_after` steps; every request must finish normally."""
    requests = [engine.add_request(p, params if isinstance(params, SamplingParams) else params[i])
                for i, p in enumerate(prompts)]
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
        if steps == fault_after:
            assert all(len(r.output_ids) < MAX_NEW for r in requests), "the fault must hit mid-generation"
            fault()
    assert [r.finish_reason for r in requests] == ["length"] * len(prompts), [r.error for r in requests]
    return requests


def test_drafter_killed_mid_generation_every_request_still_matches(model, start, loop_thread):
    drafter = drafter_server(NgramDrafter(max_block=4))
    address = start(drafter)
    remote = RemoteDrafter(address, timeout_s=5, cooldown_s=0.2)
    engine = SpecEngine(RemoteVerifier(start(verifier_server(model)), timeout_s=10), remote, max_batch=8)
    requests = run(engine, PROMPTS, GREEDY, 2, lambda: loop_thread.run(drafter.stop()))
    assert [r.output_ids for r in requests] == greedy_reference(model, PROMPTS, MAX_NEW)
    assert sum(r.stats.accepted for r in requests) > 0, "drafts were used before the fault"

    # a drafter back on the same address serves new requests again
    port = int(address.rsplit(":", 1)[1])
    start(DrafterServer(drafter.settings.model_copy(update={"port": port}), NgramDrafter(max_block=4)))
    time.sleep(0.3)  # the client's cool-down after the failure
    [again] = engine.generate([PROMPTS[2]], GREEDY)
    assert again.output_ids == greedy_reference(model, [PROMPTS[2]], MAX_NEW)[0]
    assert again.stats.accepted > 0


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_verifier_replica_killed_mid_stream_every_request_still_matches(sampled, model, start, loop_thread):
    params = [SamplingParams(temperature=1.0 if sampled else 0.0, seed=50 + i, max_tokens=MAX_NEW, ignore_eos=True)
              for i in range(len(PROMPTS))]
    if sampled:
        local = SpecEngine(LocalVerifier(CausalLM(model)), make_drafter("model", model), max_batch=8)
        expected = [r.output_ids for r in local.generate(PROMPTS, params)]
    else:
        expected = greedy_reference(model, PROMPTS, MAX_NEW)
    # two replicas of the same target (separate weights and caches, like two processes)
    a, b = verifier_server(tiny_model("qwen3", vocab=VOCAB)), verifier_server(tiny_model("qwen3", vocab=VOCAB))
    verifier = RemoteVerifier([start(a), start(b)], timeout_s=10, retry_down_s=60)
    engine = SpecEngine(verifier, RemoteDrafter(start(drafter_server(make_drafter("model", model))), timeout_s=10),
                        max_batch=8)

    def kill_a():
        assert len(a.sessions) == 2 and len(b.sessions) == 2, "sessions are spread over both replicas"
        loop_thread.run(a.stop())

    requests = run(engine, PROMPTS, params, 3, kill_a)
    assert [r.output_ids for r in requests] == expected
    assert len(b.sessions) == 0, "every session moved to b was closed at the end"


def test_a_session_lost_by_its_replica_is_rebuilt_transparently(model, start):
    """NOT_FOUND (the replica restarted or evicted the session) → re-open from prompt + committed tokens."""
    address = start(verifier_server(model))
    engine = SpecEngine(RemoteVerifier(address, timeout_s=10), None, max_batch=8)
    stub = verifier_pb2_grpc.VerifierStub(grpc.insecure_channel(address))

    def forget_sessions_behind_the_clients_back():
        stub.Close(common_pb2.CloseSessionsRequest(sessions=[r.id for r in engine.running]))

    requests = run(engine, PROMPTS, GREEDY, 4, forget_sessions_behind_the_clients_back)
    assert [r.output_ids for r in requests] == greedy_reference(model, PROMPTS, MAX_NEW)


def test_all_replicas_down_fails_the_batch_not_the_loop(model, start, loop_thread):
    server = verifier_server(model)
    engine = SpecEngine(RemoteVerifier(start(server), timeout_s=2, retry_down_s=0.1), None, max_batch=8)
    requests = [engine.add_request(p, GREEDY) for p in PROMPTS]
    engine.step()
    loop_thread.run(server.stop())
    while engine.has_unfinished():
        engine.step()
    assert {r.finish_reason for r in requests} == {"error"}
    assert all("UNAVAILABLE" in r.error for r in requests)


class SlowOnceVerifier(LocalVerifier):
    """Misses the client's deadline on its second round (then answers normally); counts forwards."""

    def __init__(self, target):
        super().__init__(target)
        self.calls = 0

    def verify(self, batch):
        self.calls += 1
        if self.calls == 2:
            time.sleep(0.8)
        return super().verify(batch)


def test_a_missed_deadline_is_retried_idempotently(start):
    """The retry reaches the server while the first call still runs; it is answered from the cache, not re-applied."""
    model = tiny_model("qwen3", vocab=VOCAB)
    slow = SlowOnceVerifier(CausalLM(model))
    engine = SpecEngine(RemoteVerifier(start(verifier_server(verifier=slow)), timeout_s=0.5), None, max_batch=8)
    requests = engine.generate(PROMPTS, GREEDY)
    assert [r.output_ids for r in requests] == greedy_reference(model, PROMPTS, MAX_NEW)
    assert slow.calls == MAX_NEW - 1, "every round ran exactly one target forward"
