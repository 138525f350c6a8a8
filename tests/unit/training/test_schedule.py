"""Warm-up + cosine schedule and the optimizer over trainable parameters only."""

from __future__ import annotations

import math

import pytest
import torch

from specserve.training.config import OptimConfig
from specserve.training.schedule import build_optimizer, warmup_cosine


def test_linear_warmup_then_cosine_to_zero():
    f = warmup_cosine(100, 0.04)
    assert [f(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0
    assert f(52) == pytest.approx(0.5)
    assert f(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 95 / 96)))
    assert f(100) == pytest.approx(0.0)


def test_frozen_parameters_are_not_optimised():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    opt, sched = build_optimizer(model, OptimConfig(lr=1e-3), 10)
    assert [p for g in opt.param_groups for p in g["params"]] == list(model[1].parameters())
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    assert opt.defaults["weight_decay"] == 0.0
    assert sched.get_last_lr()[0] == pytest.approx(1e-3)  # 0.04 x 10 rounds to no warm-up step
