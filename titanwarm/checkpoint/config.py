"""The ``[checkpoint]`` and ``[fault]`` TOML sections: saving/resuming, and what a bad step does.

See docs/checkpointing.md for the layout on disk and the resume rules.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ASYNC_MODES = ("disabled", "async")


def _writable(folder: str) -> str | None:
    """None when ``folder`` could be created (if missing) and written to, else why not. Creates
    nothing: checks the nearest existing ancestor (a directory the user may write into)."""
    path = Path(folder).absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        return f"{path} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path}: permission denied"
    return None


@dataclass
class Checkpoint:
    enable: bool = False
    """Save checkpoints (torch.distributed.checkpoint, sharded) and resume from them: a run whose
    checkpoint folder already holds complete checkpoints continues from the latest one."""
    folder: str = "checkpoint"
    """Checkpoint folder, relative to job.dump_folder (an absolute path is used as is)."""
    interval: int = 500
    """Save every N optimizer steps (and at the last step, and on SIGTERM/SIGINT)."""
    keep_latest_k: int = 0
    """Keep only the K newest complete checkpoints (0 keeps all; 1 is not allowed, so that a
    crash during a save always leaves a previous complete one)."""
    load_step: int = -1
    """Step to resume from; -1 picks the latest complete checkpoint (falling back to older ones,
    with a warning, when it is unreadable). A named step that is missing or unreadable stops the
    run."""
    async_mode: str = "disabled"
    """"disabled" (the save blocks the training loop) or "async" (the state is copied to CPU
    memory, then written by a background thread while training continues)."""
    initial_load_path: str = ""
    """Warm start: a checkpoint step folder, a model-only export, or a Hugging Face Llama folder
    (config.json + safetensors: python -m titanwarm.export_hf output, or a published Llama 3.x; its
    config must match the flavor) whose model weights start a fresh run (optimizer, data position
    and step start from scratch). Ignored when the run resumes from its own checkpoint folder."""
    model_only_export: bool = False
    """At the end of training, also write the model weights alone to <folder>/model_only (DCP
    format, loadable with initial_load_path or format_utils.dcp_to_torch_save)."""

    def problems(self, cfg) -> list[tuple[str, str]]:
        """Load-time checks: values, and that job.dump_folder is writable."""
        found = []
        if self.async_mode not in ASYNC_MODES:
            found.append(("async_mode", f"{self.async_mode!r} is not allowed; allowed: "
                                        f"{', '.join(ASYNC_MODES)}"))
        if self.interval < 1:
            found.append(("interval", f"{self.interval!r} is out of range; allowed: an integer >= 1"))
        if self.keep_latest_k < 0 or self.keep_latest_k == 1:
            found.append(("keep_latest_k", f"{self.keep_latest_k!r} is out of range; allowed: 0 (keep "
                                           "all) or an integer >= 2"))
        if self.load_step < -1:
            found.append(("load_step", f"{self.load_step!r} is out of range; allowed: -1 or a step >= 0"))
        if self.initial_load_path and not Path(self.initial_load_path).is_dir():
            found.append(("initial_load_path", f"not a checkpoint folder: {self.initial_load_path}"))
        elif self.initial_load_path:
            found += self._hf_problems(cfg)
        why = _writable(cfg.job.dump_folder)
        if why is not None:
            found.append(("folder", f"job.dump_folder {cfg.job.dump_folder!r} is not writable: {why}"))
        elif self.enable:
            why = _writable(os.path.join(cfg.job.dump_folder, self.folder))
            if why is not None:
                found.append(("folder", f"{self.folder!r} under job.dump_folder is not writable: {why}"))
        return found

    def _hf_problems(self, cfg) -> list[tuple[str, str]]:
        """An HF folder as initial_load_path: its config.json against the flavor."""
        from titanwarm.hf.warm_start import config_problem, is_hf_folder
        from titanwarm.registry import MODELS

        if not is_hf_folder(self.initial_load_path) or cfg.model.name != "llama3":
            return []
        why = config_problem(self.initial_load_path, MODELS.get("llama3").flavors[cfg.model.flavor],
                             cfg.model.flavor)
        return [("initial_load_path", why)] if why else []


@dataclass
class Fault:
    max_consecutive_skips: int = 10
    """Stop the run (exit status 3) after this many consecutive skipped steps. A step is skipped
    (no optimizer update, gradients dropped) when its loss or gradient norm is NaN/inf, or when the
    spike guard rejects it; the count is logged as skipped_steps in metrics.jsonl."""
    spike_guard: bool = False
    """Loss-spike guard (as OLMo-core's SkipStep optimizer): also skip a step whose loss or gradient
    norm exceeds the rolling mean of the last spike_window accepted steps by spike_sigma standard
    deviations (active once spike_window / 2 steps are in the window)."""
    spike_sigma: float = 6.0
    """Standard deviations above the rolling mean that count as a spike."""
    spike_window: int = 128
    """Accepted steps in the spike guard's rolling window."""
    nan_steps: list[int] = field(default_factory=list)
    """Fault drill, for tests: at these steps rank 0's loss is multiplied by NaN before backward
    (a poisoned batch), so the step must be skipped. Leave empty in real runs."""

    def problems(self, cfg) -> list[tuple[str, str]]:
        """Load-time checks of the values."""
        checks = [
            ("max_consecutive_skips", self.max_consecutive_skips >= 1, "an integer >= 1"),
            ("spike_sigma", self.spike_sigma > 0, "a number > 0"),
            ("spike_window", self.spike_window >= 2, "an integer >= 2"),
            ("nan_steps", all(s >= 1 for s in self.nan_steps), "steps >= 1"),
        ]
        return [(key, f"{getattr(self, key)!r} is out of range; allowed: {what}")
                for key, ok, what in checks if not ok]
