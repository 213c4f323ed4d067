"""``[checkpoint] initial_load_path`` pointing at a Hugging Face folder: the checkpoint manager's side.

``hf_warm_start(model_parts, model_args, path)`` loads the folder's weights into the model (any
layout); the manager reports it like a DCP warm start (console line, ``warm_start`` event). An
unusable folder raises ``CheckpointError`` (exit status 2, one line). ``config_problem`` is the load-time check of the
folder's config.json against the configured flavor.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from titanwarm.hf.convert import HFError, check_hf_config, is_hf_folder, read_hf_config
from titanwarm.hf.load import load_hf_weights
from titanwarm.models.llama3.args import ModelArgs

__all__ = ["config_problem", "hf_warm_start", "is_hf_folder"]


def hf_warm_start(model_parts: list[nn.Module], model_args: ModelArgs, path: Path) -> int:
    """Model weights of ``model_parts`` (shape ``model_args``) from the HF folder ``path`` (optimizer,
    data, step start fresh); returns the number of tensors loaded. Raises CheckpointError."""
    from titanwarm.checkpoint.errors import CheckpointError

    try:
        return load_hf_weights(model_parts, model_args, path)
    except HFError as e:
        raise CheckpointError(f"checkpoint.initial_load_path: {e}") from e


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
