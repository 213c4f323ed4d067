"""Build the optimizer over the trainable parameters, and add parameters to it mid-run.

"Muon" and "NuMuon" build a ``MatrixOptimizer`` (``muon.py``) that routes parameters by name; what
follows describes the AdamW/Adam groups.

Parameters are split into a decayed group (matrices and embeddings, ndim >= 2) and an undecayed one
(norm weights). Only parameters with ``requires_grad`` enter: architecture warm-up keeps locked blocks
out and hands their parameters over with ``add_parameters`` when they unlock, so AdamW holds no state
for a block before it trains. Every group carries ``lr_scale`` (1.0 by default), a per-group factor
the LR schedule multiplies in (used for per-block LR warm-up after an unlock).
"""

from __future__ import annotations

import functools
from typing import Iterable

import torch
from torch import nn

from titanwarm.config.sections import Optimizer as OptimizerConfig
from titanwarm.optim.muon import MatrixOptimizer, route
from titanwarm.registry import OPTIMIZERS


def param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Split ``params`` into [decayed (ndim >= 2), undecayed] groups, dropping empty ones."""
    params = list(params)
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [dict(g, lr_scale=1.0) for g in groups if g["params"]]


def _kernel_flags(cfg: OptimizerConfig, params: list[nn.Parameter]) -> dict:
    impl = cfg.implementation
    if impl == "auto":
        impl = "fused" if params and params[0].device.type == "cuda" else "foreach"
    return {"fused": impl == "fused", "foreach": impl == "foreach"}


def _adam_kwargs(cfg: OptimizerConfig, groups: list[dict]) -> dict:
    params = [p for g in groups for p in g["params"]]
    return dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **_kernel_flags(cfg, params))


@OPTIMIZERS.register("AdamW")
def build_adamw(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """torch AdamW (decoupled weight decay per group)."""
    return torch.optim.AdamW(groups, **_adam_kwargs(cfg, groups))


@OPTIMIZERS.register("Adam")
def build_adam(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """torch Adam; group weight decay is L2 added to the gradient, as torch defines it."""
    return torch.optim.Adam(groups, **_adam_kwargs(cfg, groups))


def _build_matrix_optimizer(algorithm: str, model_parts: list[nn.Module], cfg: OptimizerConfig,
                            total_steps: int, seed: int) -> MatrixOptimizer:
    named = [(n, p) for m in model_parts for n, p in m.named_parameters()]
    trainable = [(n, p) for n, p in named if p.requires_grad]
    groups = route(trainable, cfg.adamw_modules, cfg.weight_decay)
    final = cfg.rank_fraction if cfg.rank_fraction_final == -1 else cfg.rank_fraction_final
    defaults = dict(
        matrix_algorithm=algorithm, momentum=cfg.momentum, nesterov=cfg.nesterov,
        ns_coefficients=tuple(cfg.ns_coefficients), ns_steps=cfg.ns_steps, ns_eps=cfg.ns_eps,
        update_scale=cfg.update_scale, rank_fraction=cfg.rank_fraction, rank_fraction_final=final,
        rank_schedule=cfg.rank_schedule, rank_hold_fraction=cfg.rank_hold_fraction,
        krylov_oversample=cfg.krylov_oversample, krylov_iters=cfg.krylov_iters,
        total_steps=total_steps, seed=seed, **_adam_kwargs(cfg, groups))
    return MatrixOptimizer(groups, defaults, {id(p): n for n, p in named}, cfg.adamw_modules)


OPTIMIZERS.add("Muon", functools.partial(_build_matrix_optimizer, "muon"))
OPTIMIZERS.add("NuMuon", functools.partial(_build_matrix_optimizer, "numuon"))
_MATRIX_NAMES = ("Muon", "NuMuon")


def build_optimizer(model_parts: list[nn.Module], cfg: OptimizerConfig, total_steps: int = 1,
                    seed: int = 0) -> torch.optim.Optimizer:
    """The configured optimizer over every trainable parameter of ``model_parts``.

    ``total_steps`` (the run's length) and ``seed`` are read by NuMuon's rank schedule and Krylov
    start only. An optimizer needs at least one parameter; with everything locked the caller must
    unlock first.
    """
    params = [p for m in model_parts for p in m.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters to optimize")
    if cfg.name in _MATRIX_NAMES:
        return OPTIMIZERS.get(cfg.name)(model_parts, cfg, total_steps, seed)
    return OPTIMIZERS.get(cfg.name)(param_groups(params, cfg.weight_decay), cfg)


def add_parameters(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter],
                   weight_decay: float, lr_scale: float = 1.0) -> list[dict]:
    """Add newly trainable ``params`` as new groups (same decay split); returns those groups.

    The new groups copy the hyper-parameters of the optimizer's first group (lr, betas, eps, kernel
    flags) and start with no state: AdamW's step count for them begins at their first update.
    """
    if isinstance(optimizer, MatrixOptimizer):
        return optimizer.add_parameters(params, weight_decay, lr_scale)
    template = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    added = []
    for group in param_groups(params, weight_decay):
        group = {**template, **group, "lr_scale": lr_scale}
        optimizer.add_param_group(group)
        added.append(optimizer.param_groups[-1])
    return added


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes this rank holds in optimizer state tensors (local shards of DTensors)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                local = value.to_local() if hasattr(value, "to_local") else value
                total += local.numel() * local.element_size()
    return total
