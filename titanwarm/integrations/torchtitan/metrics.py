"""The adapter's metrics in the fork's ``MetricsProcessor.log(..., extra_metrics=)`` (same
signature in torchtitan 0.2.2 and 0.3.x), so they reach TensorBoard / W&B with the fork's own."""

from __future__ import annotations

from typing import Any


def wrap_metrics_processor(processor: Any) -> None:
    """Add the adapter's metrics to every ``processor.log`` call's ``extra_metrics`` (found via
    ``processor.optimizers.titanwarm``, which torchtitan's Trainer sets; idempotent)."""
    if getattr(processor, "_titanwarm_wrapped", False):
        return
    base_log = processor.log

    def log(step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=None, **kwargs):
        adapter = getattr(getattr(processor, "optimizers", None), "titanwarm", None)
        if adapter is not None:
            extra_metrics = {**(extra_metrics or {}), **adapter.pop_metrics()}
        return base_log(step, global_avg_loss, global_max_loss, grad_norm,
                        extra_metrics=extra_metrics, **kwargs)

    processor.log = log
    processor._titanwarm_wrapped = True
