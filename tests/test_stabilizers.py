"""Stabilisers (docs/stabilizers.md): QK-Norm placement, the attention paths, soft-caps, QK-Clip's
rescale and GQA rule, z-loss (also under loss parallelism), the [stabilizers] section, and a 2-process
FSDP2 / TP run of a stabilised model against one process."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from launch import torchrun
from torch import nn
from workers.stabilizer_parity import CASES, STEPS, run_case

from titanwarm.config.sections import JobConfig
from titanwarm.models.llama3 import FLAVORS, Transformer
from titanwarm.models.llama3.model import Attention, apply_rope, rope_table
from titanwarm.optim import param_groups
from titanwarm.registry import MODELS
from titanwarm.stabilizers import (QKClip, Stabilizers, clip_factors, install_stabilizers, logsumexp,
                                   stabilized_loss, z_loss)

VOCAB, SEQ = 96, 12
WORKER = str(Path(__file__).parent / "workers" / "stabilizer_parity.py")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def tiny(**overrides) -> Transformer:
    args = dataclasses.replace(FLAVORS["tinymodel"], vocab_size=VOCAB, max_seq_len=SEQ, **overrides)
    model = Transformer(args)
    model.init_weights(3)
    return model


def tokens(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def attention(**overrides) -> tuple[Attention, torch.Tensor, torch.Tensor]:
    """A GQA attention (4 query heads, 2 KV heads, head_dim 16) with random weights, an input x and
    the RoPE table."""
    args = dataclasses.replace(FLAVORS["tinymodel"], max_seq_len=SEQ, **overrides)
    attn = Attention(args)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in attn.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    x = torch.randn(2, SEQ, args.dim, generator=gen)
    return attn, x, rope_table(args)


def scaled_scores(attn: Attention, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """[B, H, T, T] scaled logits q.k/sqrt(d), recomputed by hand (no QK-Norm), causal entries only."""
    b, t, _ = x.shape
    q = apply_rope(attn.wq(x).view(b, t, -1, attn.head_dim), rope).transpose(1, 2)
    k = apply_rope(attn.wk(x).view(b, t, -1, attn.head_dim), rope).transpose(1, 2)
    k = k.repeat_interleave(attn.n_rep, dim=1)
    s = q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)
    return s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))


# ---------------------------------------------------------------- QK-Norm
def test_qk_norm_normalises_each_head_before_rope() -> None:
    attn, x, rope = attention(qk_norm=True)
    with torch.no_grad():
        attn.q_norm.weight.copy_(torch.linspace(0.5, 2.0, attn.head_dim))
        attn.k_norm.weight.copy_(torch.linspace(2.0, 0.5, attn.head_dim))
    seen = {}
    attn.q_norm.register_forward_hook(lambda m, i, o: seen.update(q_in=i[0], q_out=o))
    out = attn(x, rope)
    b, t, _ = x.shape
    raw_q = attn.wq(x).view(b, t, -1, attn.head_dim)
    assert seen["q_in"].shape == (b, t, 4, attn.head_dim)  # after the head reshape
    torch.testing.assert_close(seen["q_in"], raw_q)  # before RoPE: the plain projection
    normed = raw_q * torch.rsqrt(raw_q.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.q_norm.weight
    torch.testing.assert_close(seen["q_out"], normed)  # per head, over head_dim
    # and the whole thing: norm, then RoPE, then causal attention
    raw_k = attn.wk(x).view(b, t, -1, attn.head_dim)
    q = apply_rope(normed, rope).transpose(1, 2)
    k = apply_rope(attn.k_norm(raw_k), rope).repeat_interleave(2, dim=2).transpose(1, 2)
    v = attn.wv(x).view(b, t, -1, attn.head_dim).repeat_interleave(2, dim=2).transpose(1, 2)
    expected = attn.wo(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2))
    assert rel(out, expected) < 1e-6


def test_qk_norm_weights_init_to_ones_and_skip_weight_decay() -> None:
    model = tiny(qk_norm=True)
    names = {n for n, _ in model.named_parameters()}
    assert {"layers.0.attention.q_norm.weight", "layers.1.attention.k_norm.weight"} <= names
    assert model.init_plan().keys() == names  # layout-independent init covers them
    norm = model.layers["0"].attention.q_norm.weight
    assert torch.equal(norm, torch.ones(16))
    decayed, undecayed = param_groups(model.parameters(), 0.1)
    assert undecayed["weight_decay"] == 0.0
    assert any(p is norm for p in undecayed["params"]) and not any(p is norm for p in decayed["params"])
    assert "q_norm" not in "".join(n for n, _ in tiny().named_parameters())  # off: no parameters


# ---------------------------------------------------------------- attention paths and soft-caps
@pytest.mark.parametrize("extra", [{}, {"qk_norm": True}, {"n_kv_heads": 4}])
def test_attention_paths_agree_with_every_stabiliser_off(extra: dict) -> None:
    sdpa, eager = tiny(attn_impl="sdpa", **extra), tiny(attn_impl="eager", **extra)
    recording = tiny(record_max_logit=True, **extra)  # "auto" -> eager, output unchanged
    assert (sdpa.args.attention_path, recording.args.attention_path) == ("sdpa", "eager")
    assert tiny().args.attention_path == "sdpa"  # the default stays fused
    ref = sdpa(tokens())
    assert rel(eager(tokens()), ref) < 1e-6
    assert rel(recording(tokens()), ref) < 1e-6
    ref.square().mean().backward()
    eager(tokens()).square().mean().backward()
    for (name, p), q in zip(sdpa.named_parameters(), eager.parameters()):
        assert rel(q.grad, p.grad) < 1e-5, name


def test_eager_path_is_needed_by_scored_stabilisers() -> None:
    with pytest.raises(ValueError, match="eager"):
        dataclasses.replace(FLAVORS["tinymodel"], attn_impl="sdpa", attn_softcap=50.0)
    with pytest.raises(ValueError, match="attn_impl"):
        dataclasses.replace(FLAVORS["tinymodel"], attn_impl="flash")
    assert dataclasses.replace(FLAVORS["tinymodel"], attn_softcap=50.0).attention_path == "eager"


def test_attention_softcap_caps_scores_before_masking() -> None:
    cap = 0.7
    attn, x, rope = attention(attn_softcap=cap)
    s = scaled_scores(attn, x, rope)
    capped = cap * torch.tanh(s / cap)  # tanh(-inf) = -1: mask again after capping
    capped = capped.masked_fill(s == float("-inf"), float("-inf"))
    visible = s > float("-inf")
    assert s[visible].abs().max() > 3 * cap  # the cap bites
    assert capped[visible].abs().max() <= cap  # |c tanh(s/c)| < c (= c once tanh rounds to 1)
    v = attn.wv(x).view(2, SEQ, -1, attn.head_dim).repeat_interleave(2, dim=2).transpose(1, 2)
    expected = attn.wo((torch.softmax(capped, -1) @ v).transpose(1, 2).flatten(2))
    assert rel(attn(x, rope), expected) < 1e-6
    # a large cap is the identity up to O(s^3 / c^2)
    big, _, _ = attention(attn_softcap=1e4)
    plain, _, _ = attention()
    assert rel(big(x, rope), plain(x, rope)) < 1e-6


def test_logit_softcap_bounds_logits_and_is_identity_for_small_logits() -> None:
    ref = tiny()(tokens())
    capped = tiny(logit_softcap=0.5)(tokens())
    assert capped.abs().max() < 0.5 < ref.abs().max()
    torch.testing.assert_close(capped, 0.5 * torch.tanh(ref / 0.5))
    assert rel(tiny(logit_softcap=1e4)(tokens()), ref) < 1e-6


# ---------------------------------------------------------------- QK-Clip
def holder(attn: Attention) -> nn.Module:
    """A model-shaped wrapper: ``layers.0.attention``."""
    root = nn.Module()
    root.layers = nn.ModuleDict({"0": nn.Module()})
    root.layers["0"].attention = attn
    return root


def test_clip_factors_follow_the_gqa_group_rule() -> None:
    s = torch.tensor([[200.0, 50.0, 80.0, 90.0], [400.0, 400.0, float("-inf"), 10.0]])
    gq, gk = clip_factors(s, n_kv_heads=2, tau=100.0, alpha=0.25)
    torch.testing.assert_close(gq, torch.tensor([[0.5 ** 0.25, 1, 1, 1], [0.25 ** 0.25, 0.25 ** 0.25, 1, 1]]))
    # key head 0 serves query heads 0, 1: max 200 -> (1/2)^0.75; head 1 (80, 90) is not clipped
    torch.testing.assert_close(gk, torch.tensor([[0.5 ** 0.75, 1.0], [0.25 ** 0.75, 1.0]]))


def test_qk_clip_makes_the_clipped_heads_max_logit_tau() -> None:
    attn, x, rope = attention(record_max_logit=True)
    with torch.no_grad():  # spread the heads: head 0 large, head 1 medium (same KV group), 2-3 small
        attn.wq.weight.view(4, 16, -1).mul_(torch.tensor([6.0, 3.0, 0.3, 0.2]).view(4, 1, 1))
    attn(x, rope)
    before = attn.max_logit.clone()
    torch.testing.assert_close(before, scaled_scores(attn, x, rope).amax(dim=(0, 2, 3)))
    tau = float(before[1]) * 0.9  # heads 0 and 1 above tau, group 1 (heads 2, 3) below
    assert before[2:].max() < tau < before[1] < before[0]
    wq, wk = attn.wq.weight.detach().clone(), attn.wk.weight.detach().clone()
    clip = QKClip(holder(attn), n_heads=4, n_kv_heads=2, head_dim=16, tau=tau, alpha=0.5)
    metrics = clip.step()
    assert attn.max_logit is None  # reset for the next step
    assert metrics["qk_clipped_heads"] == 2 and metrics["qk_max_logit"] == pytest.approx(float(before[0]))
    assert metrics["qk_max_logit/layer_0"] == metrics["qk_max_logit"]
    attn(x, rope)
    after = attn.max_logit
    assert float(after[0]) == pytest.approx(tau, rel=1e-5)  # the group's max head lands on tau
    assert after[1] < tau  # the other clipped head of the group ends below
    torch.testing.assert_close(after[2:], before[2:], rtol=0, atol=0)  # group 1 untouched
    assert torch.equal(attn.wq.weight[32:], wq[32:]) and torch.equal(attn.wk.weight[16:], wk[16:])
    g0, g1 = tau / float(before[0]), tau / float(before[1])
    torch.testing.assert_close(attn.wq.weight[:16], wq[:16] * g0 ** 0.5)
    torch.testing.assert_close(attn.wq.weight[16:32], wq[16:32] * g1 ** 0.5)
    torch.testing.assert_close(attn.wk.weight[:16], wk[:16] * g0 ** 0.5)  # group max, 1 - alpha
    attn(x, rope)
    assert clip.step()["qk_clipped_heads"] == 0  # nothing above tau any more


def test_qk_clip_needs_recording_and_ignores_eval_forwards() -> None:
    with pytest.raises(ValueError, match="record"):
        QKClip(tiny(), 4, 2, 16)
    model = tiny(record_max_logit=True)
    model.eval()
    model(tokens())
    assert model.layers["0"].attention.max_logit is None  # validation does not count
    model.train()
    model(tokens(batch=1, seed=1))
    first = model.layers["0"].attention.max_logit.clone()
    model(tokens(batch=1, seed=2))  # micro-batches accumulate by max
    assert (model.layers["0"].attention.max_logit >= first).all()
    metrics = QKClip(model, 4, 2, 16, tau=1e9).step()
    assert set(metrics) == {"qk_max_logit", "qk_max_logit/layer_0", "qk_max_logit/layer_1",
                            "qk_clipped_heads"} and metrics["qk_clipped_heads"] == 0


# ---------------------------------------------------------------- z-loss
def test_z_loss_value_matches_direct_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen) * 3
    labels = torch.randint(0, 11, (2, 5), generator=gen)
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    direct = torch.logsumexp(logits, dim=-1).pow(2).mean()
    torch.testing.assert_close(z_loss(logits), direct)
    cfg = Stabilizers(z_loss=1e-2)
    torch.testing.assert_close(stabilized_loss(logits, labels, cfg), ce + 1e-2 * direct)
    torch.testing.assert_close(stabilized_loss(logits, labels, cfg, train=False), ce)  # eval: plain CE
    torch.testing.assert_close(stabilized_loss(logits, labels, Stabilizers()), ce)
    half = logits.to(torch.bfloat16) + 1e4  # float32 and stable at large logits
    assert logsumexp(half).dtype == torch.float32
    torch.testing.assert_close(logsumexp(half), torch.logsumexp(half.float(), -1))


# ---------------------------------------------------------------- config and wiring
def test_section_checks_and_model_overrides() -> None:
    assert Stabilizers().problems(None) == [] and not Stabilizers().any_enabled
    bad = Stabilizers(qk_clip_tau=0.0, qk_clip_alpha=1.5, attn_softcap=-1.0, z_loss=-1e-4)
    assert [k for k, _ in bad.problems(None)] == ["qk_clip_tau", "qk_clip_alpha", "attn_softcap", "z_loss"]
    cfg = JobConfig()
    cfg.model.flavor = "tinymodel"
    cfg.stabilizers = Stabilizers(qk_norm=True, qk_clip=True, attn_softcap=50, logit_softcap=30)
    args = MODELS.get("llama3").build(cfg, VOCAB).args
    assert (args.qk_norm, args.record_max_logit, args.attn_softcap, args.logit_softcap) == (True, True, 50.0, 30.0)
    assert args.attention_path == "eager"


def test_install_stabilizers_adds_the_qk_clip_hook(capsys) -> None:
    model = tiny(record_max_logit=True)
    hooks = []
    trainer = SimpleNamespace(cfg=SimpleNamespace(stabilizers=Stabilizers(qk_clip=True, qk_clip_tau=1e-3)),
                              model=model, model_args=model.args, rank=0, step_metrics={},
                              add_hook=lambda point, fn: hooks.append((point, fn)))
    assert isinstance(install_stabilizers(trainer), QKClip)
    assert "attention: eager" in capsys.readouterr().out
    ((point, fn),) = hooks
    assert point == "after_optimizer_step"
    model(tokens())
    fn(trainer)
    assert trainer.step_metrics["qk_clipped_heads"] == 8
    trainer.cfg.stabilizers = Stabilizers(logit_softcap=30)
    trainer.model_args = tiny(logit_softcap=30).args
    assert install_stabilizers(trainer) is None and len(hooks) == 1
    assert "attention: fused SDPA" in capsys.readouterr().out


# ---------------------------------------------------------------- parallel layouts
PARALLEL = ["fsdp_all", "fsdp_clip", "tp_all", "tp_clip"]


@pytest.fixture(scope="module")
def parallel_results(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("stabilizers") / "2.pt"
    torchrun(2, [WORKER, str(path), *PARALLEL], rerun_on_native_abort=True)
    return torch.load(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", PARALLEL)
def test_stabilised_training_matches_single_process(name: str, parallel_results: dict) -> None:
    got, ref = parallel_results[name], run_case(CASES[f"reference_{CASES[name]['stab']}"], 1)
    assert len(got["losses"]) == STEPS
    for a, b in zip(got["losses"], ref["losses"]):
        assert a == pytest.approx(b, rel=1e-5)
    for m, r in zip(got["metrics"], ref["metrics"]):  # the same heads clip at every step
        assert r["qk_clipped_heads"] > 0 and m["qk_clipped_heads"] == r["qk_clipped_heads"]
        assert m.keys() == r.keys()
        for key in r:  # max logits are functions of the weights: the weights' tolerance (below)
            assert m[key] == pytest.approx(r[key], rel=1e-4 if key.startswith("qk_max_logit") else 1e-5), key
    for key, value in ref["params"].items():  # after the clipped updates
        assert rel(got["params"][key], value) < 1e-4, key
