"""The run report: a real (tiny) run writes summary.json, report.png and a console summary whose
numbers are those of its metrics.jsonl; the CLI overlays runs; no matplotlib -> summary only."""

from __future__ import annotations

import json
import math
import sys

import pytest

from titanwarm.config import load_config
from titanwarm.report import read_run, summarize, write_report
from titanwarm.report.__main__ import main as report_main
from titanwarm.trainer import Trainer

RUN = ["--model.flavor", "depth4", "--training.seq_len", "16", "--training.local_batch_size", "2",
       "--training.steps", "6", "--training.device", "cpu", "--lr_scheduler.warmup_steps", "2",
       "--metrics.enable_tensorboard", "false", "--metrics.log_freq", "2",
       "--validation.freq", "3", "--validation.steps", "1",
       "--depth_schedule.enabled", "true", "--depth_schedule.initial_layers", "2",
       "--depth_schedule.start", "2", "--depth_schedule.interval", "2", "--depth_schedule.group_size", "1",
       "--curvature.enabled", "true", "--curvature.interval", "2", "--curvature.max_hvps", "2",
       "--checkpoint.enable", "true", "--checkpoint.interval", "3"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    cfg, _ = load_config([*RUN, "--job.dump_folder", str(folder)])
    Trainer(cfg).train()
    return folder


def test_end_of_run_report_matches_the_metrics(run_folder, capsys):
    assert (run_folder / "report.png").stat().st_size > 10_000
    summary = json.loads((run_folder / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    val = [r["val_loss"] for r in steps if "val_loss" in r]
    ratios = [(r["stability_ratio"], r["step"]) for r in steps if "stability_ratio" in r]
    assert summary["steps"] == 6 and summary["planned_steps"] == 6
    assert summary["tokens"] == 6 * 2 * 16 and summary["wall_time_s"] > 0
    assert summary["final_val_loss"] == val[-1] and summary["best_val_loss"] == min(val)
    assert math.isclose(summary["best_val_ppl"], math.exp(min(val)))
    assert [u["step"] for u in summary["unlocks"]] == [2, 4] and summary["final_active_layers"] == 4
    assert (summary["max_stability_ratio"]["ratio"], summary["max_stability_ratio"]["step"]) == max(ratios)
    assert summary["skipped_steps"] == 0
    assert [p.rsplit("/", 1)[-1] for p in summary["checkpoints"]] == ["step-3", "step-6"]
    assert summary["report_png"] == str(run_folder / "report.png")


def test_cli_overlays_runs_and_refuses_a_folder_without_metrics(run_folder, tmp_path, capsys):
    out = tmp_path / "both.png"
    assert report_main([str(run_folder), str(run_folder), "--output", str(out)]) == 0
    assert out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "max stability ratio" in printed and "unlocks (step: blocks)  2: [2], 4: [3]" in printed
    assert report_main([str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_without_matplotlib_the_summary_is_still_written(run_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    monkeypatch.delitem(sys.modules, "titanwarm.report.plots", raising=False)
    (summary,) = write_report([run_folder], tmp_path / "none.png")
    assert "report_png" not in summary and not (tmp_path / "none.png").exists()
    assert "need matplotlib" in capsys.readouterr().out


def test_resumed_records_keep_the_last_of_each_step(tmp_path):
    lines = [{"kind": "start", "step": 0, "time": 0.0, "tokens_per_step": 10, "total_steps": 4},
             {"kind": "step", "step": 1, "time": 1.0, "loss": 5.0},
             {"kind": "step", "step": 2, "time": 2.0, "loss": 4.0},
             {"kind": "start", "step": 1, "time": 100.0, "tokens_per_step": 10, "total_steps": 4},
             {"kind": "step", "step": 2, "time": 103.0, "loss": 3.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "st')
    run = read_run(tmp_path)
    assert [r["loss"] for r in run.steps] == [5.0, 3.5] and run.bad_lines == 1
    summary = summarize(run)
    assert summary["wall_time_s"] == 2.0 + 3.0 and summary["tokens"] == 20
