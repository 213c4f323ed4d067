"""Between titanwarm's Llama 3 (Meta naming and RoPE layout) and Hugging Face's ``LlamaForCausalLM``.

Names: ``tok_embeddings`` <-> ``model.embed_tokens``, ``layers.i.attention.wq`` <->
``model.layers.i.self_attn.q_proj`` ... (``HF_NAMES``). RoPE: titanwarm rotates adjacent pairs
(x[2j], x[2j+1]) of each head (Meta's layout); HF rotates halves (x[j], x[j + head_dim/2]). The two
compute the same function once the rows of wq and wk are permuted within each head: HF row j is
Meta row 2j and HF row j + head_dim/2 is Meta row 2j + 1 (``to_hf_rows`` / ``from_hf_rows``, exact
inverses). ``hf_config`` / ``check_hf_config`` write and check config.json (GQA, eps, rope theta and
Llama 3.1/3.2 scaling, tying).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from titanwarm.models.llama3.args import ModelArgs, RopeScaling

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"

_BLOCK = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}


class HFError(ValueError):
    """A Hugging Face folder or checkpoint that cannot be converted; one clear message."""


def is_hf_folder(path: str | Path) -> bool:
    """True when ``path`` holds a config.json and safetensors weights (single file or index)."""
    p = Path(path)
    return (p / CONFIG).is_file() and ((p / WEIGHTS).is_file() or (p / INDEX).is_file())


def hf_name(name: str) -> str:
    """The HF name of titanwarm parameter ``name`` (KeyError for parameters HF Llama lacks)."""
    if name in _TOP:
        return _TOP[name]
    _, index, rest = name.split(".", 2)
    return f"model.layers.{index}.{_BLOCK[rest]}"


def _heads(name: str, args: ModelArgs) -> int | None:
    """Heads whose rows are RoPE-permuted in parameter ``name`` (None: not a query/key weight)."""
    if name.endswith("attention.wq.weight"):
        return args.n_heads
    if name.endswith("attention.wk.weight"):
        return args.kv_heads
    return None


def to_hf_tensor(name: str, tensor: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """``tensor`` of titanwarm parameter ``name`` in HF's layout (wq/wk rows: pairs -> halves)."""
    heads = _heads(name, args)
    if heads is None:
        return tensor
    rows, cols = tensor.shape
    return tensor.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def from_hf_tensor(name: str, tensor: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """The inverse of ``to_hf_tensor``: an HF tensor in titanwarm's layout for parameter ``name``."""
    heads = _heads(name, args)
    if heads is None:
        return tensor
    rows, cols = tensor.shape
    return tensor.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def unsupported(args: ModelArgs) -> list[str]:
    """Features of ``args`` that HF's LlamaForCausalLM cannot express (export refuses them)."""
    found = [key for key in ("qk_norm",) if getattr(args, key)]
    found += [key for key in ("attn_softcap", "logit_softcap") if getattr(args, key) > 0]
    return found


def hf_config(args: ModelArgs, dtype: torch.dtype, bos_id: int | None = None,
              eos_id: int | None = None) -> dict[str, Any]:
    """config.json of a ``LlamaForCausalLM`` computing what ``Transformer(args)`` computes."""
    scaling = args.rope_scaling
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": ({"rope_type": "llama3", "factor": scaling.scale_factor,
                          "low_freq_factor": scaling.low_freq_factor,
                          "high_freq_factor": scaling.high_freq_factor,
                          "original_max_position_embeddings": scaling.original_max_position_embeddings}
                         if scaling.enabled else None),
        "tie_word_embeddings": args.tie_embeddings,
        "vocab_size": args.vocab_size,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
    }


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    """config.json of ``folder``, with the rope keys of newer transformers (``rope_parameters``)
    folded back into ``rope_theta`` / ``rope_scaling``."""
    path = Path(folder) / CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise HFError(f"{path}: unreadable: {e}") from e
    params = config.get("rope_parameters")
    if isinstance(params, dict):
        config.setdefault("rope_theta", params.get("rope_theta"))
        if params.get("rope_type", "default") != "default":
            config.setdefault("rope_scaling", params)
    return config


def _rope_scaling(config: dict[str, Any]) -> RopeScaling:
    rs = config.get("rope_scaling")
    if not rs:
        return RopeScaling()
    kind = rs.get("rope_type", rs.get("type"))
    if kind != "llama3":
        raise HFError(f"rope_scaling type {kind!r} is not supported (only Llama 3's \"llama3\")")
    return RopeScaling(enabled=True, scale_factor=float(rs["factor"]),
                       low_freq_factor=float(rs["low_freq_factor"]),
                       high_freq_factor=float(rs["high_freq_factor"]),
                       original_max_position_embeddings=int(rs["original_max_position_embeddings"]))


def check_hf_config(config: dict[str, Any], args: ModelArgs) -> list[str]:
    """Differences between an HF Llama config and the run's ``args`` (empty when they match)."""
    if config.get("model_type") not in ("llama", None):
        return [f"model_type {config.get('model_type')!r} is not \"llama\""]
    head_dim = config.get("head_dim") or config.get("hidden_size", 0) // max(1, config.get("num_attention_heads", 1))
    pairs = [
        ("hidden_size", config.get("hidden_size"), "dim", args.dim),
        ("num_hidden_layers", config.get("num_hidden_layers"), "n_layers", args.n_layers),
        ("num_attention_heads", config.get("num_attention_heads"), "n_heads", args.n_heads),
        ("num_key_value_heads", config.get("num_key_value_heads", config.get("num_attention_heads")),
         "n_kv_heads", args.kv_heads),
        ("head_dim", head_dim, "head_dim", args.head_dim),
        ("intermediate_size", config.get("intermediate_size"), "ffn hidden size", args.ffn_hidden_dim),
        ("vocab_size", config.get("vocab_size"), "vocab_size (from the tokenizer)", args.vocab_size),
        ("rms_norm_eps", config.get("rms_norm_eps"), "norm_eps", args.norm_eps),
        ("rope_theta", config.get("rope_theta"), "rope_theta", args.rope_theta),
        ("tie_word_embeddings", bool(config.get("tie_word_embeddings", False)), "tie_embeddings",
         args.tie_embeddings),
    ]
    diffs = [f"{hk} {hv} vs {ak} {av}" for hk, hv, ak, av in pairs if hv != av]
    try:
        scaling = _rope_scaling(config)
    except HFError as e:
        return diffs + [str(e)]
    if scaling != args.rope_scaling:
        diffs.append(f"rope_scaling {config.get('rope_scaling')} vs {args.rope_scaling}")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            diffs.append(f"{key} = true (titanwarm's Llama has no biases)")
    if config.get("hidden_act", "silu") != "silu":
        diffs.append(f"hidden_act {config['hidden_act']!r} vs silu")
    return diffs
