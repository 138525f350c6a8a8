"""fp32 `nn.Linear` on CPU, fitted to decoding: few-row products, and ragged batches without padding.

`F.linear(x, W)` with x of a few rows hands MKL a thin "x · Wᵀ" product: with one row it becomes a
single-threaded gemv, with 2-7 rows a kernel that streams W once per row (a 3-row LM head costs 3x a
1-row one). The same product written the other way round, `(W · xᵀ)ᵀ`, is a wide GEMM that MKL
splits over the output rows on every core and that reads W once for several rows; one row is padded
to two, which beats the gemv even on one thread. Measured on the project's 2-core machine, fp32,
weights cold in cache: a 768x32000 LM head takes 5.8 ms for one row and 12.1 ms for two with
`F.linear`, 2.5 and 2.6 ms swapped; whole steps of the 150 M-parameter Qwen3 of
`bench/engine_throughput.py` on one sequence: 1 token 35.6 -> 21.7 ms, 3 tokens 70.6 -> 34.3 ms,
8 tokens 51.7 -> 42.6 ms. With more rows the two forms tie or F.linear wins, so larger products keep it.

A verify batch pads every session to the longest one's token count; inside `real_rows(...)` the
switched linears multiply only the rows that hold tokens (see there).

`use_cpu_linears(model)` switches the forward of every fp32 CPU `nn.Linear` whose weight is
contiguous. Weights, names, shapes and state dicts are untouched; products may differ from
`F.linear` in the last bits (summation order), as products of different row counts already do.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

# Most rows routed through the swapped product, by torch thread count (whole-model steps measured
# with B x k rows; beyond these limits the gain turns into a loss of up to 15 % on some shapes).
MAX_ROWS_ONE_THREAD = 4  # one thread: 1.1-1.3x at 1-4 rows
MAX_ROWS_THREADS = 8  # two threads: 1.2-2.2x at 1-8 rows


def swapped_rows_limit() -> int:
    return MAX_ROWS_ONE_THREAD if torch.get_num_threads() == 1 else MAX_ROWS_THREADS


@dataclass(frozen=True)
class _RealRows:
    padded: int  # rows of the padded [R, T, ...] batch
    index: torch.Tensor  # which of them hold tokens


_REAL_ROWS: ContextVar[_RealRows | None] = ContextVar("specserve_real_rows", default=None)


@contextmanager
def real_rows(padded: int, index: torch.Tensor) -> Iterator[None]:
    """Within the block, switched linears given a `padded`-row input compute only the rows in `index`
    and return zeros in the others (finite and inert: padding is never attended to by real tokens).

    A ragged batch (sessions verifying 1..γ+1 tokens, right-padded to the longest) then costs its
    real tokens only: 16 sessions with 4-8 drafts fill 110 of 144 padded rows. Rows are matched by
    count alone: a linear inside the block applied to some other tensor of exactly `padded` rows (none
    does in the transformers 5 decoders served here; MoE experts are not `nn.Linear`) would be
    masked too, so the block must wrap nothing but the padded forward.
    """
    token = _REAL_ROWS.set(_RealRows(padded, index))
    try:
        yield
    finally:
        _REAL_ROWS.reset(token)


def _product(module: nn.Linear, flat: torch.Tensor) -> torch.Tensor:
    rows = flat.shape[0]
    if not 0 < rows <= swapped_rows_limit() or flat.dtype != torch.float32:
        return nn.functional.linear(flat, module.weight, module.bias)
    if rows == 1:
        out = torch.mm(module.weight, flat.repeat(2, 1).t())[:, :1].t()
    else:
        out = torch.mm(module.weight, flat.t()).t()
    return out if module.bias is None else out + module.bias


def _cpu_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu" or not self.in_features:
        return nn.functional.linear(x, self.weight, self.bias)
    rows = x.numel() // self.in_features
    flat = x.reshape(rows, self.in_features)
    packed = _REAL_ROWS.get()
    if packed is not None and rows == packed.padded:
        real = _product(self, flat.index_select(0, packed.index))
        out = real.new_zeros(rows, self.out_features).index_copy_(0, packed.index, real)
    else:
        out = _product(self, flat)
    return out.reshape(*x.shape[:-1], self.out_features)


def use_cpu_linears(model: nn.Module) -> int:
    """Switch `model`'s fp32 CPU linears to the forward above; returns how many.

    Few-row products run as `(W · xᵀ)ᵀ`, and inside `real_rows` padded rows are skipped. Idempotent.
    Layers on another device or dtype, or with a non-contiguous weight (a stored transpose such as
    DSpark's sampling-layout W2), keep `F.linear`.
    """
    count = 0
    for module in model.modules():
        if type(module) is not nn.Linear:
            continue
        weight = module.weight
        if weight.device.type != "cpu" or weight.dtype != torch.float32 or not weight.is_contiguous():
            continue
        if getattr(module.forward, "__func__", None) is not _cpu_forward:
            module.forward = types.MethodType(_cpu_forward, module)
        count += 1
    return count
