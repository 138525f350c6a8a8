"""How target features are stored in the cache: per-field dtypes, byte counts, fp8 quantisation.

A storage mode picks a dtype for the taps (`fp32`, `bf16`, `fp8`) and for the final-norm hidden state
(the same, or `none`: a DFlash CE-only run never needs `p_t`). Every cache also stores `input_ids`
(int32) and `loss_mask` (uint8); the padding/attention mask DeepSpec stores is implied by row lengths.

fp8 is `torch.float8_e4m3fn` with one float32 scale per token *and* per tapped layer (`amax / 448`),
so a layer with massive activations does not crush the others. Error bound of the dequantised value
`x'` (e4m3 has 3 mantissa bits; values below 2^-6 of the scale are subnormal):

    |x' - x| <= 2^-4 * |x| + 2^-10 * amax / 448      (per element; amax of its token and layer)

i.e. at most 6.25 % relative error on every element of normal magnitude. `FP8_REL`/`FP8_ABS` state it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from specserve.errors import InvalidRequestError

DTYPES = ("fp32", "bf16", "fp8")
FINAL_DTYPES = (*DTYPES, "none")
FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_REL = 2.0**-4  # relative error bound of an fp8-stored element
FP8_ABS = 2.0**-10 / FP8_MAX  # times amax: the absolute floor (subnormal spacing / 2)
TOKEN_BYTES = 4 + 1  # input_ids int32 + loss_mask uint8

_NUMPY = {"fp32": np.float32, "bf16": np.int16, "fp8": np.uint8}  # bit patterns as numpy can hold them


@dataclass(frozen=True)
class Field:
    """One per-token array of a shard: `width` values of numpy dtype `dtype` per token."""

    name: str
    dtype: str
    width: int

    @property
    def bytes_per_token(self) -> int:
        """Bytes this field takes per token."""
        return np.dtype(self.dtype).itemsize * self.width


@dataclass(frozen=True)
class StorageMode:
    """What the cache keeps per token, and in which dtype."""

    taps: str = "fp8"
    final: str = "bf16"

    def __post_init__(self):
        if self.taps not in DTYPES:
            raise InvalidRequestError("taps", f"storage must be one of {DTYPES}, got {self.taps!r}")
        if self.final not in FINAL_DTYPES:
            raise InvalidRequestError("final", f"storage must be one of {FINAL_DTYPES}, got {self.final!r}")

    @property
    def name(self) -> str:
        """`taps=fp8,final=bf16`: how the mode is printed and logged."""
        return f"taps={self.taps},final={self.final}"

    @property
    def stores_final(self) -> bool:
        """Whether the final-norm hidden state (for p_t) is kept."""
        return self.final != "none"

    def fields(self, hidden: int, num_taps: int) -> list[Field]:
        """The shard fields of this mode for a target of width `hidden` with `num_taps` tapped layers."""
        out = [Field("input_ids", "int32", 1), Field("loss_mask", "uint8", 1)]
        out += _feature_fields("taps", self.taps, hidden, num_taps)
        if self.stores_final:
            out += _feature_fields("final_hidden", self.final, hidden, 1)
        return out

    def bytes_per_token(self, hidden: int, num_taps: int) -> int:
        """Cache bytes per token of this mode (ids and loss mask included)."""
        return sum(f.bytes_per_token for f in self.fields(hidden, num_taps))


def all_modes() -> list[StorageMode]:
    """Every storage mode, largest first."""
    return [StorageMode(t, f) for t in DTYPES for f in FINAL_DTYPES]


def deepspec_bytes_per_token(hidden: int, num_taps: int) -> int:
    """DeepSpec's cache: int32 ids, two uint8 masks, m taps and the final hidden in bf16: 6 + 2·H·(m+1)."""
    return 6 + 2 * hidden * (num_taps + 1)


def _feature_fields(name: str, dtype: str, hidden: int, groups: int) -> list[Field]:
    out = [Field(name, np.dtype(_NUMPY[dtype]).name, hidden * groups)]
    if dtype == "fp8":
        out.append(Field(f"{name}_scale", "float32", groups))
    return out


def encode(x: torch.Tensor, dtype: str, groups: int) -> dict[str, np.ndarray]:
    """Features [T, groups*H] -> the numpy arrays stored for them ({"": values, "_scale": [T, groups]})."""
    x = x.detach().float().cpu()
    if dtype == "fp32":
        return {"": x.numpy()}
    if dtype == "bf16":
        return {"": x.to(torch.bfloat16).view(torch.int16).numpy()}
    t = x.shape[0]
    grouped = x.reshape(t, groups, -1)
    amax = grouped.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (grouped / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return {"": q.view(torch.uint8).reshape(t, -1).numpy(), "_scale": scale.numpy()}


def decode(values: np.ndarray, scale: np.ndarray | None, dtype: str, groups: int) -> torch.Tensor:
    """Stored arrays -> float32 features [T, groups*H] (a copy; the inputs may be read-only memmaps)."""
    values = torch.from_numpy(np.array(values))
    if dtype == "fp32":
        return values
    if dtype == "bf16":
        return values.view(torch.bfloat16).float()
    t = values.shape[0]
    x = values.view(torch.float8_e4m3fn).float().reshape(t, groups, -1)
    return (x * torch.from_numpy(np.array(scale))[..., None]).reshape(t, -1)


def fp8_error_bound(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The documented per-element bound on |decode(encode(x)) - x| for fp8 storage."""
    t = x.shape[0]
    grouped = x.float().reshape(t, groups, -1)
    amax = grouped.abs().amax(dim=-1, keepdim=True)
    return (FP8_REL * grouped.abs() + FP8_ABS * amax).reshape(t, -1)
