"""Llama 3 hyper-parameters (``ModelArgs``) and the named size presets (``FLAVORS``).

``vocab_size`` in a flavor is only the published default (the Llama 3 tokenizer's 128256); the
model builder replaces it with the vocabulary size of the tokenizer actually used.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 RoPE frequency scaling (long-context extension of the rotary frequencies).

    Wavelengths shorter than ``original_max_position_embeddings / high_freq_factor`` keep their
    frequency, wavelengths longer than ``original_max_position_embeddings / low_freq_factor`` are
    divided by ``scale_factor``, and the band in between is interpolated smoothly.
    """

    enabled: bool = False
    scale_factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelArgs:
    """Shape of a Llama 3 decoder-only transformer."""

    dim: int = 256
    n_layers: int = 6
    n_heads: int = 8
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; None means n_heads (plain multi-head)."""
    vocab_size: int = 128256
    multiple_of: int = 256
    """The SwiGLU hidden size is rounded up to a multiple of this."""
    ffn_dim_multiplier: float | None = None
    """Scales the SwiGLU hidden size (8/3 * dim before rounding); None means 1."""
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    max_seq_len: int = 2048
    """Longest sequence the RoPE table covers."""
    tie_embeddings: bool = False
    """Share one matrix between the token embedding and the output projection."""
    depth_init: bool = True
    """Scale the init of each block's output projections by its depth (see ``Transformer.init_plan``)."""
    init: str = "default"
    """"default" (torchtitan's std-0.02 rule) or "fan_in" (N(0, 1/sqrt(fan_in)) for every linear
    layer); see ``Transformer.init_plan``."""
    qk_norm: bool = False
    """Stabiliser: learnable RMSNorm over head_dim on each query and key head, before RoPE."""
    attn_softcap: float = 0.0
    """Stabiliser: attention logits s <- c * tanh(s / c) before masking/softmax; 0 = off."""
    logit_softcap: float = 0.0
    """Stabiliser: output logits z <- c * tanh(z / c); 0 = off."""
    record_max_logit: bool = False
    """Record each head's max pre-softmax logit in training forwards (for QK-Clip)."""
    attn_impl: str = "auto"
    """Attention path: "sdpa" (fused, scores never materialised), "eager" (explicit scores, needed
    by attn_softcap and record_max_logit) or "auto" (eager only when one of those needs it)."""

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def attention_path(self) -> str:
        """The attention implementation used: ``attn_impl`` with "auto" resolved."""
        if self.attn_impl != "auto":
            return self.attn_impl
        return "eager" if self.attn_softcap > 0 or self.record_max_logit else "sdpa"

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """SwiGLU hidden size: int(2/3 * 4 * dim), times ffn_dim_multiplier, rounded up to multiple_of."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.init not in ("default", "fan_in"):
            raise ValueError(f'init must be "default" or "fan_in", got {self.init!r}')
        if self.attn_impl not in ("auto", "sdpa", "eager"):
            raise ValueError(f'attn_impl must be "auto", "sdpa" or "eager", got {self.attn_impl!r}')
        if self.attn_impl == "sdpa" and (self.attn_softcap > 0 or self.record_max_logit):
            raise ValueError("attn_softcap and record_max_logit need the eager attention path, "
                             'not attn_impl="sdpa"')


_LLAMA_3_1_SCALING = RopeScaling(enabled=True, scale_factor=8.0)
_LLAMA_3_2_SCALING = RopeScaling(enabled=True, scale_factor=32.0)


def _depth(n_layers: int, dim: int = 128) -> ModelArgs:
    """CPU depth-study preset: fixed width (4 heads, 2 KV heads), varying depth."""
    return ModelArgs(dim=dim, n_layers=n_layers, n_heads=4, n_kv_heads=2, multiple_of=dim // 2,
                     max_seq_len=1024)


FLAVORS: dict[str, ModelArgs] = {
    "tinymodel": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=32,
                           max_seq_len=512),
    "debugmodel": ModelArgs(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, multiple_of=256,
                            max_seq_len=2048),
    "depth4": _depth(4),
    "depth8": _depth(8),
    "depth16": _depth(16),
    "depth32": _depth(32),
    # width 64 (the full-batch edge-of-stability study, scripts/edge_of_stability.py)
    "w64_depth4": _depth(4, dim=64),
    "w64_depth8": _depth(8, dim=64),
    "w64_depth16": _depth(16, dim=64),
    # Llama 3.2 1B
    "1B": ModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim_multiplier=1.5,
                    multiple_of=256, rope_scaling=_LLAMA_3_2_SCALING, max_seq_len=131072,
                    tie_embeddings=True),
    # Llama 3.2 3B (FFN hidden 8192)
    "3B": ModelArgs(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, ffn_dim_multiplier=1.0,
                    multiple_of=256, rope_scaling=_LLAMA_3_2_SCALING, max_seq_len=131072,
                    tie_embeddings=True),
    # Llama 3.1 8B (FFN hidden 14336)
    "8B": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim_multiplier=1.3,
                    multiple_of=1024, rope_scaling=_LLAMA_3_1_SCALING, max_seq_len=131072),
    # Llama 3.1 70B (FFN hidden 28672)
    "70B": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim_multiplier=1.3,
                     multiple_of=4096, rope_scaling=_LLAMA_3_1_SCALING, max_seq_len=131072),
}
"""Named presets; pick one with ``[model] flavor``."""
