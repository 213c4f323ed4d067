"""``CheckpointManager``: atomic, sharded (DCP) save and resume of a whole training run.

What one checkpoint holds (see docs/checkpointing.md for the layout on disk):
- the model, sharded, through ``get_model_state_dict`` / ``set_model_state_dict``;
- the optimizer, sharded, keyed by parameter name (see "Optimizer state" below);
- every object registered with ``trainer.register_state(name, obj)`` (lock controller, curvature
  tracker, QK-Clip ...): its ``state_dict()`` goes through DCP too, so DTensors inside it are saved
  sharded and resharded on load;
- in ``meta.json``: train step (the LR schedule is a pure function of it), data-loader position (the
  same on every rank), fault counters, the model config (checked on load), a manifest of the files;
- per rank, RNG states (torch CPU/CUDA, python ``random``).

Optimizer state and pytorch#192202. DCP's ``get/set_optimizer_state_dict`` (torch 2.13) (a) run a
fake zero-gradient ``step()`` on an optimizer whose state is empty, and return early when any state
exists, so a parameter added by ``add_parameters`` but not yet updated gets no saved state while, at
load time, every trainable parameter gets a fake state the checkpoint lacks; and (b) drop the saved
state of parameters that are frozen (``requires_grad=False``) at load time. With architecture
warm-up both happen (a checkpoint right after an unlock; a resume before the lock controller has
unfrozen the blocks). So the optimizer is saved from ``optimizer.state_dict()`` re-keyed by
parameter name (its tensors are the sharded DTensors themselves) and loaded with
``optimizer.load_state_dict`` after re-keying back, with load buffers shaped from the checkpoint's
own metadata (only the states that were saved, each laid out like its parameter is *now*). And the
param-group structure is rebuilt before the optimizer loads: registered states are restored first
(in registration order) so that the lock controller re-adds the unlocked blocks' groups with
``add_parameters``; the groups (parameter names per group) must then equal the saved ones, or the
load stops with a message naming the difference.

Atomicity: a save writes into ``.tmp-step-N``, rank 0 then writes ``meta.json`` and the ``COMPLETE``
marker (both fsynced) and renames the folder to ``step-N``. Only ``step-N`` folders with the marker
and a matching manifest are ever loaded; leftover ``.tmp-*`` folders are deleted at start-up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.tensor import DTensor

from titanwarm.distributed.param_init import canonical_name

MARKER = "COMPLETE"
META = "meta.json"
EXPORT = "model_only"
STEP_DIR = re.compile(r"^step-(\d+)$")
FORMAT = 1
_REF = "__titanwarm_tensor__"
warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # 1-process runs
# ModelArgs fields that do not change the weights or what they compute; a difference is allowed.
RUNTIME_ONLY_ARGS = ("attn_impl", "record_max_logit", "depth_init", "max_seq_len")


class CheckpointError(ValueError):
    """A checkpoint cannot be used (missing, unreadable, incompatible); one clear message."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint folder is incomplete or unreadable (an older one may still be usable)."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _dist():
        dist.barrier()


def _fsync_write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _fault_drill_pause(step: int, rank: int) -> None:
    """Fault drill for tests: with ``TITANWARM_FAULT_SAVE_PAUSE=STEP:SECONDS`` in the environment,
    the save of step STEP sleeps after its data is written and before it is made complete, so a test
    can kill the run in the middle of a save."""
    spec = os.environ.get("TITANWARM_FAULT_SAVE_PAUSE", "")
    if spec and int(spec.split(":")[0]) == step:
        if rank == 0:
            print(f"fault drill: pausing inside the save of step {step}", flush=True)
        time.sleep(float(spec.split(":")[1]))


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


class CheckpointManager:
    """Saves and restores one ``Trainer``'s state (see the module docstring)."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.cfg = trainer.cfg.checkpoint
        self.enabled = self.cfg.enable
        self.folder = Path(trainer.cfg.job.dump_folder) / self.cfg.folder
        self.rank = trainer.rank
        self.device = trainer.device
        self.last_saved: str | None = None
        self.loaded = False
        self._pending: dict | None = None
        self._async_pg = None
        if self.enabled and self.cfg.async_mode == "async" and _dist() and dist.get_world_size() > 1:
            # DCP's background thread runs collectives; give it its own CPU (gloo) group so it
            # never interleaves with the training's NCCL/gloo collectives on the default group.
            self._async_pg = dist.new_group(backend="gloo")
        if self.enabled and self.rank == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            for stale in self.folder.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        _barrier()

    # ------------------------------------------------------------------ messages
    def _say(self, text: str, err: bool = False) -> None:
        if self.rank == 0:
            print(text, file=sys.stderr if err else sys.stdout, flush=True)

    def _event(self, kind: str, values: dict) -> None:
        self.trainer.metrics.log_event(kind, self.trainer.step, values)

    # ------------------------------------------------------------------ pieces of state
    def _params(self) -> dict[str, torch.nn.Parameter]:
        out = {}
        for m in self.trainer.model_parts:
            for name, p in m.named_parameters():
                out[canonical_name(name)] = p
        return out

    def _model_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for m in self.trainer.model_parts:
            state.update(get_model_state_dict(m))
        return state

    def _model_record(self) -> dict:
        cfg = self.trainer.cfg
        args = json.loads(json.dumps(dataclasses.asdict(self.trainer.model_args), default=str))
        return {"name": cfg.model.name, "flavor": cfg.model.flavor, "args": args}

    def _optimizer_state(self) -> dict:
        """``optimizer.state_dict()`` with parameter names instead of indices (tensors not copied)."""
        opt = self.trainer.optimizer
        names = {id(p): n for n, p in self._params().items()}
        plist = [p for g in opt.param_groups for p in g["params"]]
        osd = opt.state_dict()
        return {"state": {names[id(plist[i])]: dict(s) for i, s in osd["state"].items()},
                "param_groups": [dict(g, params=[names[id(plist[i])] for i in g["params"]])
                                 for g in osd["param_groups"]]}

    def _load_optimizer_state(self, state: dict, where: str) -> None:
        opt = self.trainer.optimizer
        names = {id(p): n for n, p in self._params().items()}
        now = [[names[id(p)] for p in g["params"]] for g in opt.param_groups]
        saved = [g["params"] for g in state["param_groups"]]
        if now != saved:
            first = next((i for i, (a, b) in enumerate(zip(now, saved)) if a != b), min(len(now), len(saved)))
            raise CheckpointError(
                f"{where}: the optimizer's parameter groups differ from the checkpoint's ({len(saved)} "
                f"saved, {len(now)} now; first difference in group {first}). States that add parameters "
                "to the optimizer (e.g. the lock controller) must be registered with "
                "trainer.register_state before the checkpoint loads")
        index = {n: i for i, n in enumerate(n for g in now for n in g)}
        opt.load_state_dict({
            "state": {index[n]: s for n, s in state["state"].items()},
            "param_groups": [dict(g, params=[index[n] for n in g["params"]])
                             for g in state["param_groups"]]})

    def _pack(self, obj: Any, prefix: str, tensors: dict, params: dict, path: tuple = ()) -> Any:
        """``obj`` with every tensor replaced by a reference; the tensors go into ``tensors``."""
        if isinstance(obj, torch.Tensor):
            key = f"{prefix}/{len(tensors)}"
            like = None
            if isinstance(obj, DTensor):
                named = [(c, params[c]) for c in path if isinstance(c, str) and c in params]
                like = next((n for n, p in named + list(params.items())
                             if isinstance(p, DTensor) and p.shape == obj.shape
                             and p.device_mesh == obj.device_mesh and p.placements == obj.placements),
                            None)
            tensors[key] = obj
            return {_REF: key, "like": like, "cpu": obj.device.type == "cpu"}
        if isinstance(obj, dict):
            return {k: self._pack(v, prefix, tensors, params, path + (k,)) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
            return type(obj)(self._pack(v, prefix, tensors, params, path + (i,)) for i, v in enumerate(obj))
        return obj

    def _targets(self, obj: Any, md: dict, params: dict, out: dict) -> None:
        """Load buffers for the references in a skeleton, laid out like the named parameter now
        (a DTensor saved without a matching parameter loads as a full plain tensor)."""
        if isinstance(obj, dict) and _REF in obj:
            key = obj[_REF]
            meta = md.get(f"tensors.{key}")
            if not isinstance(meta, TensorStorageMetadata):
                raise CorruptCheckpointError(f"tensor {key} is missing from the checkpoint metadata")
            dtype = meta.properties.dtype
            like = params.get(obj["like"]) if obj["like"] else None
            if like is not None and tuple(like.shape) == tuple(meta.size):
                out[key] = torch.zeros_like(like, dtype=dtype)
            else:
                out[key] = torch.zeros(meta.size, dtype=dtype, device="cpu" if obj["cpu"] else self.device)
        elif isinstance(obj, dict):
            for v in obj.values():
                self._targets(v, md, params, out)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                self._targets(v, md, params, out)

    def _unpack(self, obj: Any, tensors: dict) -> Any:
        if isinstance(obj, dict) and _REF in obj:
            return tensors[obj[_REF]]
        if isinstance(obj, dict):
            return {k: self._unpack(v, tensors) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
            return type(obj)(self._unpack(v, tensors) for v in obj)
        return obj

    def _weights_finite(self) -> bool:
        bad = 0.0
        for p in self._params().values():
            local = p.to_local() if isinstance(p, DTensor) else p
            if not bool(torch.isfinite(local).all()):
                bad = 1.0
                break
        if _dist() and dist.get_world_size() > 1:
            on_cuda = self.device.type == "cuda" and "nccl" in str(dist.get_backend()).lower()
            t = torch.tensor([bad], device=self.device if on_cuda else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            bad = float(t.item())
        return bad == 0.0

    # ------------------------------------------------------------------ listing
    def complete_steps(self) -> list[tuple[int, Path]]:
        """(step, folder) of the complete checkpoints (marker present), newest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for d in self.folder.iterdir():
            m = STEP_DIR.match(d.name)
            if m and d.is_dir() and (d / MARKER).is_file():
                found.append((int(m.group(1)), d))
        return sorted(found, reverse=True)

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
        tmp = self.folder / f".tmp-step-{step}"
        t0 = time.perf_counter()
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        torch.save(_rng_state(), tmp / f"rng-rank{self.rank}.pt")
        tensors: dict[str, torch.Tensor] = {}
        params = self._params()
        skeletons = {"optimizer": self._pack(self._optimizer_state(), "optimizer", tensors, params)}
        for name, obj in self.trainer.states.items():
            skeletons[f"state/{name}"] = self._pack(obj.state_dict(), f"state/{name}", tensors, params)
        # skeletons go in as single pickled byte strings (a dict would be flattened by DCP)
        state = {"model": self._model_state(), "tensors": tensors,
                 "skeletons": {k: pickle.dumps(v) for k, v in skeletons.items()}}
        t = self.trainer
        meta = {"format": FORMAT, "step": step, "model": self._model_record(),
                "loader": t.train_loader.state_dict(), "fault": t.fault.state_dict(),
                "skeletons": sorted(skeletons), "world_size": t.world_size,
                "layout": {"dp_replicate": t.parallel_dims.dp_replicate, "dp_shard": t.parallel_dims.dp_shard,
                           "tp": t.parallel_dims.tp}}
        if self.cfg.async_mode == "async":
            fut = dcp.async_save(state, checkpoint_id=str(tmp), process_group=self._async_pg)
            upload = getattr(fut, "upload_completion", fut)
            blocking = time.perf_counter() - t0
            self._pending = {"future": upload, "tmp": tmp, "final": final, "meta": meta, "t0": t0,
                             "blocking": blocking}
        else:
            dcp.save(state, checkpoint_id=str(tmp))
            _fault_drill_pause(step, self.rank)
            self._finalize(tmp, final, meta, t0, None)
            _barrier()

    def _finalize(self, tmp: Path, final: Path, meta: dict, t0: float, blocking: float | None) -> None:
        """Rank 0, once every rank's data is written: manifest, marker, rename, prune."""
        self.last_saved = final.name
        if self.rank != 0:
            return
        meta["files"] = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
        _fsync_write(tmp / META, json.dumps(meta, indent=1))
        _fsync_write(tmp / MARKER, f"step {meta['step']}\n")
        _fsync_dir(tmp)
        if final.exists():  # an older run's (or an unreadable) step-N: replace it
            old = self.folder / f".tmp-replaced-{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, final)
        _fsync_dir(self.folder)
        seconds = time.perf_counter() - t0
        size = _folder_bytes(final)
        values = {"path": str(final), "size_mib": round(size / 2**20, 3), "save_s": round(seconds, 3)}
        if blocking is not None:
            values["blocking_s"] = round(blocking, 3)
        self.trainer.metrics.log_event("checkpoint", meta["step"], values)
        self._prune()

    def _prune(self) -> None:
        k = self.cfg.keep_latest_k
        if k <= 0:
            return
        for _, path in self.complete_steps()[k:]:
            shutil.rmtree(path, ignore_errors=True)

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
        final, tmp = self.folder / EXPORT, self.folder / f".tmp-{EXPORT}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        dcp.save({"model": self._model_state()}, checkpoint_id=str(tmp))
        if self.rank == 0:
            meta = {"format": FORMAT, "step": self.trainer.step, "model": self._model_record(),
                    "model_only": True,
                    "files": {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}}
            _fsync_write(tmp / META, json.dumps(meta, indent=1))
            _fsync_write(tmp / MARKER, f"model only, step {self.trainer.step}\n")
            old = self.folder / f".tmp-old-{EXPORT}"
            if final.exists():
                os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            _fsync_dir(self.folder)
            self._say(f"model-only export written to {final}")
        _barrier()

    # ------------------------------------------------------------------ load
    def maybe_load(self) -> int:
        """Before the first step: resume from this run's checkpoint folder (latest complete one, or
        ``load_step``), else warm-start from ``initial_load_path``; returns the step resumed from
        (0 for a fresh run). Raises ``CheckpointError`` for unusable checkpoints."""
        self.loaded = True
        if self.enabled:
            complete = self.complete_steps()
            if self.cfg.load_step != -1:
                path = self.folder / f"step-{self.cfg.load_step}"
                if not (path / MARKER).is_file():
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
            hf_warm_start(self.trainer, path) if is_hf_folder(path) else self._warm_start(path)
        return 0

    def _read_meta(self, path: Path) -> tuple[dict, Any]:
        """meta.json and the DCP metadata of a complete checkpoint folder; checks the manifest and
        the model config."""
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError) as e:
            raise CorruptCheckpointError(f"checkpoint {path} is unreadable: {META}: {e}") from e
        for name, size in meta.get("files", {}).items():
            f = path / name
            if not f.is_file():
                raise CorruptCheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
            if f.stat().st_size != size:
                raise CorruptCheckpointError(f"checkpoint {path} is truncated or corrupt: {name} has "
                                             f"{f.stat().st_size} bytes, {size} were written")
        diffs = model_config_diff(meta.get("model", {}), self._model_record())
        if diffs:
            raise CheckpointError(f"checkpoint {path} was saved for a different model "
                                  f"({meta['model'].get('flavor')!r}): " + "; ".join(diffs))
        try:
            md = dcp.FileSystemReader(str(path)).read_metadata()
        except Exception as e:  # noqa: BLE001
            raise CorruptCheckpointError(f"checkpoint {path} is unreadable: {e}") from e
        return meta, md

    def _dcp_load(self, state: dict, path: Path) -> None:
        try:
            dcp.load(state, checkpoint_id=str(path))
        except Exception as e:  # noqa: BLE001 - DCP wraps per-rank failures in CheckpointException
            first = str(e).strip().splitlines()
            raise CorruptCheckpointError(f"checkpoint {path} is unreadable: "
                                         f"{type(e).__name__}: {first[-1] if first else ''}") from e

    def _resume(self, path: Path) -> int:
        t0 = time.perf_counter()
        meta, md = self._read_meta(path)
        # 1. skeletons (small pickled structures); nothing in the run changes yet.
        skel_state = {"skeletons": {name: None for name in meta["skeletons"]}}
        self._dcp_load(skel_state, path)
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
        params = self._params()
        buffers: dict[str, torch.Tensor] = {}
        for skel in skeletons.values():
            self._targets(skel, md.state_dict_metadata, params, buffers)
        model_state = self._model_state()
        self._dcp_load({"model": model_state, "tensors": buffers}, path)
        # 3. apply: model, registered states (they may re-add optimizer groups), optimizer, rest.
        t = self.trainer
        t.step = int(meta["step"])  # before the registered states: they may read it
        for m in t.model_parts:
            set_model_state_dict(m, model_state)
        for name, obj in t.states.items():
            key = f"state/{name}"
            if key in skeletons:
                obj.load_state_dict(self._unpack(skeletons[key], buffers))
            else:
                self._say(f"warning: {path.name} has no state for {name!r}; it starts fresh", err=True)
        for key in skeletons:
            if key.startswith("state/") and key[len("state/"):] not in t.states:
                self._say(f"warning: {path.name} holds state {key[6:]!r} that nothing in this run "
                          "registered; ignored", err=True)
        self._load_optimizer_state(self._unpack(skeletons["optimizer"], buffers), str(path))
        t.train_loader.load_state_dict(meta["loader"])
        if not t.cfg.training.fixed_batch:  # full batch keeps cycling its one batch
            t.train_iter = iter(t.train_loader)
        t.fault.load_state_dict(meta["fault"])
        _set_rng_state(rng)
        self.last_saved = path.name
        seconds = time.perf_counter() - t0
        self._say(f"resumed from step {t.step} ({path}, {_folder_bytes(path) / 2**20:.1f} MiB, "
                  f"loaded in {seconds:.2f}s)")
        self._event("resume", {"path": str(path), "load_s": round(seconds, 3),
                               "saved_world_size": meta.get("world_size")})
        _barrier()
        return t.step

    def _warm_start(self, path: Path) -> None:
        """Model weights only from ``path`` (a step folder or a model-only export)."""
        if not (path / MARKER).is_file():
            raise CheckpointError(f"checkpoint.initial_load_path {path} is not a complete checkpoint "
                                  f"(no {MARKER} marker)")
        try:
            self._read_meta(path)
            model_state = self._model_state()
            self._dcp_load({"model": model_state}, path)
        except CorruptCheckpointError as e:
            raise CheckpointError(f"checkpoint.initial_load_path: {e}") from e
        for m in self.trainer.model_parts:
            set_model_state_dict(m, model_state)
        self._say(f"warm start: model weights from {path}")
        self._event("warm_start", {"path": str(path)})
