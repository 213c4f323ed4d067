"""torchtitan 0.3.x recipes with titanwarm: ``--module titanwarm.integrations.torchtitan.recipes``.

``torchrun --nproc_per_node=8 -m torchtitan.train --module titanwarm.integrations.torchtitan.recipes
--config llama3_3b_archwarm`` (overrides as usual: ``--training.steps 2000``,
``--depth_schedule.interval 250``, ``--curvature.enabled``). Each recipe is torchtitan's own Llama 3
recipe turned into a :class:`~titanwarm.integrations.torchtitan.trainer.TitanwarmTrainer` config
(:func:`~titanwarm.integrations.torchtitan.trainer.with_titanwarm`), so a fork's recipe becomes
one in the same way.

CUDA graphs are off (``training.disable_cuda_graphs``): a graph would freeze which blocks run.
torchtitan's Llama 3 uses FlexAttention, which has no double backward, so the tracker cannot use
autograd HVPs there (``curvature.hvp = "autograd"`` is rejected; see docs/torchtitan.md).
"""

from __future__ import annotations

from titanwarm.integrations.torchtitan.features import require

require("trainer")

from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss  # noqa: E402
from torchtitan.components.optimizer import default_adamw  # noqa: E402
from torchtitan.models.common.config_utils import decoder_vocab_size  # noqa: E402
from torchtitan.models.llama3 import model_registry  # noqa: E402
from torchtitan.models.llama3.config_registry import llama3_8b, llama3_debugmodel  # noqa: E402

from titanwarm.archwarm.config import DepthSchedule  # noqa: E402
from titanwarm.curvature import Curvature  # noqa: E402
from titanwarm.integrations.torchtitan.trainer import TitanwarmTrainer, with_titanwarm  # noqa: E402


def llama3_debug_archwarm() -> TitanwarmTrainer.Config:
    """torchtitan's ``llama3_debugmodel`` (6 blocks, 10 steps): blocks 0-3 train from the start,
    4 and 5 unlock after step 4 (noise init); curvature tracked every 5 steps."""
    base = llama3_debugmodel()
    base.training.disable_cuda_graphs = True
    return with_titanwarm(
        base, DepthSchedule(enabled=True, unlocks=[{"step": 4, "layers": [4, 5]}], unlock_init="noise"),
        Curvature(enabled=True, interval=5, hvp="finite_difference"))


def llama3_3b_archwarm() -> TitanwarmTrainer.Config:
    """Llama 3.2 3B (28 blocks; torchtitan's ``3B`` flavor, its 8B recipe's settings): half the
    blocks train from the start, the rest unlock bottom-up in 4 groups, the first after the LR
    warm-up, then one every 500 steps."""
    base = llama3_8b()
    base.model_spec = model_registry("3B")
    base.loss = ChunkedLossWrapper.Config(
        loss_fn=CrossEntropyLoss.Config(global_vocab_size=decoder_vocab_size(base.model_spec)))
    base.hf_assets_path = "./assets/hf/Llama-3.2-3B"
    base.optimizer = default_adamw(lr=3e-4)
    base.training.steps = 10000
    base.lr_scheduler.warmup_steps = 200
    base.training.disable_cuda_graphs = True
    return with_titanwarm(base, DepthSchedule(enabled=True, start="warmup_end", interval=500))
