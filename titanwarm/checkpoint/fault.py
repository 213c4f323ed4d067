"""Step-level fault handling: skip non-finite (or, optionally, spiking) steps, count them, stop after
too many in a row; and a SIGTERM/SIGINT flag that the loop turns into "save, then exit cleanly".

Every decision is made from values that are identical on every rank (the loss averaged over all
ranks with one all-reduce, the global gradient norm, the stop flag reduced with max), so all ranks
skip or stop together; a skipped step on only some ranks would desynchronise FSDP shards.
"""

from __future__ import annotations

import math
import signal
from collections import deque

import torch

from titanwarm.checkpoint.config import Fault
from titanwarm.distributed.utils import all_reduce_mean


class TooManySkipsError(RuntimeError):
    """``max_consecutive_skips`` steps in a row were skipped; the message names them."""


class FaultGuard:
    """Decides, once per step, whether the update is applied, and whether the run should stop."""

    def __init__(self, cfg: Fault) -> None:
        self.cfg = cfg
        self.skipped_steps = 0
        self.consecutive = 0
        self.losses: deque[float] = deque(maxlen=cfg.spike_window)
        self.norms: deque[float] = deque(maxlen=cfg.spike_window)
        self.signal_name: str | None = None
        self._old_handlers: dict[int, object] = {}

    # ------------------------------------------------------------ signals
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT only set a flag; the loop saves at the next step boundary and exits."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread (e.g. an embedding application)
                pass

    def restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers = {}

    def _on_signal(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    # ------------------------------------------------------------ per step
    def global_values(self, loss: float) -> tuple[float, bool]:
        """(loss averaged over all ranks, whether any rank received SIGTERM/SIGINT): one all-reduce."""
        flag = 1.0 if self.signal_name else 0.0
        loss_mean, flag_mean = all_reduce_mean(torch.tensor([loss, flag], dtype=torch.float64)).tolist()
        return loss_mean, flag_mean > 0

    def check(self, step: int, loss: float, grad_norm: float) -> str | None:
        """Why step ``step`` must be skipped (None: apply it). ``loss`` must already be the global
        mean and ``grad_norm`` the global norm (the same on every rank)."""
        reason = None
        if not math.isfinite(loss):
            reason = f"non-finite loss ({loss})"
        elif not math.isfinite(grad_norm):
            reason = f"non-finite gradient norm ({grad_norm})"
        elif self.cfg.spike_guard and len(self.losses) >= max(2, self.cfg.spike_window // 2):
            for name, value, window in (("loss", loss, self.losses), ("gradient norm", grad_norm, self.norms)):
                mean = sum(window) / len(window)
                std = math.sqrt(sum((v - mean) ** 2 for v in window) / (len(window) - 1))
                if value - mean > self.cfg.spike_sigma * std:
                    reason = (f"{name} spike ({value:.4g} > rolling mean {mean:.4g} + "
                              f"{self.cfg.spike_sigma:g} x std {std:.3g})")
                    break
        if reason is None:
            self.consecutive = 0
            self.losses.append(loss)
            self.norms.append(grad_norm)
            return None
        self.skipped_steps += 1
        self.consecutive += 1
        return reason

    def raise_if_exhausted(self, step: int, reason: str, last_checkpoint: str | None) -> None:
        if self.consecutive >= self.cfg.max_consecutive_skips:
            kept = (f"the last good checkpoint {last_checkpoint} is intact" if last_checkpoint
                    else "no checkpoint was written")
            raise TooManySkipsError(
                f"{self.consecutive} consecutive steps skipped (fault.max_consecutive_skips = "
                f"{self.cfg.max_consecutive_skips}); last at step {step}: {reason}; {kept}")

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps, "consecutive": self.consecutive,
                "losses": list(self.losses), "norms": list(self.norms)}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_steps = int(state["skipped_steps"])
        self.consecutive = int(state["consecutive"])
        self.losses = deque(state["losses"], maxlen=self.cfg.spike_window)
        self.norms = deque(state["norms"], maxlen=self.cfg.spike_window)
