"""The instability study's analysis rules (scripts/depth_spikes.py, scripts/lr_sensitivity.py,
scripts/edge_of_stability.py) on hand-made series with known answers."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from depth_spikes import (arm_table, coincidence, enrich, overshoot_events, run_table, spikes,  # noqa: E402
                          threshold_ratios)
import edge_of_stability  # noqa: E402
from lr_sensitivity import ARMS, LABELS, analyse, arm_legend, make_run, sensitivity  # noqa: E402
from study_runner import pyplot  # noqa: E402


def probes(values: list[float], every: int = 5) -> list[dict]:
    return [{"step": every * (i + 1), "probe_loss": v} for i, v in enumerate(values)]


def test_spike_rule_floor_mad_and_nonfinite():
    base = [3.0 + 0.01 * (i % 3) for i in range(30)]  # MAD 0.01: the 0.1-nat floor decides
    assert spikes(probes(base), window=20) == []
    assert spikes(probes(base[:10] + [3.2] + base[10:]), window=20) == [55]
    assert spikes(probes(base[:10] + [3.08] + base[10:]), window=20) == []  # below the floor
    noisy = [3.0 + 0.1 * (-1) ** i for i in range(30)]  # MAD 0.1: 5 MAD = 0.5 decides
    assert spikes(probes(noisy[:10] + [3.4] + noisy[10:]), window=20) == []
    assert spikes(probes(noisy[:10] + [3.8] + noisy[10:]), window=20) == [55]
    assert spikes(probes([5.0, 2.0, float("nan")]), window=20) == [15]  # < 5 history: only NaN


def test_overshoot_events_need_two_tracked_steps_over_the_bias_corrected_threshold():
    def rec(step, ratio):  # ratio to the *uncorrected* 38
        return {"step": step, "lr_lambda": 38.0 * ratio}
    # step 1: threshold 38 (1 - 0.9) = 3.8, so ratio 0.2 is already over it
    records = [rec(1, 0.2), rec(2, 0.25), rec(50, 0.5), rec(60, 1.2), rec(70, 0.9), rec(80, 1.1),
               rec(90, 1.05), rec(100, 1.3), rec(110, 0.5), {"step": 115, "loss": 1.0}]
    events, tracked = overshoot_events(records)
    assert events == [1, 80]  # step 60 is a single crossing, not sustained
    assert tracked == [1, 2, 50, 60, 70, 80, 90, 100, 110]
    ratios = dict(threshold_ratios(records))
    assert ratios[1] == pytest.approx(2.0) and ratios[100] == pytest.approx(1.3 / (1 - 0.9 ** 100))


def test_arm_table_reports_the_share_of_steps_past_the_edge():
    # after warm-up (step > 20): ratios 0.5, 1.2, 0.9, 1.1 to 38 (bias-corrected: 0.52, 1.22, 0.90, 1.10)
    # -> 2 of 4 past the edge, median 1.003 (printed to 3 significant digits: 1)
    records = [{"step": s, "lr_lambda": 38.0 * v} for s, v in
               [(10, 0.5), (30, 0.5), (40, 1.2), (50, 0.9), (60, 1.1)]]
    probes = [{"step": s, "probe_loss": 3.0} for s in range(5, 65, 5)]
    run = enrich({"records": records, "probes": probes, "diverged": False, "final_loss": 3.0},
                 window=20, warmup=20, recovered_below=8.0)
    row = arm_table({("baseline", 16, 0.95, 0.1, 0): run}, ["baseline"], lag=10, shuffles=10)[-1]
    assert "| 50 % of 4 | 1 | 3.000 (1) |" in row


def test_tables_report_the_blow_up_its_recovery_and_the_survivors():
    # held-out loss 3 nats, a blow-up to 50 at step 45 (a non-finite probe at 60 is no peak),
    # back under 8 nats at step 55; two finite runs (5.0, 6.0) and one diverged (9.0)
    losses = {45: 50.0, 50: 20.0, 55: 7.5, 60: math.nan}
    probes = [{"step": s, "probe_loss": losses.get(s, 3.0)} for s in range(5, 101, 5)]
    runs = {}
    for seed, (final, diverged) in enumerate([(5.0, False), (6.0, False), (9.0, True)]):
        runs[("baseline", 16, 0.95, 1.0, seed)] = enrich(
            {"records": [], "probes": probes, "diverged": diverged, "final_loss": final,
             "attn_logit_peak": 10.0, "elapsed_s": 60, "cpu_s": 60},
            window=5, warmup=5, recovered_below=8.0)
    run = runs[("baseline", 16, 0.95, 1.0, 0)]
    assert (run["probe_peak"], run["probe_peak_step"], run["recovered_at"]) == (50.0, 45, 55)
    assert "| 10.0 | 50.0 (45) | 55 | 1.0 / 1.0 min |" in run_table(runs, 8.0)[2]
    row = arm_table(runs, ["baseline"], lag=10, shuffles=10)[-1]
    assert row.endswith("| 5.500 ± 0.71 (2) |")  # mean and sample std of 5.0 and 6.0
    never = enrich({"records": [], "probes": probes[:9], "diverged": True, "final_loss": math.nan},
                   window=5, warmup=5, recovered_below=8.0)
    assert never["probe_peak"] == 50.0 and never["recovered_at"] is None
    calm = enrich({"records": [], "probes": probes[:8], "diverged": False, "final_loss": 3.0},
                  window=5, warmup=5, recovered_below=8.0)  # peak 3 nats: no blow-up to recover from
    assert calm["probe_peak"] == 3.0 and calm["recovered_at"] is None


def test_coincidence_hits_precision_and_null():
    tracked = list(range(5, 1001, 5))
    events = [100, 300, 500, 700, 900]
    run = {"spikes": [e + 5 for e in events], "events": events, "tracked": tracked}
    c = coincidence([run], lag=10, shuffles=200)
    assert (c["spikes"], c["events"], c["hits"]) == (5, 5, 5)
    assert c["hit_rate"] == 1.0 and c["precision"] == 1.0
    assert c["null_mean"] < 0.3 and c["p"] < 0.05
    late = {"spikes": [e + 20 for e in events], "events": events, "tracked": tracked}
    assert coincidence([late], lag=10, shuffles=10)["hit_rate"] == 0.0
    assert math.isnan(coincidence([{"spikes": [], "events": events, "tracked": tracked}], 10, 5)["hit_rate"])


def test_lr_sensitivity_metric():
    # Wortsman et al.: mean over the grid of min(loss, loss at init) - best; diverged = init
    assert sensitivity([3.0, 2.5, 2.0, 6.0], init=5.0) == pytest.approx((3.0 + 2.5 + 2.0 + 5.0) / 4 - 2.0)
    assert sensitivity([2.0, 2.0, math.inf], init=4.0) == pytest.approx((2 + 2 + 4) / 3 - 2.0)
    assert sensitivity([2.0, 2.0], init=4.0) == 0.0


def run_folder(root: Path, name: str, returncode: int, records: list[dict]) -> Path:
    """A finished study run as the driver leaves it: run.json plus the trainer's metrics.jsonl."""
    folder = root / name
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"returncode": returncode, "steps": 100}))
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    return folder


def test_a_crash_is_left_out_but_a_non_finite_stop_is_a_divergence(tmp_path, capsys):
    start = [{"kind": "step", "step": 1, "loss": 7.0, "val_loss": 7.4}]
    crashed = run_folder(tmp_path, "crashed", 1, start + [{"kind": "step", "step": 50, "loss": 40.0}])
    assert analyse(crashed) is None
    assert "crashed (exit 1" in capsys.readouterr().err
    stopped = run_folder(tmp_path, "stopped", 1, start + [{"kind": "skip", "step": s, "reason": "non-finite loss"}
                                                          for s in (50, 51, 52)])
    assert analyse(stopped)["diverged"]
    finished = run_folder(tmp_path, "finished", 0,
                          start + [{"kind": "step", "step": 100, "loss": 3.0, "val_loss": 3.1}])
    r = analyse(finished)
    assert not r["diverged"] and r["final_loss"] == 3.1 and r["init_loss"] == 7.4


def test_full_batch_analysis_leaves_a_crash_out_too(tmp_path, capsys):
    # scripts/edge_of_stability.py shares the rule: a non-zero exit is a divergence only with the
    # trainer's skip records; without them it is a crash, reported and left out.
    steps = [{"kind": "step", "step": s, "loss": 7.0 - 0.01 * s, "lr": 1e-2, "lr_lambda": 30.0} for s in range(1, 61)]
    assert edge_of_stability.analyse(run_folder(tmp_path, "crashed", 1, steps)) is None
    assert "crashed (exit 1" in capsys.readouterr().err
    stopped = run_folder(tmp_path, "stopped", 1, steps + [{"kind": "skip", "step": 61, "reason": "non-finite loss"}])
    assert edge_of_stability.analyse(stopped)["diverged"]
    assert not edge_of_stability.analyse(run_folder(tmp_path, "finished", 0, steps))["diverged"]


def test_finished_runs_are_committed_and_restored_from_the_archive(tmp_path, monkeypatch):
    # A fresh checkout has no outputs/: the committed copy must bring the run back exactly, the
    # driver must then skip it (not rerun it), and a run outside outputs/ (a /tmp probe) is not kept.
    import study_runner

    outputs, archive = tmp_path / "outputs", tmp_path / "archive"
    monkeypatch.setattr(study_runner, "OUTPUTS", outputs)
    monkeypatch.setattr(study_runner, "ARCHIVE", archive)
    records = [{"kind": "step", "step": s, "loss": 7.0 / s} for s in range(1, 50)]
    writer = ("import json, sys, pathlib; p = pathlib.Path(sys.argv[1]) / 'metrics.jsonl'; "
              f"p.write_text(''.join(json.dumps(r) + '\\n' for r in {records!r}))")
    folder = outputs / "lrs" / "baseline" / "L8_run"
    run = study_runner.Run(folder, [sys.executable, "-c", writer, str(folder)],
                           {"lr": 0.1})
    study_runner.run_pending([run], 1)
    copy = archive / "lrs" / "baseline" / "L8_run"
    assert (copy / "run.json").read_text() == (folder / "run.json").read_text()
    original = (folder / "metrics.jsonl").read_bytes()
    assert (copy / "metrics.jsonl.zst").stat().st_size < len(original)

    for name in ("run.json", "metrics.jsonl", "train.log"):
        (folder / name).unlink()
    (folder / "metrics.jsonl").write_text("an interrupted attempt's partial records\n")
    failing = study_runner.Run(folder, [sys.executable, "-c", "raise SystemExit(3)"], {"lr": 0.1})
    study_runner.run_pending([failing], 1)  # restored, so skipped: a rerun would exit 3
    assert (folder / "metrics.jsonl").read_bytes() == original
    assert json.loads((folder / "run.json").read_text())["returncode"] == 0
    assert not (folder / "train.log").exists()
    assert [r["loss"] for r in study_runner.read_records(folder)] == [r["loss"] for r in records]

    probe = tmp_path / "probe"
    study_runner.run_pending([study_runner.Run(probe, [sys.executable, "-c", "pass"], {})], 1)
    assert (probe / "run.json").exists() and sorted(p.name for p in archive.rglob("run.json")) == ["run.json"]


def test_arm_legend_names_each_drawn_arm_once_in_the_arms_order():
    """The figures' legend: an arm drawn only in a later panel is named, an arm drawn in two
    panels is named once, an arm not drawn anywhere is not named, and the order is the arms'."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2)
    left.plot([1, 2], [1, 2], label=LABELS["qk_clip"])
    right.plot([1, 2], [2, 1], label=LABELS["qk_clip"])
    right.plot([1, 2], [3, 3], label=LABELS["baseline"])
    legend = arm_legend(left, [left, right], ["baseline", "qk_norm", "qk_clip"], fontsize=7)
    assert [t.get_text() for t in legend.get_texts()] == [LABELS["baseline"], LABELS["qk_clip"]]
    plt.close(fig)


@pytest.mark.parametrize("arm", list(ARMS))
def test_every_arm_command_is_a_valid_config_named_after_its_arm(arm, monkeypatch):
    """Each arm's child command loads through train.py's config loader (so a study run cannot stop
    on a bad key), sets the arm's keys, and its description (the run banner) names the arm and the
    grid point rather than the base config's "(baseline)"."""
    from titanwarm.config.loader import load_config

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    run = make_run(root / "outputs" / "never_made", sys.executable, arm, 16, 0.95, 1.0, 2, 1000, 5)
    cfg, _ = load_config(run.command[run.command.index("--") + 1:])
    assert cfg.job.description == f"instability study: {LABELS[arm]}, L 16, beta2 0.95, LR 1, seed 2"
    assert (cfg.model.flavor, cfg.optimizer.lr, cfg.job.seed, cfg.training.shuffle_seed) == ("depth16", 1.0, 2, 2)
    assert cfg.stabilizers.qk_norm == arm.endswith("qk_norm")
    assert cfg.stabilizers.qk_clip == (arm == "qk_clip")
    assert (cfg.stabilizers.attn_softcap > 0) == (arm == "softcap")
    assert cfg.depth_schedule.enabled == arm.startswith("archwarm")
    assert not (root / "outputs" / "never_made").exists()


@pytest.mark.parametrize("hvp", edge_of_stability.HVPS)
def test_edge_of_stability_command_is_a_valid_config_with_the_asked_hvp(hvp, monkeypatch):
    """Experiment 1's child command loads through train.py's config loader and its warm tracker
    uses the asked HVP (the config's finite differences unless ``--hvp autograd``)."""
    from titanwarm.config.loader import load_config

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    command = edge_of_stability.child_command(sys.executable, 8, 0.999, 1e-3, 300,
                                              root / "outputs" / "never_made", 50, 12, hvp)
    cfg, _ = load_config(command[command.index("--") + 1:])
    assert (cfg.model.flavor, cfg.optimizer.beta2, cfg.optimizer.lr, cfg.training.steps) == \
        ("w64_depth8", 0.999, 1e-3, 300)
    assert cfg.curvature.hvp == hvp
    assert command[command.index("--cold-every") + 1] == "50"
    assert not (root / "outputs" / "never_made").exists()


@pytest.mark.parametrize("hvp, folder", [("finite_difference", "eos"), ("autograd", "eos_autograd")])
def test_edge_of_stability_grid_matches_the_committed_runs_of_its_hvp(hvp, folder):
    """The grid's run metadata equals that of the committed runs made with the same HVP (so a rerun
    of the study reuses them; the finite-difference runs predate ``--hvp``), and differs from the
    other HVP's (so a run made with one HVP is never taken for the other)."""
    root = Path(__file__).resolve().parent.parent
    runs = edge_of_stability.grid_runs(sys.executable, [(4, 0.95, 1e-3)], Path("/never_made"), 500, 50, 12, hvp)
    assert [r.folder.name for r in runs] == ["L4_b20.95_lr1e-3"]
    for name, same in [(folder, True), ({"eos": "eos_autograd", "eos_autograd": "eos"}[folder], False)]:
        stored = json.loads((root / "docs/results/runs" / name / "L4_b20.95_lr1e-3/run.json").read_text())
        assert all(stored.get(k) == v for k, v in runs[0].meta.items()) == same
