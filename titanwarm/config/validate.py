"""Load-time checks of a typed ``JobConfig``: allowed values, ranges and impossible combinations.

Runs before any process group exists, using only the config, the registries and the WORLD_SIZE that
torchrun exports. A section dataclass may also define ``problems(cfg) -> list[(key, why)]`` for
checks of its own (``[depth_schedule]`` and ``[curvature]`` do); they run here too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from titanwarm import registry
from titanwarm.config.errors import ConfigError
from titanwarm.config.sections import JobConfig
from titanwarm.distributed.parallel_dims import ParallelDims

DTYPES = ("float32", "bfloat16", "float16")

# "section.key" -> allowed values (registry-backed names are checked after custom_import).
CHOICES: dict[str, tuple[str, ...]] = {
    "model.init": ("default", "fan_in"),
    "optimizer.implementation": ("auto", "fused", "foreach", "for-loop"),
    "training.dataset_unit": ("document", "line"),
    "training.device": ("auto", "cpu", "cuda"),
    "training.mixed_precision_param": ("auto", *DTYPES),
    "training.mixed_precision_reduce": ("float32", "bfloat16"),
    "parallelism.fsdp_reshard_after_forward": ("default", "always", "never"),
    "activation_checkpoint.mode": ("none", "full", "selective"),
}

# "section.key" -> (predicate, what is allowed)
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "training.steps": (lambda v: v >= 1, "an integer >= 1"),
    "training.local_batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "training.global_batch_size": (lambda v: v == -1 or v >= 1, "-1 or an integer >= 1"),
    "training.seq_len": (lambda v: v >= 2, "an integer >= 2"),
    "training.val_fraction": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "training.max_norm": (lambda v: v >= 0, "a number >= 0 (0 disables clipping)"),
    "training.dataset_max_repeat": (lambda v: v >= 0, "a number >= 0 (0: no limit)"),
    "training.prefetch": (lambda v: v >= 0, "an integer >= 0"),
    "optimizer.lr": (lambda v: v > 0, "a number > 0"),
    "optimizer.beta1": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optimizer.beta2": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optimizer.eps": (lambda v: v > 0, "a number > 0"),
    "optimizer.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "lr_scheduler.warmup_steps": (lambda v: v >= 0, "an integer >= 0"),
    "lr_scheduler.decay_ratio": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "lr_scheduler.min_lr_ratio": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "parallelism.data_parallel_shard_degree": (lambda v: v == -1 or v >= 1, "-1 or an integer >= 1"),
    "parallelism.data_parallel_replicate_degree": (lambda v: v >= 1, "an integer >= 1"),
    "parallelism.tensor_parallel_degree": (lambda v: v >= 1, "an integer >= 1"),
    "activation_checkpoint.selective_every": (lambda v: v >= 1, "an integer >= 1"),
    "metrics.log_freq": (lambda v: v >= 1, "an integer >= 1"),
    "validation.freq": (lambda v: v >= 1, "an integer >= 1"),
    "validation.steps": (lambda v: v >= 1, "an integer >= 1"),
}


def _get(cfg: JobConfig, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def problems(cfg: JobConfig, world_size: int, inputs: bool = True) -> list[tuple[str, str]]:
    """Every (key, why) problem of ``cfg`` for a run on ``world_size`` processes, in key order;
    ``inputs=False`` skips the checks of the input files and the dataset (a memory plan needs
    neither)."""
    from titanwarm.config.loader import section_types

    found: list[tuple[str, str]] = []
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            found.append((key, f"{_get(cfg, key)!r} is not allowed; allowed: {', '.join(allowed)}"))
    for key, (ok, what) in RANGES.items():
        if not ok(_get(cfg, key)):
            found.append((key, f"{_get(cfg, key)!r} is out of range; allowed: {what}"))
    if found:
        return found

    try:
        registry.import_custom(cfg.job.custom_import)
    except ImportError as e:
        return [("job.custom_import", f"cannot import {cfg.job.custom_import!r}: {e}")]
    import titanwarm.components  # noqa: F401  (registers the built-in components)

    for key, reg in (("model.name", registry.MODELS), ("optimizer.name", registry.OPTIMIZERS),
                     ("lr_scheduler.decay_type", registry.LR_SCHEDULES),
                     ("training.dataset", registry.DATASETS)):
        if _get(cfg, key) not in reg and (inputs or key != "training.dataset"):
            found.append((key, reg.unknown_message(_get(cfg, key))))
    if found:
        return found

    spec = registry.MODELS.get(cfg.model.name)
    if cfg.model.flavor not in spec.flavors:
        found.append(("model.flavor", f"unknown flavor {cfg.model.flavor!r}; allowed: "
                                      f"{', '.join(spec.flavors)}"))
        return found
    args = spec.flavors[cfg.model.flavor]
    if inputs and not Path(cfg.model.tokenizer_path).is_file():
        found.append(("model.tokenizer_path", f"file not found: {cfg.model.tokenizer_path}"))

    t = cfg.training
    if inputs and t.dataset in ("text", "jsonl", "hf", "tokens") and not t.dataset_path:
        found.append(("training.dataset_path", f"dataset {t.dataset!r} needs at least one path"))
    if t.dataset_weights and (len(t.dataset_weights) != len(t.dataset_path) or min(t.dataset_weights) <= 0):
        found.append(("training.dataset_weights", f"{t.dataset_weights}: need one positive weight per "
                                                  f"dataset_path entry ({len(t.dataset_path)})"))

    p = cfg.parallelism
    try:
        dims = ParallelDims.from_config(p, world_size)
    except ValueError as e:
        return found + [("parallelism.data_parallel_shard_degree", str(e))]
    tp = p.tensor_parallel_degree
    n_kv = args.n_kv_heads or args.n_heads
    if args.n_heads % tp or n_kv % tp:
        found.append(("parallelism.tensor_parallel_degree",
                      f"{tp} must divide n_heads={args.n_heads} and n_kv_heads={n_kv} of flavor "
                      f"{cfg.model.flavor!r}"))
    if p.loss_parallel and tp == 1:
        found.append(("parallelism.loss_parallel", "needs tensor_parallel_degree > 1"))
    if tp > 1 and t.seq_len % tp:
        found.append(("training.seq_len", f"{t.seq_len} must be a multiple of tensor_parallel_degree "
                                          f"{tp} (sequence parallelism splits it)"))
    per_step = t.local_batch_size * dims.dp_world
    if t.global_batch_size != -1 and t.global_batch_size % per_step:
        found.append(("training.global_batch_size",
                      f"{t.global_batch_size} must be a multiple of local_batch_size x data-parallel "
                      f"degree = {per_step}"))
    if t.seq_len > args.max_seq_len:
        found.append(("training.seq_len", f"{t.seq_len} exceeds the flavor's max_seq_len "
                                          f"{args.max_seq_len}"))

    for section in section_types():
        check = getattr(getattr(cfg, section), "problems", None)
        if check is not None:
            found.extend((f"{section}.{k}", why) for k, why in check(cfg))
    return found


def validate(cfg: JobConfig, source: str, origins: dict[str, str] | None = None,
             world_size: int | None = None, inputs: bool = True) -> None:
    """Raise ``ConfigError`` for the first problem of ``cfg`` (see ``problems``) on ``world_size``
    ranks (default: torchrun's WORLD_SIZE), located in ``origins[key]`` (where that key was set) or
    else ``source``."""
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    found = problems(cfg, world, inputs)
    if found:
        key, why = found[0]
        raise ConfigError((origins or {}).get(key, source), key, why)
