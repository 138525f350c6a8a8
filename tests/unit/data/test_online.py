"""Cache and online modes feed the loss the same batches: bitwise for fp32, within the bound for fp8."""

import pytest
import torch

from specserve.data.cache_reader import FeatureCache
from specserve.data.cache_writer import build_cache
from specserve.data.online import OnlineFeatures
from specserve.data.storage import FP8_REL, StorageMode, fp8_error_bound
from specserve.data.tokenization import ChatTokenizer

TAPS = (0, 1, 2)
BATCH = [2, 0, 1]


@pytest.fixture(scope="module")
def tokenized(target, chat_rows):
    chat = ChatTokenizer(target.tokenizer)
    return [chat(r) for r in chat_rows]


def both(target, tokenized, path, mode):
    build_cache(target, tokenized, path, TAPS, mode, progress=False)
    online = OnlineFeatures(target, tokenized, TAPS, final=mode.stores_final)
    return FeatureCache(path, expect=online.fingerprint()).batch(BATCH), online.batch(BATCH)


def test_fp32_cache_and_online_batches_are_bitwise_identical(target, tokenized, tmp_path):
    cached, online = both(target, tokenized, tmp_path / "c", StorageMode("fp32", "fp32"))
    for field in ("indices", "input_ids", "loss_mask", "lengths", "taps", "final_hidden"):
        a, b = getattr(cached, field), getattr(online, field)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), field
    assert cached.taps.dtype == torch.float32 and cached.input_ids.dtype == torch.long


def test_fp8_cache_is_within_the_documented_bound_of_online(target, tokenized, tmp_path):
    cached, online = both(target, tokenized, tmp_path / "c", StorageMode("fp8", "fp8"))
    assert torch.equal(cached.input_ids, online.input_ids) and torch.equal(cached.loss_mask, online.loss_mask)
    for field, groups in (("taps", len(TAPS)), ("final_hidden", 1)):
        exact, stored = getattr(online, field), getattr(cached, field)
        for r, length in enumerate(online.lengths.tolist()):
            x = exact[r, :length]
            assert bool(((stored[r, :length] - x).abs() <= fp8_error_bound(x, groups) * (1 + 1e-6)).all()), field
        rel = (stored - exact).norm() / exact.norm()
        assert float(rel) < FP8_REL / 2  # overall: a few percent


def test_taps_only_mode_has_no_final_hidden(target, tokenized, tmp_path):
    cached, online = both(target, tokenized, tmp_path / "c", StorageMode("fp32", "none"))
    assert cached.final_hidden is None and online.final_hidden is None
    assert torch.equal(cached.taps, online.taps)


def test_online_features_can_enter_autograd(target, tokenized):
    batch = OnlineFeatures(target, tokenized, TAPS).batch([0])
    assert not batch.taps.is_inference() and not batch.final_hidden.is_inference()
    weight = torch.ones(batch.taps.shape[-1], requires_grad=True)
    (batch.taps @ weight).sum().backward()
    assert weight.grad is not None
