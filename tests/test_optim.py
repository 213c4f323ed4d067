"""LR schedule values against their closed forms; optimizer groups and mid-run parameter growth."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from titanwarm.config.sections import LRScheduler, Optimizer
from titanwarm.optim import LRSchedule, add_parameters, build_optimizer


def schedule(decay: str, warmup: int = 10, total: int = 110, min_ratio: float = 0.1,
             decay_ratio: float = 0.2) -> LRSchedule:
    cfg = LRScheduler(warmup_steps=warmup, decay_type=decay, min_lr_ratio=min_ratio,
                      decay_ratio=decay_ratio)
    return LRSchedule(cfg, peak_lr=2.0, total_steps=total)


def test_warmup_is_linear_and_reaches_peak_after_it():
    s = schedule("constant")
    assert [s.factor(k) for k in (1, 5, 10)] == pytest.approx([1 / 11, 5 / 11, 10 / 11])
    assert s.lr(11) == 2.0 and s.lr(110) == 2.0


@pytest.mark.parametrize("decay, shape", [
    ("linear", lambda p: 1 - p),
    ("cosine", lambda p: 0.5 * (1 + math.cos(math.pi * p))),
    ("sqrt", lambda p: 1 - math.sqrt(p)),
])
def test_decay_shapes(decay, shape):
    s = schedule(decay)
    for step in (11, 35, 60, 110):
        p = (step - 10) / 100
        assert s.factor(step) == pytest.approx(0.1 + 0.9 * shape(p))
    assert s.factor(110) == pytest.approx(0.1)  # ends at min_lr_ratio


def test_wsd_is_stable_then_decays_over_last_fraction():
    s = schedule("wsd", decay_ratio=0.2)  # decay over the last 22 of 110 steps
    assert s.factor(88) == 1.0
    assert s.factor(99) == pytest.approx(0.1 + 0.9 * (1 - 11 / 22))
    assert s.factor(110) == pytest.approx(0.1)


def test_groups_split_decay_and_new_parameters_start_without_state():
    torch.manual_seed(0)
    a, b = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), nn.Linear(4, 4)
    for p in b.parameters():
        p.requires_grad_(False)
    opt = build_optimizer([a, b], Optimizer(lr=0.1, weight_decay=0.5))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in a.parameters()}
    assert all(p.ndim >= 2 for p in opt.param_groups[0]["params"])

    a(torch.randn(2, 4)).sum().backward()
    opt.step()
    for p in b.parameters():
        p.requires_grad_(True)
    added = add_parameters(opt, b.parameters(), weight_decay=0.5, lr_scale=0.25)
    assert [g["weight_decay"] for g in added] == [0.5, 0.0]
    assert all(g["lr_scale"] == 0.25 and g["betas"] == opt.param_groups[0]["betas"] for g in added)
    assert all(p not in opt.state for p in b.parameters())
    LRSchedule(LRScheduler(warmup_steps=0, decay_type="constant"), 0.1, 10).apply(opt, 1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.1, 0.025, 0.025])
    (a(torch.randn(2, 4)).sum() + b(torch.randn(2, 4)).sum()).backward()
    opt.step()
    assert all(opt.state[p]["step"].item() == 1 for p in b.parameters())
    assert all(opt.state[p]["step"].item() == 2 for p in a.parameters())
