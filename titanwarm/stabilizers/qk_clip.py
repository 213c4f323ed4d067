"""QK-Clip (Kimi K2's MuonClip without Muon): bound the attention logits by rescaling W_q / W_k.

During each training forward the attention modules (``record_max_logit``) keep, per head, the
largest scaled pre-softmax logit S = q.k / sqrt(head_dim) seen in the step (over the batch, the
causally visible positions and the micro-batches; before any soft-cap). After the optimizer step
``QKClip.step()``:

1. gathers S into a [n_layers, n_heads] table: each rank writes the heads it computed (under tensor
   parallelism rank r of the TP group holds heads r*H/tp .. (r+1)*H/tp - 1, the rows of its
   colwise wq/wk shard), then one all-reduce MAX over all ranks gives every rank the whole table
   (the maximum over data-parallel ranks and the union over TP ranks);
2. for every query head h with S_h > tau, scales head h's W_q rows by (tau / S_h)^alpha;
3. GQA rule: a key head g is shared by the query heads G(g) = {g*n_rep, ..., (g+1)*n_rep - 1}, so it
   uses S_g = max over G(g) of S_h, and when S_g > tau its W_k rows scale by (tau / S_g)^(1-alpha).
   Afterwards the group's largest head has max logit exactly tau (both factors use its S), every
   other head of the group at most tau, and heads of groups with no head above tau are untouched.
   (Without GQA n_rep = 1 and this is the per-head rule of the paper.)

Rows map to heads through each shard's global row offset: the per-row factors are built as a full
[rows, 1] column on every rank and sliced like the parameter with ``distribute_tensor`` (Shard(0)
for FSDP2 and TP, _StridedShard for FSDP2 x TP), so it works on plain tensors and on any DTensor
layout that shards rows. The object holds no state across steps (nothing to checkpoint).

With QK-Norm on, the logits do not depend on the scale of W_q / W_k rows (the norm removes it), so
the rescale cannot lower them: QK-Clip then only monitors (and logs) the max logits.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from titanwarm.distributed.param_init import canonical_name

_ATTENTION_NAME = re.compile(r"^layers\.(\d+)\.attention$")


def attention_modules(model: nn.Module) -> dict[int, nn.Module]:
    """Layer index -> attention module (``layers.<i>.attention``, through AC/compile wrappers)."""
    found = {}
    for name, module in model.named_modules():
        match = _ATTENTION_NAME.match(canonical_name(name))
        if match:
            found[int(match.group(1))] = module
    return dict(sorted(found.items()))


def clip_factors(s_max: torch.Tensor, n_kv_heads: int, tau: float,
                 alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head row factors (query [..., n_heads], key [..., n_kv_heads]) for max logits ``s_max``
    [..., n_heads]; 1 where nothing is clipped. -inf (head not seen) is never clipped."""
    s_max = s_max.float()
    s_kv = s_max.unflatten(-1, (n_kv_heads, -1)).amax(-1)
    gamma_q = torch.where(s_max > tau, tau / s_max, torch.ones_like(s_max))
    gamma_k = torch.where(s_kv > tau, tau / s_kv, torch.ones_like(s_kv))
    return gamma_q ** alpha, gamma_k ** (1.0 - alpha)


@torch.no_grad()
def scale_rows_(param: torch.Tensor, row_factors: torch.Tensor) -> None:
    """param[i, :] *= row_factors[i] for the full (unsharded) row index i, in place, on a plain
    tensor or on this rank's shard of a DTensor whose placements shard rows only."""
    column = row_factors.to(device=param.device, dtype=torch.float32).unsqueeze(1)
    if isinstance(param, DTensor):
        if any(isinstance(p, Shard) and p.dim != 0 for p in param.placements):
            raise NotImplementedError(f"QK-Clip needs row-sharded weights, got {param.placements}")
        # A [rows, 1] column sharded on dim 0 splits exactly like the [rows, dim] parameter.
        local = param.to_local()
        column = distribute_tensor(column, param.device_mesh, param.placements,
                                   src_data_rank=None).to_local()
        local.mul_(column.to(local.dtype))
    else:
        param.mul_(column.to(param.dtype))


def _tp_rank(weight: torch.Tensor) -> int:
    """This rank's index in the "tp" mesh dim of ``weight`` (0 without tensor parallelism)."""
    if isinstance(weight, DTensor):
        names = weight.device_mesh.mesh_dim_names or ()
        if "tp" in names:
            return weight.device_mesh.get_local_rank("tp")
    return 0


class QKClip:
    """Call ``step()`` after every optimizer step (all ranks); returns the metrics to log."""

    def __init__(self, model: nn.Module, n_heads: int, n_kv_heads: int, head_dim: int,
                 tau: float = 100.0, alpha: float = 0.5) -> None:
        self.attention = attention_modules(model)
        if not self.attention:
            raise ValueError("QK-Clip found no layers.<i>.attention modules in the model")
        missing = [i for i, m in self.attention.items() if not getattr(m, "record_max_logit", False)]
        if missing:
            raise ValueError(f"attention of layers {missing} does not record max logits; build the "
                             "model with record_max_logit=True ([stabilizers] qk_clip = true)")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.tau, self.alpha = tau, alpha
        self.layer_ids = list(self.attention)

    @torch.no_grad()
    def gather_max_logits(self) -> torch.Tensor:
        """[n_layers, n_heads] float32: each head's max logit since the last step over all ranks
        (-inf for layers that did not run, e.g. locked blocks); resets the modules' records."""
        device = next(iter(self.attention.values())).wq.weight.device
        table = torch.full((len(self.layer_ids), self.n_heads), float("-inf"), device=device)
        for row, module in enumerate(self.attention.values()):
            seen = module.max_logit
            module.max_logit = None
            if seen is None:
                continue
            start = _tp_rank(module.wq.weight) * seen.numel()
            table[row, start:start + seen.numel()] = seen.to(device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(table, op=dist.ReduceOp.MAX)
        return table

    @torch.no_grad()
    def apply(self, table: torch.Tensor) -> int:
        """Rescale W_q / W_k rows of the heads in ``table`` above tau; returns the number of query
        heads clipped."""
        gamma_q, gamma_k = clip_factors(table, self.n_kv_heads, self.tau, self.alpha)
        counts = (table > self.tau).sum(dim=1).tolist()  # one device sync
        for row, module in enumerate(self.attention.values()):
            if not counts[row]:
                continue
            scale_rows_(module.wq.weight, gamma_q[row].repeat_interleave(self.head_dim))
            scale_rows_(module.wk.weight, gamma_k[row].repeat_interleave(self.head_dim))
        return int(sum(counts))

    def step(self) -> dict[str, float]:
        """Gather, clip and report: ``qk_max_logit`` (max over layers, before clipping),
        ``qk_max_logit/layer_<i>`` per layer that ran, and ``qk_clipped_heads``."""
        table = self.gather_max_logits()
        per_layer = table.amax(dim=1).tolist()
        metrics = {f"qk_max_logit/layer_{i}": v for i, v in zip(self.layer_ids, per_layer)
                   if v != float("-inf")}
        if metrics:
            metrics["qk_max_logit"] = max(metrics.values())
        metrics["qk_clipped_heads"] = float(self.apply(table))
        return metrics
