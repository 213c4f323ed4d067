"""``train.py --config FILE --estimate-memory [--world-size N] [--device-memory GIB]``: per-rank
memory of a run, from the model built on the meta device (nothing is allocated).

The accounting (bytes per rank; N = parameters, T = parameters that train at full depth, which is
where architecture warm-up ends and memory peaks; s = dp_shard x tp, the ranks a parameter is split
over; c = bytes of the compute dtype: 2 for bf16 on CUDA, 4 on CPU):

- persistent: parameters N*4/s (fp32), gradients T*4/s, optimizer state k*T*4/s (k = 2 for
  Adam/AdamW), curvature tracker T*4/s (one warm-start vector; ``tracker_bytes``);
- training step (transient): FSDP2 all-gathered parameters (two blocks, current + prefetch, and the
  root: embedding/output stay unsharded between forward and backward) in c, one block's unsharded
  fp32 gradient before its reduce-scatter; activations of one micro-batch
  (``activation_bytes``), the logits (c + two fp32 copies in the loss);
- curvature solve (transient, instead of the step's): Lanczos vectors and the HVP pass
  (``tracker_bytes``).

Peak = persistent + the larger transient. Not counted: the CUDA context and allocator slack
(``RESERVE_GIB`` is kept free when judging a fit), torch.compile's savings (activations are
counted as eager: an upper bound with compile on). ``scripts/check_memory_plan.py`` compares the
plan with a measured peak.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from titanwarm.config.sections import JobConfig
from titanwarm.distributed.init import resolve_param_dtype
from titanwarm.distributed.parallel_dims import ParallelDims

GIB = 2**30
OPTIMIZER_STATES = {"AdamW": 2, "Adam": 2}
"""fp32 state tensors per trained parameter, by optimizer name (others: 2 is assumed, and said)."""
RESERVE_GIB = 2.0
"""Kept free for the CUDA context, NCCL buffers and allocator fragmentation when judging a fit."""


@dataclass
class MemoryPlan:
    """Per-rank bytes by component, and what the figures assume."""

    rows: dict[str, float] = field(default_factory=dict)
    peak_phase: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return self.rows["peak"]

    def table(self, device_memory_gib: float | None) -> str:
        lines = [f"| {name} | {value / GIB:.2f} |" for name, value in self.rows.items()]
        out = ["| per rank | GiB |", "|---|---|", *lines]
        if device_memory_gib is not None:
            usable = device_memory_gib - RESERVE_GIB
            verdict = "fits" if self.peak / GIB <= usable else "does NOT fit"
            out.append(f"\n{verdict} on {device_memory_gib:g} GiB per device (peak "
                       f"{self.peak / GIB:.2f} GiB, {usable:g} GiB usable after a {RESERVE_GIB:g} GiB "
                       f"reserve for the CUDA context and allocator)")
        return "\n".join(out + [f"note: {n}" for n in self.notes])


def activation_bytes(args, tokens: int, seq_len: int, c: int, ac_mode: str, every: int, tp: int,
                     layers: int) -> float:
    """Saved activations of ``layers`` blocks for ``tokens`` tokens (per rank), under activation
    checkpointing ``ac_mode``. Per token per block without AC: c x (7 dim + 3 kv_dim + 4 hidden)
    (norm inputs/outputs, q, k, v, rotated q/k, attention output, the SwiGLU's w1/w3 outputs, their
    activation and product) plus the attention's own: fp32 log-sum-exp per head (fused SDPA) or
    fp32 scores and probabilities (eager). Tensor parallelism splits all of it."""
    kv_dim = args.kv_heads * args.head_dim
    per_token = c * (7 * args.dim + 3 * kv_dim + 4 * args.ffn_hidden_dim)
    if args.attention_path == "sdpa":
        per_token += 4 * args.n_heads
    else:
        per_token += 8 * args.n_heads * seq_len
    full_block = per_token * tokens / tp
    block_input = c * args.dim * tokens / tp
    if ac_mode == "full":
        return layers * block_input + full_block  # inputs kept; one block recomputed at a time
    if ac_mode == "selective":
        checkpointed = layers // every
        return (layers - checkpointed) * full_block + checkpointed * block_input + (full_block if checkpointed else 0)
    return layers * full_block


def tracker_bytes(cfg: JobConfig, trained: int, shard: int, args, c: int, tp: int) -> tuple[float, float]:
    """(persistent, solve-time transient) bytes of the curvature tracker per rank, for the design
    where the tracker keeps ONE parameter-sized fp32 vector between solves (sharded like the
    parameters, locked blocks excluded) and a solve holds max_hvps + 2 such vectors (Lanczos basis
    and work vectors) plus one HVP pass: a double backward on ``[curvature] batch_size`` sequences
    per rank (0: the training micro-batch) in ``[curvature] dtype`` (float32 or the compute dtype), whose
    saved activations are about twice a plain forward's (the first backward's graph is kept)."""
    cur = cfg.curvature
    if not cur.enabled:
        return 0.0, 0.0
    vector = trained * 4 / shard
    batch = cur.batch_size or cfg.training.local_batch_size
    hvp_c = 4 if cur.dtype == "float32" else c  # "param": the training compute dtype
    seq = cfg.training.seq_len
    hvp_pass = (2 * activation_bytes(args, batch * seq, seq, hvp_c, "none", 1, tp, args.n_layers)
                + batch * seq * args.vocab_size * (hvp_c + 8))  # the pass's logits, as in training
    return vector, (cur.max_hvps + 2) * vector + hvp_pass


def estimate(cfg: JobConfig, world_size: int) -> MemoryPlan:
    """The per-rank plan of ``cfg`` on ``world_size`` ranks (model on the meta device)."""
    from titanwarm.registry import MODELS
    import titanwarm.components  # noqa: F401  (registers the built-in model)

    spec = MODELS.get(cfg.model.name)
    plan = MemoryPlan()
    flavor = spec.flavors[cfg.model.flavor]
    if Path(cfg.model.tokenizer_path).is_file():
        from titanwarm.tokenizers import load_tokenizer

        vocab = load_tokenizer(cfg.model.tokenizer_path).vocab_size
    else:
        vocab = flavor.vocab_size
        plan.notes.append(f"{cfg.model.tokenizer_path} not found: vocabulary {vocab} (the flavor's "
                          "published size) assumed")
    model = spec.build(cfg, vocab)  # meta device
    args = model.args
    dims = ParallelDims.from_config(cfg.parallelism, world_size)
    shard, tp = dims.dp_shard * dims.tp, dims.tp
    cuda = cfg.training.device != "cpu"
    c = resolve_param_dtype(cfg.training.mixed_precision_param, "cuda" if cuda else "cpu").itemsize
    reduce_c = torch.finfo(getattr(torch, cfg.training.mixed_precision_reduce)).bits // 8 if cuda else 4

    params = {id(p): p.numel() for p in model.parameters()}
    n = sum(params.values())
    block = sum(p.numel() for p in model.layers["0"].parameters())
    root = n - args.n_layers * block
    k = OPTIMIZER_STATES.get(cfg.optimizer.name, 2)
    if cfg.optimizer.name not in OPTIMIZER_STATES:
        plan.notes.append(f"optimizer {cfg.optimizer.name!r}: {k} fp32 states per parameter assumed")
    tracker_keep, tracker_solve = tracker_bytes(cfg, n, shard, args, c, tp)
    rows = plan.rows
    rows["parameters (fp32)"] = n * 4 / shard
    rows["gradients (fp32)"] = n * 4 / shard
    rows["optimizer state"] = k * n * 4 / shard
    rows["tracker (kept)"] = tracker_keep
    persistent = sum(rows.values())

    t = cfg.training
    tokens = t.local_batch_size * t.seq_len
    ac = cfg.activation_checkpoint
    gathered = 0.0
    if dims.dp_enabled:
        gathered = (2 * block + root) * c / tp + block * reduce_c / tp
    elif cuda and c < 4:
        gathered = n * c / tp  # autocast's cached low-precision weight copies
    acts = activation_bytes(args, tokens, t.seq_len, c, ac.mode, ac.selective_every, tp, args.n_layers)
    vocab_split = tp if dims.loss_parallel else 1
    logits = tokens * args.vocab_size * (c + 8) / vocab_split
    rows["FSDP/autocast working copies"] = gathered
    rows["activations (one micro-batch)"] = acts + logits
    rows["tracker solve (vectors + HVP pass)"] = tracker_solve + (gathered if tracker_solve else 0.0)
    step = gathered + acts + logits
    solve = rows["tracker solve (vectors + HVP pass)"]
    plan.peak_phase = "curvature solve" if solve > step else "training step"
    rows["peak"] = persistent + max(step, solve)
    plan.notes.append(
        f"{cfg.model.flavor}: {n / 1e9:.3f}e9 parameters; world {world_size} = dp_replicate "
        f"{dims.dp_replicate} x dp_shard {dims.dp_shard} x tp {dims.tp}; micro-batch "
        f"{t.local_batch_size} x {t.seq_len}; AC {ac.mode}"
        + (f" every {ac.selective_every}" if ac.mode == "selective" else "")
        + f"; compile {'on (counted as eager: an upper bound)' if cfg.compile.enable else 'off'}; "
        f"peak during the {plan.peak_phase}; gradients, optimizer and tracker at full depth")
    if cfg.curvature.enabled and not hasattr(cfg.curvature, "batch_size"):
        plan.notes.append("[curvature] batch_size/dtype not in this schema: the HVP pass is counted on "
                          "the training micro-batch in the compute dtype")
    return plan
