"""Command-line entry: parse the config, then train; map failures to one clear line and an exit code.

Exit codes: 0 success (also after a SIGTERM/SIGINT stop, once the checkpoint is saved), 2 bad
configuration or bad input (config, tokenizer, dataset, unusable checkpoint), 3 training stopped on
non-finite or spiking steps (fault.max_consecutive_skips in a row).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import torch

from titanwarm.config import ConfigError, JobConfig, load_config, to_toml


def schedule_table(cfg: JobConfig) -> str:
    """The resolved depth schedule (step -> blocks, depth, LR) of ``cfg`` as printable text."""
    from titanwarm.archwarm.schedule import resolve_schedule
    from titanwarm.optim import LRSchedule
    from titanwarm.registry import MODELS

    n_layers = MODELS.get(cfg.model.name).flavors[cfg.model.flavor].n_layers
    plan = resolve_schedule(cfg.depth_schedule, n_layers, cfg.lr_scheduler.warmup_steps)
    lr = LRSchedule(cfg.lr_scheduler, cfg.optimizer.lr, cfg.training.steps)
    state = "enabled" if cfg.depth_schedule.enabled else "disabled: every block trains from step 1"
    if cfg.depth_schedule.enabled and plan.events and plan.events[0].step >= cfg.training.steps:
        return (f"depth schedule (enabled), {cfg.training.steps} steps: no unlock can come before step "
                f"{plan.events[0].step}: blocks {list(plan.initial)} train, blocks "
                f"{plan.untrained_blocks(cfg.training.steps)} stay locked for this whole run")
    if cfg.depth_schedule.enabled and cfg.depth_schedule.mode == "curvature":
        from titanwarm.archwarm.curvature_policy import describe, policy_for

        policy = policy_for(cfg.depth_schedule, plan, cfg.training.steps)
        return (f'depth schedule (enabled, mode "curvature": unlock steps depend on the run), '
                f"{cfg.training.steps} steps\n"
                + describe(policy, plan.initial, [e.layers for e in plan.events], n_layers,
                           cfg.curvature.interval, cfg.training.steps, lr.lr))
    return f"depth schedule ({state}), {cfg.training.steps} steps\n" + plan.describe(lr.lr)


def main(argv: list[str] | None = None) -> int:
    """Run ``train.py`` with ``argv`` (default: sys.argv[1:]); returns the exit status."""
    try:
        cfg, flags = load_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if flags["print_config"]:
        print(to_toml(cfg))
        return 0
    if flags["print_schedule"]:
        print(schedule_table(cfg))
        return 0
    if flags["estimate_memory"]:
        from titanwarm.trainer.memory_plan import estimate

        print(estimate(cfg, flags["world_size"] or 1).table(flags["device_memory"]))
        return 0

    from titanwarm.distributed.torch_check import require_torch_features

    try:
        require_torch_features()
    except RuntimeError as e:
        print(f"environment error: {e}", file=sys.stderr)
        return 2

    from titanwarm.checkpoint.errors import CheckpointError
    from titanwarm.checkpoint.fault import TooManySkipsError
    from titanwarm.data import DataError
    from titanwarm.tokenizers import TokenizerError
    from titanwarm.trainer import Trainer

    try:
        Trainer(cfg).train()
    except (DataError, TokenizerError) as e:
        print(f"input error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"checkpoint error: {e}", file=sys.stderr)
        return 2
    except TooManySkipsError as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 3
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def exit_after_run(status: int) -> NoReturn:
    """End the process with ``status`` once its run has finished and its process group is destroyed.

    A distributed process leaves without interpreter teardown (``os._exit``, after flushing its
    streams and log handlers): in torch 2.13 a gloo group that a functional collective (every
    DTensor redistribute) has used keeps its threads running after ``destroy_process_group``, and
    the teardown then aborts a finished run with "terminate called without an active exception"
    (SIGABRT; in 1–2 two- and four-process launches of each of three CPU test suites). The same
    class of abort (gloo worker threads outliving the interpreter) is pytorch/pytorch#190489, and
    an upstream fix was attempted and abandoned in pytorch/pytorch#179291.
    Everything the run writes is written and closed by then (checkpoints finished, metrics
    closed). A single process exits normally."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os._exit(status)
    sys.exit(status)
