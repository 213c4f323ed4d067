"""The ``[stabilizers]`` TOML section: the baseline training stabilisers the paper compares
architecture warm-up against (see docs/stabilizers.md). All off by default, all combinable."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Stabilizers:
    qk_norm: bool = False
    """QK-Norm: a learnable RMSNorm over head_dim on every query and key head, after the head
    reshape and before RoPE (weights shared by the heads, never weight-decayed, replicated under
    tensor parallelism)."""
    qk_clip: bool = False
    """QK-Clip (Kimi K2 / MuonClip): record each head's largest pre-softmax attention logit during
    the step and, after the optimizer step, shrink the W_q / W_k rows of every head whose maximum
    exceeded qk_clip_tau. Logs qk_max_logit (and per layer qk_max_logit/layer_<i>)."""
    qk_clip_tau: float = 100.0
    """QK-Clip threshold tau on the max attention logit (softmax scale included)."""
    qk_clip_alpha: float = 0.5
    """QK-Clip split: W_q rows scale by (tau/S_max)^alpha and W_k rows by (tau/S_max)^(1-alpha)."""
    attn_softcap: float = 0.0
    """Attention-logit soft-cap c: s <- c * tanh(s / c) before masking and softmax; 0 = off
    (Gemma 2 uses 50). Switches attention to the eager scored path."""
    logit_softcap: float = 0.0
    """Final-logit soft-cap c: z <- c * tanh(z / c) before the loss; 0 = off (Gemma 2 uses 30)."""
    z_loss: float = 0.0
    """z-loss weight w: adds w * mean over tokens of logsumexp(logits)^2 (float32) to the training
    loss; 0 = off. Validation loss stays plain cross-entropy."""

    def problems(self, cfg) -> list[tuple[str, str]]:
        """Load-time checks of the values."""
        checks = [
            ("qk_clip_tau", self.qk_clip_tau > 0, "a number > 0"),
            ("qk_clip_alpha", 0 <= self.qk_clip_alpha <= 1, "a number in [0, 1]"),
            ("attn_softcap", self.attn_softcap >= 0, "a number >= 0 (0 = off)"),
            ("logit_softcap", self.logit_softcap >= 0, "a number >= 0 (0 = off)"),
            ("z_loss", self.z_loss >= 0, "a number >= 0 (0 = off)"),
        ]
        return [(key, f"{getattr(self, key)!r} is out of range; allowed: {what}")
                for key, ok, what in checks if not ok]

    @property
    def any_enabled(self) -> bool:
        return bool(self.qk_norm or self.qk_clip or self.attn_softcap > 0 or self.logit_softcap > 0
                    or self.z_loss > 0)

    def model_overrides(self) -> dict:
        """The ``ModelArgs`` fields these settings set (applied by the model spec at build time)."""
        return dict(qk_norm=self.qk_norm, record_max_logit=self.qk_clip,
                    attn_softcap=float(self.attn_softcap), logit_softcap=float(self.logit_softcap))
