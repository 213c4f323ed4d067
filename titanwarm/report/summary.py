"""Read a run's ``metrics.jsonl`` and sum it up: ``summary.json`` and the rank-0 console summary.

Keys are read tolerantly: a key a run did not log (no curvature tracking, no validation, a metric
added later) is simply absent from the summary and from the plots. A resumed run appends to the
same file and re-logs the steps after its checkpoint: the last record of each step wins.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.png"


class ReportError(ValueError):
    """A dump folder holds no readable metrics."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@dataclass
class RunRecords:
    """The records of one run's ``metrics.jsonl``."""

    folder: Path
    steps: list[dict] = field(default_factory=list)
    """Step records, one per step (the last one logged), in step order."""
    events: list[dict] = field(default_factory=list)
    """Every other record (unlock, skip, checkpoint, resume, start ...), in file order."""
    bad_lines: int = 0
    """Lines that were not JSON objects (e.g. cut short by a crash)."""
    timeline: list[tuple[float, bool]] = field(default_factory=list)
    """(time, is a start record) of every time-stamped record, re-logged steps included."""

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of the step records that logged a finite number under ``key``."""
        xs, ys = [], []
        for r in self.steps:
            v = _number(r.get(key))
            if v is not None and math.isfinite(v):
                xs.append(r["step"])
                ys.append(v)
        return xs, ys

    def events_of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("kind") == kind]

    @property
    def label(self) -> str:
        return self.folder.resolve().name


def read_run(folder: str | Path) -> RunRecords:
    """The records of the run in ``folder`` (its ``metrics.jsonl``); ReportError if there are none."""
    folder = Path(folder)
    path = folder / METRICS_FILE
    if not path.is_file():
        raise ReportError(f"{folder}: no {METRICS_FILE} (not a titanwarm dump folder, or the run "
                          "logged nothing yet)")
    run, by_step = RunRecords(folder), {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            run.bad_lines += 1
            continue
        if not isinstance(record, dict) or "kind" not in record:
            run.bad_lines += 1
            continue
        if _number(record.get("time")) is not None:
            run.timeline.append((float(record["time"]), record["kind"] == "start"))
        if record["kind"] == "step" and isinstance(record.get("step"), int):
            by_step[record["step"]] = record
        else:
            run.events.append(record)
    run.steps = [by_step[s] for s in sorted(by_step)]
    if not run.steps:
        raise ReportError(f"{path}: no step records")
    return run


def _wall_time(run: RunRecords) -> float | None:
    """Seconds of training over every start (resume) of the run: each start event to the last
    record before the next one. None for files without time stamps."""
    total, begin, last = 0.0, None, None
    for time, is_start in sorted(run.timeline):
        if is_start:
            if begin is not None:
                total += last - begin
            begin = time
        last = time
    if begin is None:
        return None
    return total + last - begin


def _unlocks(run: RunRecords) -> list[dict]:
    seen, out = set(), []
    for e in run.events_of("unlock"):
        key = (e.get("step"), tuple(e.get("layers", ())))
        if key not in seen:  # a resumed run may repeat an unlock it re-plays
            seen.add(key)
            out.append({k: e[k] for k in ("step", "layers", "active_layers", "reason") if k in e})
    return out


def summarize(run: RunRecords) -> dict[str, Any]:
    """Steps, wall time, tokens, final/best validation loss and perplexity, unlock steps, the
    maximum stability ratio and its step, skipped steps and the checkpoints still on disk."""
    last = run.steps[-1]
    starts = run.events_of("start")
    tokens_per_step = _number(starts[-1].get("tokens_per_step")) if starts else None
    out: dict[str, Any] = {"dump_folder": str(run.folder), "steps": last["step"]}
    if starts and "total_steps" in starts[-1]:
        out["planned_steps"] = starts[-1]["total_steps"]
    wall = _wall_time(run)
    if wall is not None:
        out["wall_time_s"] = round(wall, 2)
    if tokens_per_step is not None:
        out["tokens"] = int(tokens_per_step * last["step"])
    steps, tps = run.series("tokens_per_sec")
    if len(tps) > 1:
        out["tokens_per_sec_median"] = round(sorted(tps[1:])[len(tps[1:]) // 2], 1)  # step 1 warms up
    _, loss = run.series("loss")
    if loss:
        out["final_loss"] = loss[-1]
    vsteps, vloss = run.series("val_loss")
    if vloss:
        best = min(range(len(vloss)), key=vloss.__getitem__)
        out.update(final_val_loss=vloss[-1], final_val_ppl=math.exp(min(vloss[-1], 80.0)),
                   best_val_loss=vloss[best], best_val_ppl=math.exp(min(vloss[best], 80.0)),
                   best_val_step=vsteps[best])
    unlocks = _unlocks(run)
    if unlocks:
        out["unlocks"] = unlocks
    _, depth = run.series("active_layers")
    if depth:
        out["final_active_layers"] = int(depth[-1])
    rsteps, ratio = run.series("stability_ratio")
    if ratio:
        i = max(range(len(ratio)), key=ratio.__getitem__)
        at = next(r for r in run.steps if r["step"] == rsteps[i])
        out["max_stability_ratio"] = {"ratio": ratio[i], "step": rsteps[i],
                                      **{k: at[k] for k in ("lr_lambda", "stability_threshold",
                                                            "lambda_max") if k in at}}
    skipped = _number(last.get("skipped_steps"))
    out["skipped_steps"] = int(skipped) if skipped is not None else 0
    skips = run.events_of("skip")
    if skips:
        out["skips"] = [{"step": e.get("step"), "reason": e.get("reason")} for e in skips]
    paths = dict.fromkeys(e["path"] for e in run.events_of("checkpoint") if "path" in e)
    out["checkpoints"] = [p for p in paths if Path(p).is_dir()]
    if run.bad_lines:
        out["unreadable_metric_lines"] = run.bad_lines
    return out


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def format_summary(summary: dict[str, Any]) -> str:
    """The console summary: a few aligned lines, only for what the run logged."""
    rows = [("steps", str(summary["steps"])
             + (f" of {summary['planned_steps']}" if summary.get("planned_steps", summary["steps"])
                != summary["steps"] else ""))]
    if "wall_time_s" in summary:
        rows.append(("wall time", _duration(summary["wall_time_s"])))
    if "tokens" in summary:
        speed = (f" ({summary['tokens_per_sec_median']:,.0f} tok/s median)"
                 if "tokens_per_sec_median" in summary else "")
        rows.append(("tokens", f"{summary['tokens']:,}{speed}"))
    if "final_loss" in summary:
        rows.append(("final train loss", f"{summary['final_loss']:.4f}"))
    if "final_val_loss" in summary:
        rows.append(("validation", f"final loss {summary['final_val_loss']:.4f} (ppl "
                                   f"{summary['final_val_ppl']:,.2f}), best {summary['best_val_loss']:.4f} "
                                   f"(ppl {summary['best_val_ppl']:,.2f}) at step {summary['best_val_step']}"))
    if "unlocks" in summary:
        text = ", ".join(f"{u['step']}: {u['layers']}" for u in summary["unlocks"])
        rows.append(("unlocks (step: blocks)", text))
    if "final_active_layers" in summary:
        rows.append(("final depth", str(summary["final_active_layers"])))
    if "max_stability_ratio" in summary:
        m = summary["max_stability_ratio"]
        extra = (f" (lr*lambda {m['lr_lambda']:.3g} vs threshold {m['stability_threshold']:.3g})"
                 if "lr_lambda" in m and "stability_threshold" in m else "")
        rows.append(("max stability ratio", f"{m['ratio']:.3g} at step {m['step']}{extra}"))
    rows.append(("skipped steps", str(summary["skipped_steps"])
                 + (" at " + ", ".join(str(s["step"]) for s in summary["skips"]) if "skips" in summary else "")))
    if summary["checkpoints"]:
        rows.append(("checkpoints", ", ".join(summary["checkpoints"])))
    for key in ("report_png", "summary_json"):
        if key in summary:
            rows.append((key.replace("_", "."), summary[key]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def write_report(folders: list[str | Path], output: str | Path | None = None) -> list[dict[str, Any]]:
    """Write ``summary.json`` into each dump folder and one ``report.png`` overlaying them (into the
    folder for one run, ``output`` or ``./report.png`` for several); returns the summaries. Without
    matplotlib the summaries are still written and ``report_png`` is absent (a message says why)."""
    runs = [read_run(f) for f in folders]
    summaries = [summarize(r) for r in runs]
    png = Path(output) if output else (runs[0].folder / REPORT_FILE if len(runs) == 1 else Path(REPORT_FILE))
    try:
        from titanwarm.report.plots import plot_runs
    except ImportError as e:
        print(f"report: {png} not written: {e.msg} (the report's plots need matplotlib: "
              "pip install matplotlib)", flush=True)
    else:
        plot_runs(runs, png)
        for s in summaries:
            s["report_png"] = str(png)
    for run, s in zip(runs, summaries):
        s["summary_json"] = str(run.folder / SUMMARY_FILE)
        (run.folder / SUMMARY_FILE).write_text(json.dumps(s, indent=1) + "\n")
    return summaries
