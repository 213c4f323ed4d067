"""One training run of the instability study (issue 17) with extra measurements.

``python scripts/instability_probe.py [--probe-every N] [--cold-every M --cold-hvps K] -- --config
FILE [--section.key value ...]`` trains exactly as ``train.py`` would (same config loading and
checks) and adds hooks whose values are logged with the step's metrics (0 turns one off).

**Cold check** (``--cold-every M``, experiment 1): every M steps and at the end of LR warm-up, a
fresh-start Lanczos solve of lambda_max(G) with K HVPs on the training batch (``cold_lambda_max``,
``cold_residual``), to check the few-HVP warm-started tracker against a high-precision value.

**Mechanism probe** (``--probe-every N``, experiments 2 and 3): every N steps (and at steps 1 and
the last):

- ``probe_loss``: cross-entropy on one *fixed held-out batch* (the first validation batch, the
  same every time and in every run), the series the spike rule reads: unlike the training loss it
  does not move with the data order;
- ``attn_logit_max`` and ``attn_logit_max/layer_<i>``: the largest scaled pre-softmax attention
  logit (before any soft-cap) of each active block on that batch (Wortsman et al.'s attention-logit
  growth), read through the model's own eager path and ``record_max_logit``;
- ``out_lse_mean`` / ``out_lse_max``: mean and max over tokens of logsumexp of the output logits
  (output-logit divergence; what z-loss penalises);
- ``grad_rms``, ``grad_rms_min`` (smallest per-tensor RMS) and ``grad_below_eps`` (share of
  trainable tensors whose gradient RMS is below Adam's eps): when gradients fall under eps the
  update shrinks and Adam stops adapting (Wortsman et al.'s "eps" failure).

**Restricted readings** (``--readings``, the tracker-at-scale issue's unlock and held-out study,
``scripts/curvature_readings.py``): at the run's tracked steps, λmax(G) without the parameters
younger than ``--young-steps`` Adam updates, and every ``--check-every`` steps exact checks on the
training and the held-out probe batch with and without ``min_v_hat_ratio`` (``RestrictedReadings``).

Driven by ``scripts/edge_of_stability.py`` (experiment 1), ``scripts/lr_sensitivity.py``
(experiment 2), ``scripts/depth_spikes.py`` (experiment 3) and ``scripts/curvature_readings.py``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from titanwarm.checkpoint.fault import TooManySkipsError  # noqa: E402
from titanwarm.config.loader import load_config  # noqa: E402
from titanwarm.curvature import CurvatureTracker  # noqa: E402
from titanwarm.curvature.sub_batch import sub_batch  # noqa: E402
from titanwarm.trainer import Trainer  # noqa: E402


class MechanismProbe:
    """Hooks: gradient statistics before the optimizer step, held-out probe after the step."""

    def __init__(self, trainer: Trainer, every: int) -> None:
        self.every = every
        self.batch = next(iter(trainer.val_loader.batches(1)))
        trainer.add_hook("before_optimizer_step", self.gradients)
        trainer.add_hook("after_step", self.probe)

    def due(self, trainer: Trainer) -> bool:
        return trainer.step % self.every == 0 or trainer.step in (1, trainer.cfg.training.steps)

    def gradients(self, trainer: Trainer) -> None:
        if not self.due(trainer):
            return
        eps = trainer.cfg.optimizer.eps
        rms = [g.detach().float().pow(2).mean().sqrt().item()
               for p in trainer.trainable_parameters() if (g := p.grad) is not None]
        total = sum(p.grad.numel() for p in trainer.trainable_parameters() if p.grad is not None)
        sq = sum(p.grad.detach().float().pow(2).sum().item()
                 for p in trainer.trainable_parameters() if p.grad is not None)
        trainer.step_metrics.update(grad_rms=math.sqrt(sq / max(total, 1)), grad_rms_min=min(rms, default=0.0),
                                    grad_below_eps=sum(r < eps for r in rms) / max(len(rms), 1))

    @torch.no_grad()
    def probe(self, trainer: Trainer) -> None:
        if not self.due(trainer):
            return
        model = trainer.model
        layers = {k: layer.attention for k, layer in model.layers.items() if not layer.skip}
        saved = {k: (a.path, a.record_max_logit, a.max_logit) for k, a in layers.items()}
        for a in layers.values():  # the model's own eager path records each head's max logit
            a.path, a.record_max_logit, a.max_logit = "eager", True, None
        try:
            inputs, labels = (t.to(trainer.device) for t in self.batch)
            with trainer.compute_context():
                logits = model(inputs).float()
            per_layer = {f"attn_logit_max/layer_{k}": a.max_logit.max().item() for k, a in layers.items()}
        finally:
            for k, a in layers.items():
                a.path, a.record_max_logit, a.max_logit = saved[k]
        lse = torch.logsumexp(logits, dim=-1)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten()).item()
        trainer.step_metrics.update(probe_loss=loss, out_lse_mean=lse.mean().item(),
                                    out_lse_max=lse.max().item(),
                                    attn_logit_max=max(per_layer.values(), default=math.nan), **per_layer)
        trainer.log_requested = True


def tracker_loss(trainer: Trainer):
    """The tracker's ``loss_fn`` for this trainer's model (training loss, compute context)."""
    def loss_fn(parts: list[torch.nn.Module], batch: tuple) -> torch.Tensor:
        inputs, labels = (t.to(trainer.device) for t in batch)
        with trainer.compute_context():
            logits = parts[0](inputs)
        return trainer.loss_fn(logits, labels)

    return loss_fn


class ColdCheck:
    """``after_optimizer_step`` hook (added after the warm tracker's): a fresh-start Lanczos solve."""

    def __init__(self, trainer: Trainer, every: int, hvps: int) -> None:
        self.every = every
        self.tracker = CurvatureTracker(trainer.model_parts, trainer.optimizer, method="lanczos",
                                        max_hvps=hvps, tol=1e-6, warm_start=False,
                                        seed=trainer.cfg.job.seed + 1)
        trainer.add_hook("after_optimizer_step", self)

    def __call__(self, trainer: Trainer) -> None:
        if trainer.step % self.every and trainer.step != trainer.cfg.lr_scheduler.warmup_steps:
            return
        # the batch the run's own tracker measures ([curvature] batch_size of the training batch)
        est = self.tracker.step(tracker_loss(trainer),
                                sub_batch(trainer.batch, trainer.cfg.curvature.batch_size))
        if est is not None:
            trainer.step_metrics.update(cold_lambda_max=est.lambda_max, cold_residual=est.residual)
            trainer.log_requested = True


class RestrictedReadings:
    """``after_optimizer_step`` hook (added after the run's own tracker): the restricted readings of
    ``[curvature] min_param_steps`` / ``min_v_hat_ratio`` beside the full one, each from its own
    warm-started tracker:

    - at the run's tracked steps, with the run's ``[curvature]`` settings: ``lambda_max_mature``,
      λmax(G) on the tracked batch without the parameters that have had fewer than
      ``young_steps`` Adam updates (blocks unlocked less than that many steps ago). It starts
      from the run's own tracker's vector of the previous tracked step (what that tracker
      started this step from), so the two readings are equal whenever no parameter is young
      and differ only by the restriction, not by which eigenvector a few-HVP chain follows;
    - every ``check_every`` steps, with ``check_hvps`` exact (autograd) Lanczos HVPs, so that the
      four are equally converged: ``check_lambda_max`` (full G, training batch),
      ``check_lambda_max_measured`` (G restricted by ``min_v_hat_ratio = ratio``, training batch),
      ``heldout_lambda_max`` and ``heldout_lambda_max_measured`` (the same on the fixed held-out
      probe batch, the first validation batch) and ``heldout_embed_mass`` (the full held-out
      eigenvector's squared mass on the token embedding).
    """

    def __init__(self, trainer: Trainer, young_steps: int, ratio: float, check_every: int,
                 check_hvps: int) -> None:
        c = trainer.cfg.curvature
        if trainer.curvature is None:
            raise SystemExit("--readings compares with the run's own tracker: needs [curvature] enabled = true")
        common = dict(method=c.method, tol=c.tol, seed=trainer.cfg.job.seed, dtype=c.hvp_dtype(trainer.cfg))
        self.interval, self.check_every, self.batch_size = c.interval, check_every, c.batch_size
        self.main = trainer.curvature.tracker
        self.main_state = self.main.state_dict()  # the run's tracker before its next solve
        self.mature = CurvatureTracker(trainer.model_parts, trainer.optimizer, max_hvps=c.max_hvps,
                                       hvp=c.hvp, min_param_steps=young_steps, **common)
        checks = dict(max_hvps=check_hvps, hvp="autograd", **common)
        self.batch = next(iter(trainer.val_loader.batches(1)))
        self.checks = {name: (CurvatureTracker(trainer.model_parts, trainer.optimizer,
                                               min_v_hat_ratio=r, **checks), held_out)
                       for name, r, held_out in (("check_lambda_max", 0.0, False),
                                                 ("check_lambda_max_measured", ratio, False),
                                                 ("heldout_lambda_max", 0.0, True),
                                                 ("heldout_lambda_max_measured", ratio, True))}
        trainer.add_hook("after_optimizer_step", self)

    def __call__(self, trainer: Trainer) -> None:
        loss_fn, out = tracker_loss(trainer), {}
        train = sub_batch(trainer.batch, self.batch_size)  # what the run's own tracker measures
        if trainer.step % self.interval == 0:
            self.mature.load_state_dict(self.main_state)
            self.main_state = self.main.state_dict()
            if est := self.mature.step(loss_fn, train):
                out.update(lambda_max_mature=est.lambda_max, lr_lambda_mature=est.lr_lambda)
        if trainer.step % self.check_every == 0:
            for name, (tracker, held_out) in self.checks.items():
                if (est := tracker.step(loss_fn, self.batch if held_out else train)) is not None:
                    out[name] = est.lambda_max
                    if name == "heldout_lambda_max":
                        out["heldout_embed_mass"] = tracker.last_mass.get("tok_embeddings", 0.0)
        if out:
            trainer.step_metrics.update(out)
            trainer.log_requested = True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probe-every", type=int, default=0, help="mechanism probe every N steps (0: off)")
    p.add_argument("--cold-every", type=int, default=0, help="cold lambda_max check every M steps (0: off)")
    p.add_argument("--cold-hvps", type=int, default=20)
    p.add_argument("--readings", action="store_true",
                   help="also log the restricted readings (RestrictedReadings) at the tracked steps")
    p.add_argument("--young-steps", type=int, default=20, help="readings: min_param_steps of the mature reading")
    p.add_argument("--v-hat-ratio", type=float, default=1e-3, help="readings: min_v_hat_ratio")
    p.add_argument("--check-every", type=int, default=25, help="readings: the exact checks every N steps")
    p.add_argument("--check-hvps", type=int, default=8, help="readings: HVPs of each exact check")
    args, rest = p.parse_known_args()
    cfg, _ = load_config([a for a in rest if a != "--"])
    trainer = Trainer(cfg)
    if args.cold_every:
        ColdCheck(trainer, args.cold_every, args.cold_hvps)
    if args.probe_every:
        MechanismProbe(trainer, args.probe_every)
    if args.readings:
        RestrictedReadings(trainer, args.young_steps, args.v_hat_ratio, args.check_every, args.check_hvps)
    try:
        trainer.train()
    except TooManySkipsError as e:  # repeated non-finite losses: the run diverged
        print(f"training stopped: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
