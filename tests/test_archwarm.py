"""Architecture warm-up against exact references: locked blocks are identity (equal to the truncated
model, bit for bit), hold no gradient, optimizer state or weight decay, unlock continuously under
each init and then train, while a plain all-zero unlock provably does not."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from titanwarm.archwarm.locks import BlockLocks
from titanwarm.archwarm.unlock_init import init_unlocked, set_gate
from titanwarm.config import load_config
from titanwarm.models.llama3 import FLAVORS, Transformer
from titanwarm.models.weight_init import init_sampler
from titanwarm.optim import add_parameters
from titanwarm.trainer import Trainer


def small_model(n_layers: int, seed: int = 0) -> Transformer:
    args = dataclasses.replace(FLAVORS["tinymodel"], n_layers=n_layers, vocab_size=97, max_seq_len=16)
    model = Transformer(args)
    model.init_weights(seed)
    return model


def locks_for(model: Transformer, skip: bool) -> BlockLocks:
    return BlockLocks([(f"layers.{k}", m) for k, m in model.layers.items()], skip_locked=skip)


@pytest.mark.parametrize("skip", [True, False])
def test_locked_tail_equals_truncated_model_exactly(skip):
    model, short = small_model(4), small_model(2)
    short.load_state_dict({k: v for k, v in model.state_dict().items() if k in short.state_dict()})
    locks = locks_for(model, skip)
    locks.lock(2)
    locks.lock(3)
    tokens = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(model(tokens), short(tokens))


def test_lock_zeroes_everything_but_norms():
    model = small_model(2)
    locks = locks_for(model, True)
    locks.lock(1)
    for name, p in model.layers["1"].named_parameters():
        assert not p.requires_grad
        expected = torch.ones_like(p) if "norm" in name else torch.zeros_like(p)
        assert torch.equal(p, expected), name
    assert model.layers["1"].skip and locks.state_dict() == {"locked": [False, True]}


def make_trainer(tmp_path, *extra: str) -> Trainer:
    cfg, _ = load_config([
        "--model.flavor", "depth4", "--training.seq_len", "16", "--training.local_batch_size", "2",
        "--training.steps", "8", "--training.device", "cpu", "--lr_scheduler.warmup_steps", "2",
        "--optimizer.lr", "1e-2", "--optimizer.weight_decay", "0.1", "--validation.enable", "false",
        "--metrics.enable_tensorboard", "false", "--metrics.console", "false",
        "--job.dump_folder", str(tmp_path), "--depth_schedule.enabled", "true",
        "--depth_schedule.initial_layers", "2", "--depth_schedule.start", "3",
        "--depth_schedule.group_size", "2", *extra])
    return Trainer(cfg)


def run_steps(trainer: Trainer, n: int) -> None:
    for _ in range(n):
        trainer.step += 1
        trainer.train_step()


def test_locked_blocks_have_no_grad_state_or_decay_until_unlocked(tmp_path):
    t = make_trainer(tmp_path)
    locked = [p for i in (2, 3) for p in t.model.layers[str(i)].parameters()]
    before = [p.detach().clone() for p in locked]
    in_optimizer = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in locked)
    run_steps(t, 2)
    assert all(p.grad is None and p not in t.optimizer.state for p in locked)
    assert all(torch.equal(p, b) for p, b in zip(locked, before))  # decay never touched them
    run_steps(t, 1)  # step 3: the unlock happens after its update
    assert t.warmup.locks.n_active == 4
    run_steps(t, 1)
    assert all(p.grad is not None and t.optimizer.state[p]["step"].item() == 1 for p in locked)
    assert all(t.optimizer.state[p]["step"].item() == 4 for p in t.model.layers["0"].parameters())
    decayed = {id(p) for g in t.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all((id(p) in decayed) == (p.ndim >= 2) for p in locked)


@pytest.mark.parametrize("init, tol", [("zero_out", 0.0), ("ramp", 0.0), ("noise", 1e-5)])
def test_unlock_is_continuous_then_the_block_trains(tmp_path, init, tol):
    """Loss right after the unlock equals the loss right before (exactly for zero_out and ramp;
    within 1e-5 relative for noise at std 1e-3, whose change is O(std^2)); then the unlocked
    blocks' weights leave zero and their residual contribution grows."""
    t = make_trainer(tmp_path, "--depth_schedule.unlock_init", init, "--depth_schedule.noise_std", "1e-3",
                     "--depth_schedule.ramp_steps", "3")
    batch = next(t.train_iter)
    run_steps(t, 2)
    t.step = 3
    with torch.no_grad():
        before = t.forward_loss(*batch).item()
        t.warmup.after_optimizer_step(t)  # the unlock, at fixed weights
        after = t.forward_loss(*batch).item()
    assert t.warmup.locks.n_active == 4
    assert abs(after - before) <= tol * abs(before)
    if init == "noise":
        assert after != before  # the noise is really there

    block = t.model.layers["2"]
    x = torch.randn(2, 16, FLAVORS["depth4"].dim, generator=torch.Generator().manual_seed(0))
    rope = t.model.rope_cache[:16]

    def contribution() -> float:
        with torch.no_grad():
            return (block(x, rope) - x).norm().item()

    start = contribution()
    run_steps(t, 4)
    weights = [p for n, p in block.named_parameters() if "norm" not in n]
    assert all(p.abs().max() > 0 for p in weights)
    assert contribution() > start + 1e-3


def test_all_zero_unlock_is_a_stationary_point(tmp_path):
    """Why no "zero" init is offered: a block unlocked with every weight at zero gets exactly zero
    gradients, so AdamW (weight decay included) leaves it at zero forever."""
    t = make_trainer(tmp_path, "--depth_schedule.start", "7")  # schedule's unlock comes too late
    run_steps(t, 1)
    params = t.warmup.locks.unlock(2)  # unlock by hand, weights left all zero
    add_parameters(t.optimizer, params, weight_decay=0.1)
    run_steps(t, 4)
    for name, p in t.model.layers["2"].named_parameters():
        if "norm" not in name:
            assert p.grad is not None and torch.count_nonzero(p.grad) == 0, name
            assert torch.count_nonzero(p) == 0, name


def test_ramp_gate_scales_branches():
    model = small_model(2)
    locks = locks_for(model, True)
    locks.lock(1)
    init_unlocked("layers.1", model.layers["1"], "ramp", init_sampler(model, 0), 0, 1e-3)
    locks.unlock(1)
    block = model.layers["1"]
    x = torch.randn(1, 8, model.args.dim)
    rope = model.rope_cache[:8]
    assert torch.equal(block(x, rope), x)  # gate 0: identity
    set_gate(block, 0.5)
    half = block(x, rope)
    block.residual_gate = None
    attn = block.attention(block.attention_norm(x), rope)
    h = x + 0.5 * attn
    assert torch.allclose(half, h + 0.5 * block.feed_forward(block.ffn_norm(h)), atol=1e-6)


@pytest.mark.parametrize("extra", [
    ["--activation_checkpoint.mode", "full"],
    ["--compile.enable", "true", "--compile.backend", "eager"],
], ids=["activation_checkpoint", "compile"])
def test_unlock_under_checkpointing_and_compile_matches_plain(tmp_path, extra):
    """Through an unlock (ramp init, so the block's gate changes every step), activation
    checkpointing and per-block compile give the plain run's losses (fp32, rel 1e-6), and compile
    compiles one more graph at the unlock (the residual gate appears) and none as the gate moves."""
    import torch._dynamo

    ramp = ["--depth_schedule.unlock_init", "ramp", "--depth_schedule.ramp_steps", "3"]

    def losses(folder, more):
        t = make_trainer(folder, *ramp, *more)
        out = []
        for _ in range(7):
            t.step += 1
            out.append(t.train_step()[0])
        return out

    plain = losses(tmp_path / "plain", [])
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    got = losses(tmp_path / "variant", extra)
    assert got == pytest.approx(plain, rel=1e-6)
    if "--compile.enable" in extra:
        # All blocks share one forward: one graph without a gate, one with it once a ramping block
        # is unlocked; the gate's value changing every step must not recompile.
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


def test_shortened_run_trains_with_a_warning_naming_the_locked_blocks(tmp_path, capsys):
    # depth4, 2 blocks active, group_size 1 from step 3 every 4 steps: blocks 2 (step 3) and 3 (step 7);
    # a 5-step run never reaches step 7, a 3-step one unlocks block 2 only after its last step.
    t = make_trainer(tmp_path, "--depth_schedule.group_size", "1", "--depth_schedule.interval", "4",
                     "--training.steps", "5", "--metrics.report", "false")
    assert "block(s) [3] unlock only at or after step 5" in capsys.readouterr().err
    t.train()
    assert t.warmup.locks.n_active == 3
    assert t.warmup.end_warning(3) is not None and "[2, 3]" in t.warmup.end_warning(3)
    assert t.warmup.end_warning(8) is None


def test_debug_archwarm_config_loads_shortened():
    cfg, _ = load_config(["--config", "train_configs/debug_archwarm.toml", "--training.steps", "10"])
    assert cfg.training.steps == 10
