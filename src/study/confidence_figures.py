"""The figures of confidence and its costs: the logit gradient against the probability of the true class, the
closed-form penalty, how wrong the mistakes are, reliability diagrams, label noise and held-out classes. Drawn with
the kit of ``study.figures``; statistics from ``study.analysis``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from study import analysis, comparisons, measures, quantities
from study.figures import (
    FLOOR,
    MAX_POINTS,
    band_lines,
    category_ticks,
    colour,
    condition_panels,
    dodge,
    empty_panel,
    finite_rows,
    fraction_limits,
    label,
    loss_legend,
    loss_panels,
    palette,
    plain_log_ticks,
    single,
    style,
    subplots,
    t_interval,
    t_mean,
)


def plot_logit_grad(examples: pd.DataFrame, penalty: pd.DataFrame | None,
                    threshold: float = analysis.SATURATION) -> Figure:
    """Per-example logit-gradient norm against the probability of the true class on the probe examples (every
    evaluation and seed) for one condition, one panel per loss: dots correct, crosses wrong, the solid line the
    binned median, the dashed black line the closed form of the probe stage (one wrong class, the rest at 0)."""
    condition = single(examples)
    probe = examples[examples["split"] == "probe"]
    probe = probe[np.isfinite(probe["p_true"].to_numpy(dtype=float))
                  & np.isfinite(probe["logit_grad_norm"].to_numpy(dtype=float))]
    losses = analysis.ordered(examples["loss"])
    edges = np.logspace(-8, 0, 33)
    with style():
        fig, panels, first = loss_panels(len(losses), 3.6, 4.0, sharex=True, sharey=True)
        for ax, loss in zip(panels, losses, strict=True):
            rows = probe[probe["loss"] == loss]
            x = np.clip(rows["p_true"].to_numpy(dtype=float), FLOOR, 1)
            y = np.clip(rows["logit_grad_norm"].to_numpy(dtype=float), FLOOR, None)
            wrong = (rows["predicted"] != rows["label"]).to_numpy()
            if len(x) > MAX_POINTS:
                keep = np.random.default_rng(0).choice(len(x), MAX_POINTS, replace=False)
                x, y, wrong = x[keep], y[keep], wrong[keep]
            ax.scatter(x[~wrong], y[~wrong], s=6, alpha=0.25, color=colour(loss), marker="o", lw=0, rasterized=True)
            ax.scatter(x[wrong], y[wrong], s=12, alpha=0.5, color=colour(loss), marker="x", lw=0.8, rasterized=True)
            med = analysis.binned_median(rows.assign(p_true=np.clip(rows["p_true"], FLOOR, 1)), "p_true",
                                         "logit_grad_norm", edges)
            med = med[med["n"] >= 3]
            ax.plot(med["p_true"], np.clip(med["logit_grad_norm"], FLOOR, None), color=colour(loss), lw=2)
            if penalty is not None and not penalty.empty:
                closed = penalty[penalty["loss"] == loss].sort_values("p_true")
                ax.plot(closed["p_true"], np.clip(closed["logit_grad_norm"], FLOOR, None), color="black", ls="--",
                        lw=1.3)
            ax.axhline(threshold, color="grey", ls=":", lw=1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(label(loss), color=colour(loss))
            ax.set_xlabel("probability of the true class p_true (log)")
        for ax in first:
            ax.set_ylabel(f"‖∂L/∂z‖ per example (log; floor {FLOOR:g})")
        fig.suptitle(f"{condition}: logit gradient vs p_true on the probe examples")
        extra = [Line2D([], [], color="grey", marker="o", ls="", label="correct"),
                 Line2D([], [], color="grey", marker="x", ls="", label="wrong"),
                 Line2D([], [], color="grey", lw=2, label="binned median"),
                 Line2D([], [], color="black", ls="--", label="closed form (one wrong class)"),
                 Line2D([], [], color="grey", ls=":", label=f"saturation threshold {threshold:g}")]
        loss_legend(fig, losses, extra)
    return fig




def plot_penalty(penalty: pd.DataFrame) -> Figure:
    """Closed-form loss and logit-gradient norm of every loss against the wrong-class logit margin a (one wrong
    class at a, the others and the true class at 0), with the probability of the true class on the top axis."""
    losses = analysis.ordered(penalty["loss"])
    k = analysis.classes_from_penalty(penalty)
    with style():
        fig, axes = subplots(1, 2, 12, 4.4, sharex=True)
        for loss in losses:
            rows = penalty[penalty["loss"] == loss].sort_values("margin")
            axes[0, 0].plot(rows["margin"], np.clip(rows["loss_value"], FLOOR, None), color=colour(loss), lw=2)
            axes[0, 1].plot(rows["margin"], np.clip(rows["logit_grad_norm"], FLOOR, None), color=colour(loss), lw=2)
        for ax in axes[0]:
            ax.set_xlabel("wrong-class logit margin a (right = confidently wrong)")
            ax.axvline(0, color="grey", lw=0.8)
            if k:
                top = ax.secondary_xaxis("top", functions=(
                    lambda a: 1 / (k - 1 + np.exp(np.clip(a, -50, 50))),
                    lambda p: np.log(np.clip(1 / np.clip(p, 1e-300, None) - (k - 1), 1e-300, None))))
                lo, hi = penalty["p_true"].min(), penalty["p_true"].max()
                ticks = [t for t in (0.1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6) if lo <= t <= hi]
                top.set_xticks(ticks, [f"{t:g}" for t in ticks])
                top.set_xlabel("probability of the true class p_true")
        # Log y on both: logit_mse's parabola (up to 145) would flatten the other losses (1 to 18) on a linear axis.
        axes[0, 0].set_ylabel(f"loss on the example (own units, log; floor {FLOOR:g})")
        for ax in axes[0]:
            ax.set_yscale("log")
            plain_log_ticks(ax)
        axes[0, 1].set_ylabel("‖∂L/∂z‖ (log scale)")
        fig.suptitle("Closed form: penalty (left) and logit gradient (right) of a confidently wrong prediction"
                     + (f", K = {k}" if k else ""))
        loss_legend(fig, losses)
    return fig


def plot_wrong_confidence(examples: pd.DataFrame, confident: float = analysis.CONFIDENT) -> Figure:
    """ECDF of the probability of the true class among misclassified test examples (last evaluation, all seeds),
    one panel per condition. Left of the dotted line, the wrong prediction is confident."""
    wrong = analysis.wrong_examples(examples)
    conditions = list(dict.fromkeys(examples["condition"]))
    losses = analysis.ordered(examples["loss"])
    with style():
        fig, axes, first = condition_panels(len(conditions), 4.0, 3.9, sharey=True)
        for ax, condition in zip(axes, conditions, strict=False):
            rows = wrong[wrong["condition"] == condition]
            rows = rows.assign(p_true=np.clip(rows["p_true"].astype(float), FLOOR, 1))
            rows = finite_rows(rows, "p_true")
            if rows.empty:
                empty_panel(ax, "no misclassified test examples")
            else:
                present = [loss for loss in losses if (rows["loss"] == loss).any()]
                sns.ecdfplot(data=rows, x="p_true", hue="loss", hue_order=present,
                             palette=palette(present), log_scale=(True, False), ax=ax,
                             legend=False)
                ax.axvline(1 - confident, color="black", ls=":", lw=1)
                plain_log_ticks(ax, "x", minor_thresholds=(1, 0.3))
                # At most five labelled decades: on a panel four inches wide '1e-08' is wider than a decade.
                ax.xaxis.set_major_locator(mticker.LogLocator(numticks=5))
            ax.set_xlabel("p_true of misclassified examples (log)")
            ax.set_title(condition)
        for ax in first:
            ax.set_ylabel("cumulative share of wrong examples")
        fig.suptitle("How wrong are the mistakes? p_true among misclassified test examples")
        extra = [Line2D([], [], color="black", ls=":", label=f"p_true = {1 - confident:g}: left of it, confidence "
                                                             f"≥ {confident:g}")]
        loss_legend(fig, losses, extra)
    return fig


def plot_reliability(examples: pd.DataFrame, bins: int = 15) -> Figure:
    """Reliability diagrams for one condition: accuracy against confidence in equal-width bins of the last test
    evaluation, pooled over seeds; one panel per loss with its pooled ECE."""
    condition = single(examples)
    table = analysis.calibration_bins(examples, bins)
    losses = analysis.ordered(examples["loss"])
    with style():
        fig, panels, first = loss_panels(len(losses), 3.4, 3.8, sharey=True)
        for ax, loss in zip(panels, losses, strict=True):
            rows = table[table["loss"] == loss]
            ax.bar(rows["lower"], rows["accuracy"], width=1 / bins, align="edge", color=colour(loss), alpha=0.75,
                   edgecolor="white")
            ax.scatter(rows["confidence"], rows["accuracy"], color="black", s=10, zorder=3)
            ax.plot([0, 1], [0, 1], color="black", ls="--", lw=1)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"{label(loss)}\nECE (pooled) = {analysis.ece_from_bins(rows):.3f}", color=colour(loss),
                         fontsize=9)
            ax.set_xlabel("confidence (max probability)")
        for ax in first:
            ax.set_ylabel("accuracy in bin (fraction)")
        fig.suptitle(f"{condition}: reliability diagrams ({bins} bins, test split, seeds pooled)")
        extra = [Line2D([], [], color="black", ls="--", label="perfect calibration"),
                 Line2D([], [], color="black", marker="o", ls="", ms=4, label="bin at its mean confidence")]
        loss_legend(fig, losses, extra)
    return fig


def _loss_points(ax, per_seed: pd.DataFrame, losses: Sequence[str], markers: Mapping[str, str],
                 filled: Mapping[str, str], *, seeds: bool = False, wrap: bool = False) -> None:
    """One category per loss with its quantities side by side (``markers``: quantity -> marker, in order): the
    mean over seeds with its 95% t-interval (seaborn's pointplot), filled for the loss's ``filled[loss]`` quantity
    and hollow for the others; ``seeds`` adds a dot per seed, ``wrap`` breaks the losses' names at underscores.
    ``per_seed`` is long (``loss, seed, quantity, value``). One pointplot per loss, so that each loss keeps its
    colour while its quantities are dodged."""
    quantities = list(markers)
    for loss in losses:
        rows = per_seed[(per_seed["loss"] == loss) & per_seed["quantity"].isin(quantities)]
        if rows.empty:
            continue
        common = {"data": rows, "x": "loss", "y": "value", "hue": "quantity", "order": list(losses),
                  "hue_order": quantities, "palette": dict.fromkeys(quantities, colour(loss)), "legend": False,
                  "ax": ax}
        if seeds:
            sns.stripplot(**common, dodge=True, jitter=False, size=3.5, alpha=0.5, zorder=2)
        drawn = len(ax.lines)
        sns.pointplot(**common, estimator=t_mean, errorbar=t_interval, dodge=dodge(len(quantities)),
                      markers=list(markers.values()), linestyle="none", markersize=6, linewidth=1.5, capsize=0.12,
                      zorder=3)
        for line, quantity in zip([line for line in ax.lines[drawn:] if line.get_marker() != "None"], quantities):
            if quantity != filled.get(loss):  # the means' lines, in hue order (error bars have no marker)
                line.set_markerfacecolor("white")
    category_ticks(ax, losses, wrap=wrap)


def plot_label_noise(history: pd.DataFrame) -> Figure:
    """Label noise, one condition: validation-selected vs final test accuracy per loss (mean, 95% t-interval), and
    over steps the quantity registry's "label_noise_figure" shares of flipped training examples (predicted as their
    noisy label, memorised, or as their true label, recovered)."""
    condition = single(history)
    losses = analysis.ordered(history["loss"])
    per_seed = comparisons.label_noise(history)
    shares = quantities.table("label_noise_figure")
    with style():
        fig, axes = subplots(1, 1 + len(shares), 7 + 3.5 * len(shares), 4.2,
                             width_ratios=[max(1.0, len(losses) / 5), *[1] * len(shares)])  # room for the names
        _loss_points(axes[0, 0], per_seed, losses, {comparisons.SELECTED: "o", comparisons.FINAL_ACCURACY: "s"},
                     dict.fromkeys(losses, comparisons.SELECTED), wrap=True)
        fraction_limits(axes[0, 0])
        axes[0, 0].set_ylabel("test accuracy (fraction)")
        axes[0, 0].set_title("val-selected (filled) vs final (hollow) test acc")
        for ax, (quantity, column) in zip(axes[0, 1:], shares, strict=True):
            rows = measures.select(history, *quantity.source)
            if rows.empty:
                empty_panel(ax, f"no {quantity.source[1]} measured")
            else:
                band_lines(ax, rows, "step")
            ax.set_ylim(0, 1)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("share of flipped training examples")
            ax.set_title(column.header)
        fig.suptitle(f"{condition}: label noise (mean over seeds, 95% t-interval)")
        extra = [Line2D([], [], color="grey", marker="o", ls="", label="at the best validation accuracy"),
                 Line2D([], [], color="grey", marker="s", mfc="white", ls="", label="final")]
        loss_legend(fig, losses, extra)
    return fig


# The held-out figure's two panels, {quantity: its marker}: the AUROCs by max softmax and by max sigmoid, and the
# 'none' shares on held-out and on trained classes.
HELDOUT_PANELS = (
    {comparisons.SOFTMAX_SCORE: "o", comparisons.SIGMOID_SCORE: "s"},
    {comparisons.NONE_HELDOUT: "o", comparisons.NONE_TRAINED: "s"},
)


def plot_heldout(history: pd.DataFrame) -> Figure:
    """"None of the above", one condition: per loss, the AUROC of held-out against trained-class test images by
    max softmax and by max sigmoid (each loss's own score filled), and the share of images every sigmoid puts below
    0.5 ("none"), on held-out and on trained classes; one dot per seed, a bar at the mean with its 95% t-interval."""
    condition = single(history)
    per_seed = comparisons.heldout_per_seed(history)
    losses = analysis.ordered(per_seed["loss"])
    with style():
        width = 0.95 * len(losses) + 1  # each loss's name its room
        # Side by side while that stays readable at DISPLAY_WIDTH; one above the other beyond.
        fig, grid = (subplots(1, 2, max(12.0, 2 * width), 4.4) if 2 * width <= 13
                     else subplots(2, 1, max(7.5, width), 8.4))
        axes = grid.reshape(1, 2)
        # left: filled = the loss's own score; right: filled = held-out classes
        own = {loss: comparisons.NATURAL_SCORE.get(loss, comparisons.SOFTMAX_SCORE) for loss in losses}
        for ax, panel, filled in zip(axes[0], HELDOUT_PANELS, (own, dict.fromkeys(losses, comparisons.NONE_HELDOUT)),
                                     strict=True):
            _loss_points(ax, per_seed, losses, panel, filled, seeds=True)
        axes[0, 0].axhline(0.5, color="grey", lw=1, ls=":")
        axes[0, 0].set_ylim(0.4, 1.0)
        axes[0, 0].set_ylabel("AUROC, held-out vs trained classes")
        axes[0, 0].set_title("separating unseen classes (0.5 = chance)")
        axes[0, 1].set_ylim(0, 1)
        axes[0, 1].set_ylabel("share of test images")
        axes[0, 1].set_title("'none': every sigmoid below 0.5")
        fig.suptitle(f"{condition}: none of the above (dot = seed, marker = mean, 95% t-interval)")
        extra = [Line2D([], [], color="grey", marker="o", ls="", label="left: max softmax; right: held-out"),
                 Line2D([], [], color="grey", marker="s", mfc="white", ls="",
                        label="left: max sigmoid; right: trained"),
                 Line2D([], [], color="grey", marker="s", ls="", label="left, filled: the loss's own score")]
        loss_legend(fig, losses, extra)
    return fig
