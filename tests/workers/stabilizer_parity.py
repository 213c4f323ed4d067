"""torchrun worker for tests/test_stabilizers.py: a few optimizer steps of a stabilised ``tinymodel``.

``python -m torch.distributed.run --nproc_per_node=N tests/workers/stabilizer_parity.py OUT CASE...``
runs each named case (a parallel layout and a stabiliser set, see ``CASES``) for ``STEPS`` AdamW
steps with QK-Clip after each, on the same seed and batches, and rank 0 saves ``{case: result}`` to
OUT: per-step losses (mean over ranks) and QK-Clip metrics, and the full final parameters.
``run_case`` with world size 1 gives the single-process reference.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for workers.*
from workers.parallel_forward import config, full, run_cases  # noqa: E402

from titanwarm.cli import exit_after_run
from titanwarm.config.sections import Optimizer as OptimizerConfig
from titanwarm.distributed.init import init_distributed
from titanwarm.distributed.parallel_dims import ParallelDims
from titanwarm.distributed.parallelize import loss_context, parallelize_llama
from titanwarm.distributed.param_init import canonical_name, init_model
from titanwarm.distributed.utils import all_reduce_mean, clip_grad_norm_
from titanwarm.models.llama3 import FLAVORS, Transformer
from titanwarm.optim import build_optimizer
from titanwarm.stabilizers import QKClip, Stabilizers, stabilized_loss

VOCAB, BATCH, SEQ, SEED, STEPS, LR = 256, 4, 16, 7, 3, 1e-2
# Adam's eps: at the default 1e-8 one element of layer 0's wv gets a gradient of 6e-9 at step 2
# (median 7e-4), where g / (|g| + eps) turns the ~1e-10 that summation order changes between
# layouts into a 1.3e-4 weight difference, 99.9 % of the whole error (TP: rel 1.05e-4 against the
# test's 1e-4 on an AVX-512 EPYC, below it on earlier machines); at 1e-6 the worst layout is 1.2e-5
EPS = 1e-6

STABILIZERS = {
    # everything on; QK-Norm keeps logits O(1), so a low tau still clips (weights only: see docs)
    "all": Stabilizers(qk_norm=True, qk_clip=True, qk_clip_tau=0.5, attn_softcap=2.0,
                       logit_softcap=3.0, z_loss=1e-3),
    # QK-Clip that really lowers the logits (no QK-Norm), with the soft-caps and z-loss
    "clip": Stabilizers(qk_clip=True, qk_clip_tau=0.05, qk_clip_alpha=0.3, attn_softcap=2.0,
                        logit_softcap=3.0, z_loss=1e-3),
}

CASES: dict[str, dict] = {
    "fsdp_all": dict(shard=2, stab="all"),
    "fsdp_clip": dict(shard=2, stab="clip"),
    "tp_all": dict(tp=2, loss_parallel=True, stab="all"),
    "tp_clip": dict(tp=2, stab="clip"),
    "reference_all": dict(stab="all"),
    "reference_clip": dict(stab="clip"),
}


def run_case(case: dict, world_size: int) -> dict:
    stab = STABILIZERS[case["stab"]]
    cfg = config(case)
    dims = ParallelDims.from_config(cfg.parallelism, world_size)
    dims.build_mesh("cpu")
    args = dataclasses.replace(FLAVORS["tinymodel"], vocab_size=VOCAB, max_seq_len=SEQ,
                               **stab.model_overrides())
    with torch.device("meta"):
        model = Transformer(args)
    parallelize_llama(model, dims, cfg)
    init_model(model, "cpu", SEED)
    optimizer = build_optimizer([model], OptimizerConfig(lr=LR, weight_decay=0.1, eps=EPS))
    clip = QKClip(model, args.n_heads, args.kv_heads, args.head_dim, stab.qk_clip_tau,
                  stab.qk_clip_alpha)
    rows = BATCH // dims.dp_world
    losses, metrics = [], []
    for step in range(STEPS):
        tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(step))
        local = tokens[dims.dp_rank * rows:(dims.dp_rank + 1) * rows]
        logits = model(local[:, :-1])
        with loss_context(dims):
            loss = stabilized_loss(logits, local[:, 1:], stab)
            loss.backward()
        losses.append(all_reduce_mean(full(loss).item(), dims.dp_mesh))
        clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        metrics.append(clip.step())
    params = {canonical_name(n): full(p) for n, p in model.named_parameters()}
    return dict(losses=losses, metrics=metrics, params=params)


def main(out: str, names: list[str]) -> None:
    torch.set_num_threads(1)
    run_cases(run_case, CASES, names, init_distributed("cpu"), out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
    exit_after_run(0)  # no interpreter teardown: see titanwarm.cli.exit_after_run
