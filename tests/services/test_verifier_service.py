"""The Verifier gRPC service: per-item status, idempotent retries, stale calls, leases, load, health, limits."""

import time

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from svc_helpers import SPS, VOCAB, verifier_server

from services.common.codec import Code, sampling_to_proto, tensor_from_proto
from specserve.decoding.sampling import SamplingParams
from specserve.engine.verifier import LocalVerifier, OpenRequest, VerifyRequest
from specserve.target.model import CausalLM
from specserve.v1 import common_pb2, verifier_pb2, verifier_pb2_grpc

GREEDY = sampling_to_proto(SamplingParams())


def stub_for(address):
    return verifier_pb2_grpc.VerifierStub(grpc.insecure_channel(address))


def open_item(session, prompt, **kw):
    return verifier_pb2.VerifierOpenItem(session=session, prompt_ids=prompt, sampling=GREEDY, **kw)


def verify_item(session, committed_len, drafts=(), position=1):
    return verifier_pb2.VerifyItem(session=session, committed_len=committed_len, draft_ids=list(drafts),
                                   sampling=GREEDY, position=position)


def codes(results):
    return [Code.Name(r.status.code) for r in results]


def test_one_bad_item_never_fails_the_batch(start):
    stub = stub_for(start(verifier_server()))
    opened = stub.Open(verifier_pb2.VerifierOpenRequest(items=[
        open_item("a", [1, 2, 3]), open_item("empty", []), open_item("oov", [1, VOCAB]), open_item("b", [4, 5]),
        open_item("a", [1, 2, 3, 4]),
        verifier_pb2.VerifierOpenItem(session="hot", prompt_ids=[1], sampling=common_pb2.SamplingParams(
            temperature=0.7))])).results
    assert codes(opened) == ["OK", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "OK", "ALREADY_EXISTS",
                             "INVALID_ARGUMENT"]
    assert "seed" in opened[5].status.message and "prompt_ids" in opened[1].status.message
    verified = stub.Verify(verifier_pb2.VerifyRequest(items=[
        verify_item("a", 4, [7]), verify_item("ghost", 2), verify_item("b", 99), verify_item("b", 3, [VOCAB + 3]),
    ])).results
    assert codes(verified) == ["OK", "NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT"]
    assert verified[0].tokens[-1] >= 0 and len(verified[0].tokens) == verified[0].accepted + 1
    # the failed items left session b as it was
    [again] = stub.Verify(verifier_pb2.VerifyRequest(items=[verify_item("b", 3)])).results
    assert codes([again]) == ["OK"] and len(again.tokens) == 1


def test_results_equal_the_in_process_verifier(model, start):
    """Open/verify through the service return the LocalVerifier's tokens and taps exactly."""
    stub = stub_for(start(verifier_server(model, tap_layers=(0, 2))))
    local = LocalVerifier(CausalLM(model), tap_layers=(0, 2))
    [expected] = local.open([OpenRequest("s", [3, 1, 4, 1, 5], SamplingParams(seed=0))])
    [got] = stub.Open(verifier_pb2.VerifierOpenRequest(items=[open_item("s", [3, 1, 4, 1, 5])])).results
    assert got.token == expected.token
    taps = tensor_from_proto(got.taps, "taps")
    assert taps.shape == (5, 128) and torch.equal(taps, expected.taps)


def test_retry_is_idempotent_and_stale_calls_are_refused(start):
    stub = stub_for(start(verifier_server()))
    [first] = stub.Open(verifier_pb2.VerifierOpenRequest(items=[open_item("s", [1, 2, 3])])).results
    [repeat] = stub.Open(verifier_pb2.VerifierOpenRequest(items=[open_item("s", [1, 2, 3])])).results
    assert repeat == first  # a retried Open is answered from the cache
    round1 = verifier_pb2.VerifyRequest(items=[verify_item("s", 4, [9, 9, 9])])
    r1 = stub.Verify(round1).results[0]
    assert stub.Verify(round1).results[0] == r1  # retried round: same result, applied once
    n = 4 + len(r1.tokens)
    r2 = stub.Verify(verifier_pb2.VerifyRequest(items=[verify_item("s", n, position=len(r1.tokens) + 1)])).results[0]
    assert codes([r2]) == ["OK"]  # the retry did not advance the session twice
    stale = stub.Verify(round1).results[0]  # round 1 again, now older than the session's state
    assert codes([stale]) == ["FAILED_PRECONDITION"] and "stale" in stale.status.message
    different = verify_item("s", 4, [1])  # same committed_len, other content: not a retry
    assert codes(stub.Verify(verifier_pb2.VerifyRequest(items=[different])).results) == ["FAILED_PRECONDITION"]


def test_held_taps_are_taken_once_idempotently_and_in_position_order(model, start):
    """`defer_taps` holds a session's taps in the server; TakeTaps hands them over (the LocalVerifier's taps of every
    position, oldest first), a repeated TakeTaps is answered from the cache, and a stale or unknown one is refused."""
    stub = stub_for(start(verifier_server(model, tap_layers=(0, 2))))
    local = LocalVerifier(CausalLM(model), tap_layers=(0, 2))
    [opened] = local.open([OpenRequest("s", [3, 1, 4, 1, 5], SamplingParams(seed=0))])
    opening = verifier_pb2.VerifierOpenRequest(items=[open_item("s", [3, 1, 4, 1, 5], defer_taps=True)])
    [got] = stub.Open(opening).results
    assert codes([got]) == ["OK"] and not got.HasField("taps")
    item = verify_item("s", 6, [9, 2])
    item.defer_taps = True
    [verified] = stub.Verify(verifier_pb2.VerifyRequest(items=[item])).results
    assert not verified.HasField("taps")
    [expected] = local.verify([VerifyRequest("s", 6, [9, 2], None, SamplingParams(seed=0), position=1)])
    assert list(verified.tokens) == expected.tokens
    committed = 6 + len(expected.tokens)
    take = verifier_pb2.TakeTapsRequest(items=[verifier_pb2.TakeTapsItem(session="s", committed_len=committed)])
    [taken] = stub.TakeTaps(take).results
    assert torch.equal(tensor_from_proto(taken.taps, "taps"), torch.cat([opened.taps, expected.taps]))
    assert stub.TakeTaps(take).results[0] == taken  # a retry after a lost answer: the same taps
    stale = verifier_pb2.TakeTapsItem(session="s", committed_len=committed - 1)
    ghost = verifier_pb2.TakeTapsItem(session="ghost", committed_len=3)
    refused = stub.TakeTaps(verifier_pb2.TakeTapsRequest(items=[stale, ghost])).results
    assert codes(refused) == ["FAILED_PRECONDITION", "NOT_FOUND"] and "lost" in refused[1].status.message
    plain = verify_item("s", committed, position=committed - 5)
    plain.defer_taps = True
    stub.Verify(verifier_pb2.VerifyRequest(items=[plain]))
    [after] = stub.TakeTaps(verifier_pb2.TakeTapsRequest(items=[verifier_pb2.TakeTapsItem(
        session="s", committed_len=committed + 1)])).results
    assert tensor_from_proto(after.taps, "taps").shape == (1, 128), "taken taps are released: only the newest round's"


def test_idle_sessions_are_evicted_after_their_lease(start):
    stub = stub_for(start(verifier_server(lease_ttl_s=0.2)))
    stub.Open(verifier_pb2.VerifierOpenRequest(items=[open_item("idle", [1, 2]), open_item("busy", [3, 4])]))
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:  # keep "busy" leased
        stub.Verify(verifier_pb2.VerifyRequest(items=[verify_item("busy", 3)]))
        stub.Verify(verifier_pb2.VerifyRequest(items=[verify_item("busy", 3)]))  # retries renew the lease too
        time.sleep(0.05)
    [gone] = stub.Verify(verifier_pb2.VerifyRequest(items=[verify_item("idle", 3)])).results
    assert codes([gone]) == ["NOT_FOUND"] and "evicted" in gone.status.message
    assert stub.GetLoad(verifier_pb2.GetLoadRequest()).running_sessions == 1


def test_load_and_info(start):
    stub = stub_for(start(verifier_server(tap_layers=(1,), max_sessions=2, plain_sps={1: 95.0, 4: 70.0})))
    stub.Open(verifier_pb2.VerifierOpenRequest(items=[open_item("a", [1, 2, 3]), open_item("b", [4])]))
    [full] = stub.Open(verifier_pb2.VerifierOpenRequest(items=[open_item("c", [5])])).results
    assert codes([full]) == ["RESOURCE_EXHAUSTED"]
    load = stub.GetLoad(verifier_pb2.GetLoadRequest())
    assert {p.tokens: p.steps_per_second for p in load.sps} == SPS
    assert {p.tokens: p.steps_per_second for p in load.plain_sps} == {1: 95.0, 4: 70.0}
    assert (load.running_sessions, load.cached_tokens, load.max_sessions, load.queue_depth) == (2, 4, 2, 0)
    assert load.padding_cost == pytest.approx(0.5), "an fp32 CPU target skips padded rows in its linears"
    info = stub.GetInfo(common_pb2.GetInfoRequest())
    assert (info.vocab_size, info.max_context, list(info.tap_layers), info.dtype) == (VOCAB, 512, [1], "float32")
    assert list(info.eos_token_ids) == [VOCAB - 1]


def test_sps_is_profiled_at_start_up_when_not_given(start):
    server = verifier_server(sps=None, sps_sizes=(1, 4), sps_context=8, sps_repeats=1)
    stub = stub_for(start(server))
    sps = {p.tokens: p.steps_per_second for p in stub.GetLoad(verifier_pb2.GetLoadRequest()).sps}
    assert set(sps) == {1, 4} and sps[1] >= sps[4] > 0
    assert len(server.target.cache) == 0, "profiling sessions are closed"


def test_health_reflection_and_draining(start, loop_thread):
    server = verifier_server(shutdown_delay_s=0.6)
    address = start(server)
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ("", "specserve.v1.Verifier"):
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == serving
    listed = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in listed.list_services_response.service}
    assert {"specserve.v1.Verifier", "grpc.health.v1.Health"} <= names
    stub = verifier_pb2_grpc.VerifierStub(channel)
    stub.Open(verifier_pb2.VerifierOpenRequest(items=[open_item("s", [1, 2])]))

    stopping = loop_thread.submit(server.stop())
    time.sleep(0.2)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as refused:
        stub.Open(verifier_pb2.VerifierOpenRequest(items=[open_item("new", [1])]))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert codes(stub.Verify(verifier_pb2.VerifyRequest(items=[verify_item("s", 3)])).results) == ["OK"]
    assert stub.GetLoad(verifier_pb2.GetLoadRequest()).draining
    stopping.result(5)
    with pytest.raises(grpc.RpcError) as down:
        stub.GetLoad(verifier_pb2.GetLoadRequest(), timeout=2)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE


def test_messages_above_the_limit_are_refused(start):
    stub = stub_for(start(verifier_server(max_message_bytes=1 << 20)))
    with pytest.raises(grpc.RpcError) as big:
        stub.Open(verifier_pb2.VerifierOpenRequest(items=[open_item("x" * (2 << 20), [1])]))
    assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
