"""Worker for tests/test_hf.py: build a run's (parallelized) model from the command-line config,
warm-start it from [checkpoint] initial_load_path and write the DCP model-only export."""

import sys

import torch

from titanwarm.cli import exit_after_run
from titanwarm.config import load_config
from titanwarm.trainer import Trainer

cfg, _ = load_config(sys.argv[1:])
trainer = Trainer(cfg)
trainer.checkpoint.maybe_load()
trainer.checkpoint.export_model()
torch.distributed.destroy_process_group()
exit_after_run(0)
