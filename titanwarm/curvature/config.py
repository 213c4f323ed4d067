"""The ``[curvature]`` TOML section: warm-started λmax tracking (see docs/curvature.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Curvature:
    enabled: bool = False
    """Track λmax of Adam's preconditioned Hessian (and optionally of the Hessian)."""
    interval: int = 100
    """Track every N optimizer steps (after the optimizer step). The cost of a tracked step is
    measured by scripts/bench_tracker.py (docs/curvature.md)."""
    method: str = "lanczos"
    """Eigen-solver: "lanczos" (default: warm-started Krylov solve; scripts/curvature_accuracy.py
    measured 3.6% median error at 5 HVPs on a depth8 Llama, where G's negative eigenvalues dwarf
    λmax) or "power" (shifted power iteration; stalls when |λmin| >> λmax, which the same run
    showed)."""
    max_hvps: int = 5
    """Hessian-vector products per solve (per tracked step, per tracked matrix)."""
    tol: float = 1e-3
    """Stop a solve early when the relative residual ||Au - λu||/|λ| is below this."""
    preconditioned: bool = True
    """Track G = P^-1/2 H P^-1/2 (P = sqrt(v_hat)+eps from Adam); False tracks H."""
    warm_start: bool = True
    """Start each solve from the previous step's eigenvector (transported by P_new^1/2 P_old^-1/2
    for G); False starts from a fresh random vector."""
    hvp: str = "auto"
    """Hessian-vector product: "autograd" (exact double backward through the eager modules, also
    when blocks are compiled), "finite_difference" (central difference of two gradients; refused
    with 16-bit compute) or "auto" (autograd; finite differences if that fails, except in 16-bit
    compute or after an out-of-memory error, where the measurement is skipped)."""
    fd_eps: float = 1e-4
    """Finite-difference step: ε = fd_eps·||θ|| over the tracked parameters (fd_relative = true)
    or ε = fd_eps. Read only when finite differences run (hvp = "finite_difference", or "auto"
    after a fallback); scripts/bench_fd_accuracy.py prints the error against autograd per ε."""
    fd_relative: bool = True
    """Scale fd_eps by ||θ|| (true) or use it as the absolute step (false)."""
    batch: str = "train"
    """Batch the curvature is measured on: "train" (the current training batch) or "fixed" (one
    tracking batch drawn once at the start)."""
    track_h: bool = False
    """Also track λmax of the plain Hessian H (a second solve, another max_hvps HVPs)."""
    dtype: str = "float32"
    """Compute dtype of the HVP passes: "float32" (exact up to fp32 rounding whatever
    ``[training] mixed_precision_param`` is; the FSDP all-gather of the tracked parameters is then
    in float32) or "param" (the training compute dtype, e.g. bf16: half the gathered bytes, and
    the curvature of the network as it is run, with bf16 rounding in every HVP)."""
    batch_size: int = 2
    """Sequences per rank the HVPs use (the first ``batch_size`` of the curvature batch; 0 = the
    whole local batch). Cost and activation memory scale with it; a smaller batch measures a
    noisier per-minibatch λ (docs/curvature.md)."""

    min_param_steps: int = 0
    """Leave out of the tracked matrix the parameters with fewer than N Adam updates (e.g. blocks
    the depth schedule unlocked less than N steps ago); 0 keeps every trained parameter. The first
    reading after an unlock otherwise includes the new blocks, whose tiny second moments make
    P^-1/2 huge there (docs/curvature.md, "Readings after unlocks and on held-out batches")."""
    min_v_hat_ratio: float = 0.0
    """Restrict G to the coordinates whose sqrt(v_hat) is at least this fraction of their tensor's
    RMS sqrt(v_hat) (e.g. 1e-3 leaves out embedding rows of tokens Adam has not seen for many
    beta2-lifetimes, where P ~ eps); 0 keeps every coordinate. Needs preconditioned = true."""

    def problems(self, cfg, compute: torch.dtype | None = None) -> list[tuple[str, str]]:
        """Load-time checks: (key, why) for every bad value. ``compute``: the training compute
        dtype (default: resolved from ``cfg``'s ``[training]``; a caller without a titanwarm
        config, the torchtitan adapter, passes it)."""
        checks = [
            ("interval", self.interval >= 1, "an integer >= 1"),
            ("method", self.method in ("power", "lanczos"), '"power" or "lanczos"'),
            ("max_hvps", self.max_hvps >= 1, "an integer >= 1"),
            ("tol", self.tol >= 0, "a number >= 0"),
            ("fd_eps", self.fd_eps > 0, "a number > 0"),
            ("hvp", self.hvp in ("auto", "autograd", "finite_difference"),
             '"auto", "autograd" or "finite_difference"'),
            ("batch", self.batch in ("train", "fixed"), '"train" or "fixed"'),
            ("dtype", self.dtype in ("float32", "param"), '"float32" or "param"'),
            ("batch_size", self.batch_size >= 0, "an integer >= 0 (0 = the whole local batch)"),
            ("min_param_steps", self.min_param_steps >= 0, "an integer >= 0 (0 = off)"),
            ("min_v_hat_ratio", 0 <= self.min_v_hat_ratio < 1, "a number in [0, 1) (0 = off)"),
        ]
        found = [(key, f"{getattr(self, key)!r} is not allowed; allowed: {what}")
                 for key, ok, what in checks if not ok]
        if self.min_v_hat_ratio and not self.preconditioned:
            found.append(("min_v_hat_ratio", "restricts Adam's preconditioned Hessian G; it needs "
                                             "preconditioned = true (or min_v_hat_ratio = 0)"))
        if self.enabled and self.hvp == "finite_difference" and self.dtype == "param":
            if compute is None and cfg is not None:
                compute = self.hvp_dtype(cfg)
            if compute in (torch.bfloat16, torch.float16):
                found.append(("hvp", f'"finite_difference" with {compute} compute measures '
                                     'rounding noise; use "autograd"/"auto" or dtype = "float32"'))
        return found

    def tracker_kwargs(self) -> dict:
        """The ``CurvatureTracker`` arguments this section sets (the caller adds the model,
        optimizer, seed and, from ``hvp_dtype``, the pass dtype)."""
        keys = ("method", "max_hvps", "tol", "preconditioned", "warm_start", "hvp", "track_h",
                "fd_eps", "fd_relative", "min_param_steps", "min_v_hat_ratio")
        return {k: getattr(self, k) for k in keys}

    def hvp_dtype(self, cfg) -> torch.dtype:
        """The compute dtype of the tracker's passes for this job."""
        if self.dtype == "float32":
            return torch.float32
        from titanwarm.distributed.init import resolve_device, resolve_param_dtype

        return resolve_param_dtype(cfg.training.mixed_precision_param,
                                   resolve_device(cfg.training.device))
