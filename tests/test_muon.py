"""Muon/NuMuon (titanwarm.optim.muon): Newton-Schulz band, exact parity with torch.optim.Muon,
NuMuon's top-k direction against torch.linalg.svd, routing and the rank schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from titanwarm.config.sections import Optimizer
from titanwarm.optim import build_optimizer
from titanwarm.optim import orthogonalize as orth


def _with_singular_values(m: int, n: int, s: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, len(s), generator=g)).Q
    v = torch.linalg.qr(torch.randn(n, len(s), generator=g)).Q
    return u @ torch.diag(s) @ v.T


@pytest.mark.parametrize("shape", [(64, 64), (96, 48), (40, 120)])
def test_newton_schulz_singular_values_in_band(shape):
    k = min(shape)
    s = torch.logspace(0, -3.5, k)  # spread over 3.5 decades
    x = _with_singular_values(*shape, s)
    keep = s >= 2e-3 * x.norm()  # the band holds for inputs down to 2e-3 of the Frobenius norm
    out = orth.newton_schulz(x, (3.4445, -4.775, 2.0315), 5, 1e-7).float()
    sv = torch.linalg.svdvals(out)[: int(keep.sum())]
    assert keep.sum() >= k // 3
    assert sv.min() >= 0.68 and sv.max() <= 1.21, (sv.min(), sv.max())


class Matrices(nn.Module):
    def __init__(self, shapes):
        super().__init__()
        self.mats = nn.ParameterList([nn.Parameter(torch.randn(*s) * 0.1) for s in shapes])


def _cfg(name: str, **kw) -> Optimizer:
    base = dict(name=name, lr=0.02, weight_decay=0.1, adamw_modules=["output"])
    return Optimizer(**{**base, **kw})


def _run(opt, params, steps: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()


@pytest.mark.parametrize("scale, nesterov", [("match_rms_adamw", True), ("original", False)])
def test_muon_equals_torch_muon_exactly(scale, nesterov):
    shapes = [(8, 12), (12, 8), (16, 16)]
    torch.manual_seed(0)
    ours = Matrices(shapes)
    ref = [nn.Parameter(p.detach().clone()) for p in ours.mats]
    opt = build_optimizer([ours], _cfg("Muon", update_scale=scale, nesterov=nesterov))
    assert [g["algorithm"] for g in opt.param_groups] == ["muon"]
    torch_opt = torch.optim.Muon(ref, lr=0.02, weight_decay=0.1, nesterov=nesterov,
                                 adjust_lr_fn=scale)
    _run(opt, list(ours.mats))
    _run(torch_opt, ref)
    for a, b in zip(ours.mats, ref):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["momentum_buffer"], torch_opt.state[b]["momentum_buffer"])


def _one_numuon_step(rank_fraction: float, shape=(24, 16), **kw):
    torch.manual_seed(0)
    model = Matrices([shape])
    w0 = model.mats[0].detach().clone()
    opt = build_optimizer([model], _cfg("NuMuon", rank_fraction=rank_fraction, weight_decay=0.0,
                                        update_scale="none", **kw))
    g = torch.randn(shape)
    model.mats[0].grad = g.clone()
    opt.step()
    return (w0 - model.mats[0].detach()) / 0.02, g, opt, model


def test_numuon_rank_one_is_u1_v1():
    direction, g, *_ = _one_numuon_step(1 / 16)
    u, _, vh = torch.linalg.svd(g)
    expect = torch.outer(u[:, 0], vh[0])
    assert torch.allclose(direction, expect, atol=1e-5)


def test_numuon_update_has_k_unit_singular_values():
    direction, *_ = _one_numuon_step(0.25)  # k = ceil(0.25 * 16) = 4
    sv = torch.linalg.svdvals(direction)
    assert torch.allclose(sv[:4], torch.ones(4), atol=1e-5) and sv[4:].abs().max() < 1e-5


def test_numuon_full_rank_equals_muon():
    torch.manual_seed(0)
    a, b = Matrices([(12, 20), (20, 12)]), Matrices([(12, 20), (20, 12)])
    b.load_state_dict(a.state_dict())
    opt_a = build_optimizer([a], _cfg("NuMuon", rank_fraction=1.0))
    opt_b = build_optimizer([b], _cfg("Muon"))
    _run(opt_a, list(a.mats))
    _run(opt_b, list(b.mats))
    assert all(torch.equal(x, y) for x, y in zip(a.mats, b.mats))


def test_krylov_topk_matches_svd_with_spectral_gap():
    m, n, k = 160, 120, 4
    s = torch.cat([torch.tensor([10.0, 9.0, 8.0, 7.0]), torch.linspace(1.0, 0.01, n - k)])
    a = _with_singular_values(m, n, s, seed=3)
    gen = torch.Generator().manual_seed(0)
    direction, v = orth.topk_directions(a, k, None, oversample=8, iters=2, generator=gen)
    assert 12 * 3 < n  # the Krylov path, not the exact-SVD shortcut
    u_ref, _, vh_ref = torch.linalg.svd(a, full_matrices=False)
    expect = u_ref[:, :k] @ vh_ref[:k]
    assert (direction - expect).norm() / expect.norm() < 1e-4
    # warm start from the exact basis: one block suffices
    direction2, _ = orth.topk_directions(a, k, vh_ref[:k].T, oversample=0, iters=0, generator=gen)
    assert (direction2 - expect).norm() / expect.norm() < 1e-4


def test_rank_schedule():
    assert orth.rank_fraction_at(10, 100, 0.5, 0.1, 0.2, "constant") == 0.5
    assert orth.rank_fraction_at(20, 100, 0.5, 0.1, 0.2, "linear") == 0.5
    assert orth.rank_fraction_at(60, 100, 0.5, 0.1, 0.2, "linear") == pytest.approx(0.3)
    assert orth.rank_fraction_at(100, 100, 0.5, 0.1, 0.2, "cosine") == pytest.approx(0.1)
    assert orth.rank_at(0.25, (64, 30)) == 8 and orth.rank_at(1e-6, (64, 30)) == 1


def test_numuon_warm_start_state_and_rank_decay():
    torch.manual_seed(0)
    model = Matrices([(64, 48)])
    opt = build_optimizer([model], _cfg("NuMuon", rank_fraction=0.5, rank_fraction_final=0.25,
                                        rank_schedule="linear", rank_hold_fraction=0.25),
                          total_steps=4)
    _run(opt, list(model.mats), steps=1)
    assert opt.state[model.mats[0]]["basis"].shape == (48, 24)
    _run(opt, list(model.mats), steps=3)
    assert opt.state[model.mats[0]]["basis"].shape == (48, 12)


def test_llama_routing_every_parameter_in_one_group():
    from titanwarm.models.llama3.args import FLAVORS
    from titanwarm.models.llama3.model import Transformer

    model = Transformer(FLAVORS["debugmodel"])
    model.layers["1"].requires_grad_(False)  # a locked block stays out
    opt = build_optimizer([model], Optimizer(name="NuMuon"))
    held = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(held) == len(set(held))
    assert set(held) == {id(p) for p in model.parameters() if p.requires_grad}
    names = {id(p): n for n, p in model.named_parameters()}
    by_alg = {}
    for g in opt.param_groups:
        by_alg.setdefault(g["algorithm"], []).extend(names[id(p)] for p in g["params"])
    assert "tok_embeddings.weight" in by_alg["adamw"] and "output.weight" in by_alg["adamw"]
    assert all(p.ndim == 2 for g in opt.param_groups if g["algorithm"] == "numuon"
               for p in g["params"])
    assert {n.split(".")[-2] for n in by_alg["numuon"]} == {"wq", "wk", "wv", "wo", "w1", "w2", "w3"}


def test_adamw_groups_equal_torch_adamw():
    torch.manual_seed(0)
    a = nn.ModuleDict({"output": nn.Linear(6, 5), "norm": nn.LayerNorm(6)})
    b = nn.ModuleDict({"output": nn.Linear(6, 5), "norm": nn.LayerNorm(6)})
    b.load_state_dict(a.state_dict())
    opt = build_optimizer([a], _cfg("Muon", implementation="for-loop"))
    assert all(g["algorithm"] == "adamw" for g in opt.param_groups)
    ref = build_optimizer([b], _cfg("AdamW", implementation="for-loop"))
    _run(opt, list(a.parameters()))
    _run(ref, list(b.parameters()))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_unlocked_block_joins_the_right_groups_and_locked_ones_have_no_state():
    from titanwarm.models.llama3.args import FLAVORS
    from titanwarm.models.llama3.model import Transformer
    from titanwarm.optim import add_parameters

    model = Transformer(FLAVORS["tinymodel"])
    locked = list(model.layers["1"].parameters())
    model.layers["1"].requires_grad_(False)
    opt = build_optimizer([model], Optimizer(name="Muon"), total_steps=10)
    model(torch.randint(0, 100, (2, 8))).sum().backward()
    opt.step()
    assert all(p not in opt.state for p in locked)
    model.layers["1"].requires_grad_(True)
    added = add_parameters(opt, locked, weight_decay=0.1, lr_scale=0.0)
    assert [g["algorithm"] for g in added] == ["muon", "adamw"]
    assert all(p.ndim == 2 for p in added[0]["params"]) and all(p.ndim == 1 for p in added[1]["params"])
    assert added[0]["t"] == 1 and all(p not in opt.state for p in locked)
    held = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters())


@pytest.mark.parametrize("key, value, says", [
    ("rank_fraction", "0", "optimizer.rank_fraction"),
    ("ns_coefficients", "1,2", "optimizer.ns_coefficients"),
    ("update_scale", "rms", "optimizer.update_scale"),
    ("momentum", "1.0", "optimizer.momentum"),
])
def test_bad_muon_keys_stop_at_load_time(key, value, says):
    from titanwarm.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=says):
        load_config(["--optimizer.name", "NuMuon", f"--optimizer.{key}", value])


def test_muon_keys_from_the_command_line():
    from titanwarm.config import load_config

    cfg, _ = load_config(["--optimizer.name", "Muon", "--optimizer.ns_coefficients", "3,-4.5,2"])
    assert cfg.optimizer.ns_coefficients == [3.0, -4.5, 2.0]
