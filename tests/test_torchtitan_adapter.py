"""titanwarm's torchtitan adapter, 0.2.x glue, on torchtitan 0.2.2's own classes (CPU).

Drives, without stand-ins: torchtitan's ConfigManager (TOML with ``[job] custom_config_module``
and ``[experimental] custom_import``), its TrainSpec registry, its debug Llama 3 ``Transformer``,
its ``OptimizersContainer`` (with the step post-hooks), LR schedulers, loss, ``MetricsProcessor``
``log`` (its logger swapped for a recorder) and its full ``CheckpointManager`` (DCP save + load).
The training loop is torchtitan's ``Trainer.train_step`` without the CUDA parts: the Trainer itself
assumes a GPU and is not built.
"""

import copy
import importlib
import logging
import os

import pytest
import torch
import torch.distributed as dist

from tests.torchtitan_glue import CPUMemoryMonitor, Recorder, require_glue

require_glue("train_spec", "pip install '.[torchtitan]': torchtitan 0.2.2 + triton")

from torchtitan.components.checkpoint import CheckpointManager  # noqa: E402
from torchtitan.config import ConfigManager  # noqa: E402
from torchtitan.distributed import ParallelDims  # noqa: E402
from torchtitan.models.attention import VarlenMetadata  # noqa: E402
from torchtitan.protocols.train_spec import get_train_spec  # noqa: E402

from titanwarm.curvature import CurvatureTracker  # noqa: E402
from titanwarm.integrations.torchtitan.attention import math_attention  # noqa: E402
from titanwarm.integrations.torchtitan.checkpoint_states import titanwarm_states  # noqa: E402

TOML = """
[job]
dump_folder = "{dump}"
custom_config_module = "titanwarm.integrations.torchtitan.config"
[experimental]
custom_import = "titanwarm.integrations.torchtitan.register"
[model]
name = "llama3_titanwarm"
flavor = "debugmodel"
[optimizer]
name = "AdamW"
lr = 1e-3
[lr_scheduler]
warmup_steps = 1
[training]
steps = 10
seq_len = 32
max_norm = 1.0
[debug]
seed = 7
[checkpoint]
enable = true
folder = "checkpoint"
interval = 3
[depth_schedule]
enabled = true
unlocks = [{{step = 2, layers = [4, 5]}}]
unlock_init = "noise"
noise_std = 1e-3
[curvature]
enabled = true
interval = 3
max_hvps = 4
hvp = "autograd"
batch_size = 1
dtype = "param"
"""

B, T, VOCAB = 2, 32, 2048


def build(job_config):
    """What torchtitan's Trainer.__init__ does, in its order, minus the CUDA/distributed parts."""
    importlib.import_module(job_config.experimental.custom_import)
    spec = get_train_spec(job_config.model.name)
    pdims = ParallelDims(dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=1)
    args = copy.deepcopy(spec.model_args[job_config.model.flavor])
    args.max_seq_len = T
    model = spec.model_cls(args)
    metrics = spec.build_metrics_processor_fn(job_config, pdims, args)
    loss_fn = spec.build_loss_fn(job_config)
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    model.train()
    optimizers = spec.build_optimizers_fn([model], job_config.optimizer, pdims)
    schedulers = spec.build_lr_schedulers_fn(optimizers, job_config.lr_scheduler, job_config.training.steps)
    metrics.optimizers, metrics.model_parts, metrics.num_flops_per_token = optimizers, [model], 1
    metrics.logger = Recorder()
    ckpt = CheckpointManager(dataloader=None, model_parts=[model], optimizers=optimizers,
                             lr_schedulers=schedulers, states={**titanwarm_states(optimizers)},
                             checkpoint_config=job_config.checkpoint, sd_adapter=None,
                             base_folder=job_config.job.dump_folder)
    return model, loss_fn, optimizers, schedulers, metrics, ckpt


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, VOCAB, (B, T + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def train_step(step, model, loss_fn, optimizers, schedulers, metrics):
    """torchtitan Trainer.train_step for one micro-batch on one CPU rank."""
    optimizers.zero_grad()
    lr = schedulers.schedulers[0].get_last_lr()[0]
    inputs, labels = batch(step)
    loss = loss_fn(model(inputs), labels) / labels.numel()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters()], 1.0, foreach=True)
    optimizers.step()
    schedulers.step()
    metrics.ntokens_since_last_log, metrics.data_loading_times = B * T, [0.0]
    metrics.log(step, loss.item(), loss.item(), 0.0, extra_metrics={"lr": lr})
    return lr


def active_forward(model, inputs, active):
    """The Llama forward over the active blocks only (a truncated model)."""
    h = model.tok_embeddings(inputs)
    for k in active:
        h = model.layers[str(k)](h, model.freqs_cis, attention_masks=None, positions=None)
    return model.output(model.norm(h))


@pytest.fixture
def process_group(tmp_path):
    """A one-rank gloo group, as torchrun gives torchtitan (its checkpointer asks for the rank)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_torchtitan_adapter(tmp_path, process_group, monkeypatch, caplog):
    import torchtitan.components.metrics as tt_metrics
    monkeypatch.setattr(tt_metrics, "build_device_memory_monitor", CPUMemoryMonitor)
    torch.manual_seed(0)
    path = tmp_path / "job.toml"
    path.write_text(TOML.format(dump=tmp_path / "dump"))
    job_config = ConfigManager().parse_args(["--job.config_file", str(path)])
    model, loss_fn, optimizers, schedulers, metrics, ckpt = build(job_config)
    adapter = optimizers.titanwarm
    layers = model.layers
    locked = [layers["4"], layers["5"]]

    # Locked blocks: zero non-norm weights, frozen, skipped; the model is the truncated model.
    assert adapter.locks.locked == [False] * 4 + [True] * 2
    inputs, labels = batch(0)
    with torch.no_grad():
        out = model(inputs)
        assert torch.equal(out, active_forward(model, inputs, range(4)))
        h = torch.randn(B, T, 256)
        for block in locked:  # run through its zero weights (skip_locked = false): exactly x
            assert torch.equal(block(h, model.freqs_cis, attention_masks=None), h)
    assert len(list(layers.items())) == 6 and len(list(layers.values())) == 4
    locked_before = [p.detach().clone() for b in locked for p in b.parameters()]

    # Steps 1-2 at depth 4; the post-hook unlocks blocks 4 and 5 after step 2.
    for step in (1, 2):
        train_step(step, model, loss_fn, optimizers, schedulers, metrics)
        if step == 1:
            inner = optimizers.optimizers[0]
            for b in locked:
                for p in b.parameters():
                    assert p.grad is None and p not in inner.state
            assert all(torch.equal(a, p) for a, p in zip(locked_before, [p for b in locked for p in b.parameters()]))
    assert adapter.locks.locked == [False] * 6 and adapter.unlocked_at == {4: 2, 5: 2}
    assert len(list(layers.values())) == 6
    w = layers["4"].attention.wo.weight
    assert w.requires_grad and 0 < w.abs().max() < 1e-2  # noise init
    noise_wo = w.detach().clone()

    # Step 3: all 6 blocks train, then the tracker measures (interval 3).
    lr3 = train_step(3, model, loss_fn, optimizers, schedulers, metrics)
    assert not torch.equal(layers["4"].attention.wo.weight, noise_wo)
    est = adapter.last_estimate
    assert est is not None and est.preconditioned and est.hvps == 4
    tracked_names, _ = adapter.tracker.tracked()
    assert any(".layers.5." in n for n in tracked_names)

    # titanwarm's own tracker on the same weights, optimizer state and batch cut to its first
    # sequence ([curvature] batch_size = 1), in the training dtype (dtype = "param": no override).
    assert adapter.tracker.dtype is None
    ref = CurvatureTracker(model, optimizers.optimizers[0], method=adapter.tracker.method, max_hvps=4,
                           hvp="autograd", seed=7)
    def ref_loss(parts, b):
        x, y = b
        return loss_fn(parts[0](x), y) / y.numel()
    with math_attention([model]):  # torchtitan's fused CPU attention has no double backward
        ref_est = ref.step(ref_loss, tuple(t[:1] for t in batch(3)))
    assert ref_est.lambda_max == pytest.approx(est.lambda_max, rel=1e-6)
    assert ref_est.hvps == est.hvps
    assert est.lr == lr3  # the hook runs before the LR scheduler steps: the LR step 3 used

    # Metrics reached the fork's metrics processor.
    step, logged = metrics.logger.logged[-1]
    assert step == 3 and logged["curvature/lambda_max"] == est.lambda_max
    assert logged["archwarm/active_layers"] == 6 and logged["loss_metrics/global_avg_loss"] > 0
    assert metrics.logger.logged[0][1]["archwarm/active_layers"] == 4
    assert "curvature/lambda_max" not in metrics.logger.logged[0][1]

    # Save with torchtitan's CheckpointManager (interval 3), then resume into a fresh run.
    ckpt.save(3)
    assert os.path.isdir(tmp_path / "dump" / "checkpoint" / "step-3")
    saved_tracker = adapter.tracker.state_dict()
    train_step(4, model, loss_fn, optimizers, schedulers, metrics)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}

    job_config2 = ConfigManager().parse_args(["--job.config_file", str(path)])
    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    model2, loss_fn2, optimizers2, schedulers2, metrics2, ckpt2 = build(job_config2)
    adapter2 = optimizers2.titanwarm
    assert adapter2.locks.locked == [False] * 4 + [True] * 2
    assert ckpt2.load() is True
    assert adapter2.locks.locked == [False] * 6 and adapter2.unlocked_at == {4: 2, 5: 2}
    assert adapter2.step == 3 and len(list(model2.layers.values())) == 6
    assert all(p.requires_grad for p in model2.parameters())
    loaded = adapter2.tracker.state_dict()
    assert loaded["hvp"] == saved_tracker["hvp"] and loaded["calls"] == saved_tracker["calls"]
    assert set(loaded["vectors"]["g"]) == set(saved_tracker["vectors"]["g"])
    for n, v in saved_tracker["vectors"]["g"].items():
        assert torch.equal(loaded["vectors"]["g"][n], v)
    inner2 = optimizers2.optimizers[0]
    assert all(float(s["step"]) > 0 for s in inner2.state.values())
    assert layers["5"].feed_forward.w2.weight in optimizers.optimizers[0].state
    assert model2.layers["5"].feed_forward.w2.weight in inner2.state

    # The resumed run's step 4 is the original's, bit for bit (weights, Adam state, LR).
    train_step(4, model2, loss_fn2, optimizers2, schedulers2, metrics2)
    for n, p in model2.named_parameters():
        assert torch.equal(p, expected[n]), n

    # A micro-batch with packed varlen metadata cannot be cut to batch_size: kept whole, one warning.
    inputs, labels = batch(5)
    cu = torch.arange(0, B * T + 1, T, dtype=torch.int32)
    packed = ((inputs,), {"attention_masks": VarlenMetadata(cu, cu, T, T)}, labels)
    adapter2.batch = None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="titanwarm.integrations.torchtitan.adapter"):
        adapter2.record_batch(packed)
        adapter2.record_batch(packed)
    assert adapter2.batch is packed
    assert [r.getMessage() for r in caplog.records if r.name.startswith("titanwarm")] == [
        "curvature.batch_size = 1: a VarlenMetadata cannot be cut to the batch's first 1 sequences; "
        "measuring on the whole micro-batch"]
