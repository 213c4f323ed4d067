"""torchtitan's SDPA attention on the math kernel while the tracker runs (double backward).

torchtitan's ``ScaledDotProductAttention`` modules (0.2.2 and 0.3.x) pick their kernels inside
the module (``sdpa_kernel(self.sdpa_backends, set_priority=True)``), which overrides any
``sdpa_kernel`` the tracker sets around them; the fused CPU/GPU kernels have no double backward.
:func:`math_attention` swaps the modules' ``sdpa_backends`` for the duration. FlexAttention and
varlen attention have no math fallback here: the 0.3 glue rejects autograd HVPs with them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def math_attention(model_parts: list[nn.Module]) -> Iterator[None]:
    """Run every module of ``model_parts`` that has an ``sdpa_backends`` list on the math kernel
    (restored on exit)."""
    from torch.nn.attention import SDPBackend

    saved = [(m, m.__dict__.get("sdpa_backends")) for part in model_parts for m in part.modules()
             if isinstance(getattr(m, "sdpa_backends", None), list)]
    try:
        for m, _ in saved:
            m.sdpa_backends = [SDPBackend.MATH]
        yield
    finally:
        for m, old in saved:
            if old is None:
                del m.sdpa_backends
            else:
                m.sdpa_backends = old
