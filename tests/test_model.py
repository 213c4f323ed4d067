"""Llama 3 model: shapes, causality, RoPE (Llama 3.1 scaling), GQA, published parameter counts,
weight tying, init rules and the registered ModelSpec."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from titanwarm.config.sections import JobConfig
from titanwarm.distributed.param_init import init_model
from titanwarm.models.llama3 import FLAVORS, ModelArgs, RopeScaling, Transformer
from titanwarm.models.llama3.model import apply_rope, rope_frequencies, rope_table
from titanwarm.registry import MODELS

VOCAB = 96


def tiny(**changes) -> Transformer:
    args = dataclasses.replace(FLAVORS["tinymodel"], vocab_size=VOCAB, max_seq_len=32, **changes)
    with torch.device("meta"):
        model = Transformer(args)
    init_model(model, "cpu", seed=3)
    return model


def tokens(batch: int = 2, seq: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_forward_shape_and_layers() -> None:
    model = tiny()
    assert list(model.layers.keys()) == ["0", "1"]
    assert model(tokens(3, 10)).shape == (3, 10, VOCAB)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(tokens(1, 33))


def test_causal_future_tokens_do_not_change_past_logits() -> None:
    model = tiny()
    x = tokens()
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % VOCAB
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :7], b[:, :7], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def llama31_frequencies(head_dim: int, theta: float, s: RopeScaling) -> list[float]:
    """Meta's Llama 3.1 ``apply_scaling``, written out per frequency in float64."""
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        if wavelen < high_wavelen:
            out.append(freq)
        elif wavelen > low_wavelen:
            out.append(freq / s.scale_factor)
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor)
            out.append((1 - smooth) * freq / s.scale_factor + smooth * freq)
    return out


@pytest.mark.parametrize("flavor", ["1B", "8B"])
def test_rope_scaling_matches_llama31_formula(flavor: str) -> None:
    args = FLAVORS[flavor]
    expected = torch.tensor(llama31_frequencies(args.head_dim, args.rope_theta, args.rope_scaling),
                            dtype=torch.float64)
    got = rope_frequencies(args.head_dim, args.rope_theta, args.rope_scaling).double()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    unscaled = rope_frequencies(args.head_dim, args.rope_theta, RopeScaling())
    assert (got < unscaled).any() and (got == unscaled).any()  # some bands scaled, some kept
    table = rope_table(dataclasses.replace(args, max_seq_len=100))
    angles = 99 * expected
    torch.testing.assert_close(table[99].double(), torch.stack([angles.cos(), angles.sin()], -1),
                               rtol=0, atol=1e-4)


def test_apply_rope_is_complex_rotation_of_adjacent_pairs() -> None:
    args = FLAVORS["tinymodel"]
    x = torch.randn(2, 5, 3, args.head_dim, generator=torch.Generator().manual_seed(0))
    table = rope_table(args)[:5]
    rotation = torch.polar(torch.ones_like(table[..., 0]), torch.atan2(table[..., 1], table[..., 0]))
    expected = torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2)))
                                  * rotation[None, :, None]).flatten(-2)
    torch.testing.assert_close(apply_rope(x, table), expected, rtol=1e-5, atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_weights() -> None:
    gqa = tiny()
    mha = tiny(n_kv_heads=None)
    args = gqa.args
    rep = args.n_heads // args.kv_heads
    state = gqa.state_dict()
    for key, value in list(state.items()):
        if key.endswith(("attention.wk.weight", "attention.wv.weight")):
            state[key] = value.view(args.kv_heads, args.head_dim, args.dim).repeat_interleave(
                rep, dim=0).reshape(args.n_heads * args.head_dim, args.dim)
    mha.load_state_dict(state)
    x = tokens()
    torch.testing.assert_close(mha(x), gqa(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flavor, count", [("1B", 1_235_814_400), ("3B", 3_212_749_824),
                                           ("8B", 8_030_261_248), ("70B", 70_553_706_496)])
def test_published_parameter_counts_on_meta(flavor: str, count: int) -> None:
    with torch.device("meta"):
        model = Transformer(FLAVORS[flavor])
    assert sum(p.numel() for p in model.parameters()) == count


def test_every_flavor_builds_on_meta() -> None:
    for name, args in FLAVORS.items():
        with torch.device("meta"):
            model = Transformer(args)
        assert len(model.layers) == args.n_layers, name
    assert {FLAVORS[f"depth{n}"].dim for n in (4, 8, 16, 32)} == {128}


def test_weight_tying_shares_storage_and_gradient() -> None:
    model = tiny(tie_embeddings=True)
    assert model.output.weight is model.tok_embeddings.weight  # still tied after to_empty
    assert [n for n, _ in model.named_parameters()].count("tok_embeddings.weight") == 1
    assert "output.weight" not in dict(model.named_parameters())
    model(tokens()).sum().backward()
    assert model.output.weight.grad is model.tok_embeddings.weight.grad
    untied = tiny(tie_embeddings=False)
    assert untied.output.weight.data_ptr() != untied.tok_embeddings.weight.data_ptr()


def test_init_rules_and_reproducibility() -> None:
    model = tiny()
    plan = model.init_plan()
    assert plan["layers.1.attention.wo.weight"].std == pytest.approx(0.02 / math.sqrt(4))
    assert plan["layers.0.feed_forward.w2.weight"].std == pytest.approx(0.02 / math.sqrt(2))
    assert plan["layers.1.attention.wq.weight"].std == 0.02
    flat = tiny(depth_init=False).init_plan()
    assert flat["layers.0.feed_forward.w3.weight"].std == pytest.approx(0.02 / math.sqrt(4))
    assert torch.equal(model.layers["0"].attention_norm.weight, torch.ones(model.args.dim))
    twin = Transformer(model.args)
    twin.init_weights(seed=3)  # plain init == init_model in any layout
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        assert torch.equal(a, b), name
    assert torch.equal(model.rope_cache, rope_table(model.args))
    twin.init_weights(seed=4)
    assert not torch.equal(twin.layers["0"].attention.wq.weight, model.layers["0"].attention.wq.weight)


def test_ffn_hidden_dims() -> None:
    assert FLAVORS["1B"].ffn_hidden_dim == 8192 and FLAVORS["3B"].ffn_hidden_dim == 8192
    assert FLAVORS["8B"].ffn_hidden_dim == 14336 and FLAVORS["70B"].ffn_hidden_dim == 28672
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelArgs(dim=64, n_heads=4, n_kv_heads=3)


def test_registered_spec_builds_from_config() -> None:
    spec = MODELS.get("llama3")
    cfg = JobConfig()
    cfg.model.flavor = "debugmodel"
    cfg.training.seq_len = 64
    model = spec.build(cfg, vocab_size=500)
    assert model.tok_embeddings.weight.is_meta and model.output.weight.shape == (500, 256)
    assert model.args.max_seq_len == 64 and len(model.layers) == 6
    cfg.model.flavor = "nope"
    with pytest.raises(KeyError, match="tinymodel"):
        spec.build(cfg, 500)
