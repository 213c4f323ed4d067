"""Training stabilisers, the paper's baselines: QK-Norm, QK-Clip, attention / final-logit soft-caps
and z-loss, configured by the ``[stabilizers]`` section (docs/stabilizers.md).

Where each one lives: QK-Norm and the soft-caps are model settings (``ModelArgs`` fields that the model
spec sets from ``[stabilizers]`` at build time); z-loss is in ``stabilized_loss`` (the trainer's
``loss_fn``); QK-Clip is a ``QKClip`` object run after every optimizer step, installed as a trainer
hook by ``install_stabilizers``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import importlib

from titanwarm.stabilizers.config import Stabilizers

if TYPE_CHECKING:
    from titanwarm.stabilizers.loss import logsumexp, stabilized_loss, z_loss
    from titanwarm.stabilizers.qk_clip import QKClip, attention_modules, clip_factors, scale_rows_
    from titanwarm.trainer.trainer import Trainer

_LAZY = {"logsumexp": "loss", "stabilized_loss": "loss", "z_loss": "loss", "QKClip": "qk_clip",
         "attention_modules": "qk_clip", "clip_factors": "qk_clip", "scale_rows_": "qk_clip"}
"""Imported on first use, so that the config schema (which imports ``stabilizers.config``) loads
without torch.distributed.tensor."""


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["QKClip", "Stabilizers", "attention_modules", "clip_factors", "describe",
           "install_stabilizers", "logsumexp", "scale_rows_", "stabilized_loss", "z_loss"]


def describe(cfg: Stabilizers, args) -> str:
    """One log line: the stabilisers on and the attention path the model (``ModelArgs``) uses."""
    on = [name for name, value in (
        ("qk_norm", cfg.qk_norm),
        (f"qk_clip(tau={cfg.qk_clip_tau:g}, alpha={cfg.qk_clip_alpha:g})", cfg.qk_clip),
        (f"attn_softcap={cfg.attn_softcap:g}", cfg.attn_softcap > 0),
        (f"logit_softcap={cfg.logit_softcap:g}", cfg.logit_softcap > 0),
        (f"z_loss={cfg.z_loss:g}", cfg.z_loss > 0)) if value]
    if args.attention_path == "sdpa":
        path = "fused SDPA"
    else:
        why = [n for n, v in (("attn_softcap", args.attn_softcap > 0),
                              ("qk_clip", args.record_max_logit)) if v] or ["attn_impl"]
        path = f"eager scored attention (explicit float32 scores, for {' and '.join(why)})"
    return f"stabilizers: {', '.join(on) or 'none'} | attention: {path}"


def install_stabilizers(trainer: Trainer) -> QKClip | None:
    """Wire ``[stabilizers]`` into a built trainer: log the active stabilisers and attention path
    once (rank 0), and with ``qk_clip`` add the QK-Clip ``after_optimizer_step`` hook, whose metrics
    (qk_max_logit, qk_max_logit/layer_<i>, qk_clipped_heads) go into ``trainer.step_metrics``.
    Returns the ``QKClip`` (or None). z-loss is applied by the trainer's ``loss_fn``."""
    cfg = trainer.cfg.stabilizers
    args = trainer.model_args
    if trainer.rank == 0:
        print(describe(cfg, args), flush=True)
        if cfg.qk_norm and cfg.qk_clip:
            print("stabilizers: note: with qk_norm the logits do not depend on the W_q/W_k row "
                  "scale, so qk_clip only monitors the max logits", flush=True)
    if not cfg.qk_clip:
        return None
    from titanwarm.stabilizers.qk_clip import QKClip

    clip = QKClip(trainer.model, args.n_heads, args.kv_heads, args.head_dim,
                  cfg.qk_clip_tau, cfg.qk_clip_alpha)
    trainer.add_hook("after_optimizer_step", lambda tr: tr.step_metrics.update(clip.step()))
    return clip
