"""Model FLOPs utilisation (MFU) estimate for GPU runs.

Training FLOPs per token = 6 * parameters (forward + backward matmuls) + 12 * layers * dim * seq_len
(attention scores and values), as in the PaLM appendix. The peak is the dense bf16 tensor-core figure
from the vendor datasheet for the GPUs listed below; other devices (and CPUs) get no MFU.
"""

from __future__ import annotations

import torch

PEAK_BF16_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "B200": 2250.0, "L40S": 362.0}


def peak_tflops(device: torch.device) -> float | None:
    """Datasheet dense bf16 TFLOP/s of ``device``, or None when unknown (CPU included)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def mfu(args, n_params: int, seq_len: int, tokens_per_sec_per_device: float,
        device: torch.device) -> float | None:
    """Fraction of the device's peak reached at ``tokens_per_sec_per_device``, or None."""
    peak = peak_tflops(device)
    if peak is None:
        return None
    flops_per_token = 6 * n_params + 12 * args.n_layers * args.dim * seq_len
    return flops_per_token * tokens_per_sec_per_device / (peak * 1e12)
