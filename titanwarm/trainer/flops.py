"""Model FLOPs utilisation (MFU) of the part of the model that trains.

Training FLOPs per token = 6 x (matmul weights the token passes through: the *active* blocks'
attention and SwiGLU projections, and the output projection) + 12 x active blocks x n_heads x
head_dim x seq_len (attention scores and values, forward + backward, causal mask not halved), as in
the PaLM appendix. Locked blocks (architecture warm-up) do not count: skipped ones do no work, and a
locked block that still runs (``skip_locked = false``) computes an identity, which is overhead, not
model FLOPs. The token embedding is a lookup and does not count. ``tests/test_flops.py`` checks the
formula against ``torch.utils.flop_counter.FlopCounterMode`` on a half-locked model.

The peak is the dense bf16 tensor-core figure of the vendor datasheet, matched on the exact name
``torch.cuda.get_device_name`` reports (an H100 PCIe is not an H100 SXM); other devices (and CPUs)
get no MFU.
"""

from __future__ import annotations

from typing import Iterable

import torch

PEAK_BF16_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.0,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    "NVIDIA H200": 989.0,  # H200 SXM
    "NVIDIA H200 NVL": 835.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA B200": 2250.0,
    "NVIDIA L40S": 362.0,
}
"""Dense bf16 TFLOP/s (no sparsity) by the exact CUDA device name."""


def peak_tflops(device: torch.device) -> float | None:
    """Datasheet dense bf16 TFLOP/s of ``device``, or None when unknown (CPU included)."""
    if device.type != "cuda":
        return None
    return PEAK_BF16_TFLOPS.get(torch.cuda.get_device_name(device))


def block_matmul_params(args) -> int:
    """Weights of one transformer block's projections (wq, wk, wv, wo, w1, w2, w3)."""
    attn = args.dim * args.head_dim * (2 * args.n_heads + 2 * args.kv_heads)
    return attn + 3 * args.dim * args.ffn_hidden_dim


def flops_per_token(args, active_layers: int, seq_len: int) -> int:
    """Training (forward + backward) FLOPs per token with ``active_layers`` blocks training."""
    matmul = active_layers * block_matmul_params(args) + args.dim * args.vocab_size
    return 6 * matmul + 12 * active_layers * args.n_heads * args.head_dim * seq_len


def active_params(parameters: Iterable[torch.nn.Parameter]) -> int:
    """Parameters that train now (``requires_grad``; locked blocks excluded), each counted once."""
    seen, total = set(), 0
    for p in parameters:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def mfu(args, active_layers: int, seq_len: int, tokens_per_sec_per_device: float,
        device: torch.device) -> float | None:
    """Fraction of the device's peak reached at ``tokens_per_sec_per_device``, or None."""
    peak = peak_tflops(device)
    if peak is None:
        return None
    return flops_per_token(args, active_layers, seq_len) * tokens_per_sec_per_device / (peak * 1e12)
