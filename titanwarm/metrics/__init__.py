"""Run metrics: console lines, ``metrics.jsonl`` and TensorBoard, written by rank 0."""

from titanwarm.metrics.logger import MetricsLogger, memory_stats

__all__ = ["MetricsLogger", "memory_stats"]
