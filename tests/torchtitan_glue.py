"""Skip a torchtitan adapter test module unless the installed torchtitan has its glue's extension
points (``titanwarm.integrations.torchtitan.features``); with ``TITANWARM_REQUIRE_TORCHTITAN`` set
to that glue (scripts/test.sh sets it) a missing torchtitan fails the run instead of skipping."""

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
