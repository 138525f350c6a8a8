"""The optimizer and learning-rate schedule: AdamW, linear warm-up, then cosine decay to 0.

Only parameters that require gradients are optimised (the shared embedding and LM head are frozen).
The schedule is a `LambdaLR`, so its position is part of `state_dict()` and resumes exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from specserve.training.config import OptimConfig


def warmup_cosine(total_steps: int, warmup_ratio: float):
    """lr factor of update `step` (0-based): (step + 1) / W during W warm-up steps, then cosine to 0."""
    warmup = int(round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters and its warm-up + cosine schedule."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, cfg.warmup_ratio))
    return optimizer, scheduler
