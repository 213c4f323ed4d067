"""Export a titanwarm DCP checkpoint (any parallel layout) to a Hugging Face Llama folder.

``python -m titanwarm.export_hf --checkpoint DUMP/checkpoint/step-N --output DIR`` writes
``config.json``, ``model.safetensors`` (or ``model-0000k-of-0000n.safetensors`` shards plus
``model.safetensors.index.json`` above ``--max-shard-size``) and, with ``--tokenizer`` naming a
Llama 3 tiktoken file, the tokenizer files. A step folder or a model-only export both work.

The DCP metadata gives every tensor's full shape without reading data, so the shards are planned
first; then each shard's tensors are read from the checkpoint (DCP assembles each full tensor from
whatever shards the saving ranks wrote: FSDP2, TP, any world size), permuted to HF's RoPE layout,
cast and written. Memory holds one output shard at a time: with ``--max-shard-size`` below the
largest parameter, one parameter at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from titanwarm.hf.convert import (CONFIG, INDEX, WEIGHTS, HFError, hf_config, hf_name, to_hf_tensor,
                                  unsupported)
from titanwarm.models.llama3.args import FLAVORS, ModelArgs, RopeScaling

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_SHARD = "5GB"
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def parse_size(text: str) -> int:
    """"5GB", "500MB", "2GiB", "123" (bytes) -> bytes."""
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    t = text.strip().upper()
    for unit, scale in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * scale)
    return int(t)


def checkpoint_args(checkpoint: Path) -> ModelArgs:
    """The ``ModelArgs`` recorded in a complete checkpoint's meta.json."""
    if not (checkpoint / "COMPLETE").is_file():
        raise HFError(f"{checkpoint} is not a complete titanwarm checkpoint (no COMPLETE marker)")
    record = json.loads((checkpoint / "meta.json").read_text())["model"]
    if record.get("name") != "llama3":
        raise HFError(f"{checkpoint} holds model {record.get('name')!r}; only llama3 exports to HF")
    fields = {f.name for f in dataclasses.fields(ModelArgs)}
    args = {k: v for k, v in record["args"].items() if k in fields}
    args["rope_scaling"] = RopeScaling(**args.get("rope_scaling", {}))
    flavor = FLAVORS.get(record.get("flavor"))
    if flavor is not None:  # the run's RoPE table covered training.seq_len; the flavor says more
        args["max_seq_len"] = max(args.get("max_seq_len", 0), flavor.max_seq_len)
    return ModelArgs(**args)


def plan_shards(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Consecutive groups of names (in order) whose byte sizes sum to at most ``limit`` (a tensor
    larger than the limit gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    total = 0
    for name, size in sizes.items():
        if shards[-1] and total + size > limit:
            shards.append([])
            total = 0
        shards[-1].append(name)
        total += size
    return shards


def export_checkpoint(checkpoint: str | Path, output: str | Path, dtype: str = "auto",
                      max_shard_size: str = DEFAULT_SHARD, tokenizer: str | None = None,
                      overwrite: bool = False) -> list[Path]:
    """Write the HF folder ``output`` from DCP checkpoint ``checkpoint``; returns the files written."""
    checkpoint, output = Path(checkpoint), Path(output)
    args = checkpoint_args(checkpoint)
    bad = unsupported(args)
    if bad:
        raise HFError(f"{checkpoint}: the model uses {', '.join(bad)}, which Hugging Face's Llama "
                      "cannot express")
    md = dcp.FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    names = [n for n, _ in _param_names(args)]
    missing = [n for n in names if not isinstance(md.get(f"model.{n}"), TensorStorageMetadata)]
    if missing:
        raise HFError(f"{checkpoint}: no model tensor {missing[0]} ({len(missing)} missing)")
    saved = {n: md[f"model.{n}"] for n in names}
    out_dtype = {n: DTYPES[dtype] if dtype != "auto" else saved[n].properties.dtype for n in names}
    sizes = {n: saved[n].size.numel() * out_dtype[n].itemsize for n in names}
    shards = plan_shards(sizes, parse_size(max_shard_size))

    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise HFError(f"{output} exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    files, weight_map = [], {}
    for k, shard in enumerate(shards, start=1):
        state = {f"model.{n}": torch.empty(saved[n].size, dtype=saved[n].properties.dtype) for n in shard}
        dcp.load(state, checkpoint_id=str(checkpoint))
        tensors = {hf_name(n): to_hf_tensor(n, state.pop(f"model.{n}"), args).to(out_dtype[n]).contiguous()
                   for n in shard}
        file = output / (WEIGHTS if len(shards) == 1 else f"model-{k:05d}-of-{len(shards):05d}.safetensors")
        save_file(tensors, str(file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file.name))
        files.append(file)
        del tensors, state
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (output / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        files.append(output / INDEX)

    bos = eos = None
    if tokenizer:
        from titanwarm.hf.tokenizer_files import write_tokenizer_files

        bos, eos, written = write_tokenizer_files(tokenizer, output, args.vocab_size)
        files += written
    main_dtype = out_dtype[names[0]]
    (output / CONFIG).write_text(json.dumps(hf_config(args, main_dtype, bos, eos), indent=2) + "\n")
    files.append(output / CONFIG)
    return files


def _param_names(args: ModelArgs) -> list[tuple[str, torch.Size]]:
    """The model's parameters in HF order (a tied output matrix is the embedding: listed once)."""
    from titanwarm.models.llama3.model import Transformer

    with torch.device("meta"):
        model = Transformer(args)
    return [(n, p.shape) for n, p in model.named_parameters()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m titanwarm.export_hf",
                                     description="Export a titanwarm checkpoint to a Hugging Face Llama folder.")
    parser.add_argument("--checkpoint", required=True,
                        help="a complete checkpoint folder: DUMP/<checkpoint.folder>/step-N or .../model_only")
    parser.add_argument("--output", required=True, help="the HF folder to write")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="dtype of the written tensors (auto: as saved, float32 for training runs)")
    parser.add_argument("--max-shard-size", default=DEFAULT_SHARD,
                        help=f"split model.safetensors above this size (default {DEFAULT_SHARD}; e.g. 500MB, 2GiB)")
    parser.add_argument("--tokenizer",
                        help="the run's [model] tokenizer_path: a Llama 3 tiktoken file adds the tokenizer files")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    a = parser.parse_args(argv)
    try:
        files = export_checkpoint(a.checkpoint, a.output, a.dtype, a.max_shard_size, a.tokenizer, a.overwrite)
    except (HFError, OSError, ValueError) as e:
        print(f"export error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.output}: " + ", ".join(f.name for f in files))
    return 0
