"""The offline feature cache: round trip, shards, mmap reads, measured size, refusals and incomplete builds."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from specserve.data.cache_reader import FeatureCache
from specserve.data.cache_writer import build_cache
from specserve.data.errors import CacheFormatError, CacheMismatchError
from specserve.data.features import target_features
from specserve.data.fingerprint import fingerprint
from specserve.data.storage import StorageMode
from specserve.data.tokenization import ChatTokenizer
from specserve.target.model import CausalLM
from tiny_models import tiny_model

TAPS = (0, 2)
FP32 = StorageMode("fp32", "fp32")


@pytest.fixture(scope="module")
def tokenized(target, chat_rows):
    chat = ChatTokenizer(target.tokenizer)
    return [chat(r) for r in chat_rows]


def build(target, rows, path, mode=FP32, **kw):
    return build_cache(target, rows, path, TAPS, mode, name="tiny", progress=False, **kw)


def test_round_trip_is_exact_in_fp32(target, tokenized, tmp_path):
    manifest = build(target, tokenized, tmp_path / "c")
    cache = FeatureCache(tmp_path / "c", expect=fingerprint(target, TAPS))
    assert len(cache) == 3 and cache.num_tokens == sum(len(r) for r in tokenized) == manifest["tokens"]
    for i, src in enumerate(tokenized):
        row = cache.row(i)
        taps, final = target_features(target, src.input_ids.tolist(), TAPS)
        assert row.index == src.index
        assert row.input_ids.tolist() == src.input_ids.tolist() and row.loss_mask.tolist() == src.loss_mask.tolist()
        assert torch.equal(row.taps, taps) and torch.equal(row.final_hidden, final)
    assert manifest["target_layer_ids"] == list(TAPS) and manifest["target"]["name"] == "tiny"


@pytest.mark.parametrize("mode", [StorageMode("fp32", "fp32"), StorageMode("bf16", "bf16"),
                                  StorageMode("fp8", "bf16"), StorageMode("fp8", "none")])
def test_shards_and_measured_bytes_per_token(target, tokenized, tmp_path, mode):
    bpt = mode.bytes_per_token(target.hidden_size, len(TAPS))
    manifest = build(target, tokenized, tmp_path / "c", mode, shard_bytes=bpt * 40)  # ~40 tokens per shard
    assert len(manifest["shards"]) >= 2 and manifest["bytes_per_token"] == bpt
    on_disk = sum(f.stat().st_size for f in (tmp_path / "c").glob("shard_*/*.bin"))
    assert on_disk == bpt * manifest["tokens"]  # the measured size is the estimate, exactly
    cache = FeatureCache(tmp_path / "c")
    assert [cache.row(i).input_ids.tolist() for i in range(3)] == [r.input_ids.tolist() for r in tokenized]
    assert (cache.row(0).final_hidden is None) == (mode.final == "none")


def test_reads_are_memory_mapped(target, tokenized, tmp_path):
    build(target, tokenized, tmp_path / "c")
    cache = FeatureCache(tmp_path / "c")
    assert all(isinstance(a, np.memmap) and a.mode == "r" for a in cache._shards[0].values())
    # the reader pages the file in when a row is read, rather than holding a copy made at open
    ids = tmp_path / "c" / "shard_00000" / "input_ids.bin"
    patched = np.fromfile(ids, dtype=np.int32)
    patched[0] = 123
    patched.tofile(ids)
    assert cache.row(0).input_ids[0] == 123


def test_refuses_a_cache_for_another_target_tap_set_or_tokenizer(target, tiny_target_dir, tokenized, tmp_path):
    build(target, tokenized, tmp_path / "c")
    expected = fingerprint(target, TAPS)
    with pytest.raises(CacheMismatchError) as info:
        FeatureCache(tmp_path / "c", expect=fingerprint(target, (0, 1)))
    assert info.value.field == "target_layer_ids" and info.value.found == TAPS

    other = CausalLM(tiny_model("qwen3", seed=1, vocab=target.vocab_size), target.tokenizer)
    other.model.config.eos_token_id = target.config.eos_token_id
    with pytest.raises(CacheMismatchError, match="target weights hash"):
        FeatureCache(tmp_path / "c", expect=fingerprint(other, TAPS))

    wider = CausalLM(tiny_model("qwen3", vocab=target.vocab_size, layers=6), target.tokenizer)
    with pytest.raises(CacheMismatchError, match="target config hash"):
        FeatureCache(tmp_path / "c", expect=fingerprint(wider, TAPS))

    tokenizer = AutoTokenizer.from_pretrained(tiny_target_dir)
    tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(CacheMismatchError, match="tokenizer hash"):
        FeatureCache(tmp_path / "c", expect=dataclasses.replace(expected, tokenizer_hash=fingerprint(
            CausalLM(target.model, tokenizer), TAPS).tokenizer_hash))

    FeatureCache(tmp_path / "c", expect=fingerprint(CausalLM.from_pretrained(str(tiny_target_dir)), TAPS))


def test_refuses_a_taps_only_cache_when_p_t_is_needed(target, tokenized, tmp_path):
    build(target, tokenized, tmp_path / "c", StorageMode("fp8", "none"))
    with pytest.raises(CacheMismatchError, match="stored fields"):
        FeatureCache(tmp_path / "c", require_final=True)


def test_incomplete_or_corrupt_caches_are_refused(target, tokenized, tmp_path):
    path = tmp_path / "c"
    build(target, tokenized, path)
    with pytest.raises(CacheFormatError, match="already holds a feature cache"):
        build(target, tokenized, path)
    taps = path / "shard_00000" / "taps.bin"
    taps.write_bytes(taps.read_bytes()[:-4])
    with pytest.raises(CacheFormatError, match="incomplete or corrupt"):
        FeatureCache(path)
    (path / "manifest.json").unlink()
    with pytest.raises(CacheFormatError, match="interrupted build"):
        FeatureCache(path)
    with pytest.raises(CacheFormatError, match="interrupted cache build"):
        build(target, tokenized, path)
    build(target, tokenized, path, overwrite=True)
    assert json.loads((path / "manifest.json").read_text())["rows"] == 3


def test_overwrite_never_deletes_foreign_files(target, tokenized, tmp_path):
    path = tmp_path / "c"
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    with pytest.raises(CacheFormatError, match="not part of a feature cache"):
        build(target, tokenized, path, overwrite=True)
    assert (path / "notes.txt").read_text() == "mine"
