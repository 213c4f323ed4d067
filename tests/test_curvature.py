"""Single-process tests of titanwarm.curvature against dense Hessians and known spectra."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from titanwarm.curvature import Curvature, CurvatureTracker
from titanwarm.curvature import vectors as V
from titanwarm.curvature.hvp import AutogradHVP, FiniteDifferenceHVP, LossModule, SubstitutedLoss
from titanwarm.curvature.preconditioner import adam_preconditioner, transport
from titanwarm.curvature.solvers import lanczos, power_iteration

DT = torch.float64


class RMSNorm(nn.Module):
    """Explicit RMSNorm (nn.LayerNorm's fused kernel gives a non-symmetric, wrong Hessian under
    torch.func.hessian / jacrev(jacrev) on torch 2.13 CPU, which would spoil the reference)."""

    def __init__(self, dim: int, affine: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return y if self.weight is None else y * self.weight


class MiniTransformer(nn.Module):
    """One pre-norm block with softmax attention (SDPA) and an MLP; ~400 parameters."""

    def __init__(self, vocab: int = 7, dim: int = 6, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, dim)
        self.norm1 = RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.norm2 = RMSNorm(dim, affine=False)
        self.w1 = nn.Linear(dim, 2 * dim)
        self.w2 = nn.Linear(2 * dim, dim, bias=False)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t = tokens.shape
        h = self.embed(tokens)
        q, k, v = self.qkv(self.norm1(h)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.wo(a.transpose(1, 2).reshape(b, t, -1))
        h = h + self.w2(torch.tanh(self.w1(self.norm2(h))))
        return self.head(h)


def lm_loss(parts: list[nn.Module], batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    logits = parts[0](x)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def make_model(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    model = MiniTransformer().to(DT)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    tokens = torch.randint(0, 7, (4, 6))
    return model, (tokens[:, :-1], tokens[:, 1:])


def adam_steps(model: nn.Module, batch, n: int, lr: float = 1e-2) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    for _ in range(n):
        opt.zero_grad()
        lm_loss([model], batch).backward()
        opt.step()
    return opt


def dense_hessian(model: nn.Module, batch, names: list[str]) -> torch.Tensor:
    """Dense Hessian of the loss w.r.t. the named parameters, flattened in that order."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, [math.prod(s) for s in shapes])
        sub = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        return lm_loss([lambda x: torch.func.functional_call(model, sub, (x,))], batch)

    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel has no forward AD
        h = torch.func.hessian(f)(flat0)
    torch.testing.assert_close(h, h.T)  # sanity of the reference itself
    return h


def strip(names: list[str]) -> list[str]:
    return [n.removeprefix("parts.0.") for n in names]


def flat(vec: V.Vector) -> torch.Tensor:
    return torch.cat([x.reshape(-1) for x in vec])


# ---------------------------------------------------------------- dense references (tiny model)

@pytest.mark.parametrize("method,max_hvps", [("lanczos", 80), ("power", 400)])
def test_lambda_h_matches_dense(method: str, max_hvps: int) -> None:
    model, batch = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tr = CurvatureTracker(model, opt, method=method, max_hvps=max_hvps, tol=1e-9,
                          preconditioned=False, hvp="autograd")
    est = tr.step(lm_loss, batch)
    names, _ = tr.tracked()
    exact = torch.linalg.eigvalsh(dense_hessian(model, batch, strip(names))).max().item()
    assert est.lambda_max == pytest.approx(exact, rel=1e-3)
    assert est.lambda_max <= exact * (1 + 1e-9)  # a Rayleigh quotient is never above λmax
    assert est.threshold == 2.0 and est.lr_lambda == pytest.approx(1e-2 * est.lambda_max)


@pytest.mark.parametrize("method,max_hvps", [("lanczos", 120), ("power", 400)])
def test_lambda_g_matches_dense(method: str, max_hvps: int) -> None:
    model, batch = make_model()
    opt = adam_steps(model, batch, 4)
    tr = CurvatureTracker(model, opt, method=method, max_hvps=max_hvps, tol=1e-9,
                          hvp="autograd", track_h=True)
    est = tr.step(lm_loss, batch)
    names, params = tr.tracked()
    h = dense_hessian(model, batch, strip(names))
    d = flat(adam_preconditioner(opt, params)).rsqrt()
    exact_g = torch.linalg.eigvalsh(d[:, None] * h * d[None, :]).max().item()
    exact_h = torch.linalg.eigvalsh(h).max().item()
    assert est.lambda_max == pytest.approx(exact_g, rel=1e-3)
    assert est.lambda_max_h == pytest.approx(exact_h, rel=1e-3)
    assert est.threshold == pytest.approx(38.0)
    assert est.ratio == pytest.approx(1e-2 * est.lambda_max / 38.0)


# ---------------------------------------------------------------- quadratics with known spectra

class Quadratic(nn.Module):
    """L = ½ wᵀ A w with A = Q diag(spectrum) Qᵀ."""

    def __init__(self, spectrum: list[float], seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = len(spectrum)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
        self.register_buffer("a", q @ torch.diag(torch.tensor(spectrum, dtype=DT)) @ q.T)
        self.w = nn.Parameter(torch.randn(n, generator=g, dtype=DT))

    def forward(self) -> torch.Tensor:
        return 0.5 * self.w @ self.a @ self.w


def quad_loss(parts: list[nn.Module], batch: None) -> torch.Tensor:
    return parts[0]()


def quad_operator(model: Quadratic):
    return lambda x: [model.a @ x[0]]


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_negative_eigenvalue_dominant_is_not_reported(method: str) -> None:
    spectrum = [-5.0, -1.0, 0.3, 0.5, 1.0, 2.0]
    model = Quadratic(spectrum)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tr = CurvatureTracker(model, opt, method=method, max_hvps=300, tol=1e-10,
                          preconditioned=False, hvp="autograd")
    est = tr.step(quad_loss, None)
    assert est.lambda_max == pytest.approx(2.0, rel=1e-6)
    # warm-started again: stays on λmax (the shift is kept)
    assert tr.step(quad_loss, None).lambda_max == pytest.approx(2.0, rel=1e-6)


def test_quadratic_spectrum_all_negative() -> None:
    model = Quadratic([-4.0, -2.0, -0.5])
    op = quad_operator(model)
    res = power_iteration(op, [torch.ones(3, dtype=DT)], 500, 1e-12)
    assert res.eigenvalue == pytest.approx(-0.5, rel=1e-6)
    assert lanczos(op, [torch.ones(3, dtype=DT)], 3, 1e-12).eigenvalue == pytest.approx(-0.5)


def test_lanczos_beats_power_small_gap() -> None:
    spectrum = [1.0, 0.98, 0.96] + torch.linspace(0.0, 0.9, 37).tolist()
    model = Quadratic(spectrum, seed=1)
    u0 = V.random_like_params([model.w], ["w"], seed=3)
    for k in (4, 6, 8):
        p = power_iteration(quad_operator(model), u0, k, 0.0).eigenvalue
        lz = lanczos(quad_operator(model), u0, k, 0.0).eigenvalue
        assert (1.0 - lz) < 0.5 * (1.0 - p), (k, p, lz)
        assert lz <= 1.0 + 1e-12 and p <= 1.0 + 1e-12


def test_residual_reported_and_biased_low() -> None:
    model = Quadratic([3.0, 2.9, 1.0, 0.5])
    res = power_iteration(quad_operator(model), [torch.ones(4, dtype=DT)], 2, 0.0)
    assert res.eigenvalue < 3.0 and res.residual > 1e-3 and res.hvps == 2


# ---------------------------------------------------------------- warm start and transport

def test_transport_is_stored_z_over_new_diagonal() -> None:
    """The stored z = D_old u maps to D_new^-1 z; zero entries (new parameters) stay zero."""
    z = [torch.tensor([1.0, 2.0, 3.0], dtype=DT), torch.zeros(1, 1, dtype=DT)]
    d_new = [torch.tensor([0.5, 4.0, 1.0], dtype=DT), torch.tensor([[0.25]], dtype=DT)]
    out = transport(z, d_new)
    torch.testing.assert_close(out[0], torch.tensor([2.0, 0.5, 3.0], dtype=DT))
    torch.testing.assert_close(out[1], z[1])
    assert out[0] is not z[0]  # the stored vector is not modified


def test_transport_exact_when_only_p_changes() -> None:
    """H fixed, P rescaled by a scalar: the transported top eigenvector of G_old is the top
    eigenvector of G_new, so one Rayleigh quotient is exact."""
    g = torch.Generator().manual_seed(0)
    b = torch.randn(8, 8, generator=g, dtype=DT)
    h = b @ b.T
    p_old = torch.rand(8, generator=g, dtype=DT) + 0.5
    p_new = 3.0 * p_old
    d_old, d_new = p_old.rsqrt(), p_new.rsqrt()
    top = torch.linalg.eigh(d_old[:, None] * h * d_old[None, :]).eigenvectors[:, -1]
    moved = transport([d_old * top], [d_new])[0]  # stored z = D_old u, mapped by D_new^-1
    u = moved / moved.norm()
    g_new = d_new[:, None] * h * d_new[None, :]
    assert float(u @ g_new @ u) == pytest.approx(torch.linalg.eigvalsh(g_new).max().item(),
                                                 rel=1e-12)
    # the θ-space direction D u is preserved by transport: D_new u_new = D_old u_old
    torch.testing.assert_close(d_new * moved, d_old * top)


def test_warm_start_beats_cold_start() -> None:
    model, batch = make_model()
    opt = adam_steps(model, batch, 10)
    kw = dict(max_hvps=2, tol=0.0, hvp="autograd")
    for method in ("power", "lanczos"):
        warm = CurvatureTracker(model, opt, method=method, warm_start=True, **kw)
        cold = CurvatureTracker(model, opt, method=method, warm_start=False, **kw)
        for _ in range(15):  # let the warm tracker converge on the current parameters
            warm.step(lm_loss, batch)
        for g in opt.param_groups:
            g["lr"] = 1e-3  # small parameter changes: real Adam steps (P moves too)
        for _ in range(2):
            opt.zero_grad()
            lm_loss([model], batch).backward()
            opt.step()
            names, params = warm.tracked()
            h = dense_hessian(model, batch, strip(names))
            d = flat(adam_preconditioner(opt, params)).rsqrt()
            exact = torch.linalg.eigvalsh(d[:, None] * h * d[None, :]).max().item()
            ew = (exact - warm.step(lm_loss, batch).lambda_max) / exact
            ec = (exact - cold.step(lm_loss, batch).lambda_max) / exact
            assert 0 <= ew < 1e-3 and ec > 0.3, (method, ew, ec)
        for g in opt.param_groups:
            g["lr"] = 1e-2


# ---------------------------------------------------------------- HVP methods

def test_hvp_methods_agree_with_dense() -> None:
    model, batch = make_model()
    module = LossModule([model])
    names = [n for n, _ in module.named_parameters()]
    fn = SubstitutedLoss(module, names, lm_loss, batch)
    h = dense_hessian(model, batch, strip(names))
    x = V.random_like_params(fn.params, names, seed=5)
    ref = h @ flat(x)
    exact = flat(AutogradHVP(fn)(x))
    torch.testing.assert_close(exact, ref, rtol=1e-9, atol=1e-9)
    fd = flat(FiniteDifferenceHVP(fn, fd_eps=1e-4, relative=True)(x))
    assert (fd - ref).norm() / ref.norm() < 1e-6
    fd_abs = flat(FiniteDifferenceHVP(fn, fd_eps=1e-4, relative=False)(x))
    assert (fd_abs - ref).norm() / ref.norm() < 1e-6


def test_tracker_fd_matches_autograd() -> None:
    model, batch = make_model()
    opt = adam_steps(model, batch, 3)
    kw = dict(method="lanczos", max_hvps=40, tol=1e-9)
    a = CurvatureTracker(model, opt, hvp="autograd", **kw).step(lm_loss, batch)
    f = CurvatureTracker(model, opt, hvp="finite_difference", fd_eps=1e-5, **kw)
    f = f.step(lm_loss, batch)
    assert f.hvp == "finite_difference" and a.hvp == "autograd"
    assert f.lambda_max == pytest.approx(a.lambda_max, rel=1e-5)


class _ForwardOnly(torch.autograd.Function):
    """An op without a derivative (like a fused attention kernel's backward)."""

    @staticmethod
    def forward(ctx, g, y):
        return g * (1 - y * y)


class _NoDoubleBackward(torch.autograd.Function):
    """tanh whose backward has no derivative (fused SDPA kernels behave like this)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return _ForwardOnly.apply(g, y)


def test_auto_falls_back_to_finite_difference() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1)).to(DT)
    x = torch.randn(8, 3, dtype=DT)

    def loss_fn(parts, batch):
        return _NoDoubleBackward.apply(parts[0](batch)).pow(2).mean()

    opt = torch.optim.Adam(model.parameters())
    tr = CurvatureTracker(model, opt, hvp="auto", preconditioned=False, fd_eps=1e-5)
    est = tr.step(loss_fn, x)
    assert est.hvp == "finite_difference"
    assert tr.step(loss_fn, x).hvp == "finite_difference"


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_overflowing_hvps_skip_the_step_without_fallback(method: str) -> None:
    """A diverging run's HVPs overflow (loss scaled by 1e200 in float64: the loss is finite, its
    HVP's squared norm is not): the step is skipped, "auto" does not switch to finite differences
    (they would meet the same model), and the next finite step measures from the last good vector."""
    model, batch = make_model()
    opt = adam_steps(model, batch, 2)
    tr = CurvatureTracker(model, opt, method=method, max_hvps=6, tol=0.0, hvp="auto")
    first = tr.step(lm_loss, batch)
    kept = {k: v.clone() for k, v in tr.state_dict()["vectors"]["g"].items()}

    def overflowing(parts, b):
        return lm_loss(parts, b) * 1e200

    assert tr.step(overflowing, batch) is None
    assert "non-finite operator values" in tr.last_skip and tr.last_skip.startswith("autograd")
    assert all(torch.equal(kept[k], v) for k, v in tr.state_dict()["vectors"]["g"].items())
    again = tr.step(lm_loss, batch)
    assert again.hvp == "autograd" and tr.state_dict()["hvp"] == "autograd"
    clean = CurvatureTracker(model, opt, method=method, max_hvps=6, tol=0.0, hvp="auto")
    assert clean.step(lm_loss, batch).lambda_max == first.lambda_max
    assert again.lambda_max == pytest.approx(clean.step(lm_loss, batch).lambda_max, rel=1e-12)


def test_failed_tridiagonal_eigenproblem_skips_the_step(monkeypatch) -> None:
    model, batch = make_model()
    opt = adam_steps(model, batch, 2)
    tr = CurvatureTracker(model, opt, method="lanczos", max_hvps=4, hvp="autograd")

    def failing_eigh(t):
        raise torch.linalg.LinAlgError("injected: the algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    assert tr.step(lm_loss, batch) is None
    assert "tridiagonal eigenproblem failed (injected" in tr.last_skip


# ---------------------------------------------------------------- bookkeeping

def test_grads_and_params_untouched() -> None:
    model, batch = make_model()
    opt = adam_steps(model, batch, 2)
    lm_loss([model], batch).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    for hvp in ("autograd", "finite_difference"):
        CurvatureTracker(model, opt, hvp=hvp, track_h=True).step(lm_loss, batch)
    for p, g, v in zip(model.parameters(), grads, params):
        assert torch.equal(p.grad, g) and torch.equal(p.detach(), v)


def test_frozen_and_unheld_params_excluded_then_vector_grows() -> None:
    model, batch = make_model()
    for p in model.head.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for n, p in model.named_parameters()
                             if not n.startswith(("w2", "head"))], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        lm_loss([model], batch).backward()
        opt.step()
    tr = CurvatureTracker(model, opt, method="lanczos", max_hvps=60, tol=1e-10,
                          preconditioned=False, hvp="autograd")
    est = tr.step(lm_loss, batch)
    names, _ = tr.tracked()
    assert not any("head" in n or "w2" in n for n in names)
    exact = torch.linalg.eigvalsh(dense_hessian(model, batch, strip(names))).max().item()
    assert est.lambda_max == pytest.approx(exact, rel=1e-3)
    # unlock the head: the stored vector grows onto it with zeros
    model.head.weight.requires_grad_(True)
    opt.add_param_group({"params": [model.head.weight], "lr": 1e-2})
    start = tr._start("h", *tr.tracked(), None)
    names2, _ = tr.tracked()
    new = names2.index("parts.0.head.weight")
    assert torch.count_nonzero(start[new]) == 0 and sum(float(x.norm()) for x in start) > 0
    est2 = tr.step(lm_loss, batch)
    exact2 = torch.linalg.eigvalsh(dense_hessian(model, batch, strip(names2))).max().item()
    assert est2.lambda_max == pytest.approx(exact2, rel=1e-3)


def test_preconditioned_before_first_step_is_none() -> None:
    model, batch = make_model()
    opt = torch.optim.AdamW(model.parameters())
    assert CurvatureTracker(model, opt).step(lm_loss, batch) is None


def test_state_dict_round_trip() -> None:
    model, batch = make_model()
    opt = adam_steps(model, batch, 2)
    a = CurvatureTracker(model, opt, max_hvps=3, hvp="autograd", track_h=True)
    a.step(lm_loss, batch)
    b = CurvatureTracker(model, opt, max_hvps=3, hvp="autograd", track_h=True)
    b.load_state_dict(a.state_dict())
    ea, eb = a.step(lm_loss, batch), b.step(lm_loss, batch)
    assert ea.lambda_max == eb.lambda_max and ea.lambda_max_h == eb.lambda_max_h


def test_config_problems() -> None:
    assert Curvature().problems(None) == []
    for key, bad in [("method", "arnoldi"), ("hvp", "jvp"), ("batch", "val"), ("interval", 0),
                     ("max_hvps", 0), ("fd_eps", 0.0)]:
        assert [k for k, _ in Curvature(**{key: bad}).problems(None)] == [key]
    with pytest.raises(ValueError):
        CurvatureTracker(nn.Linear(2, 2), torch.optim.Adam(nn.Linear(2, 2).parameters()),
                         method="arnoldi")


def test_every_tracker_key_reaches_the_trainers_tracker(tmp_path) -> None:
    """Each ``[curvature]`` key that sets a ``CurvatureTracker`` argument arrives there from TOML
    (fd_eps / fd_relative were constructor-only before): two configs that, between them, move
    every such key off its default. A bad fd_eps stops the load naming the file and key."""
    from titanwarm.config import ConfigError, load_config
    from titanwarm.trainer import Trainer

    bodies = ['hvp = "finite_difference"\nfd_eps = 3e-5\nfd_relative = false\nmethod = "power"\n'
              'max_hvps = 3\ntol = 0.01\ntrack_h = true\nwarm_start = false\n'
              'min_param_steps = 2\nmin_v_hat_ratio = 1e-3\n',
              'hvp = "autograd"\npreconditioned = false\n']
    default, moved = Curvature().tracker_kwargs(), set()
    path = tmp_path / "run.toml"
    for i, body in enumerate(bodies):
        path.write_text("[curvature]\nenabled = true\n" + body)
        cfg, _ = load_config(["--config", str(path), "--model.flavor", "tinymodel",
                              "--training.seq_len", "16", "--training.local_batch_size", "2",
                              "--training.device", "cpu", "--validation.enable", "false",
                              "--metrics.enable_tensorboard", "false", "--metrics.console", "false",
                              "--job.dump_folder", str(tmp_path / str(i))])
        tracker = Trainer(cfg).curvature.tracker
        for key, value in cfg.curvature.tracker_kwargs().items():
            assert getattr(tracker, key) == value, key
            if value != default[key]:
                moved.add(key)
    assert moved == set(default)
    path.write_text("[curvature]\nfd_eps = -1e-4\n")
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(path)])
    assert (info.value.source, info.value.key) == (str(path), "curvature.fd_eps")


def test_power_reports_the_largest_rayleigh_quotient_seen() -> None:
    """With λmin = -50 dominating λmax = 2, the iterates' Rayleigh quotients fall below zero before
    the shift catches up; the reported value is the best lower bound seen (here the start's), never
    a negative number passed off as λmax."""
    diag = torch.tensor([2.0, 1.0, -50.0], dtype=torch.float64)
    op = lambda v: [diag * v[0]]  # noqa: E731
    u0 = [torch.tensor([1.0, 0.0, 0.05], dtype=torch.float64)]
    first = float((u0[0] * diag * u0[0]).sum() / (u0[0] @ u0[0]))
    res = power_iteration(op, u0, max_hvps=2, tol=0.0)
    assert 0 < first <= 2.0 and res.eigenvalue == pytest.approx(first)
    second = diag * u0[0] / (diag * u0[0]).norm()
    assert float(second @ (diag * second)) < 0  # the last iterate's quotient is negative


def test_sub_batch_cuts_every_per_sequence_part() -> None:
    """[curvature] batch_size on torchtitan's batch forms: per-sequence tensors and flex
    BlockMasks are cut inside tuples/lists/dicts, broadcast parts and non-tensors are kept, packed
    (named-tuple) metadata is refused."""
    from typing import NamedTuple

    from torch.nn.attention.flex_attention import create_block_mask

    from titanwarm.curvature.sub_batch import UncuttableBatch, sub_batch

    tokens, labels = torch.arange(24).view(4, 6), torch.arange(24).view(4, 6) + 100
    broadcast = torch.arange(6).view(1, 6)
    table = torch.randn(6, 2)  # not per sequence (leading dim is not the batch's)
    mask = create_block_mask(lambda b, h, q, k: q >= k, 4, None, 128, 128, device="cpu")
    shared = create_block_mask(lambda b, h, q, k: q >= k, None, None, 128, 128, device="cpu")
    form = ((tokens,), {"attention_masks": mask, "shared": shared, "positions": broadcast,
                        "table": table, "flag": None, "n": 3}, [labels])
    args, kwargs, rest = sub_batch(form, 2)
    assert torch.equal(args[0], tokens[:2]) and torch.equal(rest[0], labels[:2])
    assert isinstance(rest, list) and isinstance(args, tuple)
    assert kwargs["attention_masks"].kv_num_blocks.shape[0] == 2
    assert torch.equal(kwargs["attention_masks"].kv_num_blocks, mask.kv_num_blocks[:2])
    assert kwargs["shared"] is shared and kwargs["positions"] is broadcast
    assert kwargs["table"] is table and kwargs["flag"] is None and kwargs["n"] == 3
    assert sub_batch(form, 0) is form and sub_batch(form, 4) is form and sub_batch(form, 9) is form
    assert torch.equal(sub_batch(tokens, 1), tokens[:1])

    class Packed(NamedTuple):
        cu_seq: torch.Tensor
        max_len: int

    with pytest.raises(UncuttableBatch, match="Packed cannot be cut"):
        sub_batch((tokens, {"attention_masks": Packed(torch.tensor([0, 6, 12, 18, 24]), 6)}), 2)


def test_sub_batch_hvp_is_the_sub_batch_loss_hvp() -> None:
    """[curvature] batch_size: the HVP on the first k sequences is the Hessian of their mean loss
    (dense reference) times x, not the full batch's."""
    from titanwarm.curvature.sub_batch import sub_batch

    model, batch = make_model()
    module = LossModule([model])
    names = [n for n, _ in module.named_parameters()]
    small = sub_batch(batch, 2)
    assert small[0].shape[0] == 2 and sub_batch(batch, 0) is batch
    fn = SubstitutedLoss(module, names, lm_loss, small)
    x = V.random_like_params(fn.params, names, seed=3)
    ref = dense_hessian(model, small, strip(names)) @ flat(x)
    torch.testing.assert_close(flat(AutogradHVP(fn)(x)), ref, rtol=1e-9, atol=1e-9)
    full = dense_hessian(model, batch, strip(names)) @ flat(x)
    assert (full - ref).norm() > 1e-3 * ref.norm()


def _llama(record_max_logit: bool = False) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    import dataclasses

    from titanwarm.models.llama3 import FLAVORS, Transformer

    args = dataclasses.replace(FLAVORS["tinymodel"], vocab_size=32, max_seq_len=16,
                               record_max_logit=record_max_logit)
    torch.manual_seed(0)
    model = Transformer(args)
    model.init_weights(0)
    tokens = torch.randint(0, 32, (4, 17), generator=torch.Generator().manual_seed(1))
    return model, (tokens[:, :-1], tokens[:, 1:])


def test_compiled_blocks_keep_autograd_hvps() -> None:
    """Inductor-compiled blocks (whose double backward raises): the tracker runs the eager
    modules for its passes, so the HVP stays autograd and λ equals the uncompiled model's; the
    training forward stays compiled."""
    import copy

    model, batch = _llama()
    eager = copy.deepcopy(model)
    for block in model.layers.values():
        block.compile(backend="inductor", fullgraph=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lm_loss([model], batch).backward()  # a compiled training step
    opt.step()
    # the same weights and Adam state in the uncompiled copy (inductor's fused kernels round the
    # step's gradients differently, and Adam's first step amplifies that: compare on one point)
    eager.load_state_dict(model.state_dict())
    eager_opt = torch.optim.AdamW(eager.parameters(), lr=1e-3)
    eager_opt.load_state_dict(opt.state_dict())
    opts = [opt, eager_opt]
    lams = []
    for m, opt in zip((model, eager), opts):
        tracker = CurvatureTracker(m, opt, method="lanczos", max_hvps=6, tol=0.0, hvp="auto",
                                   track_h=True)
        est = tracker.step(lm_loss, batch)
        assert est.hvp == "autograd"
        lams.append((est.lambda_max, est.lambda_max_h))
    assert lams[0][0] == pytest.approx(lams[1][0], rel=1e-4)
    assert lams[0][1] == pytest.approx(lams[1][1], rel=1e-4)
    assert all(b._compiled_call_impl is not None for b in model.layers.values())


def test_tracker_passes_do_not_record_max_logits() -> None:
    """QK-Clip's per-head max logits come from training forwards only, not the tracker's."""
    model, batch = _llama(record_max_logit=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lm_loss([model], batch).backward()
    opt.step()
    attn = [b.attention for b in model.layers.values()]
    seen = [a.max_logit.clone() for a in attn]
    for a in attn:
        a.max_logit = a.max_logit * 0 - 1.0  # a value no real forward could leave
    CurvatureTracker(model, opt, max_hvps=3, hvp="autograd").step(lm_loss, batch)
    assert all(torch.equal(a.max_logit, torch.full_like(s, -1.0)) for a, s in zip(attn, seen))
    assert all(a.record_max_logit for a in attn)  # restored


def test_finite_differences_refused_in_16_bit_compute() -> None:
    from titanwarm.config.sections import JobConfig

    cfg = JobConfig()
    cfg.training.mixed_precision_param = "bfloat16"
    c = Curvature(enabled=True, hvp="finite_difference", dtype="param")
    assert [k for k, _ in c.problems(cfg)] == ["hvp"]
    assert Curvature(enabled=True, hvp="finite_difference", dtype="float32").problems(cfg) == []
    cfg.training.mixed_precision_param = "float32"
    assert c.problems(cfg) == []
    # and the tracker never falls back to (or runs) them there
    model, batch = _llama()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lm_loss([model], batch).backward()
    opt.step()
    tracker = CurvatureTracker(model, opt, hvp="finite_difference", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="16-bit"):
        tracker.step(lm_loss, batch)


def test_eigenvector_mass_per_block_sums_to_one() -> None:
    """``last_mass``: the squared mass of the returned unit eigenvector of H per parameter group
    equals the dense top eigenvector's (converged solve), and sums to 1."""
    model, batch = make_model()
    opt = adam_steps(model, batch, 2)
    tr = CurvatureTracker(model, opt, method="lanczos", max_hvps=80, tol=1e-10,
                          preconditioned=False, hvp="autograd")
    tr.step(lm_loss, batch)
    names, params = tr.tracked()
    top = torch.linalg.eigh(dense_hessian(model, batch, strip(names))).eigenvectors[:, -1]
    sizes = [p.numel() for p in params]
    expected: dict[str, float] = {}
    from titanwarm.curvature.tracker import mass_group

    for n, chunk in zip(names, torch.split(top, sizes)):
        expected[mass_group(n)] = expected.get(mass_group(n), 0.0) + float(chunk.pow(2).sum())
    assert sum(tr.last_mass.values()) == pytest.approx(1.0, rel=1e-9)
    assert tr.last_mass.keys() == expected.keys()
    for k, v in expected.items():
        assert tr.last_mass[k] == pytest.approx(v, abs=1e-5)


# ---------------------------------------------------------------- restricted readings (issue 11)

def test_min_param_steps_leaves_out_young_parameters() -> None:
    """A parameter with fewer Adam updates than ``min_param_steps`` (here: the head, trained 1 step
    after 3 steps frozen, like a block just unlocked) is outside the tracked G; λ equals the dense
    G of the older parameters. With 0 it is inside again."""
    model, batch = make_model()
    model.head.weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                            betas=(0.9, 0.95), weight_decay=0.0)
    for step in range(4):
        if step == 3:
            model.head.weight.requires_grad_(True)
            opt.add_param_group({"params": [model.head.weight]})
        opt.zero_grad()
        lm_loss([model], batch).backward()
        opt.step()
    young = CurvatureTracker(model, opt, max_hvps=120, tol=1e-10, hvp="autograd", min_param_steps=2)
    est = young.step(lm_loss, batch)
    names, params = young.tracked()
    assert "parts.0.head.weight" not in names and len(names) == len(list(model.parameters())) - 1
    h = dense_hessian(model, batch, strip(names))
    d = flat(adam_preconditioner(opt, params)).rsqrt()
    assert est.lambda_max == pytest.approx(torch.linalg.eigvalsh(d[:, None] * h * d[None, :]).max().item(),
                                           rel=1e-3)
    everything = CurvatureTracker(model, opt, max_hvps=3, hvp="autograd", min_param_steps=0)
    assert "parts.0.head.weight" in everything.tracked()[0]


def test_min_v_hat_ratio_restricts_g_to_measured_coordinates() -> None:
    """Embedding rows of tokens the optimizer never saw have v_hat = 0 (P = eps): on a batch that
    uses them they dominate G (the held-out blow-up). ``min_v_hat_ratio`` zeroes D where sqrt(v_hat)
    is below the ratio times the tensor's RMS; λ then equals the dense λmax of that restricted G."""
    model, batch = make_model()
    seen = (batch[0] % 5, batch[1] % 5)  # tokens 5, 6 never seen in training
    opt = adam_steps(model, seen, 4)
    probe = (torch.tensor([[5, 6, 1, 2, 6]]), torch.tensor([[6, 1, 2, 5, 0]]))
    full = CurvatureTracker(model, opt, max_hvps=150, tol=1e-10, hvp="autograd").step(lm_loss, probe)
    tr = CurvatureTracker(model, opt, max_hvps=150, tol=1e-10, hvp="autograd", min_v_hat_ratio=1e-3)
    est = tr.step(lm_loss, probe)
    names, params = tr.tracked()
    precond = adam_preconditioner(opt, params)
    keep = []
    for p in precond:
        root = p - 1e-8  # AdamW's default eps
        keep.append((root >= 1e-3 * root.pow(2).mean().sqrt()).reshape(-1))
    keep = torch.cat(keep)
    emb = names.index("parts.0.embed.weight")
    offset = sum(p.numel() for p in params[:emb])
    dropped = (~keep).nonzero().flatten().tolist()
    assert set(range(offset + 5 * 6, offset + 7 * 6)) <= set(dropped)  # rows 5 and 6 of the embedding
    h = dense_hessian(model, batch=probe, names=strip(names))
    d = flat(precond).rsqrt() * keep
    exact = torch.linalg.eigvalsh(d[:, None] * h * d[None, :]).max().item()
    assert est.lambda_max == pytest.approx(exact, rel=1e-3)
    assert full.lambda_max > 100 * est.lambda_max  # the unseen rows dominated the full reading
    # the warm start divides the stored z by D, which is zero on the dropped coordinates: they
    # must come back as zeros (not 0/0), so the next solve is finite and still the restricted λ
    again = tr.step(lm_loss, probe)
    assert math.isfinite(again.lambda_max) and again.lambda_max == pytest.approx(exact, rel=1e-3)


def test_restriction_options_are_checked() -> None:
    assert [k for k, _ in Curvature(min_param_steps=-1).problems(None)] == ["min_param_steps"]
    assert [k for k, _ in Curvature(min_v_hat_ratio=1.0).problems(None)] == ["min_v_hat_ratio"]
    assert [k for k, _ in Curvature(min_v_hat_ratio=1e-3, preconditioned=False).problems(None)] \
        == ["min_v_hat_ratio"]
