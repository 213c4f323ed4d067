"""Config options added for the instability study (issue 17): full-batch training
(``training.fixed_batch``), ``model.init = "fan_in"`` and the width-64 depth flavors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from titanwarm.config import ConfigError, load_config
from titanwarm.distributed.param_init import init_model
from titanwarm.models.llama3 import FLAVORS, Transformer
from titanwarm.trainer import Trainer


def make_trainer(tmp_path, *extra: str) -> Trainer:
    cfg, _ = load_config([
        "--model.flavor", "tinymodel", "--training.seq_len", "16", "--training.local_batch_size", "2",
        "--training.steps", "3", "--training.device", "cpu", "--lr_scheduler.warmup_steps", "1",
        "--validation.enable", "false", "--metrics.enable_tensorboard", "false",
        "--metrics.console", "false", "--job.dump_folder", str(tmp_path), *extra])
    return Trainer(cfg)


@pytest.mark.parametrize("accum", [1, 2])
def test_fixed_batch_repeats_the_first_global_batch(tmp_path, accum):
    trainer = make_trainer(tmp_path, "--training.fixed_batch", "true",
                           "--training.global_batch_size", str(2 * accum))
    first = list(trainer.train_loader.batches(accum))  # the split's first micro-batches
    seen = [next(trainer.train_iter) for _ in range(3 * accum)]
    for i, (inputs, labels) in enumerate(seen):
        assert torch.equal(inputs, first[i % accum][0]) and torch.equal(labels, first[i % accum][1])
    if accum == 2:
        assert not torch.equal(first[0][0], first[1][0])  # the full batch is both micro-batches
    plain = make_trainer(tmp_path / "plain")
    a, b = next(plain.train_iter), next(plain.train_iter)
    assert torch.equal(a[0], first[0][0]) and not torch.equal(a[0], b[0])


def test_fixed_batch_survives_resume(tmp_path):
    trainer = make_trainer(tmp_path, "--training.fixed_batch", "true", "--training.steps", "4",
                           "--checkpoint.enable", "true", "--checkpoint.interval", "2")
    first = next(iter(trainer.train_loader.batches(1)))
    trainer.train()
    resumed = make_trainer(tmp_path, "--training.fixed_batch", "true", "--training.steps", "6",
                           "--checkpoint.enable", "true", "--checkpoint.interval", "2")
    resumed.checkpoint.maybe_load()
    assert resumed.step == 4
    assert torch.equal(next(resumed.train_iter)[0], first[0])


def test_fan_in_init_plan_and_samples():
    args = dataclasses.replace(FLAVORS["w64_depth4"], vocab_size=300, max_seq_len=16, init="fan_in")
    with torch.device("meta"):
        model = Transformer(args)
    plan = model.init_plan()
    for name, p in model.named_parameters():
        if p.dim() == 2 and name != "tok_embeddings.weight":  # every linear layer: 1/sqrt(fan_in)
            assert plan[name].kind == "trunc_normal"
            assert plan[name].std == pytest.approx(p.shape[1] ** -0.5), name
    assert plan["tok_embeddings.weight"].std == 1.0
    assert plan["layers.0.feed_forward.w2.weight"].std == pytest.approx(args.ffn_hidden_dim ** -0.5)
    init_model(model, "cpu", seed=0)
    w2 = model.layers["3"].feed_forward.w2.weight
    # a normal truncated at +-3 std has std 0.9866 std
    assert w2.std().item() == pytest.approx(0.9866 * args.ffn_hidden_dim ** -0.5, rel=0.05)
    default = dataclasses.replace(args, init="default")
    with torch.device("meta"):
        assert Transformer(default).init_plan()["layers.0.attention.wq.weight"].std == 0.02


def test_width64_flavors_and_init_key_checked(tmp_path):
    assert [FLAVORS[f"w64_depth{n}"].n_layers for n in (4, 8, 16)] == [4, 8, 16]
    assert FLAVORS["w64_depth8"].dim == 64 and FLAVORS["depth8"].ffn_hidden_dim == 384  # unchanged
    trainer = make_trainer(tmp_path, "--model.init", "fan_in")
    assert trainer.model.args.init == "fan_in"
    path = tmp_path / "bad.toml"
    path.write_text('[model]\ninit = "xavier"\n')
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(path)])
    assert info.value.key == "model.init" and "fan_in" in info.value.why
