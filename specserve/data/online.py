"""Online target features: run the frozen target inside the training step instead of reading a cache.

No disk at all; the cost is one extra target forward per sequence per step and the target's weights
resident next to the draft. Yields exactly what `FeatureCache` yields for the same rows (bitwise for an
fp32 cache on the same device and thread settings; within the fp8 bound of `storage` for an fp8 cache).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specserve.data.features import FeatureBatch, FeatureRow, check_tap_layers, collate, target_features
from specserve.data.fingerprint import TargetFingerprint, fingerprint
from specserve.data.tokenization import TokenizedRow


class OnlineFeatures:
    """A `FeatureSource` over tokenised rows that computes target features on demand."""

    def __init__(self, target, rows: Sequence[TokenizedRow], target_layer_ids: Sequence[int], final: bool = True,
                 name: str = ""):
        self.target = target
        self.rows = rows
        self.layer_ids = check_tap_layers(target_layer_ids, target.num_layers)
        self.final = final
        self.name = name

    def __len__(self) -> int:
        return len(self.rows)

    def fingerprint(self) -> TargetFingerprint:
        """What these features depend on (what a cache for this run must match)."""
        return fingerprint(self.target, self.layer_ids, self.name)

    def row(self, i: int) -> FeatureRow:
        """Row `i` with freshly computed features (float32, on the target's device: no round trip to the CPU)."""
        src = self.rows[i]
        taps, final = target_features(self.target, src.input_ids.tolist(), self.layer_ids, self.final)
        device = taps.device
        return FeatureRow(index=src.index, input_ids=torch.from_numpy(src.input_ids.astype("int64")).to(device),
                          loss_mask=torch.from_numpy(src.loss_mask.astype("int64")).to(device), taps=taps.float(),
                          final_hidden=final.float() if final is not None else None)

    def batch(self, indices: Sequence[int]) -> FeatureBatch:
        """Rows `indices`, right-padded into one batch: one target forward per row (see `target_features`)."""
        return collate([self.row(i) for i in indices])
