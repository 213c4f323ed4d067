"""The training loss with the loss-side stabiliser: z-loss (PaLM), w * mean(logsumexp(logits)^2).

The final-logit soft-cap is applied in the model (``Transformer.forward``), so the loss sees capped
logits. Works on plain logits and on vocabulary-sharded DTensor logits under loss parallelism: the
logsumexp is built from ``amax`` / ``sum`` / ``exp`` over the (sharded) vocabulary dim, which DTensor
reduces across the TP ranks (max, then sum), so every rank gets the full-vocabulary value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from titanwarm.stabilizers.config import Stabilizers


def logsumexp(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim in float32, stable, for plain tensors and vocab-sharded DTensors."""
    logits = logits.float()
    peak = logits.detach().amax(dim=-1, keepdim=True)
    return (logits - peak).exp().sum(dim=-1).log() + peak.squeeze(-1)


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of logsumexp(logits)^2, float32 (unweighted)."""
    return logsumexp(logits).square().mean()


def stabilized_loss(logits: torch.Tensor, labels: torch.Tensor, cfg: Stabilizers | None,
                    train: bool = True) -> torch.Tensor:
    """Mean next-token cross-entropy in float32, plus ``cfg.z_loss * z_loss(logits)`` when training
    with a z-loss weight (evaluation stays plain cross-entropy, comparable across methods)."""
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
    if train and cfg is not None and cfg.z_loss > 0:
        loss = loss + cfg.z_loss * z_loss(logits)
    return loss
