"""Wire codecs: tensors in their own dtype, exact draft distributions, sampling parameters, leases."""

import pytest
import torch

from services.common.codec import (
    Code,
    ItemError,
    q_from_proto,
    q_to_proto,
    sampling_from_proto,
    sampling_to_proto,
    tensor_from_proto,
    tensor_to_proto,
)
from services.common.leases import LeaseTable
from specserve.decoding.rng import Stream, uniforms
from specserve.decoding.sampling import SamplingParams, logits_to_probs
from specserve.v1 import common_pb2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", [(3, 5), (0, 7), (2,)])
def test_tensors_round_trip_bit_for_bit(dtype, shape):
    t = torch.randn(shape).to(dtype)
    msg = tensor_to_proto(t)
    assert len(msg.data) == t.numel() * t.element_size()
    back = tensor_from_proto(msg, "taps")
    assert back.dtype == dtype and back.shape == t.shape and torch.equal(back, t)


def test_malformed_tensors_name_the_field():
    msg = tensor_to_proto(torch.zeros(2, 3))
    msg.shape[:] = [4, 3]
    with pytest.raises(ItemError, match="new_taps") as exc:
        tensor_from_proto(msg, "new_taps")
    assert exc.value.code == Code.INVALID_ARGUMENT
    with pytest.raises(ItemError, match="dtype"):
        tensor_from_proto(common_pb2.Tensor(shape=[1], data=b"\0\0\0\0"), "taps")


def probs(top_k: int, rows: int = 4, vocab: int = 100, temperature: float = 0.8) -> torch.Tensor:
    return logits_to_probs(torch.randn(rows, vocab) * 3, [SamplingParams(temperature=temperature, top_k=top_k)] * rows)


@pytest.mark.parametrize("top_k,encoding", [(10, "sparse"), (0, "dense")])
def test_draft_distributions_cross_the_wire_exactly(top_k, encoding):
    q = probs(top_k)
    msg = q_to_proto(q)
    assert msg.WhichOneof("encoding") == encoding
    back = q_from_proto(msg, 4, 100)
    assert back.dtype == torch.float32 and torch.equal(back, q)


def test_bf16_distributions_stay_exact():
    q = probs(5).to(torch.bfloat16)
    assert torch.equal(q_from_proto(q_to_proto(q), 4, 100), q.float())


def test_distributions_of_the_wrong_shape_are_refused():
    msg = q_to_proto(probs(10))
    with pytest.raises(ItemError, match="columns"):
        q_from_proto(msg, 4, 99)
    with pytest.raises(ItemError, match="rows"):
        q_from_proto(msg, 3, 100)
    dense = q_to_proto(probs(0))
    with pytest.raises(ItemError, match="shape"):
        q_from_proto(dense, 4, 101)
    msg.sparse.ids[0] = 100
    with pytest.raises(ItemError, match="ids"):
        q_from_proto(msg, 4, 100)


def test_sampling_params_round_trip_and_keep_the_random_stream():
    p = SamplingParams(temperature=0.7, top_p=0.9, top_k=5, seed=-3, max_tokens=10, stop=("x",), stop_token_ids=(4,),
                       ignore_eos=True)
    back = sampling_from_proto(sampling_to_proto(p))
    assert back == SamplingParams(0.7, 0.9, 5, (-3) % 2**64, 10, ("x",), (4,), True)
    assert torch.equal(uniforms([p.seed], Stream.SAMPLE, [3], 4), uniforms([back.seed], Stream.SAMPLE, [3], 4))
    assert sampling_from_proto(sampling_to_proto(SamplingParams())) == SamplingParams(seed=0)


def test_bad_sampling_params_are_item_errors():
    with pytest.raises(ItemError, match="seed"):
        sampling_from_proto(common_pb2.SamplingParams(temperature=1.0))
    with pytest.raises(ItemError, match="sampling.temperature"):
        sampling_from_proto(common_pb2.SamplingParams(temperature=-1.0, seed=1))


def test_leases_expire_and_replay_only_the_same_call():
    now = [0.0]
    table = LeaseTable(10.0, clock=lambda: now[0])
    table.open("a")
    table.open("b")
    table.remember("a", "verify", 5, b"x", "result")
    assert table.replay("a", "verify", 5, b"x") == "result"
    assert table.replay("a", "verify", 5, b"y") is None and table.replay("a", "open", 5, b"x") is None
    now[0] = 8.0
    table.touch("b")
    now[0] = 12.0
    assert table.expired() == ["a"]
