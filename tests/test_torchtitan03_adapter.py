"""titanwarm's torchtitan adapter, 0.3.x glue, on torchtitan 0.3.0's own classes (CPU).

Runs in the second venv scripts/test.sh builds (torchtitan 0.3.0 and 0.2.2 cannot share one).
Drives, without stand-ins: torchtitan's ConfigManager (``--module``/``--config`` recipes, tyro
overrides), its model registry's debug Llama 3 (attention switched to its SDPA module: Flex has no
backward on CPU), its ChunkedLossWrapper loss, OptimizersContainer, LR schedulers,
MetricsProcessor (its logger swapped for a recorder) and DCP CheckpointManager, and its real
``Trainer.train_step`` / ``post_dataloading_process`` on a ``TitanwarmTrainer``. Only
``Trainer.__init__`` is replayed here (it calls ``set_device``, which needs CUDA), in its order.
"""

import re

import pytest
import torch
import torch.distributed as dist

from tests.torchtitan_glue import CPUMemoryMonitor, require_glue

require_glue("trainer", "torchtitan 0.3.0 + triton: scripts/test.sh builds .venv-tt03")

from torchtitan.components.loss import IGNORE_INDEX  # noqa: E402
from torchtitan.config import ConfigManager  # noqa: E402
from torchtitan.models.llama3.config_registry import llama3_debugmodel  # noqa: E402

from tests.torchtitan03_cpu import B, DIM, T, batch, build, sdpa_debugmodel, train_step  # noqa: E402

from titanwarm.archwarm.config import DepthSchedule  # noqa: E402
from titanwarm.curvature import Curvature, CurvatureTracker  # noqa: E402
from titanwarm.integrations.torchtitan.attention import math_attention  # noqa: E402
from titanwarm.integrations.torchtitan.trainer import TitanwarmTrainer, with_titanwarm  # noqa: E402

RECIPES = "titanwarm.integrations.torchtitan.recipes"


def tiny_archwarm() -> TitanwarmTrainer.Config:
    """The test's recipe (loaded through ConfigManager with --module tests.test_torchtitan03_adapter)."""
    return with_titanwarm(
        sdpa_debugmodel(),
        DepthSchedule(enabled=True, unlocks=[{"step": 2, "layers": [4, 5]}], unlock_init="noise",
                      noise_std=1e-3),
        Curvature(enabled=True, interval=3, max_hvps=4, hvp="autograd", batch_size=1))


def parse(tmp_path, *overrides):
    return ConfigManager().parse_args(["--module", __name__, "--config", "tiny_archwarm",
                                       "--dump_folder", str(tmp_path / "dump"), "--checkpoint.enable",
                                       "--checkpoint.interval", "3", *overrides])


def active_forward(model, inputs, positions, active):
    """The Llama forward over the active blocks only (a truncated model), hidden states out."""
    h = model.tok_embeddings(inputs)
    for k in active:
        h = model.layers[str(k)](h, None, positions)
    return model.norm(h)


@pytest.fixture
def process_group(tmp_path, monkeypatch):
    """A one-rank gloo group, as torchrun gives torchtitan; the CPU memory monitor."""
    import torchtitan.components.metrics as tt_metrics
    monkeypatch.setattr(tt_metrics, "build_device_memory_monitor", CPUMemoryMonitor)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def refused(capsys, *args) -> str:
    """ConfigManager's one-line refusal (tyro prints it in a box and exits 2), unwrapped."""
    with pytest.raises(SystemExit) as exit_info:
        ConfigManager().parse_args(["--module", RECIPES, *args])
    assert exit_info.value.code == 2
    return " ".join(re.sub("[│╭╮╰╯─]", " ", capsys.readouterr().err).split())


def test_recipes_parse_and_reject(capsys):
    """The recipe module parses through torchtitan's ConfigManager (with section overrides) and
    builds a TitanwarmTrainer; what the adapter cannot run is refused when the config is made."""
    cfg = ConfigManager().parse_args(["--module", RECIPES, "--config", "llama3_3b_archwarm",
                                      "--depth_schedule.interval", "250", "--curvature.enabled",
                                      "--curvature.hvp", "finite_difference"])
    assert type(cfg) is TitanwarmTrainer.Config and cfg._owner is TitanwarmTrainer
    assert cfg.model_spec.flavor == "3B" and len(cfg.model_spec.model.layers) == 28
    assert cfg.depth_schedule.enabled and cfg.depth_schedule.interval == 250
    assert cfg.curvature.enabled and cfg.training.disable_cuda_graphs
    debug = ConfigManager().parse_args(["--module", RECIPES, "--config", "llama3_debug_archwarm"])
    assert debug.depth_schedule.unlocks == [{"step": 4, "layers": [4, 5]}]

    assert ('titanwarm: curvature.hvp = "autograd": FlexAttention has no double backward'
            in refused(capsys, "--config", "llama3_debug_archwarm", "--curvature.hvp", "autograd"))
    assert ("titanwarm: depth_schedule with CUDA graphs: a graph freezes which blocks run"
            in refused(capsys, "--config", "llama3_3b_archwarm", "--training.no-disable-cuda-graphs"))
    # finite differences in the training compute (dtype = "param") with bf16 FSDP: refused at
    # config time (the tracker would raise at its first tracked step); float32 passes are fine
    fd = ["--config", "llama3_debug_archwarm", "--curvature.hvp", "finite_difference"]
    assert ('titanwarm: curvature.hvp: "finite_difference" with torch.bfloat16 compute measures '
            'rounding noise' in refused(capsys, *fd, "--curvature.dtype", "param"))
    assert ConfigManager().parse_args(["--module", RECIPES, *fd]).curvature.dtype == "float32"
    base = sdpa_debugmodel()
    base.parallelism.pipeline_parallel_degree = 2
    with pytest.raises(ValueError, match="does not support pipeline parallelism"):
        with_titanwarm(base, DepthSchedule(enabled=True))
    with pytest.raises(ValueError, match="unlock_init: 'ramp' is not supported"):
        with_titanwarm(sdpa_debugmodel(), DepthSchedule(enabled=True, unlock_init="ramp"))
    plain = with_titanwarm(llama3_debugmodel())  # both sections off: torchtitan's own checks only
    assert not plain.depth_schedule.enabled and not plain.curvature.enabled


def test_torchtitan03_adapter(tmp_path, process_group):
    torch.manual_seed(0)
    config = parse(tmp_path)
    trainer = build(config, TitanwarmTrainer)
    adapter = trainer.titanwarm
    model, optimizers = trainer.model_parts[0], trainer.optimizers
    layers = model.layers
    locked = [layers["4"], layers["5"]]
    inner = optimizers.optimizers[0]
    opt_params = {id(p) for g in inner.param_groups for p in g["params"]}

    # Locked blocks: zero non-norm weights, no grad, in the groups but without state, skipped;
    # the model is the truncated model; a locked block run through its zero weights is exactly x.
    assert adapter.locks.locked == [False] * 4 + [True] * 2
    assert len(list(layers.items())) == 6 and len(list(layers.values())) == 4
    inputs, labels = batch(0)
    x, pos = inputs["input"], inputs["positions"]
    with torch.no_grad():
        assert torch.equal(model(x, positions=pos), active_forward(model, x, pos, range(4)))
        h = torch.randn(B, T, DIM)
        for block in locked:
            assert torch.equal(block(h, None, pos), h)
    locked_params = [p for b in locked for p in b.parameters()]
    assert all(not p.requires_grad and id(p) in opt_params for p in locked_params)
    locked_before = [p.detach().clone() for p in locked_params]

    # Steps 1-2 at depth 4 through torchtitan's train_step; the post-hook unlocks 4 and 5 after 2.
    for step in (1, 2):
        train_step(trainer, step)
        if step == 1:
            assert all(p.grad is None and p not in inner.state and not p.requires_grad
                       for p in locked_params)
            assert {id(p) for p in model.parameters()} == {id(p) for g in inner.param_groups
                                                          for p in g["params"]}
            assert all(torch.equal(a, p) for a, p in zip(locked_before, locked_params))
    assert adapter.locks.locked == [False] * 6 and adapter.unlocked_at == {4: 2, 5: 2}
    assert len(list(layers.values())) == 6
    w = layers["4"].feed_forward.w2.weight
    assert w.requires_grad and 0 < w.abs().max() < 1e-2  # noise init
    noise_w2 = w.detach().clone()

    # Step 3: all 6 blocks train, then the tracker measures (interval 3) on the kept micro-batch.
    lr3 = trainer.lr_schedulers.schedulers[0].get_last_lr()[0]
    train_step(trainer, 3)
    assert not torch.equal(layers["4"].feed_forward.w2.weight, noise_w2)
    est = adapter.last_estimate
    assert est is not None and est.preconditioned and est.hvps == 4 and est.lr == lr3
    assert any(".layers.5." in n for n in adapter.tracker.tracked()[0])
    assert trainer.ntokens_seen == 3 * B * T  # the tracker's batch is not counted as training data
    assert adapter.tracker.dtype == torch.float32  # [curvature] dtype = "float32" (the default)

    # A fresh tracker on the same weights, Adam state and batch cut to its first sequence
    # ([curvature] batch_size = 1), with torchtitan's own loss normalisation as train_step
    # applies it: sum loss / the cut batch's valid-token count.
    ref = CurvatureTracker(model, inner, method=adapter.tracker.method, max_hvps=4, hvp="autograd", seed=7)
    ce = trainer.loss_fn.loss_fn  # the CrossEntropyLoss inside the recipe's ChunkedLossWrapper
    inputs3, labels3 = batch(3)
    inputs3, labels3 = {k: v[:1] for k, v in inputs3.items()}, labels3[:1]

    def ref_loss(parts, b):
        ids, positions, y = b
        hidden = parts[0](ids, positions=positions)
        loss, _ = ce(parts[0].lm_head(hidden), y, (y != IGNORE_INDEX).sum())
        return loss

    with math_attention([model]):  # torchtitan's fused CPU attention has no double backward
        ref_est = ref.step(ref_loss, (inputs3["input"], inputs3["positions"], labels3))
    assert ref_est.lambda_max == pytest.approx(est.lambda_max, rel=1e-6)
    assert ref_est.hvps == est.hvps

    # Metrics reached torchtitan's MetricsProcessor.log.
    step, logged = trainer.metrics_processor.logger.logged[-1]
    assert step == 3 and logged["curvature/lambda_max"] == est.lambda_max
    assert logged["archwarm/active_layers"] == 6 and logged["loss_metrics/global_avg_loss"] > 0
    assert trainer.metrics_processor.logger.logged[0][1]["archwarm/active_layers"] == 4
    assert "curvature/lambda_max" not in trainer.metrics_processor.logger.logged[0][1]

    # torchtitan's checkpointer saved step 3 (interval 3) with the lock and tracker states.
    assert {"archwarm", "curvature"} <= set(trainer.checkpointer.states)
    assert (tmp_path / "dump" / "checkpoint" / "step-3").is_dir()
    saved_tracker = adapter.tracker.state_dict()
    train_step(trainer, 4)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected_lr = trainer.lr_schedulers.schedulers[0].get_last_lr()[0]

    # A fresh run (different init) resumes from step 3 and its step 4 is bit-identical.
    torch.manual_seed(123)
    trainer2 = build(parse(tmp_path), TitanwarmTrainer)
    adapter2, model2 = trainer2.titanwarm, trainer2.model_parts[0]
    assert adapter2.locks.locked == [False] * 4 + [True] * 2
    assert trainer2.checkpointer.load(step=3) is True
    assert trainer2.step == 3 and adapter2.step == 3
    assert adapter2.locks.locked == [False] * 6 and adapter2.unlocked_at == {4: 2, 5: 2}
    assert all(p.requires_grad for p in model2.parameters()) and len(list(model2.layers.values())) == 6
    loaded = adapter2.tracker.state_dict()
    assert loaded["calls"] == saved_tracker["calls"] and loaded["hvp"] == saved_tracker["hvp"]
    for n, v in saved_tracker["vectors"]["g"].items():
        assert torch.equal(loaded["vectors"]["g"][n], v)
    inner2 = trainer2.optimizers.optimizers[0]
    assert model2.layers["5"].feed_forward.w2.weight in inner2.state
    assert all(float(s["step"]) > 0 for s in inner2.state.values())
    train_step(trainer2, 4)
    for n, p in model2.named_parameters():
        assert torch.equal(p, expected[n]), n
    assert trainer2.lr_schedulers.schedulers[0].get_last_lr()[0] == expected_lr
