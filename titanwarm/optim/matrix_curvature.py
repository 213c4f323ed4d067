"""Curvature diagnostics for the Muon/NuMuon matrices (the AdamW groups keep the tracker's λmax(G)).

There is **no published stability threshold for Muon** like Adam's ``lr·λmax(G) < (2+2β1)/(1-β1)``
(38 at β1 = 0.9). Muon's update is not a preconditioned gradient step, so the Hessian it "sees" has
no diagonal form; Islamov, Crawshaw, Cohen & Gower (arXiv 2603.05002) study sharpness measured in
the optimizer's own norm instead. What is logged here are measured quantities with a plain meaning:

- ``matrix_lambda_max_h``: λmax of the Hessian restricted to the matrices (Lanczos, warm-started,
  ``max_hvps`` HVPs): the sharpest direction in the matrices' parameter space.
- ``update_curvature``: ``uᵀHu / ‖u‖²`` for the step's actual update ``u = W_after − W_before`` of
  the matrices (decay included): the curvature along the direction the optimizer moved. One HVP.
- ``second_order_ratio``: ``uᵀHu / (−2⟨G, u⟩)`` = ``lr·⟨O,HO⟩ / (2⟨G,O⟩)`` for ``u = −lr·O``: the
  ratio of the quadratic model's second-order term to its first-order decrease. ≥ 1 means the
  quadratic model predicts that this step did not lower the loss (too large a step along a curved
  direction); it is a derived quantity, not a published threshold. Negative ⟨G, u⟩ ≤ 0 (the update
  does not descend along G, possible with momentum) gives ``inf`` when uᵀHu > 0.

``G`` is the step's (clipped) gradient; ``H`` is evaluated on the tracked batch at the parameters
*after* the step (the tracker runs after it), which differs from the pre-step point by ``u``.
Everything runs on the parameters' own layout (DTensor shards), with the curvature package's HVP
(``titanwarm.curvature.hvp``); inner products are all-reduced.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from titanwarm.curvature import vectors as V
from titanwarm.curvature.agreement import Agreement, MeasurementSkipped
from titanwarm.curvature.hvp import AutogradHVP, LossFn, LossModule, SubstitutedLoss
from titanwarm.curvature.solvers import lanczos
from titanwarm.optim.muon import MATRIX_ALGORITHMS

logger = logging.getLogger(__name__)


class MatrixCurvature:
    """Snapshot the matrices before a tracked step (``before``), measure after it (``measure``)."""

    def __init__(self, model_parts: list[nn.Module], optimizer: torch.optim.Optimizer,
                 max_hvps: int = 5, tol: float = 1e-3, seed: int = 0) -> None:
        self.module = LossModule(model_parts)
        self.optimizer = optimizer
        self.max_hvps, self.tol, self.seed = max_hvps, tol, seed
        self._before: dict[str, torch.Tensor] = {}
        self._vector: dict[str, torch.Tensor] = {}

    def matrices(self) -> tuple[list[str], list[torch.Tensor]]:
        """Names and parameters of the trainable matrices the Muon/NuMuon groups hold."""
        held = {id(p) for g in self.optimizer.param_groups if g["algorithm"] in MATRIX_ALGORITHMS
                for p in g["params"]}
        pairs = [(n, p) for n, p in self.module.named_parameters()
                 if p.requires_grad and id(p) in held]
        return [n for n, _ in pairs], [p for _, p in pairs]

    def before(self) -> None:
        """Keep a copy of the matrices (call before ``optimizer.step()``)."""
        self._before = {n: p.detach().clone() for n, p in zip(*self.matrices())}

    def measure(self, loss_fn: LossFn, batch: Any) -> dict[str, float]:
        """The three numbers of the module docstring (empty before the first snapshot)."""
        names, params = self.matrices()
        names_params = [(n, p) for n, p in zip(names, params) if n in self._before]
        if not names_params:
            return {}
        names, params = [n for n, _ in names_params], [p for _, p in names_params]
        update = [p.detach() - self._before[n] for n, p in names_params]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        self._before = {}
        agree = Agreement(V.local(params)[0].device)
        op = AutogradHVP(SubstitutedLoss(self.module, names, loss_fn, batch), agree)
        try:
            hu = op(update)
            uhu, unorm2, descent = agree.reduce([V.local_dot(update, hu), V.local_dot(update, update),
                                                 -V.local_dot(grads, update)])
            stored = self._vector
            start = ([stored[n] if n in stored and stored[n].shape == p.shape else z
                      for n, p, z in zip(names, params, V.zeros_like_params(params))]
                     if any(n in stored for n in names) else [])
            if not start or V.norm(start) == 0:
                start = V.random_like_params(params, names, self.seed + 2)
            res = lanczos(op, start, self.max_hvps, self.tol, agree)
        except MeasurementSkipped as err:  # raised on every rank together: skip this reading
            logger.warning("matrix curvature: measurement skipped on every rank (%s)", err)
            return {}
        finally:
            op.release()
        self._vector = dict(zip(names, res.vector))
        if descent > 0:
            ratio = uhu / (2.0 * descent)
        else:
            ratio = math.inf if uhu > 0 else 0.0
        return {"matrix_lambda_max_h": res.eigenvalue,
                "update_curvature": uhu / unorm2 if unorm2 > 0 else 0.0,
                "second_order_ratio": ratio, "matrix_hvps": op.calls}

    def state_dict(self) -> dict[str, Any]:
        """The warm-start vector of the restricted λmax(H) solve."""
        return {"vector": dict(self._vector)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._vector = dict(state["vector"])


def install(trainer: Any) -> MatrixCurvature | None:
    """With ``[curvature] enabled`` and a Muon/NuMuon optimizer: snapshot the matrices before
    every ``interval``-th step, measure after it (on the tracker's batch, before the architecture
    warm-up's unlocks) and log the numbers with the step; saved with checkpoints."""
    c = trainer.cfg.curvature
    if not c.enabled or not any(g.get("algorithm") in MATRIX_ALGORITHMS
                                for g in trainer.optimizer.param_groups):
        return None
    from titanwarm.distributed.parallelize import loss_context

    diag = MatrixCurvature(trainer.model_parts, trainer.optimizer, c.max_hvps, c.tol,
                           trainer.cfg.job.seed)

    def before(tr: Any) -> None:
        if tr.step % c.interval == 0:
            diag.before()

    def after(tr: Any) -> None:
        if tr.step % c.interval:
            return
        hook = tr.curvature
        batch = hook.fixed_batch if hook.fixed_batch is not None else tr.batch

        def loss_fn(parts: list[nn.Module], b: Any) -> torch.Tensor:
            return tr.forward_loss(*(t.to(tr.device) for t in b))

        with loss_context(tr.parallel_dims):
            tr.step_metrics.update(diag.measure(loss_fn, batch))
        tr.log_requested = True

    trainer.add_hook("before_optimizer_step", before)
    trainer.add_hook("after_optimizer_step", after)
    trainer.register_state("matrix_curvature", diag)
    return diag
