"""Storage modes: byte counts (Qwen3-4B's shape), and the round-trip error of each dtype."""

import pytest
import torch

from specserve.data.storage import (
    FP8_REL,
    StorageMode,
    all_modes,
    decode,
    deepspec_bytes_per_token,
    encode,
    fp8_error_bound,
)
from specserve.errors import InvalidRequestError

H, M = 2560, 5  # Qwen3-4B


def test_deepspec_layout_of_qwen3_4b():
    assert deepspec_bytes_per_token(H, M) == 30_726


@pytest.mark.parametrize("taps,final,expected", [
    ("bf16", "bf16", 30_725),  # DeepSpec's content without its redundant second mask
    ("fp8", "bf16", 17_945),  # 5 + 2560*5 + 4*5 (scales) + 2*2560
    ("fp8", "fp8", 15_389),
    ("fp8", "none", 12_825),
    ("fp32", "fp32", 61_445),
])
def test_bytes_per_token(taps, final, expected):
    assert StorageMode(taps, final).bytes_per_token(H, M) == expected


def test_every_mode_is_listed_and_validated():
    assert len(all_modes()) == 12
    with pytest.raises(InvalidRequestError, match="taps"):
        StorageMode("int4", "none")


def _features(seed=0, tokens=64, groups=3, hidden=96):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, groups, hidden, generator=gen) * torch.tensor([1.0, 20.0, 0.05])[:groups, None]
    x[:, 1, 7] = 900.0  # a massive activation in one layer must not crush the others
    x[3] = 0.0  # an all-zero token
    return x.reshape(tokens, -1)


def test_fp8_error_is_within_the_documented_bound():
    x = _features()
    stored = encode(x, "fp8", 3)
    assert stored[""].dtype.name == "uint8" and stored["_scale"].shape == (64, 3)
    back = decode(stored[""], stored["_scale"], "fp8", 3)
    err = (back - x).abs()
    assert bool((err <= fp8_error_bound(x, 3) * (1 + 1e-6)).all())
    assert back[3].abs().max() == 0
    # the typical relative error is far below the bound on elements of normal size
    normal = x.abs() > 1e-2 * x.reshape(64, 3, -1).abs().amax(-1).repeat_interleave(96, dim=1)
    assert float((err[normal] / x.abs()[normal]).max()) <= FP8_REL


def test_bf16_and_fp32_round_trips():
    x = _features()
    assert torch.equal(decode(encode(x, "fp32", 3)[""], None, "fp32", 3), x)
    xb = x.to(torch.bfloat16)
    assert torch.equal(decode(encode(xb, "bf16", 3)[""], None, "bf16", 3), xb.float())
