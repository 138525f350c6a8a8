"""The DSpark/DFlash training loss: weighted CE + L1 + confidence BCE over anchored blocks (algorithms.md §5).

Slot j of a supervised block weighs `w_j = exp(-j / loss_decay_gamma)`. With draft distribution `p_d`
and target distribution `p_t = softmax(lm_head(final_hidden[a + j]))`:

    CE   = Σ w_j · CE(logits_j, x_{a+j+1})
    L1   = Σ w_j · ‖p_d,j − p_t,j‖₁
    Conf = Σ w_j · BCE(z_j, c*_j),  c*_j = clamp(1 − ½‖p_d,j − p_t,j‖₁, 0, 1), detached

each divided by the Σ w_j of the whole step across every process (+1e-6, as DeepSpec). The loss a
process backpropagates is multiplied by the world size, because DDP averages the gradients: the
result is Σ over processes of the numerators / the global Σ w, whatever the split of the batch.
Logged: each term, the accept rate per slot (mean c*_j over supervised slots) and
`tau_probabilistic` = mean over blocks with a supervised slot of 1 + Σ_j Π_{i≤j} c*_i·mask_i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from specserve.drafters.dspark import DSparkModel, DSparkTrainOutput
from specserve.drafters.layers import softcap
from specserve.training.metrics import SumReduce, Terms, no_reduce

EPS = 1e-6  # added to the normaliser, as DeepSpec does


@dataclass(frozen=True)
class DSparkLossWeights:
    """α of each term and the slot decay. Defaults: DSpark's shipped values."""

    ce: float = 0.1
    l1: float = 0.9
    confidence: float = 1.0
    loss_decay_gamma: float = 4.0  # w_j = exp(-j / gamma); <= 0 disables the decay

    def __post_init__(self):
        for name in ("ce", "l1", "confidence"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss alpha {name} must be >= 0, got {getattr(self, name)}")


DFLASH_WEIGHTS = DSparkLossWeights(ce=1.0, l1=0.0, confidence=0.0)


@dataclass
class LossOutput:
    """What one micro-batch contributes: the tensor to backpropagate and its metric terms."""

    loss: torch.Tensor
    terms: Terms


def slot_weights(supervised: torch.Tensor, loss_decay_gamma: float) -> torch.Tensor:
    """w [B, N, γ] = supervision mask · exp(-j / gamma)."""
    weights = supervised.float()
    if loss_decay_gamma > 0:
        slots = torch.arange(weights.shape[-1], device=weights.device, dtype=torch.float32)
        weights = weights * torch.exp(-slots / loss_decay_gamma)
    return weights


def aligned_target_logits(model: DSparkModel, final_hidden: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The target's logits for every slot, [B, N, γ, V]: the frozen head on final_hidden[a + j] (clamped)."""
    seq_len, gamma = final_hidden.shape[1], model.cfg.block_size
    pos = (anchors[..., None] + torch.arange(gamma, device=anchors.device)).clamp(max=seq_len - 1)
    hidden = final_hidden.gather(1, pos.flatten(1)[..., None].expand(-1, -1, final_hidden.shape[-1]))
    with torch.no_grad():
        logits = softcap(model.cfg, model.lm_head(hidden.to(model.lm_head.weight.dtype)))
    return logits.view(*pos.shape, -1)


def dspark_loss(out: DSparkTrainOutput, target_logits: torch.Tensor | None, supervised: torch.Tensor,
                keep: torch.Tensor, weights: DSparkLossWeights, reduce: SumReduce = no_reduce,
                world_size: int = 1) -> LossOutput:
    """The loss of one micro-batch. `target_logits` [B, N, γ, V] may be None only for CE-only training."""
    if target_logits is None and (weights.l1 > 0 or weights.confidence > 0):
        raise ValueError("the L1 and confidence terms need the target's final hidden state (p_t)")
    w = slot_weights(supervised, weights.loss_decay_gamma)
    den_local = w.sum()
    den = reduce(den_local.detach().clone())
    logits = out.draft_logits.float()
    ce = F.cross_entropy(logits.flatten(0, -2), out.target_ids.flatten(), reduction="none").view_as(w)
    ce_num = (ce * w).sum()
    total = weights.ce * ce_num
    terms: Terms = {"ce_loss": (ce_num.detach(), den_local)}
    if target_logits is not None:
        tv = (torch.softmax(logits, -1) - torch.softmax(target_logits.float(), -1)).abs().sum(-1)  # ‖p_d − p_t‖₁
        accept = (1.0 - 0.5 * tv).clamp(0.0, 1.0)
        if weights.l1 > 0:
            l1_num = (tv * w).sum()
            total = total + weights.l1 * l1_num
            terms["l1_loss"] = (l1_num.detach(), den_local)
        if out.confidence_logits is not None:
            bce = F.binary_cross_entropy_with_logits(out.confidence_logits.float(), accept.detach(), reduction="none")
            conf_num = (bce * w).sum()
            total = total + weights.confidence * conf_num
            terms["confidence_loss"] = (conf_num.detach(), den_local)
        terms.update(acceptance_terms(accept.detach(), supervised, keep))
    loss = total / (den + EPS) * world_size
    return LossOutput(loss=loss, terms=terms)


@torch.no_grad()
def acceptance_terms(accept: torch.Tensor, supervised: torch.Tensor, keep: torch.Tensor) -> Terms:
    """accept_rate@j (mean c*_j over supervised slots) and tau_probabilistic (mean over blocks that have one)."""
    mask = supervised.float()
    valid = accept * mask
    counts = mask.sum(dim=(0, 1))
    sums = valid.sum(dim=(0, 1))
    terms: Terms = {f"accept_rate@{j}": (sums[j], counts[j]) for j in range(accept.shape[-1])}
    blocks = (keep.bool() & supervised.any(-1)).float()
    tau = (valid.cumprod(-1).sum(-1) + 1.0) * blocks
    terms["tau_probabilistic"] = (tau.sum(), blocks.sum())
    return terms
