"""The swapped few-row GEMM: same products as F.linear, only where it is faster, never elsewhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from specserve import cpu_linear
from specserve.cpu_linear import use_cpu_linears
from specserve.target.model import CausalLM
from tests.tiny_models import ARCHS, tiny_model


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _pair(bias: bool) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    plain = nn.Linear(48, 80, bias=bias)
    swapped = nn.Linear(48, 80, bias=bias)
    swapped.load_state_dict(plain.state_dict())
    assert use_cpu_linears(swapped) == 1
    return plain, swapped


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", [(48,), (1, 48), (1, 1, 48), (2, 3, 48), (1, 4, 48), (8, 48), (3, 5, 48)])
def test_products_equal_f_linear(threads, n_threads, shape, bias):
    threads(n_threads)
    plain, swapped = _pair(bias)
    x = torch.randn(*shape)
    expected, got = plain(x), swapped(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_swapped_only_up_to_the_row_limit(threads, monkeypatch):
    """Counts torch.mm calls: the swapped path issues one, F.linear none."""
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a: calls.append(1) or real_mm(*a))
    _, swapped = _pair(False)
    for n_threads, limit in ((1, cpu_linear.MAX_ROWS_ONE_THREAD), (2, cpu_linear.MAX_ROWS_THREADS)):
        threads(n_threads)
        calls.clear()
        swapped(torch.randn(limit, 48))
        assert calls == [1], f"{limit} rows on {n_threads} threads should take the swapped product"
        calls.clear()
        swapped(torch.randn(limit + 1, 48))
        assert calls == [], f"{limit + 1} rows on {n_threads} threads should keep F.linear"


class _OwnForward(nn.Linear):  # a subclass may override forward: it is left alone
    pass


def test_skips_other_dtypes_layouts_and_subclasses():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).to(torch.bfloat16), nn.Linear(4, 6), nn.Embedding(3, 4),
                          _OwnForward(4, 4))
    model[2].weight.data = model[2].weight.data.t().contiguous().t()  # a stored transpose (DSpark's W2)
    assert use_cpu_linears(model) == 1
    assert "forward" in vars(model[0])
    assert not any("forward" in vars(model[i]) for i in (1, 2, 4))
    assert use_cpu_linears(model) == 1  # idempotent: patched again, not wrapped twice
    x = torch.randn(2, 4)
    torch.testing.assert_close(model[0](x), nn.functional.linear(x, model[0].weight, model[0].bias))


def test_gradients_flow(threads):
    threads(2)
    plain, swapped = _pair(True)
    x = torch.randn(3, 48)
    plain(x).square().sum().backward()
    swapped(x).square().sum().backward()
    torch.testing.assert_close(swapped.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)


def test_target_adapter_switches_its_linears_and_can_opt_out(threads, monkeypatch):
    threads(2)  # the test suite runs one thread; two route up to 8 rows through the swapped product
    on = CausalLM(tiny_model("qwen3"))
    off = CausalLM(tiny_model("qwen3"), cpu_linears=False)
    patched = lambda lm: sum("forward" in vars(m) for m in lm.model.modules() if type(m) is nn.Linear)  # noqa: E731
    n_linear = sum(type(m) is nn.Linear for m in on.model.modules())
    assert patched(on) == n_linear > 0
    assert patched(off) == 0
    assert (on.padding_cost, off.padding_cost) == (0.5, 1.0), "padded rows skipped by the linears cost less"
    for lm in (on, off):
        lm.open("s")
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a: calls.append(1) or real_mm(*a))
    prompt = [[3, 5, 7, 9, 11, 2]]
    a = on.forward(["s"], prompt).logits
    assert len(calls) == n_linear, "every linear of a 6-token step should take the swapped product"
    calls.clear()
    b = off.forward(["s"], prompt).logits
    assert calls == []
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_real_rows_computes_only_the_listed_rows(monkeypatch):
    plain, switched = _pair(True)
    x = torch.randn(3, 4, 48)  # 3 sessions padded to 4 tokens; real counts 4, 1, 2
    counts = torch.tensor([4, 1, 2])
    real = (torch.arange(4)[None, :] < counts[:, None]).flatten()
    seen = []
    product = cpu_linear._product
    monkeypatch.setattr(cpu_linear, "_product", lambda m, flat: seen.append(flat.shape[0]) or product(m, flat))
    with cpu_linear.real_rows(12, real.nonzero().squeeze(1)):
        got = switched(x)
        other = switched(torch.randn(5, 48))  # a product of another row count is left alone
    assert seen == [7, 5]
    expected = plain(x).reshape(12, 80)
    got = got.reshape(12, 80)
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[~real], torch.zeros(5, 80))
    assert other.shape == (5, 80)
    seen.clear()
    switched(x)  # outside the block every row is computed again
    assert seen == [12]


@pytest.mark.parametrize("arch", ARCHS)
def test_ragged_target_forward_skips_padding_and_matches_one_session_forwards(arch, threads, monkeypatch):
    threads(2)  # 7 real rows: the swapped product, on the packed rows
    lm = CausalLM(tiny_model(arch))
    taps = (0, lm.num_layers - 1)
    prompts = {"a": [3, 5, 7, 9, 11, 2, 4], "b": [8, 6, 4], "c": [1, 2, 3, 4, 5]}
    for s, p in prompts.items():
        lm.open(s)
        lm.forward([s], [p])
    new = {"a": [12, 13, 14, 15], "b": [7], "c": [9, 10]}
    seen = []
    product = cpu_linear._product
    monkeypatch.setattr(cpu_linear, "_product", lambda m, flat: seen.append(flat.shape[0]) or product(m, flat))
    batched = lm.forward(list(new), list(new.values()), taps=taps)
    assert set(seen) == {7}, f"every linear should see the 7 real tokens of 3 x 4 padded rows, saw {set(seen)}"
    assert torch.isfinite(batched.logits).all() and torch.isfinite(batched.taps).all()
    for i, (s, ids) in enumerate(new.items()):
        lm.truncate(s, len(prompts[s]))
        alone = lm.forward([s], [ids], taps=taps)
        torch.testing.assert_close(batched.logits[i, : len(ids)], alone.logits[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(batched.taps[i, : len(ids)], alone.taps[0], rtol=1e-4, atol=1e-4)
