"""The training objective as one module: a `FeatureBatch` in, the loss and its metric terms out.

Wrapping the loss in `forward` is what DDP/FSDP need: their gradient synchronisation is set up by the
wrapper's forward, so the draft's `train_forward`/`ttt_forward` must be called from inside one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from specserve.data.features import FeatureBatch
from specserve.drafters.checkpoint import DraftModel
from specserve.drafters.eagle3 import Eagle3Model
from specserve.training.anchors import row_generator, sample_anchors, supervision_mask
from specserve.training.dspark_loss import DSparkLossWeights, aligned_target_logits, dspark_loss
from specserve.training.eagle3_loss import eagle3_loss
from specserve.training.metrics import SumReduce, Terms, no_reduce


@dataclass(frozen=True)
class ObjectiveSettings:
    """Everything the loss needs besides the model: loss weights, anchors, TTT decay, the anchor seed."""

    weights: DSparkLossWeights = DSparkLossWeights()
    num_anchors: int = 512
    step_loss_decay: float = 0.8
    seed: int = 0


class DraftObjective(nn.Module):
    """Loss of a DSpark/DFlash (anchored blocks) or Eagle3 (TTT) draft on one micro-batch."""

    def __init__(self, model: DraftModel, settings: ObjectiveSettings, reduce: SumReduce = no_reduce,
                 world_size: int = 1):
        super().__init__()
        self.model = model
        self.settings = settings
        self.reduce = reduce
        self.world_size = world_size

    def forward(self, batch: FeatureBatch, epoch: int) -> tuple[torch.Tensor, Terms]:
        """(loss to backpropagate, metric terms). Anchors are drawn per row from (seed, epoch, row index)."""
        if isinstance(self.model, Eagle3Model):
            if batch.final_hidden is None:
                raise ValueError("Eagle3 training needs the target's final hidden state")
            out = eagle3_loss(self.model, batch.taps, batch.input_ids, batch.loss_mask, batch.lengths,
                              batch.final_hidden, self.settings.step_loss_decay, reduce=self.reduce,
                              world_size=self.world_size)
            return out.loss, out.terms
        gens = [row_generator(self.settings.seed, epoch, int(i)) for i in batch.indices.tolist()]
        anchors, keep = sample_anchors(batch.loss_mask, self.settings.num_anchors, gens)
        supervised = supervision_mask(anchors, keep, batch.loss_mask, self.model.cfg.block_size)
        out = self.model.train_forward(batch.taps, batch.input_ids, anchors, keep)
        target = None if batch.final_hidden is None else aligned_target_logits(self.model, batch.final_hidden, anchors)
        loss = dspark_loss(out, target, supervised, keep, self.settings.weights, reduce=self.reduce,
                           world_size=self.world_size)
        return loss.loss, loss.terms
