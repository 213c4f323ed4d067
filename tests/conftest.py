"""pytest setup: small thread counts (2 cores shared by test processes) and the repo on sys.path."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
