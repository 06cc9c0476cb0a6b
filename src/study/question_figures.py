"""The figures that answer the study's questions across every condition: the headline metrics, the speed forest
plot, gradients on mistakes against their closed form, and the confident-wrong penalty's shares. Drawn with the kit
of ``study.figures``; statistics from ``study.analysis``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle

from study import analysis, comparisons, measures, quantities
from study.figures import (
    FLOOR,
    category_ticks,
    colour,
    dodge,
    empty_panel,
    fraction_limits,
    label,
    loss_legend,
    palette,
    plain_log_ticks,
    style,
    subplots,
    t_interval,
    t_mean,
)


def plot_headline(history: pd.DataFrame) -> Figure:
    """The quantity registry's headline-figure quantities (final test accuracy, test NLL and ECE) per condition and
    loss: mean over seeds with 95% t-intervals, one panel each."""
    panels = quantities.table("headline_figure")
    per_seed = analysis.headline(history, {}).per_seed  # each healthy model's last evaluation
    conditions = list(dict.fromkeys(history["condition"]))
    losses = analysis.ordered(history["loss"])
    with style():
        width = max(4.0, 0.65 * len(conditions) + 0.9)  # room for each condition's name, wrapped at underscores
        fig, axes = subplots(1, len(panels), width * len(panels), 3.8)
        for ax, (quantity, column) in zip(axes[0], panels, strict=True):
            rows = per_seed[per_seed["quantity"] == quantity.name]
            sns.pointplot(data=rows, x="condition", y="value", hue="loss", order=conditions, hue_order=losses,
                          palette=palette(losses), estimator=t_mean, errorbar=t_interval,
                          dodge=dodge(len(losses)), linestyle="none", markersize=5, linewidth=1.5, capsize=0.1,
                          legend=False, ax=ax)
            category_ticks(ax, conditions, wrap=True)
            if quantity.unit == "nats":  # a collapsed, confidently wrong model reaches thousands of nats
                ax.set_yscale("log")  # after the means: pointplot's log_scale would average the logarithms
                plain_log_ticks(ax)
            else:
                fraction_limits(ax)
            ax.set_ylabel(column.header)
            ax.set_title(column.header.split(" (")[0])
        fig.suptitle("Final test metrics per condition (mean over seeds, 95% t-interval)")
        loss_legend(fig, losses)
    return fig


# --------------------------------------------------------------------------------------------------------------
# Answers: one figure per question, across all conditions


def _marked(ax, x, y, markers: Sequence[str], colour_: str, filled: Sequence[bool], size: float = 40, **kwargs):
    """One scatter (a single artist) whose points each have their own marker, filled in ``colour_`` or hollow."""
    collection = ax.scatter(x, y, s=size, color=colour_, **kwargs)
    styles = [MarkerStyle(m) for m in markers]
    collection.set_paths([s.get_path().transformed(s.get_transform()) for s in styles])
    collection.set_facecolors([colour_ if f else "white" for f in filled])
    collection.set_edgecolors(colour_)
    collection.set_linewidths(1.3)
    return collection


def _ratio_ticks(low: float, high: float) -> list[float]:
    """Plain tick values for a log ratio axis over [low, high]: 1, 2, 5 per decade, finer on a short range."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    ticks: list[float] = []
    for subs in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8)):
        ticks = [float(f"{m * 10.0 ** d:.6g}") for d in decades for m in subs if low <= m * 10.0 ** d <= high]
        if len(ticks) > 9:
            return [t for t in ticks if math.isclose(math.log10(t), round(math.log10(t)))]
        if len(ticks) >= 3:
            break
    return ticks


# Verdict -> (marker, filled): filled markers are established (a difference, or an equivalence within the
# margin), hollow ones are not; IDENTICAL (the same value in every seed) a filled square.
VERDICT_MARKERS = {
    analysis.DIFFERENT: ("o", True),
    analysis.EQUIVALENT: ("D", True),
    analysis.NOT_ESTABLISHED: ("o", False),
    analysis.IDENTICAL: ("s", True),
}
OTHER_VERDICT = ("^", False)


def plot_speed_forest(ratios: pd.DataFrame, reference: str = analysis.REFERENCE) -> Figure:
    """Speed across conditions: each loss's paired ratio of steps to the condition's first validation-accuracy
    target against ``reference`` (below 1: faster), with its 95% interval, one row per (loss, condition), grouped by
    loss in the registry's order; the marker says the verdict (``VERDICT_MARKERS``). ``ratios`` has one row per
    (condition, loss): ``condition, loss, ratio, ci_low, ci_high, n, verdict`` (``ratio`` the geometric mean over
    seeds of steps / reference's steps, ``ci_low``/``ci_high`` its interval, ``n`` the seeds paired, ``verdict``
    a verdict word); a NaN ratio (no pairs) leaves its row empty. The right axis prints the ratio and interval."""
    ratios = ratios[ratios["loss"] != reference]
    losses = analysis.ordered(ratios["loss"])
    conditions = list(dict.fromkeys(ratios["condition"]))
    rows: list[tuple[str, str, object]] = []  # (kind, loss, row): a loss's header, then its conditions
    for loss in losses:
        rows.append(("header", loss, None))
        mine = ratios[ratios["loss"] == loss].set_index("condition")
        rows += [("row", loss, mine.loc[c]) for c in conditions if c in mine.index]
    values = ratios[["ratio", "ci_low", "ci_high"]].to_numpy(dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    low, high = min([1.0, *values]) / 1.15, max([1.0, *values]) * 1.15
    with style():
        fig, axes = subplots(1, 1, 8.5, 1.4 + 0.24 * len(rows))
        ax = axes[0, 0]
        for loss in losses:
            ys = [y for y, (kind, name, _) in enumerate(rows) if kind == "row" and name == loss]
            table = pd.DataFrame([rows[y][2] for y in ys]).assign(y=ys)
            table = table[np.isfinite(table["ratio"].to_numpy(dtype=float))]
            bars = table[np.isfinite(table[["ci_low", "ci_high"]].to_numpy(dtype=float)).all(axis=1)]
            ax.hlines(bars["y"], bars["ci_low"].clip(lower=low), bars["ci_high"].clip(upper=high), color=colour(loss),
                      lw=2)
            marks = [VERDICT_MARKERS.get(v, OTHER_VERDICT) for v in table["verdict"]]
            _marked(ax, table["ratio"], table["y"], [m for m, _ in marks], colour(loss), [f for _, f in marks],
                    size=45, zorder=3)
        ax.axvline(1.0, color="black", lw=1)
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        ticks = _ratio_ticks(low, high)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(mticker.NullFormatter())
        ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top

        def row_label(kind, loss, row) -> str:
            return label(loss) if kind == "header" else f"{row.name}  (n={int(row['n'])})"

        ax.set_yticks(range(len(rows)), [row_label(*r) for r in rows])
        for tick, (kind, loss, _) in zip(ax.get_yticklabels(), rows, strict=True):
            if kind == "header":
                tick.set_color(colour(loss))
                tick.set_fontweight("bold")
        ax.grid(False, axis="y")
        right = ax.secondary_yaxis("right")
        right.set_yticks(range(len(rows)), [
            "" if kind == "header" else "no pairs" if not math.isfinite(row["ratio"]) else
            f"{row['ratio']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]" if math.isfinite(row["ci_low"]) else
            f"{row['ratio']:.2f}" for kind, _, row in rows])
        right.tick_params(length=0)
        ax.set_xlabel(f"steps to the first target ÷ {reference}'s steps, paired by seed (log; < 1 = faster)")
        fig.suptitle(f"Speed: steps to the first validation-accuracy target against {reference}\n"
                     "(geometric mean ratio over seeds, 95% interval)")
        present = [v for v in [*VERDICT_MARKERS, *ratios["verdict"]] if v in set(ratios["verdict"])]
        extra = []
        for verdict in dict.fromkeys(present):
            marker, filled = VERDICT_MARKERS.get(verdict, OTHER_VERDICT)
            extra.append(Line2D([], [], color="grey", marker=marker, mfc="grey" if filled else "white", ls="",
                                ms=7, label=str(verdict)))
        loss_legend(fig, losses, extra)
    return fig


ANSWER_BIN_EDGES = np.logspace(-8, 0, 9)  # p_true of wrong examples: one bin per decade


def plot_gradient_answer(examples: pd.DataFrame, penalty: pd.DataFrame | None,
                         threshold: float = analysis.SATURATION, min_count: int = 5) -> Figure:
    """Gradients across conditions: the per-example logit-gradient norm ‖∂L/∂z‖ of the WRONG test examples at each
    model's last evaluation, pooled over conditions and seeds, in one bin per decade of the probability of the
    true class p_true (values below 1e-8 in the first): the median (point) and quartiles (bar) per loss, bins with
    fewer than ``min_count`` examples left out; beside them the closed form (dashed, same colour) of the probe
    stage's one-wrong-class sweep. ``examples``: ``condition, loss, lr, seed, step, split, label, predicted,
    p_true, logit_grad_norm`` (examples.parquet); ``penalty``: ``loss, p_true, logit_grad_norm`` (penalty.csv)."""
    wrong = analysis.wrong_examples(examples)
    wrong = wrong[np.isfinite(wrong[["p_true", "logit_grad_norm"]].to_numpy(dtype=float)).all(axis=1)]
    losses = analysis.ordered(examples["loss"])
    centres = np.sqrt(ANSWER_BIN_EDGES[:-1] * ANSWER_BIN_EDGES[1:])
    with style():
        fig, axes = subplots(1, 1, 9.0, 5.2)
        ax = axes[0, 0]
        for j, loss in enumerate(losses):
            mine = wrong[wrong["loss"] == loss]
            p_true = np.clip(mine["p_true"].to_numpy(dtype=float), ANSWER_BIN_EDGES[0], 1)
            index = np.clip(np.digitize(p_true, ANSWER_BIN_EDGES) - 1, 0, len(centres) - 1)
            grad = np.clip(mine["logit_grad_norm"].to_numpy(dtype=float), FLOOR, None)
            spread = (pd.Series(grad).groupby(index).quantile([0.25, 0.5, 0.75]).unstack()
                      if len(grad) else pd.DataFrame(columns=[0.25, 0.5, 0.75]))
            counts = pd.Series(index).value_counts()
            spread = spread[counts.reindex(spread.index).to_numpy() >= min_count]
            # Dodged within the decade so that the losses' bars do not cover each other.
            x = centres[spread.index.to_numpy(dtype=int)] * 10 ** (0.07 * (j - (len(losses) - 1) / 2))
            ax.vlines(x, spread[0.25], spread[0.75], color=colour(loss), lw=1.6)
            ax.scatter(x, spread[0.5], color=colour(loss), s=30, zorder=3)
            if penalty is not None and not penalty.empty:
                closed = penalty[penalty["loss"] == loss].sort_values("p_true")
                ax.plot(closed["p_true"], np.clip(closed["logit_grad_norm"], FLOOR, None), color=colour(loss),
                        ls="--", lw=1.2)
        ax.axhline(threshold, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain_log_ticks(ax, "x", minor_thresholds=(1, 0.3))
        plain_log_ticks(ax)
        ax.set_xlim(ANSWER_BIN_EDGES[0] / 2, 1)
        ax.set_xlabel("probability of the true class p_true of a wrong test example (log; one bin per decade)")
        ax.set_ylabel(f"per-example ‖∂L/∂z‖ (log; floor {FLOOR:g})")
        fig.suptitle("Gradients on mistakes: logit-gradient norm of wrong test examples against p_true\n"
                     "(all conditions and seeds pooled, last evaluation)")
        extra = [Line2D([], [], color="grey", marker="o", ls="", label="measured median"),
                 Line2D([], [], color="grey", lw=1.6, label="measured quartiles"),
                 Line2D([], [], color="grey", ls="--", label="closed form (one wrong class)"),
                 Line2D([], [], color="grey", ls=":", label=f"vanished below {threshold:g}")]
        loss_legend(fig, losses, extra)
    return fig


CONDITION_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def penalty_shares(history: pd.DataFrame) -> pd.DataFrame:
    """The shares of ``plot_penalty_answer`` per model (the quantity registry's "penalty_figure"): the corrections
    pooled over evaluations (``comparisons.corrections``), the others read at the model's last evaluation.
    Long: ``condition, loss, lr, seed, quantity, value``."""
    shown = [quantity for quantity, _ in quantities.table("penalty_figure")]
    corrected = comparisons.corrections(history)
    corrected = corrected[corrected["quantity"].isin([q.name for q in shown])]
    parts = [corrected[[*measures.RUN, "quantity", "value"]]]
    for quantity in (q for q in shown if q.reading == "last"):
        rows = measures.select(history, *quantity.source)
        rows = rows[rows["step"] == rows.groupby(measures.RUN)["step"].transform("max")]
        parts.append(rows[measures.RUN].assign(quantity=quantity.name, value=rows["value"].to_numpy(dtype=float)))
    return pd.concat(parts, ignore_index=True)


def plot_penalty_answer(history: pd.DataFrame) -> Figure:
    """The confident-wrong penalty across conditions, the quantity registry's "penalty_figure" shares per loss (mean
    over seeds, one marker per condition): of the watched training examples confidently wrong at one evaluation, the
    share classified right at the next (pooled over evaluations as ``comparisons.corrections``); of the flipped
    training labels, the share predicted as the flipped label at the last evaluation (label-noise conditions only);
    of each loss's own test loss (not the NLL), the share carried by wrong predictions with confidence >= 0.9 at the
    last evaluation. ``history``: the long history table of every condition."""
    shares = penalty_shares(history)
    means = shares.groupby(["quantity", "condition", "loss"], sort=False)["value"].mean().reset_index()
    losses = analysis.ordered(history["loss"])
    conditions = list(dict.fromkeys(history["condition"]))
    markers = {c: CONDITION_MARKERS[i % len(CONDITION_MARKERS)] for i, c in enumerate(conditions)}
    # Each condition a little above or below the loss's line, so that equal shares do not hide each other.
    offsets = {c: 0.5 * (i / max(len(conditions) - 1, 1) - 0.5) for i, c in enumerate(conditions)}
    with style():
        panels = quantities.table("penalty_figure")
        fig, axes = subplots(1, len(panels), 12.5 * len(panels) / 3, 1.6 + 0.42 * max(len(losses), 3), sharey=True)
        for ax, (quantity, column) in zip(axes[0], panels, strict=True):
            rows = means[(means["quantity"] == quantity.name) & np.isfinite(means["value"].to_numpy(dtype=float))]
            for y, loss in enumerate(losses):
                mine = rows[rows["loss"] == loss]
                if not mine.empty:
                    _marked(ax, mine["value"], y + mine["condition"].map(offsets).to_numpy(dtype=float),
                            [markers[c] for c in mine["condition"]],
                            colour(loss), [True] * len(mine), size=45, alpha=0.85, zorder=3)
            if rows.empty:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlim(-0.03, 1.03)
            ax.xaxis.set_major_formatter(mticker.PercentFormatter(1.0, decimals=0))
            ax.set_title(column.header)
            ax.set_xlabel("share (mean over seeds)")
        ax = axes[0, 0]
        ax.set_yticks(range(len(losses)), losses)
        ax.set_ylim(len(losses) - 0.5, -0.5)
        for tick, loss in zip(ax.get_yticklabels(), losses, strict=True):
            tick.set_color(colour(loss))
        fig.suptitle("The confident-wrong penalty: what it corrects, what it memorises, how much loss it carries")
        extra = [Line2D([], [], color="grey", marker=markers[c], ls="", ms=7, label=c) for c in conditions]
        loss_legend(fig, losses, extra)
    return fig


def plot_features(per_seed: pd.DataFrame) -> Figure:
    """What each loss leaves in the penultimate layer. Left: class separation R² on the test set at the last
    evaluation (Kornblith et al. 2021), mean over seeds with its 95% t-interval, one row per loss and one marker per
    condition. Right: per model of each condition with held-out classes, a linear probe's accuracy on the classes
    the network never trained on against its class separation (Kornblith et al. found better-separated features
    transfer worse). ``per_seed``: ``answers.penalty_per_seed`` (``RUN, quantity, value``)."""
    separation = per_seed[per_seed["quantity"] == comparisons.SEPARATION]
    separation = separation[np.isfinite(separation["value"].to_numpy(dtype=float))]
    losses = analysis.ordered(separation["loss"])
    conditions = list(dict.fromkeys(separation["condition"]))
    markers = {c: CONDITION_MARKERS[i % len(CONDITION_MARKERS)] for i, c in enumerate(conditions)}
    offsets = {c: 0.5 * (i / max(len(conditions) - 1, 1) - 0.5) for i, c in enumerate(conditions)}
    wide = per_seed.pivot_table(index=["condition", "loss", "seed"], columns="quantity", values="value",
                                aggfunc="first")
    transfer = (wide[[comparisons.SEPARATION, comparisons.TRANSFER]].dropna().reset_index()
                if {comparisons.SEPARATION, comparisons.TRANSFER} <= set(wide.columns) else pd.DataFrame())
    with style():
        fig, axes = subplots(1, 2, 12.5, 1.8 + 0.42 * max(len(losses), 3), width_ratios=(1.3, 1))
        ax = axes[0, 0]
        for y, loss in enumerate(losses):
            for condition, rows in separation[separation["loss"] == loss].groupby("condition", sort=False):
                low, high = t_interval(rows["value"])
                at = y + offsets[condition]
                if math.isfinite(low):
                    ax.plot([low, high], [at, at], color=colour(loss), lw=1.4, alpha=0.8)
                _marked(ax, [t_mean(rows["value"])], [at], [markers[condition]], colour(loss), [True], size=45,
                        zorder=3)
        ax.set_yticks(range(len(losses)), losses)
        ax.set_ylim(len(losses) - 0.5, -0.5)
        for tick, loss in zip(ax.get_yticklabels(), losses, strict=True):
            tick.set_color(colour(loss))
        ax.set_xlabel("class separation R² (test set, last evaluation; mean, 95% interval)")
        ax.set_title("how far apart the classes lie in the penultimate layer")
        ax = axes[0, 1]
        if transfer.empty:
            empty_panel(ax, "no condition with held-out classes\nmeasured a transfer probe")
        else:
            for condition, rows in transfer.groupby("condition", sort=False):
                for loss, mine in rows.groupby("loss", sort=False):
                    _marked(ax, mine[comparisons.SEPARATION], mine[comparisons.TRANSFER],
                            [markers.get(condition, "o")] * len(mine), colour(loss), [True] * len(mine), size=40,
                            alpha=0.85, zorder=3)
            ax.yaxis.set_major_formatter(mticker.PercentFormatter(1.0, decimals=1))
            ax.set_xlabel("class separation R² (test set)")
            ax.set_ylabel("linear-probe accuracy on the\nclasses never trained on")
            ax.set_title(f"transfer ({', '.join(dict.fromkeys(transfer['condition']))}): one dot per model")
        fig.suptitle("What each loss leaves in the features: class separation and transfer")
        extra = [Line2D([], [], color="grey", marker=markers[c], ls="", ms=7, label=c) for c in conditions]
        loss_legend(fig, losses, extra)
    return fig
