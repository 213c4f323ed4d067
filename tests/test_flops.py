"""MFU accounting: the FLOPs formula against torch's FLOP counter on a half-locked model, and the
peak table's exact device-name matching."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from titanwarm.archwarm.locks import BlockLocks
from titanwarm.distributed.param_init import init_model
from titanwarm.models.llama3 import FLAVORS, Transformer
from titanwarm.trainer import flops


def model_with_locked(n_locked: int) -> Transformer:
    args = dataclasses.replace(FLAVORS["tinymodel"], vocab_size=96, max_seq_len=32, n_layers=4,
                               n_heads=4, n_kv_heads=2, attn_impl="eager")
    with torch.device("meta"):
        model = Transformer(args)
    init_model(model, "cpu", seed=0)
    locks = BlockLocks([(f"layers.{k}", m) for k, m in model.layers.items()], skip_locked=True)
    for index in range(args.n_layers - n_locked, args.n_layers):
        locks.lock(index)
    return model


@pytest.mark.parametrize("n_locked", [0, 2])
def test_flops_per_token_matches_the_flop_counter(n_locked):
    """Forward + backward of a model with ``n_locked`` of 4 blocks locked (skipped): the counted
    FLOPs equal the formula with the active blocks only, exactly (eager attention, so that the
    counter sees the score and value matmuls; it does not count CPU's fused SDPA kernel)."""
    model = model_with_locked(n_locked)
    batch, seq = 2, 16
    tokens = torch.randint(0, 96, (batch, seq), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(tokens).float().logsumexp(-1).mean().backward()
    active = 4 - n_locked
    assert counter.get_total_flops() == flops.flops_per_token(model.args, active, seq) * batch * seq
    frozen = sum(p.numel() for b in list(model.layers.values())[active:] for p in b.parameters())
    assert flops.active_params(model.parameters()) == sum(p.numel() for p in model.parameters()) - frozen


def test_half_depth_mfu_is_about_half(monkeypatch):
    """At the same throughput a half-locked 3B-shaped model reaches about half the full model's
    MFU (the output projection and attention keep it from being exactly half)."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    args = FLAVORS["3B"]
    cuda = torch.device("cuda", 0)
    full = flops.mfu(args, args.n_layers, 2048, 3000.0, cuda)
    half = flops.mfu(args, args.n_layers // 2, 2048, 3000.0, cuda)
    assert 0.5 < half / full < 0.6


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("NVIDIA B200", 2250.0), ("NVIDIA L40S", 362.0),
                                        ("NVIDIA GeForce RTX 4090", None)])
def test_peak_matches_exact_device_names(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert flops.peak_tflops(torch.device("cuda", 0)) == peak
    assert flops.peak_tflops(torch.device("cpu")) is None
