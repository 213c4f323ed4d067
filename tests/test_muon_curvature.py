"""Matrix curvature diagnostics for Muon/NuMuon against a dense Hessian (one process)."""

from __future__ import annotations

import torch
from torch import nn

from titanwarm.config.sections import Optimizer
from titanwarm.optim import build_optimizer
from titanwarm.optim.matrix_curvature import MatrixCurvature


def test_update_curvature_ratio_and_lambda_max_match_dense_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2, bias=False),
                          nn.LayerNorm(2))
    x, y = torch.randn(16, 3), torch.randn(16, 2)

    def loss_fn(parts, batch):
        return ((parts[0](batch[0]) - batch[1]) ** 2).mean()

    opt = build_optimizer([model], Optimizer(name="Muon", lr=0.05, adamw_modules=["3"]))
    diag = MatrixCurvature([model], opt, max_hvps=20, tol=1e-10)
    loss_fn([model], (x, y)).backward()
    grads = [model[0].weight.grad.clone(), model[2].weight.grad.clone()]
    before = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    diag.before()
    opt.step()
    got = diag.measure(loss_fn, (x, y))

    w1, w2 = model[0].weight.detach(), model[2].weight.detach()

    def flat_loss(theta):
        a, b = theta[:12].view(4, 3), theta[12:].view(2, 4)
        h = torch.tanh(x @ a.T) @ b.T
        return ((model[3](h) - y) ** 2).mean()

    theta = torch.cat([w1.flatten(), w2.flatten()])
    hess = torch.autograd.functional.hessian(flat_loss, theta)
    u = torch.cat([(w1 - before[0]).flatten(), (w2 - before[1]).flatten()])
    g = torch.cat([grads[0].flatten(), grads[1].flatten()])
    uhu = float(u @ hess @ u)
    assert abs(got["update_curvature"] - uhu / float(u @ u)) < 1e-5 * max(1.0, abs(uhu / float(u @ u)))
    assert abs(got["second_order_ratio"] - uhu / (-2 * float(g @ u))) < 1e-4
    lam = float(torch.linalg.eigvalsh(hess)[-1])
    assert abs(got["matrix_lambda_max_h"] - lam) < 1e-4 * max(1.0, abs(lam))
    assert set(diag.state_dict()["vector"]) == {"parts.0.0.weight", "parts.0.2.weight"}
