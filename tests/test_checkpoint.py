"""Checkpointing and fault handling with real processes and real kills (issue 6).

Every run is ``train.py`` in its own process (``torchrun`` for several ranks) on the ``tinymodel``
flavor, CPU float32. ``EXTRA`` is added to every run's command line: extend it (e.g. a depth schedule
with an unlock inside the run, the curvature tracker on) and the bit-exact and reshard tests cover it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.launch import REPO, free_port

STEPS, INTERVAL, KILL_AT = 10, 4, 6
EXTRA: list[str] = []
"""Overrides for every run (the lead extends this: an unlock event, the curvature tracker ...)."""


VARIANTS: dict[str, list[str]] = {
    "plain": [],
    # tinymodel has 2 blocks: 1 active, block 1 unlocks after step 5, i.e. between the step-4
    # checkpoint the killed run resumes from and the end; the tracker runs every 2 steps, so its
    # warm-start vector is saved at step 4 and grows onto block 1 at step 6, in both runs.
    "unlock+curvature": ["--depth_schedule.enabled", "true", "--depth_schedule.start", "5",
                         "--curvature.enabled", "true", "--curvature.interval", "2"],
}
"""Extra overrides per variant of the bit-exact resume test (the other tests use ``plain``)."""


def base_args(dump: Path, steps: int = STEPS, world: int = 1) -> list[str]:
    """A tiny CPU run with the same global batch (4 sequences) on any number of processes."""
    return ["--model.flavor", "tinymodel", "--training.device", "cpu",
            "--training.seq_len", "32", "--training.steps", str(steps),
            "--training.local_batch_size", str(4 if world == 1 else 2),
            "--training.global_batch_size", "4",
            "--lr_scheduler.warmup_steps", "3", "--optimizer.lr", "3e-3",
            "--metrics.log_freq", "1", "--metrics.enable_tensorboard", "false",
            "--metrics.report", "false", "--validation.enable", "false", "--job.dump_folder", str(dump),
            "--checkpoint.enable", "true", "--checkpoint.interval", str(INTERVAL),
            "--checkpoint.model_only_export", "true", *EXTRA]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def command(nproc: int, args: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, "train.py", *args]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}", "train.py", *args]


def run(nproc: int, args: list[str], env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(command(nproc, args), cwd=REPO, env={**_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc), breadth first."""
    out, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def kill_tree(pid: int, sig) -> None:
    """Send ``sig`` to ``pid``'s process group and to each descendant. torchrun starts its workers
    with ``start_new_session=True`` (torch 2.13), so killing torchrun's group alone leaves the ranks
    running as orphans (they then finish more steps and save more checkpoints)."""
    procs = descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)
    if sig == signal.SIGKILL:
        deadline = time.time() + 30
        while any(Path(f"/proc/{p}").exists() and "zombie" not in _state(p) for p in procs):
            assert time.time() < deadline, "ranks did not die"
            time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def run_and_kill(nproc: int, args: list[str], until: str, sig=signal.SIGKILL,
                 env: dict | None = None) -> str:
    """Start a run in its own process group; when a stdout line starts with ``until`` send ``sig`` to
    the whole group and every rank (SIGKILL: a real crash). Returns the output seen."""
    proc = subprocess.Popen(command(nproc, args), cwd=REPO, env={**_env(), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    deadline = time.time() + 240
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(until):
                kill_tree(proc.pid, sig)
                break
            assert time.time() < deadline, "".join(seen)
        else:
            raise AssertionError(f"never saw {until!r}:\n{''.join(seen)}")
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid, signal.SIGKILL)
            proc.wait()
    return "".join(seen)


def records(dump: Path, kind: str = "step") -> list[dict]:
    lines = (dump / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def losses(dump: Path) -> dict[int, float]:
    """step -> loss; a step logged twice (before a crash and after the resume) keeps the last."""
    return {r["step"]: r["loss"] for r in records(dump)}


def exported(dump: Path, tmp: Path) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp / f"{dump.name}-export.pt"
    dcp_to_torch_save(str(dump / "checkpoint" / "model_only"), str(out))
    return torch.load(out, weights_only=False)["model"]


def complete(dump: Path) -> list[str]:
    return sorted(p.name for p in (dump / "checkpoint").glob("step-*") if (p / "COMPLETE").exists())


def last_err_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[-1] if lines else ""


# ---------------------------------------------------------------- shared runs
@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted reference: 2 processes (FSDP2 x 2), STEPS steps, a checkpoint every INTERVAL."""
    dump = tmp_path_factory.mktemp("ckpt") / "straight"
    ok(run(2, base_args(dump, world=2)))
    return dump


@pytest.fixture(scope="module")
def straight_variant(request, tmp_path_factory):
    """variant name -> its uninterrupted reference run (``plain`` is ``straight``), made once."""
    cache: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant == "plain":
            return request.getfixturevalue("straight")
        if variant not in cache:
            dump = tmp_path_factory.mktemp("ckpt") / f"straight-{variant.replace('+', '-')}"
            ok(run(2, base_args(dump, world=2) + VARIANTS[variant]))
            cache[variant] = dump
        return cache[variant]

    return get


def curvature_values(dump: Path) -> dict[int, tuple]:
    """step -> the tracker's logged values (last record of a step wins, as in ``losses``)."""
    keys = ("lambda_max", "lr_lambda", "stability_ratio", "hvps", "tracker_residual")
    return {r["step"]: tuple(r[k] for k in keys) for r in records(dump) if "lambda_max" in r}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """A 1-process run with checkpoints at 4 and 8 (used by the bad-input tests; not modified)."""
    dump = tmp_path_factory.mktemp("ckpt") / "single"
    ok(run(1, base_args(dump, steps=8)))
    return dump


def copy_run(src: Path, dst: Path, steps: list[int] | None = None) -> Path:
    """A fresh dump folder holding (some of) ``src``'s checkpoints and no metrics."""
    (dst / "checkpoint").mkdir(parents=True)
    for d in (src / "checkpoint").glob("step-*"):
        if steps is None or int(d.name.split("-")[1]) in steps:
            shutil.copytree(d, dst / "checkpoint" / d.name)
    return dst


# ---------------------------------------------------------------- resume
@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bit_exact_resume_after_sigkill(straight_variant, variant, tmp_path):
    straight = straight_variant(variant)
    args = base_args(tmp_path / "killed", world=2) + VARIANTS[variant]
    dump = tmp_path / "killed"
    out = run_and_kill(2, args, until=f"[{KILL_AT}/{STEPS}")
    assert complete(dump) == ["step-4"], out
    proc = ok(run(2, args))
    assert f"resumed from step {INTERVAL}" in proc.stdout, out + "\n=== resumed run ===\n" + proc.stdout
    assert "(skipped: resuming)" in proc.stdout  # parameter init is not drawn when a load follows
    ref, got = losses(straight), losses(dump)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == ref  # exact float equality, every step
    assert [r["step"] for r in records(dump, "resume")] == [INTERVAL]
    if variant == "unlock+curvature":
        assert {r["step"] for r in records(dump, "unlock")} == {5}  # (logged again after the resume)
        assert [r["step"] for r in records(straight, "unlock")] == [5]
        lam_ref, lam_got = curvature_values(straight), curvature_values(dump)
        assert sorted(lam_ref) == list(range(2, STEPS + 1, 2))
        assert lam_got == lam_ref  # λ, lr·λ, ratio, HVPs, residual: bit-identical, every tracked step
    a, b = exported(straight, tmp_path), exported(dump, tmp_path)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_kill_during_save_never_loads_half_written(straight, tmp_path):
    dump = tmp_path / "killed_in_save"
    out = run_and_kill(1, base_args(dump), until="fault drill: pausing inside the save of step 8",
                       env={"TITANWARM_FAULT_SAVE_PAUSE": "8:60"})
    assert complete(dump) == ["step-4"], out
    assert (dump / "checkpoint" / ".tmp-step-8" / ".metadata").exists()  # data written, never completed
    proc = ok(run(1, base_args(dump)))
    assert "resumed from step 4" in proc.stdout
    assert not (dump / "checkpoint" / ".tmp-step-8").exists()
    assert complete(dump) == ["step-10", "step-4", "step-8"]
    ref, got = losses(straight), losses(dump)
    for s in range(1, STEPS + 1):
        assert math.isclose(got[s], ref[s], rel_tol=1e-5), (s, got[s], ref[s])


@pytest.mark.slow
@pytest.mark.parametrize("nproc,layout", [(1, []), (4, ["--parallelism.data_parallel_shard_degree", "2",
                                                         "--parallelism.tensor_parallel_degree", "2"])])
def test_reshard_from_two_processes(straight, tmp_path, nproc, layout):
    dump = copy_run(straight, tmp_path / f"reshard{nproc}", steps=[INTERVAL])
    proc = ok(run(nproc, base_args(dump, world=nproc) + layout))
    assert f"resumed from step {INTERVAL}" in proc.stdout
    ref, got = losses(straight), losses(dump)
    assert sorted(got) == list(range(INTERVAL + 1, STEPS + 1))
    for s in got:
        assert math.isclose(got[s], ref[s], rel_tol=1e-5), (s, got[s], ref[s])


# ---------------------------------------------------------------- faults
def test_nan_step_is_skipped_and_counted(tmp_path):
    dump = tmp_path / "nan"
    args = base_args(dump, steps=5) + ["--checkpoint.enable", "false", "--fault.nan_steps", "3"]
    proc = ok(run(1, args))
    steps = {r["step"]: r for r in records(dump)}
    assert sorted(steps) == [1, 2, 3, 4, 5]
    assert math.isnan(steps[3]["loss"]) and steps[2]["skipped_steps"] == 0
    assert steps[3]["skipped_steps"] == 1 and steps[5]["skipped_steps"] == 1
    assert all(math.isfinite(steps[s]["loss"]) for s in (4, 5))
    (skip,) = records(dump, "skip")
    assert skip["step"] == 3 and "non-finite" in skip["reason"]
    assert "[skip]" in proc.stdout


def test_too_many_consecutive_skips_stop_with_exit_3(tmp_path):
    dump = tmp_path / "skips"
    args = base_args(dump, steps=8) + ["--checkpoint.interval", "2", "--fault.nan_steps", "3,4",
                                       "--fault.max_consecutive_skips", "2"]
    proc = run(1, args)
    assert proc.returncode == 3, proc.stderr
    line = last_err_line(proc)
    assert line.startswith("training stopped: 2 consecutive steps skipped") and "step-2 is intact" in line
    assert complete(dump) == ["step-2"]


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    dump = tmp_path / "term"
    args = base_args(dump, steps=200) + ["--checkpoint.interval", "100"]
    proc = subprocess.Popen(command(1, args), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("[3/200"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopping at step" in rest and "on SIGTERM" in rest
    (name,) = complete(dump)
    stopped = int(name.split("-")[1])
    assert stopped >= 3 and max(losses(dump)) == stopped


# ---------------------------------------------------------------- bad inputs
def test_truncated_latest_falls_back_with_warning(single, tmp_path):
    dump = copy_run(single, tmp_path / "trunc")
    shard = dump / "checkpoint" / "step-8" / "__0_0.distcp"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    proc = ok(run(1, base_args(dump, steps=9)))
    assert "truncated or corrupt" in proc.stderr and "falling back to step-4" in proc.stderr
    assert "resumed from step 4" in proc.stdout


def test_bad_checkpoints_named_or_incompatible_stop_with_exit_2(single, tmp_path):
    dump = copy_run(single, tmp_path / "named")
    shard = dump / "checkpoint" / "step-8" / "__0_0.distcp"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    before = sorted((p.name, p.stat().st_size) for p in dump.rglob("*") if p.is_file())

    proc = run(1, base_args(dump, steps=9) + ["--checkpoint.load_step", "8"])
    assert proc.returncode == 2 and last_err_line(proc).startswith("checkpoint error: ")
    assert "step-8" in last_err_line(proc) and "truncated" in last_err_line(proc)

    proc = run(1, base_args(dump, steps=9) + ["--checkpoint.load_step", "7"])
    assert proc.returncode == 2 and "load_step = 7" in last_err_line(proc)
    assert "missing or incomplete" in last_err_line(proc)

    proc = run(1, base_args(dump, steps=9) + ["--model.flavor", "debugmodel"])
    line = last_err_line(proc)
    assert proc.returncode == 2 and "different model" in line
    assert "dim 64 (checkpoint) vs 256 (this run)" in line and "n_layers 2 (checkpoint) vs 6" in line

    after = sorted((p.name, p.stat().st_size) for p in dump.rglob("*")
                   if p.is_file() and p.name != "metrics.jsonl")
    assert after == before  # nothing overwritten
    assert (dump / "metrics.jsonl").read_text() == ""  # nothing logged


def test_bad_inputs_exit_2(tmp_path):
    proc = run(1, base_args(tmp_path / "tok") + ["--model.tokenizer_path", str(tmp_path / "none.model")])
    assert proc.returncode == 2 and last_err_line(proc).startswith("config error:")
    assert "tokenizer_path" in last_err_line(proc)

    (tmp_path / "empty.txt").write_text("")
    proc = run(1, base_args(tmp_path / "empty") + ["--training.dataset", "text",
                                                   "--training.dataset_path", str(tmp_path / "empty.txt")])
    assert proc.returncode == 2 and last_err_line(proc).startswith("input error:"), proc.stderr

    (tmp_path / "file").write_text("x")
    proc = run(1, base_args(tmp_path / "file" / "dump"))
    assert proc.returncode == 2 and "not writable" in last_err_line(proc)
