"""``report.png``: the panels of one or several runs' ``metrics.jsonl`` (needs matplotlib).

Panels: training and validation loss; learning rate; active depth with unlock events marked; λmax
(of G, and of H when tracked) on a log axis; lr·λmax against the stability threshold on a log axis;
skipped steps (skip events marked); tokens/s. Runs overlay in one colour each; a panel whose keys no
run logged says so. Uses matplotlib's object API (no pyplot), so it never touches the user's
interactive backend.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from titanwarm.report.summary import RunRecords

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
          "tab:gray", "tab:olive", "tab:cyan")


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"not logged\n({what})", ha="center", va="center", transform=ax.transAxes,
            color="0.5")


def _loss(ax, runs, colors) -> None:
    drawn = False
    for run, c in zip(runs, colors):
        x, y = run.series("loss")
        if x:
            ax.plot(x, y, color=c, lw=1, alpha=0.8, label=f"{run.label} train")
        vx, vy = run.series("val_loss")
        if vx:
            ax.plot(vx, vy, color=c, ls="--", marker="o", ms=3, label=f"{run.label} val")
        _unlock_lines(ax, run, c)
        drawn = drawn or bool(x or vx)
    ax.set_title("loss (solid: train, dashed: validation; unlocks dotted)")
    if not drawn:
        _empty(ax, "loss, val_loss")


def _simple(ax, runs, colors, key: str, title: str, log: bool = False, step_plot: bool = False) -> bool:
    drawn = False
    for run, c in zip(runs, colors):
        x, y = run.series(key)
        if x:
            (ax.step if step_plot else ax.plot)(x, y, color=c, lw=1.2, label=run.label,
                                                **({"where": "post"} if step_plot else {}))
            drawn = True
    ax.set_title(title)
    if log and drawn:
        ax.set_yscale("log")
    if not drawn:
        _empty(ax, key)
    return drawn


def _unlock_lines(ax, run: RunRecords, color: str) -> None:
    for e in run.events_of("unlock"):
        ax.axvline(e["step"], color=color, ls=":", lw=1)


def depth_curve(run: RunRecords) -> tuple[list[int], list[float]]:
    """Depth trained at each step: the logged ``active_layers`` at the first logged step, then a
    change one step after each unlock event (its ``active_layers``), to the last step."""
    x, y = run.series("active_layers")
    unlocks = [e for e in run.events_of("unlock") if "active_layers" in e]
    if not x or not unlocks:
        return x, y
    xs, ys = [x[0]], [y[0]]
    for e in unlocks:
        xs.append(e["step"] + 1)
        ys.append(float(e["active_layers"]))
    xs.append(run.steps[-1]["step"])
    ys.append(ys[-1])
    return xs, ys


def _depth(ax, runs, colors) -> None:
    drawn = False
    for run, c in zip(runs, colors):
        x, y = depth_curve(run)
        if x:
            ax.step(x, y, where="post", color=c, lw=1.5, label=run.label)
            drawn = True
        _unlock_lines(ax, run, c)
    ax.set_title("active depth (blocks; unlock events dotted)")
    if drawn:
        ax.yaxis.get_major_locator().set_params(integer=True)
    else:
        _empty(ax, "active_layers")


def _positive(ax, run: RunRecords, key: str, color: str, **style) -> bool:
    """Plot the positive readings of ``key`` (a log axis cannot show the rest); True if any."""
    points = [(x, y) for x, y in zip(*run.series(key)) if y > 0]
    if points:
        ax.plot(*zip(*points), color=color, marker=".", ms=4, **style)
    return bool(points)


def _log_panel(ax, drawn: bool, title: str, key: str) -> None:
    ax.set_title(title)
    if drawn:
        ax.set_yscale("log")
    else:
        _empty(ax, key)


def _lambda(ax, runs, colors) -> None:
    drawn = False
    for run, c in zip(runs, colors):
        drawn |= _positive(ax, run, "lambda_max", c, label=f"{run.label} λmax(G)")
        drawn |= _positive(ax, run, "lambda_max_h", c, ls=":", label=f"{run.label} λmax(H)")
    _log_panel(ax, drawn, "λmax (solid: preconditioned G, dotted: H)", "lambda_max")


def _stability(ax, runs, colors) -> None:
    drawn = False
    for run, c in zip(runs, colors):
        if _positive(ax, run, "lr_lambda", c, label=f"{run.label} lr·λmax"):
            for threshold in sorted(set(run.series("stability_threshold")[1])):
                ax.axhline(threshold, color=c, ls="--", lw=1, label=f"{run.label} threshold {threshold:.3g}")
            _unlock_lines(ax, run, c)
            drawn = True
    _log_panel(ax, drawn, "lr·λmax vs stability threshold (dashed; unlocks dotted)", "lr_lambda")


def _skips(ax, runs, colors) -> None:
    _simple(ax, runs, colors, "skipped_steps", "skipped steps (cumulative; skips marked x)", step_plot=True)
    for run, c in zip(runs, colors):
        skips = [e["step"] for e in run.events_of("skip") if "step" in e]
        if skips:
            ax.plot(skips, [0] * len(skips), "x", color=c, ms=7, clip_on=False)
    top = max(1.0, ax.get_ylim()[1])
    ax.set_ylim(-0.05 * top, top)
    ax.yaxis.get_major_locator().set_params(integer=True)


def plot_runs(runs: list[RunRecords], path: str | Path) -> Path:
    """Draw the panels of ``runs`` (overlaid) into ``path`` (PNG); returns the path."""
    colors = [COLORS[i % len(COLORS)] for i in range(len(runs))]
    fig = Figure(figsize=(13, 13))  # fixed margins: a layout engine would double the drawing time
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.05, top=0.94, hspace=0.25, wspace=0.18)
    axes = fig.subplots(4, 2, sharex=True).ravel()
    _loss(axes[0], runs, colors)
    _simple(axes[1], runs, colors, "lr", "learning rate")
    _depth(axes[2], runs, colors)
    _simple(axes[3], runs, colors, "grad_norm", "gradient norm (before clipping)", log=True)
    _lambda(axes[4], runs, colors)
    _stability(axes[5], runs, colors)
    _skips(axes[6], runs, colors)
    _simple(axes[7], runs, colors, "tokens_per_sec", "tokens / s (all ranks)")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0] and (len(runs) > 1 or ax is axes[0] or ax is axes[5]):
            ax.legend(fontsize=7)
    for ax in axes[-2:]:
        ax.set_xlabel("optimizer step")
    fig.suptitle(" vs ".join(r.label for r in runs) if len(runs) > 1 else f"titanwarm run: {runs[0].folder}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path
