"""What both torchtitan adapter tests share: ``require_glue`` skips a test module unless the
installed torchtitan has its glue's extension points (``titanwarm.integrations.torchtitan.features``;
with ``TITANWARM_REQUIRE_TORCHTITAN`` set to that glue, as scripts/test.sh sets it, it fails
instead); the CPU stand-ins for torchtitan's CUDA memory monitor and its metric logger."""

import os

import pytest

from titanwarm.integrations.torchtitan import features

REQUIRE_ENV = "TITANWARM_REQUIRE_TORCHTITAN"


def require_glue(kind: str, install: str) -> None:
    """Skip (or, when required, fail) the calling test module unless glue ``kind`` fits."""
    try:
        installed = features.glue()
    except ImportError:
        installed = None
    if installed == kind:
        return
    reason = (f"needs torchtitan with the {kind!r} glue ({install}); installed: torchtitan "
              f"{features.installed_version()} ({installed or 'no usable glue'})")
    if os.environ.get(REQUIRE_ENV) == kind:
        pytest.fail(f"{REQUIRE_ENV}={kind}: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


class CPUMemoryMonitor:
    """torchtitan's DeviceMemoryMonitor reads CUDA memory stats; on CPU the MetricsProcessor gets
    this one (all zeros). The processor itself is torchtitan's."""

    device_name, device_capacity_gib = "cpu", 1.0

    def reset_peak_stats(self):
        pass

    def get_peak_stats(self):
        from torchtitan.components.metrics import DeviceMemStats
        return DeviceMemStats(0.0, 0.0, 0.0, 0.0, 0, 0)


class Recorder:
    """Receives MetricsProcessor.log's metrics (in place of its TensorBoard/W&B logger)."""

    def __init__(self):
        self.logged = []

    def log(self, metrics, step):
        self.logged.append((step, dict(metrics)))

    def close(self):
        pass
