"""``MatrixOptimizer``: Muon or NuMuon for the hidden matrices, AdamW for the rest, in one optimizer.

Every param group carries its ``algorithm`` ("muon", "numuon" or "adamw") next to its
hyper-parameters, so the LR schedule, per-group ``lr_scale``, checkpoints and architecture warm-up
treat it like any torch optimizer. Routing (``route``): a 2-D parameter goes to the matrix group
unless its dotted name has a component listed in ``[optimizer] adamw_modules`` (the embedding and the
output head by default, by name, not by shape); everything else (norm weights, biases) goes to AdamW
without decay. Groups in order: matrices, AdamW with decay, AdamW without decay (empty ones dropped).

Per step, a matrix ``W`` with gradient ``G`` and momentum ``B`` (state ``momentum_buffer``):
``B <- lerp(B, G, 1 - mu)``, input ``X = lerp(G, B, mu)`` (Nesterov) or ``B``;
Muon: ``O = NS(X)`` (``orthogonalize.newton_schulz``); NuMuon: ``O = U_k V_k^T``, the top-k singular
directions of ``X`` with unit singular values (``k = ceil(r(t) min(m, n))``, state ``basis`` =
``V_k`` for the next warm start; k = min(m, n) is Muon's NS); then ``W <- W (1 - lr wd) - lr s O``
with ``s = update_scale(W.shape)``. This is ``torch.optim.Muon``'s update exactly (same operations)
when ``update_scale`` = its ``adjust_lr_fn``. AdamW groups run torch's own functional Adam with
decoupled decay (state ``step``, ``exp_avg``, ``exp_avg_sq``, as ``torch.optim.AdamW``), so the
curvature tracker's preconditioned Hessian sees exactly the AdamW parameters.

DTensor matrices (FSDP2, TP, both) are orthogonalised whole on one owner rank each
(``owner_compute.py``); plain matrices are orthogonalised in place on every rank.

The optimizer step count ``t`` (it drives NuMuon's rank schedule and seeds its Krylov start) is kept
in every param group, so it is saved with ``state_dict()["param_groups"]`` and a group added mid-run
copies the current count from group 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.optim.adam import adam as adam_update

from titanwarm.optim import orthogonalize as orth
from titanwarm.optim.owner_compute import OwnerCompute, ShardedMatrix

MATRIX_ALGORITHMS = ("muon", "numuon")


def _is_adamw_module(name: str, adamw_modules: Iterable[str]) -> bool:
    return bool(set(name.split(".")) & set(adamw_modules))


def route(named: Iterable[tuple[str, nn.Parameter]], adamw_modules: Iterable[str],
          weight_decay: float) -> list[dict]:
    """[matrices, AdamW decayed, AdamW undecayed] groups (empty ones dropped), each with
    ``algorithm`` "matrix" (filled in by the optimizer), "adamw" and ``weight_decay``."""
    adamw_modules = list(adamw_modules)
    matrices, decayed, plain = [], [], []
    for name, p in named:
        if p.ndim == 2 and not _is_adamw_module(name, adamw_modules):
            matrices.append(p)
        elif p.ndim >= 2:
            decayed.append(p)
        else:
            plain.append(p)
    groups = [{"params": matrices, "algorithm": "matrix", "weight_decay": weight_decay},
              {"params": decayed, "algorithm": "adamw", "weight_decay": weight_decay},
              {"params": plain, "algorithm": "adamw", "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


class MatrixOptimizer(torch.optim.Optimizer):
    """Muon/NuMuon + AdamW over groups tagged with ``algorithm`` (see the module docstring).

    ``names`` maps ``id(param)`` to its dotted name for every parameter that may ever join (locked
    blocks included), so that parameters added later (``add_parameters``) are routed by name too.
    ``defaults`` holds every hyper-parameter key (see ``[optimizer]`` in config/sections.py).
    """

    def __init__(self, groups: list[dict], defaults: dict, names: dict[int, str],
                 adamw_modules: Iterable[str]) -> None:
        self.matrix_algorithm = defaults["matrix_algorithm"]
        if self.matrix_algorithm not in MATRIX_ALGORITHMS:
            raise ValueError(f"matrix_algorithm must be one of {MATRIX_ALGORITHMS}")
        self.names, self.adamw_modules = names, list(adamw_modules)
        self.owner = OwnerCompute()
        super().__init__([self._tag(g) for g in groups], dict(defaults, t=0, lr_scale=1.0))

    def _tag(self, group: dict) -> dict:
        if group.get("algorithm") == "matrix":
            group = dict(group, algorithm=self.matrix_algorithm)
            bad = [tuple(p.shape) for p in group["params"] if p.ndim != 2]
            if bad:
                raise ValueError(f"{self.matrix_algorithm} groups take 2-D parameters only; got "
                                 f"shapes {bad}")
        return group

    def add_parameters(self, params: Iterable[nn.Parameter], weight_decay: float,
                       lr_scale: float) -> list[dict]:
        """Route newly trainable ``params`` by name into new groups (hyper-parameters and the
        step count copied from group 0); returns the new groups."""
        params = list(params)
        unknown = [tuple(p.shape) for p in params if id(p) not in self.names]
        if unknown:
            raise ValueError(f"parameters of shapes {unknown} were not in the model the optimizer "
                             "was built for (their names are needed for routing)")
        template = {k: v for k, v in self.param_groups[0].items() if k not in ("params", "algorithm")}
        added = []
        for group in route([(self.names[id(p)], p) for p in params], self.adamw_modules, weight_decay):
            self.add_param_group(self._tag({**template, **group, "lr_scale": lr_scale}))
            added.append(self.param_groups[-1])
        return added

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            group["t"] += 1
        for group in self.param_groups:
            if group["algorithm"] == "adamw":
                self._adamw(group)
        self._matrices([g for g in self.param_groups if g["algorithm"] in MATRIX_ALGORITHMS])
        return loss

    # ------------------------------------------------------------------ AdamW
    def _adamw(self, group: dict) -> None:
        params, grads, avgs, sqs, steps = [], [], [], [], []
        fused = bool(group["fused"])
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = (torch.zeros((), dtype=torch.float32, device=p.device) if fused
                                 else torch.tensor(0.0, dtype=torch.float32))
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            avgs.append(state["exp_avg"])
            sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        adam_update(params, grads, avgs, sqs, [], steps, foreach=bool(group["foreach"]),
                    fused=fused or None, decoupled_weight_decay=True, amsgrad=False, beta1=beta1,
                    beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                    eps=group["eps"], maximize=False)

    # ------------------------------------------------------------------ Muon / NuMuon
    def _matrices(self, groups: list[dict]) -> None:
        jobs, sharded = [], []
        ordinal = -1
        for group in groups:
            for p in group["params"]:
                ordinal += 1
                if p.grad is None:
                    continue
                x = self._momentum(p, group)
                job = (p, group, ordinal, x)
                jobs.append(job)
                if isinstance(p, DTensor):
                    sharded.append(job)
        outputs: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if sharded:
            items = [ShardedMatrix(p, x, self._out_dtype(g), self._basis_shape(p, g))
                     for p, g, _, x in sharded]
            results = self.owner.run(
                items, lambda i, full: self._direction(full, sharded[i][0], sharded[i][1],
                                                       sharded[i][2]))
            for (p, *_), res in zip(sharded, results):
                outputs[id(p)] = res
        for p, group, ordinal, x in jobs:
            if id(p) in outputs:
                o, basis = outputs[id(p)]
            else:
                o, basis = self._direction(x, p, group, ordinal)
            if basis is not None:
                self.state[p]["basis"] = basis
            local = p.to_local() if isinstance(p, DTensor) else p
            local.mul_(1.0 - group["lr"] * group["weight_decay"])
            local.add_(o, alpha=-group["lr"] * orth.update_scale(group["update_scale"], p.shape))

    def _momentum(self, p: torch.Tensor, group: dict) -> torch.Tensor:
        """Update the momentum buffer (local shards) and return the orthogonaliser's input."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
        buf, grad = state["momentum_buffer"], p.grad
        if isinstance(buf, DTensor):
            buf, grad = buf.to_local(), grad.to_local()
        mu = group["momentum"]
        buf.lerp_(grad, 1 - mu)
        return grad.lerp(buf, mu) if group["nesterov"] else buf

    def _rank(self, p: torch.Tensor, group: dict) -> int:
        """NuMuon's k at this step (min(m, n) means Muon's NS)."""
        r = orth.rank_fraction_at(group["t"], group["total_steps"], group["rank_fraction"],
                                  group["rank_fraction_final"], group["rank_hold_fraction"],
                                  group["rank_schedule"])
        return orth.rank_at(r, p.shape)

    def _uses_krylov(self, p: torch.Tensor, group: dict) -> bool:
        return group["algorithm"] == "numuon" and self._rank(p, group) < min(p.shape)

    def _out_dtype(self, group: dict) -> torch.dtype:
        # NS works in bfloat16, the Krylov top-k in float32 (a rank-k direction is small).
        return torch.float32 if group["algorithm"] == "numuon" else torch.bfloat16

    def _basis_shape(self, p: torch.Tensor, group: dict) -> tuple[int, int] | None:
        return (p.shape[1], self._rank(p, group)) if self._uses_krylov(p, group) else None

    def _direction(self, x: torch.Tensor, p: torch.Tensor, group: dict,
                   ordinal: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unit-scale update direction of the whole matrix ``x`` (and NuMuon's new basis)."""
        if not self._uses_krylov(p, group):
            o = orth.newton_schulz(x, tuple(group["ns_coefficients"]), group["ns_steps"],
                                   group["ns_eps"])
            return o.to(self._out_dtype(group)), None
        gen = torch.Generator(device=x.device)
        gen.manual_seed((group["seed"] * 1_000_003 + group["t"] * 8191 + ordinal) % 2**63)
        warm = self.state[p].get("basis")
        return orth.topk_directions(x, self._rank(p, group), warm, group["krylov_oversample"],
                                    group["krylov_iters"], gen)
