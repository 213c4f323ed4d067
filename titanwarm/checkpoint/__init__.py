"""Checkpointing (``[checkpoint]``: atomic sharded DCP save/resume of the whole run) and fault handling
(``[fault]``: skip non-finite or spiking steps, SIGTERM/SIGINT save-and-exit). See
docs/checkpointing.md.

Only the config sections are imported here (the config schema imports this package); the runtime
lives in ``titanwarm.checkpoint.manager`` (``CheckpointManager``, ``CheckpointError``) and
``titanwarm.checkpoint.fault`` (``FaultGuard``, ``TooManySkipsError``).
"""

from titanwarm.checkpoint.config import Checkpoint, Fault

__all__ = ["Checkpoint", "Fault"]
