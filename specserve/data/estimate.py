"""Cache size before anything is written: bytes per token of every storage mode, times a token count.

DeepSpec's layout (`6 + 2·H·(m+1)` bytes/token: int32 ids, two uint8 masks, m taps and the final hidden
in bf16) is printed first for comparison; for Qwen3-4B (H = 2560, m = 5) it is 30,726 B/token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from specserve.data.storage import FP8_REL, StorageMode, all_modes, deepspec_bytes_per_token

_NOTES = {"fp32": "exact", "bf16": "exact for a bf16 target", "fp8": f"<= {FP8_REL:.2%} relative error"}


@dataclass(frozen=True)
class ModeEstimate:
    """One line of the estimate."""

    mode: str
    bytes_per_token: int
    total_bytes: int
    vs_deepspec: float  # size relative to DeepSpec's layout
    note: str


def estimate_modes(hidden: int, num_taps: int, tokens: int, modes: Iterable[StorageMode] | None = None
                   ) -> list[ModeEstimate]:
    """DeepSpec's layout, then each storage mode (default: all of them), for `tokens` tokens."""
    base = deepspec_bytes_per_token(hidden, num_taps)
    out = [ModeEstimate("deepspec (reference)", base, base * tokens, 1.0, "int32 ids, 2 uint8 masks, bf16 features")]
    for mode in modes or all_modes():
        bpt = mode.bytes_per_token(hidden, num_taps)
        final = "not stored (CE-only training)" if mode.final == "none" else _NOTES[mode.final]
        note = f"taps {_NOTES[mode.taps]}; final {final}"
        out.append(ModeEstimate(mode.name, bpt, bpt * tokens, bpt / base, note))
    return out


def human_bytes(n: float) -> str:
    """Decimal units, as disk sizes are quoted (DeepSpec's cache: "38 TB"): 1500 -> '1.5 kB'."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def format_estimate(rows: list[ModeEstimate], hidden: int, num_taps: int, tokens: int) -> str:
    """A plain-text table of `estimate_modes`."""
    lines = [f"target hidden size H={hidden}, m={num_taps} tapped layers, {tokens:,} tokens", "",
             f"{'storage mode':<26}{'B/token':>10}{'total':>13}{'vs DeepSpec':>13}  note"]
    for r in rows:
        lines.append(f"{r.mode:<26}{r.bytes_per_token:>10,}{human_bytes(r.total_bytes):>13}{r.vs_deepspec:>12.1%}"
                     f"  {r.note}")
    return "\n".join(lines)

