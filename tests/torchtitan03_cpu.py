"""torchtitan 0.3.0's Trainer on one CPU rank, for the 0.3 adapter test and the hook benchmark.

``build`` replays ``Trainer.__init__`` in its order minus ``set_device``/``init_distributed`` (they
need CUDA; a one-rank gloo group stands in) and ``parallelize_fn`` (no parallelism on one CPU rank),
so that torchtitan's own ``train_step``, loss, optimizers, LR schedulers, metrics processor and
checkpointer run unchanged. ``sdpa_debugmodel`` is torchtitan's ``llama3_debugmodel`` recipe, tiny,
with its SDPA attention module (FlexAttention has no backward on CPU).
"""

import dataclasses

import torch
from torchtitan.components.loss import IGNORE_INDEX, ChunkedLossWrapper
from torchtitan.distributed import ParallelDims
from torchtitan.distributed import utils as dist_utils
from torchtitan.models.common.attention import FlexAttention, ScaledDotProductAttention
from torchtitan.models.llama3.config_registry import llama3_debugmodel
from torchtitan.trainer import Trainer

from tests.torchtitan_glue import Recorder

B, T, VOCAB, DIM = 2, 32, 2048, 256


def sdpa_debugmodel(**training):
    """torchtitan's llama3_debugmodel recipe, tiny, with its SDPA attention module."""
    base = llama3_debugmodel()
    for _, _, parent, attr in list(base.model_spec.model.traverse(FlexAttention.Config)):
        if isinstance(parent, list):
            parent[attr] = ScaledDotProductAttention.Config()
        else:
            setattr(parent, attr, ScaledDotProductAttention.Config())
    base.training = dataclasses.replace(base.training, **{
        "local_batch_size": B, "seq_len": T, "steps": 10, "disable_cuda_graphs": True, **training})
    base.lr_scheduler.warmup_steps = 1
    base.debug.seed = 7
    base.optimizer.implementation = "for-loop"
    base.metrics.log_freq = 1
    base.validator.enable = False
    return base


def build(config, cls: type = Trainer):
    """A ``cls`` (torchtitan's ``Trainer`` or a subclass) built as ``Trainer.__init__`` builds it,
    on CPU; a ``TitanwarmMixin`` gets its ``attach_titanwarm`` as ``TitanwarmTrainer.__init__``."""
    trainer = object.__new__(cls)
    trainer.config = config
    trainer.device = torch.device("cpu")
    trainer.parallel_dims = dims = ParallelDims.from_config(config.parallelism, 1)
    model_config = config.model_spec.model
    model_config.update_from_config(config=config)
    trainer.model_config = model_config
    with torch.device("meta"):
        model = model_config.build()
    trainer.metrics_processor = config.metrics.build(parallel_dims=dims, dump_folder=config.dump_folder,
                                                     config_dict=config.to_dict())
    trainer.metrics_processor.num_flops_per_token = 1
    trainer.metrics_processor.logger = Recorder()
    trainer.loss_fn = config.loss.build(compile_config=config.compile)
    trainer.gradient_accumulation_steps = trainer.num_pipeline_parallel_microbatches = 1
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    model.train()
    trainer.model_parts = [model]
    assert isinstance(trainer.loss_fn, ChunkedLossWrapper)  # the recipe's: the model returns hidden states
    trainer.loss_fn.set_lm_head(model.lm_head)
    model._skip_lm_head = True
    trainer.optimizers = config.optimizer.build(model_parts=trainer.model_parts)
    trainer.lr_schedulers = config.lr_scheduler.build(optimizers=trainer.optimizers,
                                                      training_steps=config.training.steps)
    trainer.metrics_processor.optimizers = trainer.optimizers
    trainer.metrics_processor.model_parts = trainer.model_parts
    trainer.step = trainer.ntokens_seen = 0
    trainer.dataloader = None
    trainer.checkpointer = config.checkpoint.build(
        dataloader=None, model_parts=trainer.model_parts, optimizers=trainer.optimizers,
        lr_schedulers=trainer.lr_schedulers, states={"train_state": trainer}, sd_adapter=None,
        base_folder=config.dump_folder)
    trainer.train_context = dist_utils.get_spmd_context(parallel_dims=dims, spmd_typechecking=False)
    trainer.fwd_bwd_fn = trainer._forward_backward_body
    if hasattr(trainer, "attach_titanwarm"):
        trainer.attach_titanwarm()
    return trainer


def batch(step):
    """One micro-batch as torchtitan's dataloader yields it; the first 3 labels of each row are
    ignored, so normalising by the valid-token count differs from normalising by numel."""
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, VOCAB, (B, T + 1), generator=g)
    labels = tokens[:, 1:].clone()
    labels[:, :3] = IGNORE_INDEX
    return {"input": tokens[:, :-1], "positions": torch.arange(T).expand(B, T).clone()}, labels


def train_step(trainer, step):
    """One step of torchtitan's Trainer.train loop (its batch_generator and train_step, then the
    checkpointer)."""
    trainer.step = step
    trainer.train_step(trainer.batch_generator([batch(step)]))
    trainer.checkpointer.save(step, last_step=False)
