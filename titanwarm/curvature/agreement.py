"""Collective decisions of a tracked step: every rank skips, falls back or fails together.

A tracked step runs the same sequence of collectives on every rank. A rank that meets trouble
(an exception in its local compute, ``torch.OutOfMemoryError`` included) must not leave that
sequence, or the others wait in a collective forever. So a failing rank records the reason
(:meth:`Agreement.fail`), keeps issuing the step's remaining collectives with placeholder data
until the next *agreement point*, and there every rank learns of it at once: the solvers' scalar
reductions (one ``all_reduce`` per solver step) carry a failure flag, and :meth:`Agreement.reduce`
raises :class:`MeasurementSkipped` on every rank in the same call when any rank flagged. The
tracker then frees what the step holds and reports the skip; training continues.

A reduced value that is not finite (the HVPs of a diverging run overflow) raises
:class:`Unmeasurable`, a :class:`MeasurementSkipped`: every rank holds the same reduced values, so
every rank raises it in the same call without another collective.

Collectives *inside* a forward/backward (tensor parallelism's) are outside this protocol: a rank
failing in the middle of one still leaves its TP peers waiting (see docs/curvature.md).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


class MeasurementSkipped(RuntimeError):
    """Raised on every rank, at the same agreement point, when any rank failed."""


class Unmeasurable(MeasurementSkipped):
    """Raised on every rank alike when the step's operator has no usable spectrum: a reduced value
    is not finite, or the solver's small eigenproblem fails. Another HVP method would meet the
    same model, so the tracker skips the step without falling back."""


class Agreement:
    """One tracked step's failure flag and its reductions (world process group)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reason: str | None = None
        self.reductions = 0

    def fail(self, reason: str) -> None:
        """Record this rank's failure (the first reason is kept)."""
        if self.reason is None:
            self.reason = reason

    def reduce(self, partials: list[torch.Tensor]) -> list[float]:
        """Sum 0-d partials over all ranks in one all-reduce, together with the failure flag;
        raises :class:`MeasurementSkipped` on every rank if any rank has failed."""
        flag = torch.tensor(0.0 if self.reason is None else 1.0, dtype=torch.float64,
                            device=self.device)
        values = torch.stack([*(p.detach().to(self.device, torch.float64).reshape(())
                                for p in partials), flag])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(values)
        self.reductions += 1
        out = values.tolist()
        if out[-1] > 0:
            raise MeasurementSkipped(self.reasons())
        if not all(math.isfinite(v) for v in out[:-1]):
            raise Unmeasurable("non-finite operator values (the loss or its curvature overflowed)")
        return out[:-1]

    def reasons(self) -> str:
        """Every failing rank's reason, "rank r: reason; ..." (collective: all ranks call it)."""
        mine = self.reason
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return f"rank 0: {mine}"
        every: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        return "; ".join(f"rank {r}: {why}" for r, why in enumerate(every) if why is not None)

    def check(self) -> None:
        """An agreement point without data."""
        self.reduce([])
