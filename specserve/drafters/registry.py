"""Build a drafter from a spec string: `none`, `ngram[:N]`, `model:PATH`, `dspark:PATH`, `dflash:PATH`,
`eagle3:PATH`, or `auto:PATH` (the kind is read from the checkpoint's `config.json`).

The same spec strings are used by the CLI, the services and the benchmarks, so a user learns one
syntax. Model-based drafters load on the target's device and dtype.
"""

from __future__ import annotations

from specserve.drafters.base import Drafter
from specserve.drafters.draft_lm import DraftModelDrafter
from specserve.drafters.factory import TAP_KINDS, load_tap_drafter
from specserve.drafters.ngram import NgramDrafter
from specserve.errors import InvalidRequestError
from specserve.target.model import CausalLM

KINDS = ("none", "ngram[:BLOCK]", "model:PATH", "dspark:PATH", "dflash:PATH", "eagle3:PATH", "auto:PATH")


def build_drafter(spec: str, target: CausalLM, block_size: int | None = None) -> Drafter | None:
    """Parse `spec` and build the drafter (None for `none`). `block_size` overrides the default γ."""
    kind, _, arg = spec.partition(":")
    if kind == "none":
        return None
    if kind == "ngram":
        block = block_size or (int(arg) if arg.isdigit() else 8)
        return NgramDrafter(max_block=block)
    if kind in ("model", "dspark", "dflash", "eagle3", "auto") and not arg:
        raise InvalidRequestError("drafter", f"{kind}:PATH needs a path or hub id after '{kind}:'")
    if kind in TAP_KINDS or kind == "auto":
        return load_tap_drafter(arg, target, kind=None if kind == "auto" else kind)
    if kind == "model":
        draft = CausalLM.from_pretrained(arg, dtype=_dtype_name(target), device=str(target.device),
                                         load_tokenizer=False)
        return DraftModelDrafter(draft, max_block=block_size or 4)
    raise InvalidRequestError("drafter", f"unknown drafter {spec!r}; expected one of {', '.join(KINDS)}")


def _dtype_name(target: CausalLM) -> str:
    return str(target.dtype).removeprefix("torch.")
