"""``CheckpointManager``: atomic, sharded (DCP) save and resume of a dict of ``Stateful`` components.

The manager is given ``states`` (as torchtitan's ``CheckpointManager`` is) and reads nothing else of
the run; adding a component to the checkpoint is one line, ``states["name"] = obj``
(``Trainer.register_state``). Where each entry goes (docs/checkpointing.md has the layout on disk):
- ``"model"`` (a ``ModelState``): DCP key ``model``, sharded, loaded in place and resharded;
- ``"train"``: ``{"step": N}`` in ``meta.json`` (the LR schedule is a pure function of the step);
- ``"dataloader"``, ``"fault"``: small JSON states, the same on every rank, in ``meta.json`` (as
  ``loader`` and ``fault``), rank 0's copy;
- ``"optimizer"`` (an ``OptimizerState``) and every other entry (lock controller, curvature
  tracker, QK-Clip, ...): its ``state_dict()`` as a pickled skeleton plus its tensors through DCP,
  so DTensors inside are saved sharded and resharded on load (``dcp_state.pack``);
- per rank, RNG states (torch CPU/CUDA, python ``random``) in ``rng-rank<r>.pt``.

Load order: train step, model, the other entries in dict order, the optimizer last (entries such as
the lock controller re-add the unlocked blocks' parameter groups before it loads), then the RNGs.
The model config is checked against the checkpoint's before anything is loaded.
The folder protocol (temporary folder, manifest, marker, rename, retention) is ``folder.py``.
"""

from __future__ import annotations

import pickle
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.stateful import Stateful

from titanwarm.checkpoint import folder as fs
from titanwarm.checkpoint.config import Checkpoint
from titanwarm.checkpoint.dcp_state import (ModelState, dcp_load, load_buffers, pack, read_dcp_metadata,
                                            rng_state, set_rng_state, unpack)
from titanwarm.checkpoint.errors import CheckpointError, CorruptCheckpointError
from titanwarm.distributed.utils import all_reduce_max

__all__ = ["CheckpointManager", "CheckpointError", "CorruptCheckpointError", "model_config_diff",
           "resume_point"]

EXPORT = "model_only"
FORMAT = 1
META_STATES = {"dataloader": "loader", "fault": "fault"}
"""States kept as JSON in meta.json (state name -> meta.json key)."""
REQUIRED_STATES = ("train", "model", "optimizer")
warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # 1-process runs
# ModelArgs fields that do not change the weights or what they compute; a difference is allowed.
RUNTIME_ONLY_ARGS = ("attn_impl", "record_max_logit", "depth_init", "max_seq_len")


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _dist():
        dist.barrier()


def model_config_diff(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two ``{"name", "flavor", "args"}`` model records, ignoring
    ``RUNTIME_ONLY_ARGS``; empty when the checkpoint's weights fit this run's model."""
    diffs = []
    if saved.get("name") != current.get("name"):
        diffs.append(f"model.name {saved.get('name')!r} (checkpoint) vs {current.get('name')!r} (this run)")
    sa, ca = saved.get("args", {}), current.get("args", {})
    for key in sorted(set(sa) | set(ca)):
        if key in RUNTIME_ONLY_ARGS or sa.get(key) == ca.get(key):
            continue
        diffs.append(f"{key} {sa.get(key, '<absent>')!r} (checkpoint) vs {ca.get(key, '<absent>')!r} (this run)")
    return diffs


def resume_point(cfg: Checkpoint, dump_folder: str | Path) -> Path | None:
    """The checkpoint a run with ``cfg`` will resume from (None: a fresh start or a warm start):
    ``maybe_load`` then either loads one or stops with an error, so a caller may skip the work the
    load overwrites (parameter init). Reads the folder only; not collective."""
    if not cfg.enable:
        return None
    folder = Path(dump_folder) / cfg.folder
    if cfg.load_step != -1:
        return folder / f"step-{cfg.load_step}"
    complete = fs.complete_steps(folder)
    return complete[0][1] if complete else None


class CheckpointManager:
    """Saves and restores ``states`` (see the module docstring); every public method is collective.

    ``model_record`` ({"name", "flavor", "args"}) is checked on load; ``model_args`` (the model's
    ``ModelArgs``) shapes an ``initial_load_path`` Hugging Face import; ``run_record`` (world size,
    layout) is written to meta.json for the record; ``log_event(kind, step, values)`` receives the
    checkpoint/resume/warm_start events."""

    def __init__(self, cfg: Checkpoint, dump_folder: str | Path, states: dict[str, Stateful], *,
                 rank: int, device: torch.device, model_record: dict, model_args: Any, run_record: dict,
                 log_event: Callable[[str, int, dict], None]) -> None:
        missing = [k for k in REQUIRED_STATES if k not in states]
        if missing:
            raise KeyError(f"CheckpointManager: states lacks {', '.join(missing)}")
        self.cfg = cfg
        self.states = states
        self.enabled = cfg.enable
        self.folder = Path(dump_folder) / cfg.folder
        self.rank = rank
        self.device = device
        self.model_record = model_record
        self.model_args = model_args
        self.run_record = run_record
        self.log_event = log_event
        self.last_saved: str | None = None
        self._pending: dict | None = None
        self._async_pg = None
        if self.enabled and cfg.async_mode == "async" and _dist() and dist.get_world_size() > 1:
            # DCP's background thread runs collectives; give it its own CPU (gloo) group so it
            # never interleaves with the training's NCCL/gloo collectives on the default group.
            self._async_pg = dist.new_group(backend="gloo")
        if self.enabled and self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            fs.remove_stale(self.folder)
        _barrier()

    # ------------------------------------------------------------------ helpers
    @property
    def model(self) -> ModelState:
        return self.states["model"]

    @property
    def step(self) -> int:
        return int(self.states["train"].state_dict()["step"])

    def _say(self, text: str, err: bool = False) -> None:
        if self.rank == 0:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)

    def _skeleton_states(self) -> dict[str, Stateful]:
        """DCP-skeleton key -> state, for the states that travel as skeletons."""
        out = {}
        for name, obj in self.states.items():
            if name == "optimizer":
                out["optimizer"] = obj
            elif name not in ("train", "model") and name not in META_STATES:
                out[f"state/{name}"] = obj
        return out

    def _weights_finite(self) -> bool:
        """Whether every rank's weights are finite (one all-reduce)."""
        return all_reduce_max(0.0 if self.model.weights_finite() else 1.0) == 0.0

    def complete_steps(self) -> list[tuple[int, Path]]:
        """(step, folder) of the complete checkpoints (marker present), newest first."""
        return fs.complete_steps(self.folder)

    # ------------------------------------------------------------------ save
    def maybe_save(self, step: int, last: bool = False, force: bool = False) -> None:
        """After step ``step``: save when it is on the interval, the last step, or ``force``
        (a stop signal); every rank calls it."""
        if not self.enabled:
            return
        self._poll_pending()
        if force or last or step % self.cfg.interval == 0:
            self.save(step)

    def save(self, step: int) -> None:
        """Write checkpoint ``step-<step>`` (collective)."""
        self._wait_pending()
        final = self.folder / f"step-{step}"
        if not self._weights_finite():
            self._say(f"warning: step {step}: weights are not finite; checkpoint not written "
                      f"(the last good one, {self.last_saved}, is kept)", err=True)
            return
        tmp = self.folder / f".tmp-{final.name}"
        t0 = time.perf_counter()
        if self.rank == 0:
            fs.fresh_tmp(self.folder, final.name)
        _barrier()
        torch.save(rng_state(), tmp / f"rng-rank{self.rank}.pt")
        tensors: dict[str, torch.Tensor] = {}
        params = self.model.named_parameters()
        skeletons = {key: pack(obj.state_dict(), key, tensors, params)
                     for key, obj in self._skeleton_states().items()}
        # skeletons go in as single pickled byte strings (a dict would be flattened by DCP)
        state = {"model": self.model.state_dict(), "tensors": tensors,
                 "skeletons": {k: pickle.dumps(v) for k, v in skeletons.items()}}
        meta = {"format": FORMAT, "step": step, "model": self.model_record,
                **{key: self.states[name].state_dict() for name, key in META_STATES.items()
                   if name in self.states},
                "skeletons": sorted(skeletons), **self.run_record}
        if self.cfg.async_mode == "async":
            fut = dcp.async_save(state, checkpoint_id=str(tmp), process_group=self._async_pg)
            upload = getattr(fut, "upload_completion", fut)
            self._pending = {"future": upload, "tmp": tmp, "final": final, "meta": meta, "t0": t0,
                             "blocking": time.perf_counter() - t0}
        else:
            dcp.save(state, checkpoint_id=str(tmp))
            fs.fault_drill_pause(step, self.rank)
            self._finalize(tmp, final, meta, t0, None)
            _barrier()

    def _finalize(self, tmp: Path, final: Path, meta: dict, t0: float, blocking: float | None) -> None:
        """Rank 0, once every rank's data is written: manifest, marker, rename, prune."""
        self.last_saved = final.name
        if self.rank != 0:
            return
        fs.commit(tmp, final, meta, f"step {meta['step']}")
        values = {"path": str(final), "size_mib": round(fs.folder_bytes(final) / 2**20, 3),
                  "save_s": round(time.perf_counter() - t0, 3)}
        if blocking is not None:
            values["blocking_s"] = round(blocking, 3)
        self.log_event("checkpoint", meta["step"], values)
        fs.prune(self.folder, self.cfg.keep_latest_k)

    def _poll_pending(self) -> None:
        p = self._pending
        if p is not None and p["future"].done():
            self._complete_pending()

    def _wait_pending(self) -> None:
        if self._pending is not None:
            self._complete_pending()

    def _complete_pending(self) -> None:
        p, self._pending = self._pending, None
        try:
            p["future"].result()
        except Exception as e:  # noqa: BLE001 - a failed background save must not kill training
            self._say(f"warning: asynchronous save of {p['final'].name} failed: {e}", err=True)
            if self.rank == 0:
                shutil.rmtree(p["tmp"], ignore_errors=True)
            return
        self._finalize(p["tmp"], p["final"], p["meta"], p["t0"], p["blocking"])

    def finish_pending(self) -> None:
        """Complete a pending asynchronous save (e.g. before the run stops on an error)."""
        self._wait_pending()

    def finish(self) -> None:
        """End of training: wait for a pending save, then the model-only export (collective)."""
        if not self.enabled:
            return
        self._wait_pending()
        _barrier()
        if self.cfg.model_only_export:
            self.export_model()

    def export_model(self) -> None:
        """Write the model weights alone to ``<folder>/model_only`` (atomically replaced)."""
        if not self._weights_finite():
            self._say("warning: weights are not finite; model-only export not written", err=True)
            return
        tmp = self.folder / f".tmp-{EXPORT}"
        if self.rank == 0:
            fs.fresh_tmp(self.folder, EXPORT)
        _barrier()
        dcp.save({"model": self.model.state_dict()}, checkpoint_id=str(tmp))
        if self.rank == 0:
            step = self.step
            meta = {"format": FORMAT, "step": step, "model": self.model_record, "model_only": True}
            fs.commit(tmp, self.folder / EXPORT, meta, f"model only, step {step}")
            self._say(f"model-only export written to {self.folder / EXPORT}")
        _barrier()

    # ------------------------------------------------------------------ load
    def maybe_load(self) -> int:
        """Before the first step: resume from this run's checkpoint folder (latest complete one, or
        ``load_step``), else warm-start from ``initial_load_path``; returns the step resumed from
        (0 for a fresh run). Raises ``CheckpointError`` for unusable checkpoints."""
        if self.enabled:
            complete = self.complete_steps()
            if self.cfg.load_step != -1:
                path = self.folder / f"step-{self.cfg.load_step}"
                if not (path / fs.MARKER).is_file():
                    have = ", ".join(p.name for _, p in complete) or "none"
                    raise CheckpointError(f"checkpoint.load_step = {self.cfg.load_step}: {path} is missing "
                                          f"or incomplete (complete checkpoints: {have})")
                return self._resume(path)
            for i, (_, path) in enumerate(complete):
                try:
                    return self._resume(path)
                except CorruptCheckpointError as e:
                    nxt = complete[i + 1][1].name if i + 1 < len(complete) else None
                    self._say(f"warning: {e}; " + (f"falling back to {nxt}" if nxt else
                                                   "no older complete checkpoint"), err=True)
            if complete:
                raise CheckpointError(f"no readable checkpoint in {self.folder} (tried "
                                      f"{', '.join(p.name for _, p in complete)})")
        if self.cfg.initial_load_path:
            from titanwarm.hf.warm_start import hf_warm_start, is_hf_folder

            path = Path(self.cfg.initial_load_path)
            if is_hf_folder(path):
                n = hf_warm_start(self.model.model_parts, self.model_args, path)
                self._say(f"warm start: model weights from the Hugging Face folder {path} ({n} tensors)")
                self.log_event("warm_start", self.step, {"path": str(path), "format": "hf"})
            else:
                self._warm_start(path)
        return 0

    def _read_meta(self, path: Path) -> tuple[dict, Any]:
        """meta.json (manifest checked) and the DCP metadata of a complete checkpoint folder; checks
        the model config."""
        meta = fs.read_checked_meta(path)
        diffs = model_config_diff(meta.get("model", {}), self.model_record)
        if diffs:
            raise CheckpointError(f"checkpoint {path} was saved for a different model "
                                  f"({meta['model'].get('flavor')!r}): " + "; ".join(diffs))
        return meta, read_dcp_metadata(path)

    def _resume(self, path: Path) -> int:
        t0 = time.perf_counter()
        meta, md = self._read_meta(path)
        # 1. skeletons (small pickled structures) and RNGs; nothing in the run changes yet.
        skel_state = {"skeletons": {name: None for name in meta["skeletons"]}}
        dcp_load(skel_state, path)
        try:
            skeletons = {k: pickle.loads(v) for k, v in skel_state["skeletons"].items()}
        except Exception as e:  # noqa: BLE001
            raise CorruptCheckpointError(f"checkpoint {path} is unreadable: {e}") from e
        rng_file = path / f"rng-rank{self.rank}.pt"
        if not rng_file.is_file():
            rng_file = path / "rng-rank0.pt"
        try:
            rng = torch.load(rng_file, weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise CorruptCheckpointError(f"checkpoint {path} is unreadable: {rng_file.name}: {e}") from e
        # 2. every tensor, in one collective load: model in place, the rest into fresh buffers.
        params = self.model.named_parameters()
        buffers: dict[str, torch.Tensor] = {}
        for skel in skeletons.values():
            load_buffers(skel, md.state_dict_metadata, params, self.device, buffers)
        model_state = self.model.state_dict()
        dcp_load({"model": model_state, "tensors": buffers}, path)
        # 3. apply: step (the states may read it), model, the other states, the optimizer last.
        self.states["train"].load_state_dict({"step": int(meta["step"])})
        self.model.load_state_dict(model_state)
        by_key = self._skeleton_states()
        for name, obj in self.states.items():
            if name in ("train", "model", "optimizer"):
                continue
            key = META_STATES.get(name, f"state/{name}")
            saved = meta.get(key) if name in META_STATES else skeletons.get(key)
            if saved is None:
                self._say(f"warning: {path.name} has no state for {name!r}; it starts fresh", err=True)
            else:
                obj.load_state_dict(saved if name in META_STATES else unpack(saved, buffers))
        for key in skeletons:
            if key not in by_key:
                self._say(f"warning: {path.name} holds state {key[len('state/'):]!r} that nothing in "
                          "this run registered; ignored", err=True)
        try:
            self.states["optimizer"].load_state_dict(unpack(skeletons["optimizer"], buffers))
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from e
        set_rng_state(rng)
        self.last_saved = path.name
        seconds = time.perf_counter() - t0
        step = int(meta["step"])
        self._say(f"resumed from step {step} ({path}, {fs.folder_bytes(path) / 2**20:.1f} MiB, "
                  f"loaded in {seconds:.2f}s)")
        self.log_event("resume", step, {"path": str(path), "load_s": round(seconds, 3),
                                        "saved_world_size": meta.get("world_size")})
        _barrier()
        return step

    def _warm_start(self, path: Path) -> None:
        """Model weights only from ``path`` (a step folder or a model-only export)."""
        if not (path / fs.MARKER).is_file():
            raise CheckpointError(f"checkpoint.initial_load_path {path} is not a complete checkpoint "
                                  f"(no {fs.MARKER} marker)")
        try:
            self._read_meta(path)
            model_state = self.model.state_dict()
            dcp_load({"model": model_state}, path)
        except CorruptCheckpointError as e:
            raise CheckpointError(f"checkpoint.initial_load_path: {e}") from e
        self.model.load_state_dict(model_state)
        self._say(f"warm start: model weights from {path}")
        self.log_event("warm_start", self.step, {"path": str(path)})
