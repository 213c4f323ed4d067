"""``[checkpoint] initial_load_path`` pointing at a Hugging Face folder: the trainer's side.

``hf_warm_start(trainer, path)`` loads the folder's weights into the trainer's model (any layout)
and reports it like a DCP warm start (console line, ``warm_start`` event); an unusable folder raises
``CheckpointError`` (exit status 2, one line). ``config_problem`` is the load-time check of the
folder's config.json against the configured flavor.
"""

from __future__ import annotations

from pathlib import Path

from titanwarm.hf.convert import HFError, check_hf_config, is_hf_folder, read_hf_config
from titanwarm.hf.load import load_hf_weights

__all__ = ["config_problem", "hf_warm_start", "is_hf_folder"]


def hf_warm_start(trainer, path: Path) -> None:
    """Model weights of ``trainer`` from the HF folder ``path`` (optimizer, data, step start fresh)."""
    from titanwarm.checkpoint.manager import CheckpointError

    try:
        n = load_hf_weights(trainer.model_parts, trainer.model_args, path)
    except HFError as e:
        raise CheckpointError(f"checkpoint.initial_load_path: {e}") from e
    if trainer.rank == 0:
        print(f"warm start: model weights from the Hugging Face folder {path} ({n} tensors)", flush=True)
    trainer.metrics.log_event("warm_start", trainer.step, {"path": str(path), "format": "hf"})


def config_problem(path: str, args, flavor: str) -> str | None:
    """Why the HF folder ``path`` does not fit flavor ``flavor`` (``args``; the vocabulary size is
    checked later, against the tokenizer), or None."""
    try:
        diffs = [d for d in check_hf_config(read_hf_config(path), args) if not d.startswith("vocab_size")]
    except HFError as e:
        return str(e)
    if diffs:
        return f"the Hugging Face folder {path} does not fit flavor {flavor!r}: " + "; ".join(diffs)
    return None
