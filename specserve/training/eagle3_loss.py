"""The Eagle3 training-time-test (TTT) loss (algorithms.md section 5).

Step k of `Eagle3Model.ttt_forward` predicts, at position t, the token the target predicts at t + k + 1,
so its soft-CE target is `p_t` shifted left by k + 1 (positions past the end get a uniform
distribution and are masked). Its mask is the loss mask with each row's last real token removed (it
has no next token), shifted left by k. Step loss = Σ masked soft CE / (B·L) (DeepSpec normalises by
the padded batch size, not by the supervised count); total = Σ_k decay^k · loss_k. Across processes
the B·L normaliser is summed and the loss scaled by the world size (DDP averages gradients).

Logged: ploss_k, accept_rate@k (mean over the step's mask of 1 − ½‖p_d − p_t‖₁) and
tau_probabilistic = mean over positions supervised at step 0 of 1 + Σ_k Π_{i≤k} accept_i·mask_i.
"""

from __future__ import annotations

import torch

from specserve.drafters.eagle3 import Eagle3Model
from specserve.training.dspark_loss import LossOutput
from specserve.training.metrics import SumReduce, Terms, no_reduce


def step_masks(loss_mask: torch.Tensor, lengths: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """[B, L] float mask of each TTT step: the loss mask minus each row's last token, shifted left by k."""
    bsz, seq_len = loss_mask.shape
    base = loss_mask.float().clone()
    base[torch.arange(bsz, device=base.device), (lengths - 1).clamp(min=0)] = 0.0
    zeros = base.new_zeros(bsz, steps)
    return [torch.cat([base[:, k:], zeros[:, :k]], dim=1) for k in range(steps)]


def eagle3_loss(model: Eagle3Model, taps: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor,
                lengths: torch.Tensor, final_hidden: torch.Tensor, step_loss_decay: float = 0.8,
                ttt_length: int | None = None, reduce: SumReduce = no_reduce, world_size: int = 1) -> LossOutput:
    """The TTT loss of one micro-batch (right-padded rows of the given `lengths`)."""
    bsz, seq_len = input_ids.shape
    steps = model.cfg.ttt_length if ttt_length is None else ttt_length
    positions = torch.arange(seq_len, device=input_ids.device)
    attention_mask = (positions[None, :] < lengths[:, None]).long()
    step_logits = model.ttt_forward(taps, input_ids, attention_mask, steps)
    with torch.no_grad():
        p_t = torch.softmax(model.target_logits(final_hidden).float(), -1)
    vocab = p_t.shape[-1]
    targets = torch.cat([p_t[:, 1:], p_t.new_full((bsz, steps + 1, vocab), 1.0 / vocab)], dim=1)
    masks = step_masks(loss_mask, lengths, steps)
    den_local = torch.tensor(float(bsz * seq_len), device=input_ids.device)
    den = reduce(den_local.clone())
    total = torch.zeros((), device=input_ids.device)
    terms: Terms = {}
    accepts = []
    for k, logits in enumerate(step_logits):
        target, mask = targets[:, k: k + seq_len], masks[k]
        log_q = torch.log_softmax(logits.float(), -1)
        num = (-(target * log_q).sum(-1) * mask).sum()
        total = total + step_loss_decay**k * num
        with torch.no_grad():
            accept = (1.0 - 0.5 * (log_q.exp() - target).abs().sum(-1)).clamp(0.0, 1.0)
        accepts.append(accept)
        terms[f"ploss_{k}"] = (num.detach(), den_local)
        terms[f"accept_rate@{k}"] = ((accept * mask).sum(), mask.sum())
    supervised = masks[0]
    prefix = (torch.stack(accepts, -1) * torch.stack(masks, -1)).cumprod(-1).sum(-1)
    terms["tau_probabilistic"] = (((prefix + 1.0) * supervised).sum(), supervised.sum())
    return LossOutput(loss=total / den * world_size, terms=terms)
