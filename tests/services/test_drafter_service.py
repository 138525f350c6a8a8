"""The Drafter gRPC service: per-item status, idempotent retries, stale calls, leases, exact q, draining."""

import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from svc_helpers import drafter_server

from services.clients import RemoteDrafter
from services.common.codec import Code, sampling_to_proto
from services.common.transport import RemoteCallError
from specserve.decoding.sampling import SamplingParams
from specserve.drafters.base import DraftRequest
from specserve.drafters.draft_lm import DraftModelDrafter
from specserve.drafters.ngram import NgramDrafter
from specserve.target.model import CausalLM
from specserve.v1 import common_pb2, drafter_pb2, drafter_pb2_grpc

GREEDY = sampling_to_proto(SamplingParams())
TOKENS = [1, 2, 3, 1, 2, 3, 1, 2]


def stub_for(address):
    return drafter_pb2_grpc.DrafterStub(grpc.insecure_channel(address))


def open_request(*items):
    return drafter_pb2.DrafterOpenRequest(items=[drafter_pb2.DrafterOpenItem(session=s, token_ids=t) for s, t in items])


def propose(session, committed_len, new_ids=(), max_tokens=4):
    return drafter_pb2.ProposeItem(session=session, new_ids=list(new_ids), committed_len=committed_len,
                                   max_tokens=max_tokens, sampling=GREEDY, position=1)


def codes(results):
    return [Code.Name(r.status.code) for r in results]


def test_per_item_status_retries_and_stale_calls(start):
    stub = stub_for(start(drafter_server(NgramDrafter(max_block=4))))
    opened = stub.Open(open_request(("a", TOKENS), ("empty", []), ("a", [5]))).results
    assert codes(opened) == ["OK", "INVALID_ARGUMENT", "ALREADY_EXISTS"]
    assert codes(stub.Open(open_request(("a", TOKENS))).results) == ["OK"]  # a verbatim retry is fine

    first = drafter_pb2.ProposeRequest(items=[propose("a", 8), propose("ghost", 3)])
    results = stub.Propose(first).results
    assert codes(results) == ["OK", "NOT_FOUND"] and list(results[0].ids) == [3, 1, 2]
    assert stub.Propose(first).results[0] == results[0]  # retried call: answered from the cache

    step = drafter_pb2.ProposeRequest(items=[propose("a", 10, new_ids=[3, 1])])
    assert codes(stub.Propose(step).results) == ["OK"]
    stale = stub.Propose(drafter_pb2.ProposeRequest(items=[propose("a", 9, new_ids=[3])])).results[0]
    assert codes([stale]) == ["FAILED_PRECONDITION"] and "stale" in stale.status.message
    gap = stub.Propose(drafter_pb2.ProposeRequest(items=[propose("a", 14, new_ids=[1])])).results[0]
    assert codes([gap]) == ["FAILED_PRECONDITION"] and "skips" in gap.status.message
    twice = stub.Propose(drafter_pb2.ProposeRequest(items=[propose("a", 10), propose("a", 10)])).results
    assert codes(twice) == ["OK", "INVALID_ARGUMENT"]


def test_idle_sessions_are_evicted(start):
    stub = stub_for(start(drafter_server(NgramDrafter(), lease_ttl_s=0.2)))
    stub.Open(open_request(("s", TOKENS)))
    time.sleep(0.6)
    [gone] = stub.Propose(drafter_pb2.ProposeRequest(items=[propose("s", 8)])).results
    assert codes([gone]) == ["NOT_FOUND"]


@pytest.mark.parametrize("top_k", [0, 5], ids=["dense-q", "sparse-q"])
def test_remote_blocks_equal_in_process_blocks_exactly(top_k, model, start):
    """ids and q of a sampling draft LM arrive bit for bit; RemoteDrafter mirrors the Drafter protocol."""
    local = DraftModelDrafter(CausalLM(model), max_block=3)
    remote = RemoteDrafter(start(drafter_server(DraftModelDrafter(CausalLM(model), max_block=3))))
    assert (remote.max_block, remote.vocab_size, remote.target_layer_ids) == (3, 64, ())
    params = SamplingParams(temperature=0.9, top_k=top_k, seed=7)
    for d in (local, remote):
        d.open("s", TOKENS, None)
    for position, new in ((1, []), (4, [9, 9, 9])):
        committed = len(TOKENS) + position - 1
        batch = [DraftRequest("s", new, committed, 3, params, position)]
        [want], [got] = local.propose(batch), remote.propose(batch)
        assert got.ids == want.ids and got.q.shape == want.q.shape and torch.equal(got.q, want.q)
        assert got.confidence is None


def test_open_failure_raises_and_item_errors_become_block_errors(start):
    remote = RemoteDrafter(start(drafter_server(NgramDrafter())))
    remote.open("s", TOKENS, None)
    with pytest.raises(RemoteCallError) as exc:
        remote.open("s", [1], None)
    assert exc.value.code == grpc.StatusCode.ALREADY_EXISTS
    [block] = remote.propose([DraftRequest("unknown", [], 3, 4, SamplingParams(), 1)])
    assert block.ids == [] and "NOT_FOUND" in block.error


class SlowDrafter(NgramDrafter):
    def propose(self, batch):
        time.sleep(0.5)
        return super().propose(batch)


def test_shutdown_reports_not_serving_and_drains_in_flight_calls(start, loop_thread):
    server = drafter_server(SlowDrafter(), shutdown_delay_s=0.3, grace_s=5.0)
    channel = grpc.insecure_channel(start(server))
    stub, health = drafter_pb2_grpc.DrafterStub(channel), health_pb2_grpc.HealthStub(channel)
    stub.Open(open_request(("s", TOKENS)))
    in_flight = stub.Propose.future(drafter_pb2.ProposeRequest(items=[propose("s", 8)]))
    time.sleep(0.1)
    stopping = loop_thread.submit(server.stop())
    time.sleep(0.1)
    check = health.Check(health_pb2.HealthCheckRequest(service="specserve.v1.Drafter"))
    assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert codes(in_flight.result(5).results) == ["OK"]  # the call in flight finished
    stopping.result(10)
    with pytest.raises(grpc.RpcError):
        stub.GetInfo(common_pb2.GetInfoRequest(), timeout=1)
