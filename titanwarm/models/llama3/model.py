"""The Llama 3 decoder: RMSNorm, RoPE (with Llama 3.1 frequency scaling), grouped-query attention and
SwiGLU feed-forward blocks.

A plain single-device ``nn.Module``: tensor parallelism, activation checkpointing, compilation and
FSDP2 are applied from outside by ``titanwarm.distributed.parallelize``. The only concession to that is
that attention infers its number of heads from the projection outputs (``view(..., -1, head_dim)``),
so it runs unchanged when tensor parallelism gives each rank a slice of the heads.

Build on the meta device, then materialise and initialise with
``titanwarm.distributed.param_init.init_model`` (or ``init_weights`` for a plain, unsharded model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from titanwarm.models.llama3.args import ModelArgs, RopeScaling
from titanwarm.models.weight_init import InitRule, param_key


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """Rotary frequencies theta^(-2i/head_dim), i < head_dim/2, with Llama 3.1 scaling if enabled."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if not scaling.enabled:
        return freqs
    old_len = scaling.original_max_position_embeddings
    wavelen = 2 * math.pi / freqs
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    interpolated = (1 - smooth) * freqs / scaling.scale_factor + smooth * freqs
    long = wavelen > old_len / scaling.low_freq_factor
    short = wavelen < old_len / scaling.high_freq_factor
    return torch.where(short, freqs, torch.where(long, freqs / scaling.scale_factor, interpolated))


def rope_table(args: ModelArgs, device: torch.device | str | None = None) -> torch.Tensor:
    """float32 [max_seq_len, head_dim/2, 2]: cos and sin of position * frequency."""
    freqs = rope_frequencies(args.head_dim, args.rope_theta, args.rope_scaling).to(device)
    angles = torch.outer(torch.arange(args.max_seq_len, dtype=torch.float32, device=device), freqs)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x [B, T, H, head_dim] by the angles in table [T, head_dim/2, 2].

    Same convention as Meta's reference (pairs viewed as complex numbers), computed in float32.
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).type_as(x)


class Attention(nn.Module):
    """Causal grouped-query self-attention: n_kv_heads key/value heads shared by n_heads query heads.

    Stabilisers (``[stabilizers]``, see docs/stabilizers.md): ``qk_norm`` adds ``q_norm``/``k_norm``,
    RMSNorms over head_dim shared by the heads and applied per head before RoPE; ``attn_softcap``
    caps the scaled logits, s <- c * tanh(s / c), before masking; ``record_max_logit`` keeps, in
    training forwards, the running maximum of each (local) head's scaled pre-softmax logit over
    causally visible positions in ``max_logit`` (no grad, before the soft-cap) for QK-Clip, which
    reads and resets it. Those two need the eager path, which materialises the [B, H, T, T] scores
    in float32; otherwise fused SDPA runs (``ModelArgs.attention_path``).
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.head_dim = args.head_dim
        self.n_rep = args.n_heads // args.kv_heads
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.q_norm = nn.RMSNorm(args.head_dim, eps=args.norm_eps) if args.qk_norm else None
        self.k_norm = nn.RMSNorm(args.head_dim, eps=args.norm_eps) if args.qk_norm else None
        self.path = args.attention_path
        self.softcap = args.attn_softcap
        self.record_max_logit = args.record_max_logit
        self.max_logit: torch.Tensor | None = None
        """float32 [local heads]: max scaled logit per head since QK-Clip last reset it."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        # -1 heads: all of them on one device, this rank's share under tensor parallelism.
        q = self.wq(x).view(batch, seq, -1, self.head_dim)
        k = self.wk(x).view(batch, seq, -1, self.head_dim)
        v = self.wv(x).view(batch, seq, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        # Query head h reads key/value head h // n_rep.
        k = k.repeat_interleave(self.n_rep, dim=2)
        v = v.repeat_interleave(self.n_rep, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.path == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = self.scored_attention(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, -1))

    def scored_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Eager causal attention on [B, H, T, head_dim] with explicit float32 scores."""
        seq = q.shape[-2]
        # float32 scores, as fused kernels keep them: bf16 scores would be off by ~0.4 at |s|~100.
        scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) * self.head_dim ** -0.5
        hidden = ~torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()  # future keys
        masked = scores.masked_fill(hidden, float("-inf"))
        if self.record_max_logit and self.training:
            with torch.no_grad():
                seen = masked.detach().amax(dim=(0, 2, 3))
                self.max_logit = seen if self.max_logit is None else torch.maximum(self.max_logit, seen)
        if self.softcap > 0:  # cap, then mask (tanh(-inf) would be -1, not -inf)
            masked = (self.softcap * torch.tanh(scores / self.softcap)).masked_fill(hidden, float("-inf"))
        return torch.matmul(torch.softmax(masked, dim=-1).to(v.dtype), v)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then + feed_forward(norm(.))."""

    def __init__(self, layer_id: int, args: ModelArgs) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.attention_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.skip = False
        """True while the block is locked by architecture warm-up: it is then an exact identity map
        and ``Transformer.forward`` leaves it out."""
        self.residual_gate: torch.Tensor | None = None
        """Optional 0-dim tensor scaling both residual branches (architecture warm-up's "ramp")."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        a = self.attention(self.attention_norm(x), rope)
        h = x + (a if self.residual_gate is None else self.residual_gate * a)
        f = self.feed_forward(self.ffn_norm(h))
        return h + (f if self.residual_gate is None else self.residual_gate * f)


class Transformer(nn.Module):
    """Llama 3: token embedding, ``n_layers`` blocks in ``layers`` (keys "0".."n-1"), norm, output."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(i, args) for i in range(args.n_layers)})
        self.norm = nn.RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.register_buffer("rope_cache", rope_table(args), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] (int64) -> logits [B, T, vocab_size] (in the compute dtype; a DTensor
        sharded on the vocabulary under loss parallelism)."""
        seq = tokens.shape[1]
        if seq > self.args.max_seq_len:
            raise ValueError(f"sequence length {seq} exceeds max_seq_len {self.args.max_seq_len}")
        rope = self.rope_cache[:seq]
        h = self.tok_embeddings(tokens)
        for layer in self.layers.values():
            if not layer.skip:
                h = layer(h, rope)
        logits = self.output(self.norm(h))
        if self.args.logit_softcap > 0:  # stabiliser: z <- c * tanh(z / c)
            logits = self.args.logit_softcap * torch.tanh(logits / self.args.logit_softcap)
        return logits

    def init_plan(self) -> dict[str, InitRule]:
        """The starting distribution of every parameter, keyed by its name in ``named_parameters()``.

        The rule (torchtitan's): norm weights are ones; wq, wk, wv and w1 are N(0, 0.02); a block's
        output-side projections wo, w2 and w3 use std 0.02 / sqrt(2 * (layer_id + 1)) with
        ``depth_init`` (deeper blocks start smaller) or 0.02 / sqrt(2 * n_layers) without; the token
        embedding is N(0, 1); the output projection is N(0, dim^-0.5) so that the first logits have
        unit scale. A tied embedding/output matrix takes the output rule. Every normal is truncated
        at +-3 std, except the untied embedding.

        With ``init = "fan_in"`` every linear layer (the output projection included) is instead
        N(0, 1/sqrt(fan_in)), truncated at +-3 std, with no depth scaling (Wortsman et al. 2023).
        """
        a = self.args
        plan: dict[str, InitRule] = {
            "tok_embeddings.weight": InitRule("normal", 1.0),
            "norm.weight": InitRule("ones"),
            "output.weight": InitRule("trunc_normal", a.dim ** -0.5),
        }
        if a.tie_embeddings:
            plan["tok_embeddings.weight"] = plan.pop("output.weight")
        for key in self.layers:
            depth = int(key) + 1 if a.depth_init else a.n_layers
            small = InitRule("trunc_normal", 0.02 / math.sqrt(2 * depth))
            base = InitRule("trunc_normal", 0.02)
            if a.init == "fan_in":
                base = small = InitRule("trunc_normal", a.dim ** -0.5)
            rules = {"attention_norm.weight": InitRule("ones"), "ffn_norm.weight": InitRule("ones"),
                     "attention.wq.weight": base, "attention.wk.weight": base,
                     "attention.wv.weight": base, "attention.wo.weight": small,
                     "feed_forward.w1.weight": base,
                     "feed_forward.w2.weight": (InitRule("trunc_normal", a.ffn_hidden_dim ** -0.5)
                                                if a.init == "fan_in" else small),
                     "feed_forward.w3.weight": small}
            if a.qk_norm:
                rules.update({"attention.q_norm.weight": InitRule("ones"),
                              "attention.k_norm.weight": InitRule("ones")})
            plan.update({f"layers.{key}.{name}": rule for name, rule in rules.items()})
        return plan

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Recompute the RoPE table in place (needed after ``to_empty``)."""
        self.rope_cache.copy_(rope_table(self.args, self.rope_cache.device))

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Initialise an unsharded model per ``init_plan``, each parameter from its own counter-based stream.

        Gives the same values as ``titanwarm.distributed.param_init.init_model`` does in any layout.
        """
        self.init_buffers()
        plan = self.init_plan()
        for name, param in self.named_parameters():
            param.copy_(plan[name].sample(param.shape, param_key(seed, name), param.device))
