"""Curvature-driven depth schedule (issue 7): the policy on scripted ratio streams (patience, minimum
interval, deadline pace, hold-back, state round trip), bad configurations, --print-schedule, and a
real run through train.py on 1 process and on 2 (FSDP2) making the same unlocks at the same steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.launch import REPO, torchrun
from titanwarm.archwarm.curvature_policy import REASONS, CurvaturePolicy, deadline_step
from titanwarm.cli import schedule_table
from titanwarm.config import ConfigError, load_config

LO, HI, SPIKE = 0.1, 0.7, 2.0  # target 0.5, hold 1.0 below


def policy(n=3, start=10, deadline=70, patience=3, min_interval=5, hold=0.0) -> CurvaturePolicy:
    return CurvaturePolicy(n, start, deadline, target_ratio=0.5, patience=patience,
                           min_interval=min_interval, hold_ratio=hold)


def unlocks(p: CurvaturePolicy, stream: dict[int, float], steps: int, tracked_every: int = 1):
    """Feed steps 1..steps (ratio from ``stream`` on tracked steps, default LO); (step, reason, ratio)."""
    out = []
    for s in range(1, steps + 1):
        r = stream.get(s, LO) if s % tracked_every == 0 else None
        d = p.update(s, r)
        if d is not None:
            out.append((s, d.group, d.reason, d.ratio))
    return out


def test_deadline_pace_and_hard_steps():
    p = policy(n=3, start=10, deadline=70, min_interval=5)
    assert p.latest == [30, 50, 70] and p.hard == [60, 65, 70]
    assert deadline_step(0.8, 200) == 160 and deadline_step(150, 200) == 150


def test_patience_and_streak_before_start():
    # every step tracked and safe: the streak builds before start, so group 0 goes at start
    got = unlocks(policy(min_interval=1), {}, 40)
    # after each unlock the streak restarts: 3 fresh safe readings -> unlock 3 steps later
    assert [(s, g, r) for s, g, r, _ in got] == [(10, 0, "curvature"), (13, 1, "curvature"),
                                                 (16, 2, "curvature")]
    assert all(ratio == LO for *_, ratio in got)


def test_a_reading_at_or_above_target_resets_the_streak():
    stream = {8: HI, 9: 0.5, 11: LO, 12: float("nan")}  # 0.5 is not below target; NaN is never safe
    got = unlocks(policy(n=1), stream, 40)
    assert got == [(15, 0, "curvature", LO)]  # safe from 13, 14, 15


def test_minimum_interval_between_unlocks():
    got = unlocks(policy(min_interval=8), {}, 40)
    assert [s for s, *_ in got] == [10, 18, 26]  # the streak is ready at 13, the interval waits


def test_untracked_steps_keep_the_streak():
    got = unlocks(policy(min_interval=1), {}, 60, tracked_every=4)
    # tracked at 4, 8, 12: ready at start? streak 2 at step 10 -> first unlock at 12
    assert [s for s, *_ in got] == [12, 24, 36]


def test_deadline_forces_the_remaining_groups_on_the_pace():
    got = unlocks(policy(), {s: HI for s in range(1, 100)}, 100)
    assert got == [(30, 0, "deadline", HI), (50, 1, "deadline", HI), (70, 2, "deadline", HI)]
    # no readings at all: the same pace, no ratio to report
    assert [(s, r, ratio) for s, _, r, ratio in unlocks(policy(), {}, 100, tracked_every=1000)] == [
        (30, "deadline", None), (50, "deadline", None), (70, "deadline", None)]


def test_curvature_then_deadline_mix():
    stream = {s: HI for s in range(14, 100)}  # safe until 13, then unsafe for good
    got = unlocks(policy(min_interval=1), stream, 100)
    assert [(s, r) for s, _, r, _ in got] == [(10, "curvature"), (13, "curvature"), (70, "deadline")]


def test_hold_back_after_an_unlock():
    # unlock at 10; a spike above hold_ratio at 12 holds group 1 back (also against the pace,
    # latest 50 -> hard 65) until 3 safe readings in a row: 20, 21, 22 after the unsafe 13..19
    stream = {12: SPIKE, **{s: HI for s in range(13, 20)}}
    got = unlocks(policy(hold=1.0), stream, 100)
    assert [(s, g, r) for s, g, r, _ in got] == [(10, 0, "curvature"), (22, 1, "curvature"),
                                                 (27, 2, "curvature")]
    # unsafe from the spike on: held, the pace waits for the hard step (65), then 70
    stream = {12: SPIKE, **{s: HI for s in range(13, 100)}}
    got = unlocks(policy(hold=1.0), stream, 100)
    assert [(s, r) for s, _, r, _ in got] == [(10, "curvature"), (65, "deadline"), (70, "deadline")]
    # without the hold the pace is not held back
    got = unlocks(policy(hold=0.0), stream, 100)
    assert [(s, r) for s, _, r, _ in got] == [(10, "curvature"), (50, "deadline"), (70, "deadline")]
    # a spike before the first unlock only resets the streak (the hold starts after an unlock):
    # group 0 goes on the pace (30), not at its held step (60)
    got = unlocks(policy(hold=1.0), {s: SPIKE for s in range(1, 30)}, 100)
    assert [(s, r) for s, _, r, _ in got] == [(30, "deadline"), (35, "curvature"), (40, "curvature")]


def test_a_group_held_past_the_next_pace_step_keeps_the_minimum_interval():
    # 4 groups: pace 25, 40, 55, 70; hard 55, 60, 65, 70. Group 1 is held (spike at 12) until its
    # hard step 60; group 2's pace step (55) has passed by then, yet it waits min_interval (65).
    stream = {12: SPIKE, **{s: SPIKE for s in range(13, 60)}, **{s: HI for s in range(60, 100)}}
    got = unlocks(policy(n=4, hold=1.0), stream, 100)
    assert [(s, r) for s, _, r, _ in got] == [(10, "curvature"), (60, "deadline"), (65, "deadline"),
                                             (70, "deadline")]


def test_state_dict_round_trip_resumes_exactly():
    stream = {12: SPIKE, **{s: HI for s in range(13, 20)}, 30: HI}
    straight = unlocks(policy(hold=1.0), stream, 100)
    first = policy(hold=1.0)
    got = [u for u in unlocks(first, stream, 15)]
    state = json.loads(json.dumps(first.state_dict()))  # plain values only
    assert state["held"] and state["next_group"] == 1
    second = policy(hold=1.0)
    second.load_state_dict(state)
    for s in range(16, 101):
        d = second.update(s, stream.get(s, LO))
        if d is not None:
            got.append((s, d.group, d.reason, d.ratio))
    assert got == straight


# ---------------------------------------------------------------------------------- config
BASE = ["--model.flavor", "depth4", "--training.steps", "100", "--lr_scheduler.warmup_steps", "10",
        "--training.device", "cpu", "--depth_schedule.enabled", "true",
        "--depth_schedule.mode", "curvature", "--depth_schedule.initial_layers", "2",
        "--depth_schedule.group_size", "1", "--depth_schedule.min_interval", "10"]
CURV = ["--curvature.enabled", "true"]


@pytest.mark.parametrize("extra, key, words", [
    ([], "depth_schedule.mode", "[curvature] enabled = true"),
    (CURV + ["--depth_schedule.hold_ratio", "0.3"], "depth_schedule.hold_ratio", ">= target_ratio"),
    (CURV + ["--depth_schedule.patience", "0"], "depth_schedule.patience", ">= 1"),
    (CURV + ["--depth_schedule.target_ratio", "0"], "depth_schedule.target_ratio", "> 0"),
    (CURV + ["--depth_schedule.all_unlocked_by", "1.5"], "depth_schedule.all_unlocked_by", "(0, 1)"),
    (CURV + ["--depth_schedule.all_unlocked_by", "0.25"], "depth_schedule.all_unlocked_by", "fewer than min_interval"),
    (CURV + ["--depth_schedule.all_unlocked_by", "5"], "depth_schedule.all_unlocked_by", "fewer than min_interval"),
])
def test_bad_curvature_configs(extra, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(BASE + extra)
    assert info.value.key == key and words in info.value.why


def test_explicit_unlocks_are_refused_in_curvature_mode(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[depth_schedule]\nunlocks = [{step = 20, layers = [3]}]\n')
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(toml)] + BASE + CURV)
    assert info.value.key == "depth_schedule.unlocks"


def test_good_config_and_print_schedule():
    cfg, _ = load_config(BASE + CURV + ["--depth_schedule.all_unlocked_by", "0.7",
                                        "--curvature.interval", "5"])
    assert cfg.depth_schedule.all_unlocked_by == 0.7
    text = schedule_table(cfg)
    assert 'mode "curvature"' in text and "after step 70 at the latest" in text
    assert "pace 30.0 steps per group" in text
    rows = [line.split() for line in text.splitlines() if "unlock [" in line]
    # earliest (every tracked ratio safe): readings at 5, 10, 15 -> 15; then 20, 25, 30 -> 30
    assert [(r[0], r[2], r[3]) for r in rows] == [("1", "15", "40"), ("2", "30", "70")]
    cfg, _ = load_config(BASE + CURV + ["--depth_schedule.all_unlocked_by", "60"])
    assert cfg.depth_schedule.all_unlocked_by == 60


def test_deadline_past_the_end_is_a_shortened_run_with_a_warning():
    from titanwarm.archwarm.warmup import ArchitectureWarmup
    from titanwarm.models.llama3 import FLAVORS, Transformer

    cfg, _ = load_config(BASE + CURV + ["--depth_schedule.all_unlocked_by", "100"])
    with torch.device("meta"):
        model = Transformer(FLAVORS["depth4"])
    warmup = ArchitectureWarmup(cfg.depth_schedule, model, 10, 0, None, 100)
    # 2 groups paced at steps 55 and 100: the second may stay locked in a 100-step run
    assert "block(s) [3] stay locked for this run unless the curvature" in warmup.end_warning(100)
    assert warmup.end_warning(101) is None


# ------------------------------------------------------------------------------- real runs
STEPS = 12
RUN = ["train.py", "--model.flavor", "depth4", "--training.steps", str(STEPS),
       "--training.seq_len", "32", "--training.global_batch_size", "4",
       "--lr_scheduler.warmup_steps", "2", "--optimizer.lr", "3e-3", "--metrics.log_freq", "1",
       "--metrics.enable_tensorboard", "false", "--metrics.console", "false",
       "--metrics.report", "false", "--validation.enable", "false", "--training.device", "cpu",
       "--depth_schedule.enabled", "true", "--depth_schedule.mode", "curvature",
       "--depth_schedule.initial_layers", "2", "--depth_schedule.group_size", "1",
       "--depth_schedule.start", "2", "--depth_schedule.min_interval", "2",
       "--depth_schedule.patience", "2", "--depth_schedule.target_ratio", "0.05",
       "--depth_schedule.all_unlocked_by", "10",
       "--curvature.enabled", "true", "--curvature.interval", "1",
       # HVPs on the whole local batch: the same 4 sequences on 1 process (4) and 2 processes (2 + 2)
       "--curvature.batch_size", "0"]


def records(folder: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "step"], [r for r in rows if r["kind"] == "unlock"]


@pytest.mark.slow
def test_same_unlocks_on_one_and_two_processes(tmp_path):
    # (with these settings the first group currently goes on the deadline (step 6: readings
    # 0.065-0.086 > 0.05 from step 3) and the second on curvature (step 8); not asserted, since the
    # tracker's numbers may move, but the replay below pins the decisions to the logged ratios)
    one, two = tmp_path / "one", tmp_path / "two"
    proc = subprocess.run([sys.executable, *RUN, "--training.local_batch_size", "4",
                           "--job.dump_folder", str(one)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    torchrun(2, [*RUN, "--training.local_batch_size", "2", "--job.dump_folder", str(two)])
    steps1, events1 = records(one)
    steps2, events2 = records(two)
    key = [(e["step"], e["layers"], e["reason"]) for e in events1]
    assert key == [(e["step"], e["layers"], e["reason"]) for e in events2]
    assert [e["layers"] for e in events1] == [[2], [3]] and steps1[-1]["active_layers"] == 4
    for e1, e2 in zip(events1, events2):
        assert e1["reason"] in REASONS and "ratio" in e1
        assert (e1["ratio"] is None) == (e2["ratio"] is None)
        if e1["ratio"] is not None:
            assert e2["ratio"] == pytest.approx(e1["ratio"], rel=1e-2, abs=1e-4)  # layout noise
    # the decisions follow from the logged ratios of the same steps: replay them
    replay = CurvaturePolicy(2, 2, 10, target_ratio=0.05, patience=2, min_interval=2)
    got = [(s, replay.update(s, r.get("stability_ratio"))) for s, r in
           ((r["step"], r) for r in steps1)]
    assert [(s, [d.group + 2], d.reason) for s, d in got if d] == key


def test_run_shorter_than_the_start_trains_at_its_initial_depth(tmp_path, capsys):
    cfg, _ = load_config(["--config", "train_configs/debug_autodepth.toml", "--training.steps", "10",
                          "--training.seq_len", "32", "--validation.enable", "false",
                          "--metrics.enable_tensorboard", "false", "--metrics.console", "false",
                          "--metrics.report", "false", "--job.dump_folder", str(tmp_path)])
    assert "blocks [3, 4, 5] stay locked for this whole run" in schedule_table(cfg)
    from titanwarm.trainer import Trainer

    t = Trainer(cfg)
    assert "block(s) [3, 4, 5] unlock only at or after step 10" in capsys.readouterr().err
    assert t.warmup.policy is None and t.warmup.locks.n_active == 3
