"""CausalLM: ragged batched forward equals transformers' own forward; rollback equals fresh prefill."""

import pytest
import torch

from specserve.errors import ContextLengthError, ModelLoadError
from specserve.target.model import CausalLM
from tiny_models import ARCHS, tiny_model

PROMPTS = [[1, 5, 7, 9, 11, 13, 2, 3, 4, 5, 6, 7], [3, 4, 5], list(range(40, 60)), [4]]
EXTENSIONS = [[5, 6], [7], [1, 2, 3, 4], [8, 9, 10]]
TAPS = (0, 2)


def reference(model, ids):
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    taps = torch.cat([out.hidden_states[layer + 1] for layer in TAPS], dim=-1)[0]
    return out.logits[0], taps


@pytest.mark.parametrize("arch", ARCHS)
def test_ragged_batch_matches_full_forward(arch):
    """Prefill + an out-of-order extension of 4 ragged sessions reproduce logits and taps of HF forward."""
    model = tiny_model(arch)
    lm = CausalLM(model)
    names = [f"s{i}" for i in range(len(PROMPTS))]
    for name in names:
        lm.open(name)
    first = lm.forward(names, PROMPTS, taps=TAPS)
    order = [2, 0, 3, 1]
    second = lm.forward([names[i] for i in order], [EXTENSIONS[i] for i in order], taps=TAPS)
    for i, prompt in enumerate(PROMPTS):
        logits, taps = reference(model, prompt + EXTENSIONS[i])
        n, row = len(prompt), order.index(i)
        torch.testing.assert_close(first.logits[i, :n], logits[:n], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(first.taps[i, :n], taps[:n], atol=2e-5, rtol=1e-4)
        m = len(EXTENSIONS[i])
        torch.testing.assert_close(second.logits[row, :m], logits[n:], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(second.taps[row, :m], taps[n:], atol=2e-5, rtol=1e-4)
        assert lm.length(names[i]) == n + m


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_rollback_equals_fresh_prefill(arch):
    """After any accept/reject pattern, continuing from a truncated cache equals a fresh prefill."""
    model = tiny_model(arch)
    lm = CausalLM(model)
    gen = torch.Generator().manual_seed(3)
    history = torch.randint(0, 128, (12,), generator=gen).tolist()
    lm.open("a")
    lm.open("other")
    lm.forward(["a", "other"], [history[:6], [1, 2, 3]])
    committed = history[:6]
    for step in range(8):
        drafts = torch.randint(0, 128, (4,), generator=gen).tolist()
        lm.forward(["a"], [drafts])
        keep = step % 5  # accept 0..4 drafts
        lm.truncate("a", len(committed) + keep)
        committed = committed + drafts[:keep]
        probe = torch.randint(0, 128, (2,), generator=gen).tolist()
        out = lm.forward(["a"], [probe])
        logits, _ = reference(model, committed + probe)
        torch.testing.assert_close(out.logits[0], logits[-2:], atol=2e-5, rtol=1e-4)
        lm.truncate("a", len(committed))


def test_close_compacts_without_disturbing_other_sessions():
    """Closing a session moves the last slot into the hole; the moved session's cache stays valid."""
    model = tiny_model("qwen3")
    lm = CausalLM(model)
    prompts = {"a": [1, 2, 3], "b": [4, 5, 6, 7], "c": [8, 9, 10, 11, 12]}
    for name in prompts:
        lm.open(name)
    lm.forward(list(prompts), list(prompts.values()))
    lm.close("a")
    assert lm.cache.sessions() == ["c", "b"]
    out = lm.forward(["b", "c"], [[20], [21]])
    torch.testing.assert_close(out.logits[0, 0], reference(model, prompts["b"] + [20])[0][-1], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits[1, 0], reference(model, prompts["c"] + [21])[0][-1], atol=2e-5, rtol=1e-4)


def test_last_only_logits_are_each_sessions_last_position():
    model = tiny_model("llama")
    lm = CausalLM(model)
    for i in range(3):
        lm.open(str(i))
    out = lm.forward(["0", "1", "2"], PROMPTS[:3], last_only=True)
    assert out.logits.shape == (3, 128)
    for i in range(3):
        torch.testing.assert_close(out.logits[i], reference(model, PROMPTS[i])[0][-1], atol=2e-5, rtol=1e-4)


def test_context_window_is_enforced():
    lm = CausalLM(tiny_model("qwen3"), max_len=16)
    lm.open("a")
    with pytest.raises(ContextLengthError, match="context window of 16"):
        lm.forward(["a"], [list(range(17))])


def test_unknown_path_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="nope"):
        CausalLM.from_pretrained(str(tmp_path / "nope"))


def test_from_pretrained_loads_model_and_tokenizer(tiny_target_dir):
    lm = CausalLM.from_pretrained(str(tiny_target_dir))
    assert lm.tokenizer is not None and lm.vocab_size == len(lm.tokenizer)
    assert lm.eos_token_ids == (lm.tokenizer.convert_tokens_to_ids("<|im_end|>"),)


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
def test_bf16_batched_forward_matches_hf_bf16(arch):
    """bf16 is a GPU path; on CPU we only check it computes the same thing as transformers in bf16."""
    model = tiny_model(arch).to(torch.bfloat16)
    lm = CausalLM(model)
    for i in range(2):
        lm.open(str(i))
    out = lm.forward(["0", "1"], PROMPTS[:2])
    assert lm.cache.dtype == torch.bfloat16
    for i in range(2):
        with torch.no_grad():
            ref = model(torch.tensor([PROMPTS[i]])).logits[0].float()
        n = len(PROMPTS[i])
        torch.testing.assert_close(out.logits[i, :n], ref, atol=0.1, rtol=0.05)
        assert (out.logits[i, :n].argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
