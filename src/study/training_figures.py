"""The figures of training itself: every loss at every learning rate, time and steps to the targets,
convergence, the tuned-lr against shared-lr view and the gradient magnitudes. Drawn with the kit of
``study.figures``; statistics from ``study.analysis``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study import analysis, comparisons, measures
from study.figures import (
    CONDITIONS_PER_ROW,
    FLOOR,
    band_lines,
    colour,
    condition_panels,
    empty_panel,
    finite_rows,
    fraction_limits,
    loss_legend,
    palette,
    panel_shape,
    plain_log_ticks,
    single,
    style,
    subplots,
)


def _steps_per_epoch(frame: pd.DataFrame) -> float:
    rows = frame[(frame["epoch"] > 0) & (frame["step"] > 0)]
    return float((rows["step"] / rows["epoch"]).median()) if not rows.empty else math.nan


def _epoch_axis(ax, steps_per_epoch: float) -> None:
    if math.isfinite(steps_per_epoch) and steps_per_epoch > 0:
        top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
        top.set_xlabel("epoch")




def plot_tuning(tune: pd.DataFrame, chosen: Mapping[str, Mapping[str, float]],
                targets: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Every loss at every learning rate of the grid, one column per tuned condition: final validation accuracy
    (top; dots are tuning seeds, the line their mean, the star the chosen rate) and steps to the condition's first
    target (bottom; median over tuning seeds, hollow where fewer than half reached it). Diverged seeds are
    crosses drawn at 0, collapsed seeds open squares at their final accuracy."""
    scores = comparisons.tuning_scores(tune)
    conditions = list(dict.fromkeys(tune["condition"]))
    losses = analysis.ordered(tune["loss"])
    targets = targets or {}
    with style():
        # Per condition a pair of panels, one above the other; the pairs CONDITIONS_PER_ROW to a row.
        nrows, ncols = panel_shape(len(conditions), CONDITIONS_PER_ROW)
        fig, axes = subplots(2 * nrows, ncols, max(4.8 * ncols, 7.5), 7.2 * nrows)
        pairs = [(axes[2 * (i // ncols), i % ncols], axes[2 * (i // ncols) + 1, i % ncols])
                 for i in range(nrows * ncols)]
        for ax, below in pairs[len(conditions):]:
            ax.set_visible(False)
            below.set_visible(False)
        for col, condition in enumerate(conditions):
            mine = scores[scores["condition"] == condition]
            ax, below = pairs[col]
            below.sharex(ax)
            ax.tick_params(labelbottom=False)
            first = (targets.get(condition) or (None,))[0]
            steps = (measures.steps_to_target(tune[tune["condition"] == condition], first) if first is not None
                     else None)
            any_reached = False  # a log axis with nothing on it cannot place its ticks
            for loss in losses:
                rows = mine[mine["loss"] == loss]
                ok = rows[rows["value"].notna()]
                mean = ok.groupby("lr")["value"].mean()
                ax.plot(mean.index, mean.to_numpy(), color=colour(loss), lw=1.5)
                ax.scatter(ok["lr"], ok["value"], color=colour(loss), s=14, alpha=0.6)
                bad = rows[rows["diverged"]]
                if not bad.empty:
                    ax.scatter(bad["lr"], np.zeros(len(bad)), color=colour(loss), marker="x", s=40)
                fell = rows[rows["collapsed"] & rows["value"].notna()]
                if not fell.empty:
                    ax.scatter(fell["lr"], fell["value"], facecolor="none", edgecolor=colour(loss), marker="s", s=60)
                lr = chosen.get(condition, {}).get(loss)
                if lr is not None and lr in mean.index:
                    ax.scatter([lr], [mean[lr]], color=colour(loss), marker="*", s=180, edgecolor="black",
                               zorder=5)
                if steps is not None:
                    per_lr = steps[steps["loss"] == loss].groupby("lr")["step"].apply(analysis.censored_median)
                    reached = per_lr.dropna()
                    below.plot(reached.index, reached.to_numpy(), color=colour(loss), lw=1.5, marker="o", ms=4)
                    any_reached = any_reached or len(reached) > 0
            ax.set_xscale("log")
            grid = sorted(mine["lr"].unique())
            below.set_xticks(grid, [f"{lr:g}" for lr in grid], rotation=45)
            below.xaxis.set_minor_formatter(mticker.NullFormatter())
            below.set_xlabel("learning rate (log scale)")
            fraction_limits(ax)
            ax.set_ylabel("final validation accuracy")
            ax.set_title(condition)
            if steps is not None and any_reached:
                below.set_yscale("log")
                plain_log_ticks(below)
                below.set_ylabel(f"steps to val acc {first:g}\n(median; missing = most never did)")
            elif steps is not None:
                empty_panel(below, f"no rate reached val acc {first:g}\nin most tuning seeds")
            else:
                empty_panel(below, "no target")
        fig.suptitle("Every loss at every learning rate (tuning runs, validation split)")
        extra = [Line2D([], [], color="grey", marker="*", ls="", ms=12, markeredgecolor="black", label="chosen lr"),
                 Line2D([], [], color="grey", marker="x", ls="", label="diverged (drawn at 0)"),
                 Line2D([], [], color="grey", marker="s", markerfacecolor="none", ls="", label="collapsed")]
        loss_legend(fig, losses, extra)
    return fig


def _target_panels(history: pd.DataFrame, targets: Mapping[str, Sequence[float]], *,
                   height: float) -> tuple[Figure, list[tuple[object, str, pd.DataFrame]]]:
    """One panel per condition that has targets: the figure and (axes, condition, its history) for each."""
    conditions = [c for c in dict.fromkeys(history["condition"]) if targets.get(c)]
    fig, axes, _ = condition_panels(len(conditions), 4.2, height)
    if not conditions:
        empty_panel(axes[0], "no targets")
    return fig, [(ax, c, history[history["condition"] == c]) for ax, c in zip(axes, conditions, strict=False)]


def plot_time_to_target(history: pd.DataFrame, targets: Mapping[str, Sequence[float]]) -> Figure:
    """Share of seeds that have reached the first validation-accuracy target by each step (a Kaplan-Meier curve
    without censoring before the end: every seed runs to the end or diverges), one panel per condition. A curve
    that stops below 1 is the share that never reached it."""
    losses = analysis.ordered(history["loss"])
    with style():
        fig, panels = _target_panels(history, targets, height=3.8)
        for ax, condition, mine in panels:
            target = targets[condition][0]
            table = measures.steps_to_target(mine, target)
            end = float(table["censored_at"].max())
            for loss in losses:
                rows = table[table["loss"] == loss]
                if rows.empty:  # conditions may train different losses
                    continue
                hit = np.sort(rows["step"].dropna().to_numpy(dtype=float))
                xs = np.concatenate([[1.0], np.maximum(hit, 1.0), [end]])
                ys = np.concatenate([[0.0], np.arange(1, len(hit) + 1) / len(rows), [len(hit) / len(rows)]])
                ax.step(xs, ys, where="post", color=colour(loss), lw=1.8)
            ax.set_xscale("log")
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("optimizer step (log scale)")
            ax.set_ylabel(f"share of seeds at val acc ≥ {target:g}")
            ax.set_title(condition)
        fig.suptitle("Time to the first target: share of seeds that reached it (censored seeds keep it below 1)")
        loss_legend(fig, losses)
    return fig


# --------------------------------------------------------------------------------------------------------------
# Convergence


DROP = 0.1  # accuracy lost since a curve's best so far that a zoomed axis must show (a collapse, not noise)


def _zoom_bottom(means: pd.Series, bottom: float, margin: float = 0.03) -> float:
    """The lower limit of an accuracy axis zoomed down to ``bottom`` that hides no result: every loss's final mean
    and every value more than ``DROP`` below the curve's best so far (a collapse, even one it recovers from) stay on
    the chart. ``means``: mean accuracy indexed by ``(loss, step)``."""
    lowest = math.inf
    for _, curve in means.groupby(level="loss"):
        values = curve.sort_index().to_numpy(dtype=float)
        fell = values[np.maximum.accumulate(values) - values > DROP]
        lowest = min(lowest, values[-1], fell.min() if fell.size else math.inf)
    return max(0.0, min(bottom, lowest - margin))


def plot_convergence(history: pd.DataFrame, targets: Sequence[float] = ()) -> Figure:
    """Validation accuracy and training loss against optimizer steps for one condition (mean over seeds, 95% band)."""
    condition = single(history)
    losses = analysis.ordered(history["loss"])
    with style():
        fig, axes = subplots(1, 2, 12, 4.2)
        ax = axes[0, 0]
        # Most of the race happens in the first epoch: steps on a log axis (step 0 left out), accuracy zoomed
        # onto the targets, so that the losses' curves can be told apart.
        accuracy = measures.select(history, "val", "accuracy")
        accuracy = accuracy[accuracy["step"] > 0]
        band_lines(ax, accuracy, "step")
        ax.set_xscale("log")
        for i, target in enumerate(targets):  # labels alternate sides so that close targets stay readable
            ax.axhline(target, color="black", ls=":", lw=1)
            ax.annotate(f"target {target:g}", (0.99 if i % 2 else 0.01, target), xycoords=("axes fraction", "data"),
                        ha="right" if i % 2 else "left", va="bottom", fontsize=8, annotation_clip=True)
        means = accuracy.groupby(["loss", "step"])["value"].mean()
        if len(means) and targets:
            # Every target on the chart, reached or not (a short run may reach none).
            top = min(1.0, max(float(means.max()), max(targets)) + 0.01)
            ax.set_ylim(_zoom_bottom(means, min(min(targets) - 0.08, top - 0.2)), top)
        else:
            fraction_limits(ax)
        ax.set_xlabel("optimizer step (log scale)")
        ax.set_ylabel("validation accuracy (fraction, zoomed)")
        ax = axes[0, 1]
        band_lines(ax, finite_rows(measures.select(history, "train", "loss")), "step", log=True)
        plain_log_ticks(ax)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss, batch mean (own units, log scale)")
        _epoch_axis(ax, _steps_per_epoch(history))
        fig.suptitle(f"{condition}: convergence (mean over seeds, 95% t-band)")
        loss_legend(fig, losses)
    return fig


def plot_steps_to_target(history: pd.DataFrame, targets: Mapping[str, Sequence[float]]) -> Figure:
    """Steps until validation accuracy first reaches each target: one dot per seed, a bar at the median; a hollow
    triangle marks a seed that never reached it, drawn at its last evaluation (right-censored)."""
    losses = analysis.ordered(history["loss"])
    with style():
        fig, panels = _target_panels(history, targets, height=4.2)
        for ax, condition, mine in panels:
            present = analysis.ordered(mine["loss"])  # conditions may train different losses
            width = 0.8 / max(len(present), 1)
            for i, target in enumerate(targets[condition]):
                table = measures.steps_to_target(mine, target)
                for j, loss in enumerate(present):
                    rows = table[table["loss"] == loss]
                    x = i - 0.4 + width * (j + 0.5)
                    jitter = np.linspace(-width * 0.25, width * 0.25, len(rows)) if len(rows) > 1 else [0.0]
                    reached = rows["reached"].to_numpy()
                    xs = x + np.asarray(jitter)
                    ax.scatter(xs[reached], rows["step"].to_numpy()[reached], color=colour(loss), s=22, zorder=3)
                    ax.scatter(xs[~reached], rows["censored_at"].to_numpy()[~reached], facecolor="none",
                               edgecolor=colour(loss), marker="^", s=40, zorder=3)
                    median = analysis.censored_median(rows["step"])
                    if math.isfinite(median):
                        ax.hlines(median, x - width * 0.45, x + width * 0.45, color=colour(loss), lw=3)
            ax.set_xticks(range(len(targets[condition])),
                          [f"val acc ≥ {t:g}" for t in targets[condition]])
            ax.set_ylabel("optimizer steps to reach the target")
            ax.set_ylim(bottom=0)
            ax.set_title(condition)
        fig.suptitle("Steps to target validation accuracy (dot = seed, bar = median)")
        extra = [Line2D([], [], color="grey", marker="o", ls="", label="seed reached target"),
                 Line2D([], [], color="grey", marker="^", markerfacecolor="none", ls="",
                        label="never reached (at last evaluation)"),
                 Line2D([], [], color="grey", lw=3, label="median over seeds")]
        loss_legend(fig, losses, extra)
    return fig


def plot_lr_views(tune: pd.DataFrame, chosen: Mapping[str, Mapping[str, float]],
                  reference: str = analysis.REFERENCE) -> Figure:
    """Tuned-lr vs shared-lr view from the tuning runs: validation accuracy against steps for each loss at its own
    tuned learning rate (solid) and at the reference loss's tuned learning rate (dashed), mean over tuning seeds."""
    conditions = [c for c in dict.fromkeys(tune["condition"]) if reference in chosen.get(c, {})]
    losses = analysis.ordered(tune["loss"])
    with style():
        fig, axes, _ = condition_panels(len(conditions), 5.0, 4.2)
        if not conditions:
            empty_panel(axes[0], f"no tuned learning rate for {reference}")
        for ax, condition in zip(axes, conditions, strict=False):
            mine = measures.select(tune[tune["condition"] == condition], "val", "accuracy")
            lrs = chosen[condition]
            for loss in losses:
                for lr, ls in ((lrs.get(loss), "-"), (lrs[reference], "--")):
                    if lr is None or (ls == "--" and np.isclose(lr, lrs.get(loss, math.nan))):
                        continue
                    rows = mine[(mine["loss"] == loss) & np.isclose(mine["lr"].astype(float), lr)]
                    curve = rows.groupby("step")["value"].mean()
                    ax.plot(curve.index, curve.to_numpy(), color=colour(loss), ls=ls, lw=1.5)
            ax.set_xlabel("optimizer step (tuning run)")
            ax.set_ylabel("validation accuracy (fraction)")
            ax.set_title(f"{condition}: shared lr = {lrs[reference]:g}")
        fig.suptitle(f"Own tuned learning rate vs {reference}'s learning rate (tuning runs)")
        extra = [Line2D([], [], color="grey", ls="-", label="own tuned lr"),
                 Line2D([], [], color="grey", ls="--", label=f"{reference}'s tuned lr (shared)")]
        loss_legend(fig, losses, extra)
    return fig


# --------------------------------------------------------------------------------------------------------------
# Gradient magnitudes


GRADIENT_PANELS = {
    "grad_norm": "global ‖∇θ L‖ (all parameters)",
    "grad_norm_layer1": "layer 1 ‖∇W,b L‖",
    "grad_norm_layer2": "layer 2 ‖∇W,b L‖",
    "grad_norm_layer3": "layer 3 (output) ‖∇W,b L‖",
    "logit_grad_norm": "per-example ‖∂L/∂z‖, batch mean",
}


def plot_grad_norms(history: pd.DataFrame) -> Figure:
    """Global, per-layer and logit gradient norms against optimizer steps for one condition, and the per-example
    logit-gradient norm over the whole test set at each evaluation. Log scale, median over seeds with the band
    between the seeds' quartiles, so that one collapsing seed cannot drag the line to the floor."""
    condition = single(history)
    losses = analysis.ordered(history["loss"])
    train = history[history["split"] == "train"]
    colours = palette(losses)
    with style():
        fig, axes = subplots(2, 3, 13, 7.2)
        flat = axes.ravel()
        for ax, (metric, title) in zip(flat, GRADIENT_PANELS.items(), strict=False):
            rows = finite_rows(train[train["metric"] == metric])
            rows = rows[rows["value"] > 0]
            if rows.empty:
                empty_panel(ax, f"no {metric} measured")
            else:
                # Quartiles over seeds per step by one groupby: seaborn's estimator="median" with errorbar=("pi", 50)
                # drew the same lines and bands, computed group by group, in a fifth of the report stage's time.
                spread = rows.groupby(["loss", "step"], observed=True)["value"].quantile([0.25, 0.5, 0.75]).unstack()
                for loss in (loss for loss in losses if loss in spread.index):
                    mine = spread.loc[loss]
                    ax.plot(mine.index, mine[0.5], color=colours[loss])
                    ax.fill_between(mine.index, mine[0.25], mine[0.75], color=colours[loss], alpha=0.2, lw=0)
                ax.set_yscale("log")
                plain_log_ticks(ax)
            ax.set_title(title)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("L2 norm (log scale)")
        ax = flat[-1]
        population = measures.select(history, "test", "logit_grad_median")
        if population.empty:
            empty_panel(ax, "no test-set gradients measured")
        else:
            quartiles = {q: measures.select(history, "test", f"logit_grad_{q}").set_index([*measures.RUN, "step"])
                         ["value"] for q in ("q25", "q75")}
            for loss in losses:
                mine = population[population["loss"] == loss].set_index([*measures.RUN, "step"])["value"]
                if mine.empty:
                    continue
                by_step = pd.DataFrame({"median": mine, **{q: v.reindex(mine.index) for q, v in quartiles.items()}})
                by_step = by_step.groupby(level="step").median().clip(lower=FLOOR)
                ax.plot(by_step.index, by_step["median"], color=colour(loss), lw=1.6)
                ax.fill_between(by_step.index, by_step["q25"], by_step["q75"], color=colour(loss), alpha=0.2, lw=0)
            ax.set_yscale("log")
            plain_log_ticks(ax)
        ax.set_title("per-example ‖∂L/∂z‖, whole test set")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("median and quartiles (log scale)")
        fig.suptitle(f"{condition}: gradient magnitudes (median over seeds; band: seeds' quartiles, last panel: "
                     "examples' quartiles)")
        loss_legend(fig, losses)
    return fig
