"""The report's figures: one function per figure, long DataFrames in, a matplotlib Figure out.

The only module that imports seaborn or matplotlib. It reads no files and imports nothing from training; the
statistics come from ``study.analysis``. Every figure colours a loss with ``COLOURS`` and names it with ``LABELS``,
the loss registry's (``study.losses``); which losses a figure draws comes from its data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")  # files only, never a window; set before pyplot is imported

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle
from matplotlib.text import Text

from study import analysis
from study.losses import COLOURS, LABELS

# Colours of losses in the data but not in the registry (results of a loss since removed): seaborn "colorblind"
# entries no registered loss uses, chosen from the name (stable).
_SPARE = ("#949494", "#ece133", "#000000")
FLOOR = 1e-8  # log axes: values at or below 0 are drawn at this floor (and said so in the axis label)
MAX_POINTS = 4000  # scatter points drawn per panel (a fixed random subset; statistics use every point)
DPI = 100


DISPLAY_WIDTH = 1000  # CSS px: the widest the HTML report shows a figure; a wider PNG is scaled down to it
MIN_TEXT_PX = 8.0  # the smallest text a figure may show at DISPLAY_WIDTH


def _shown(artist) -> Iterator:
    """``artist`` and its descendants that would be drawn: an invisible artist hides its whole subtree."""
    if not artist.get_visible():
        return
    yield artist
    for child in artist.get_children():
        yield from _shown(child)


def min_text_px(fig: Figure, display_width: float = DISPLAY_WIDTH) -> float:
    """The smallest text of ``fig`` in CSS px as the page shows it: font size (pt) * DPI / 72, scaled by
    min(1, display_width / the PNG's width in px), over every visible, non-empty text artist (titles, labels, tick
    labels, legend entries, annotations). The PNG is written by ``save`` at ``DPI``; inf when there is no text."""
    fig.draw_without_rendering()  # tick labels get their text, and constrained layout its sizes, at draw time
    scale = min(1.0, display_width / (fig.get_figwidth() * DPI))
    sizes = [t.get_fontsize() for t in _shown(fig) if isinstance(t, Text) and t.get_text().strip()]
    return min(sizes) * DPI / 72 * scale if sizes else math.inf


def save(fig: Figure, path) -> None:
    """Write ``fig`` as a PNG and release it (pyplot keeps every open figure alive until closed)."""
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def colour(loss: str) -> str:
    """The loss's fixed colour (its registry entry's); a loss outside the registry gets a spare one."""
    return COLOURS.get(loss) or _SPARE[sum(map(ord, loss)) % len(_SPARE)]


def label(loss: str) -> str:
    return LABELS.get(loss, loss)


@contextmanager
def _style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        yield


def _figure(nrows: int, ncols: int, width: float, height: float, **kwargs) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", squeeze=False, **kwargs)
    return fig, axes


def _loss_legend(fig: Figure, losses: Sequence[str], extra: Sequence[Line2D] = ()) -> None:
    """One legend below the panels: rows with one entry per loss (its fixed colour and label), then rows
    explaining markers and line styles; as many entries per row as the figure's width allows."""
    handles = [Line2D([], [], color=colour(loss), lw=2.5, marker="o", label=label(loss)) for loss in losses]
    per_row = max(2, min(max(len(handles), len(extra)), int(fig.get_figwidth() // 2.9)))
    rows = [handles[i:i + per_row] for i in range(0, len(handles), per_row)]
    rows += [list(extra[i:i + per_row]) for i in range(0, len(extra), per_row)]
    blank = Line2D([], [], alpha=0, label=" ")
    padded = [r + [blank] * (per_row - len(r)) for r in rows]
    ordered = [row[i] for i in range(per_row) for row in padded]  # matplotlib fills legends column by column
    fig.legend(handles=ordered, labels=[h.get_label() for h in ordered], loc="outside lower center", ncol=per_row,
               frameon=False)


PANELS_PER_ROW = 4  # one panel per loss: rows of at most this many
CONDITIONS_PER_ROW = 3  # one panel per condition: rows of at most this many (six conditions in one row were 25
#                         inches wide: at DISPLAY_WIDTH their text shrank to 5 px)


def _shape(count: int, per_row: int) -> tuple[int, int]:
    """(rows, columns) for ``count`` panels, at most ``per_row`` to a row, rows as evenly filled as they can be
    (four panels make 2 x 2, not 3 + 1)."""
    nrows = max(1, math.ceil(count / per_row))
    return nrows, max(1, math.ceil(count / nrows))


def _panels(count: int, width: float, height: float, per_row: int, **kwargs) -> tuple[Figure, list, list]:
    """``count`` panels of ``width`` x ``height`` inches, at most ``per_row`` to a row (unused panels hidden).
    Returns the figure, the panels in order and the first panel of each row (for the y label)."""
    nrows, ncols = _shape(count, per_row)
    fig, axes = _figure(nrows, ncols, max(width * ncols, 7.5), height * nrows, **kwargs)
    flat = list(axes.flat)
    for ax in flat[max(count, 1):]:
        ax.set_visible(False)
    return fig, flat[:max(count, 1)], list(axes[:, 0])


def _loss_panels(count: int, width: float, height: float, **kwargs) -> tuple[Figure, list, list]:
    """One panel per loss, ``PANELS_PER_ROW`` to a row (see ``_panels``)."""
    return _panels(count, width, height, PANELS_PER_ROW, **kwargs)


def _condition_panels(count: int, width: float, height: float, **kwargs) -> tuple[Figure, list, list]:
    """One panel per condition, ``CONDITIONS_PER_ROW`` to a row (see ``_panels``)."""
    return _panels(count, width, height, CONDITIONS_PER_ROW, **kwargs)


def _single(frame: pd.DataFrame, column: str = "condition") -> str:
    values = frame[column].dropna().unique()
    if len(values) != 1:
        raise ValueError(f"expected one {column} in the frame, got {list(values)}")
    return str(values[0])


def _steps_per_epoch(frame: pd.DataFrame) -> float:
    rows = frame[(frame["epoch"] > 0) & (frame["step"] > 0)]
    return float((rows["step"] / rows["epoch"]).median()) if not rows.empty else math.nan


def _epoch_axis(ax, steps_per_epoch: float) -> None:
    if math.isfinite(steps_per_epoch) and steps_per_epoch > 0:
        top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
        top.set_xlabel("epoch")


def _palette(losses: Sequence[str]) -> dict[str, str]:
    return {loss: colour(loss) for loss in losses}


def _t_mean(values: pd.Series) -> float:
    """seaborn estimator: the mean of the finite values (``analysis.mean_ci``'s)."""
    return analysis.mean_ci(values).mean


def _t_interval(values: pd.Series) -> tuple[float, float]:
    """seaborn errorbar: the 95% t-interval over seeds of ``analysis.mean_ci`` (NaN, drawn as nothing, for one seed)."""
    est = analysis.mean_ci(values)
    return est.ci_low, est.ci_high


def _floored(function):
    """``function`` (an estimator or errorbar) with its results raised to ``FLOOR``, for a log axis."""
    def floored(values: pd.Series):
        return np.clip(function(values), FLOOR, None)
    return floored


def _band_lines(ax, frame: pd.DataFrame, x: str, *, log: bool = False) -> list[str]:
    """Mean over seeds per loss with its 95% t-band (seaborn's lineplot); ``frame`` is long (``loss, seed, x,
    value``). On a log axis means and band edges at or below 0 are drawn at ``FLOOR``. Returns the losses drawn."""
    frame = _finite(frame)
    losses = analysis.ordered(frame["loss"])
    if losses:
        sns.lineplot(data=frame, x=x, y="value", hue="loss", hue_order=losses, palette=_palette(losses),
                     estimator=_floored(_t_mean) if log else _t_mean,
                     errorbar=_floored(_t_interval) if log else _t_interval,
                     err_kws={"lw": 0}, lw=1.6, legend=False, ax=ax)
    if log:
        ax.set_yscale("log")
    return losses


class _PlainLogFormatter(mticker.LogFormatter):
    """LogFormatter's choice of labelled ticks, written as plain numbers (0.3, 2, 0.001)."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


def _plain_log_ticks(ax, axis: str = "y", minor_thresholds: tuple[float, float] = (1.5, 0.5)) -> None:
    """Log-scale tick labels as plain numbers instead of 3×10⁻¹; minor ticks labelled on short ranges only."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(_PlainLogFormatter())
    target.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=minor_thresholds))


def _fraction_limits(ax) -> None:
    """Keep a fraction axis inside [0, 1]: t-bands from few seeds may reach past it."""
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 1.0))


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _finite(frame: pd.DataFrame, column: str = "value") -> pd.DataFrame:
    return frame[np.isfinite(frame[column].to_numpy(dtype=float))]


# --------------------------------------------------------------------------------------------------------------
# Headline and setup


def _dodge(levels: int, width: float = 0.8) -> float:
    """pointplot's ``dodge`` that spreads ``levels`` hue levels over ``width`` of a category, centred in equal
    slots (where stripplot's ``dodge=True`` puts them)."""
    return width * (1 - 1 / levels) if levels > 1 else False


def _category_ticks(ax, names: Sequence[str], *, wrap: bool = False) -> None:
    """Horizontal category labels (rotated ones overlap their neighbours); ``wrap`` breaks names at underscores."""
    ax.set_xticks(range(len(names)), [name.replace("_", "\n") if wrap else name for name in names])
    ax.set_xlabel("")


def plot_headline(history: pd.DataFrame) -> Figure:
    """Final test accuracy, test NLL and ECE per condition and loss: mean over seeds with 95% t-intervals."""
    names = {"final_accuracy": "test accuracy (fraction)", "test_nll": "test NLL (nats, log scale)",
             "ece": "ECE (expected calibration error)"}
    per_seed = analysis.headline(history, {}).per_seed  # each healthy model's last evaluation
    conditions = list(dict.fromkeys(history["condition"]))
    losses = analysis.ordered(history["loss"])
    with _style():
        width = max(4.0, 0.65 * len(conditions) + 0.9)  # room for each condition's name, wrapped at underscores
        fig, axes = _figure(1, 3, width * 3, 3.8)
        for ax, quantity in zip(axes[0], names, strict=True):
            rows = per_seed[per_seed["quantity"] == quantity]
            sns.pointplot(data=rows, x="condition", y="value", hue="loss", order=conditions, hue_order=losses,
                          palette=_palette(losses), estimator=_t_mean, errorbar=_t_interval,
                          dodge=_dodge(len(losses)), linestyle="none", markersize=5, linewidth=1.5, capsize=0.1,
                          legend=False, ax=ax)
            _category_ticks(ax, conditions, wrap=True)
            if quantity == "test_nll":  # a collapsed, confidently wrong model reaches thousands of nats
                ax.set_yscale("log")  # after the means: pointplot's log_scale would average the logarithms
                _plain_log_ticks(ax)
            else:
                _fraction_limits(ax)
            ax.set_ylabel(names[quantity])
            ax.set_title(names[quantity].split(" (")[0])
        fig.suptitle("Final test metrics per condition (mean over seeds, 95% t-interval)")
        _loss_legend(fig, losses)
    return fig


# --------------------------------------------------------------------------------------------------------------
# Answers: one figure per question, across all conditions


def _marked(ax, x, y, markers: Sequence[str], colour_: str, filled: Sequence[bool], size: float = 40, **kwargs):
    """One scatter (a single artist) whose points each have their own marker, filled in ``colour_`` or hollow."""
    collection = ax.scatter(x, y, s=size, color=colour_, **kwargs)
    styles = [MarkerStyle(m) for m in markers]
    collection.set_paths([style.get_path().transformed(style.get_transform()) for style in styles])
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
# margin), hollow ones are not; "identical" (the same value in every seed) a filled square.
VERDICT_MARKERS = {
    analysis.DIFFERENT: ("o", True),
    "equivalent": ("D", True),
    analysis.ALIKE: ("D", False),
    analysis.NOT_ESTABLISHED: ("o", False),
    "identical": ("s", True),
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
    with _style():
        fig, axes = _figure(1, 1, 8.5, 1.4 + 0.24 * len(rows))
        ax = axes[0, 0]
        for loss in losses:
            ys = [y for y, (kind, name, _) in enumerate(rows) if kind == "row" and name == loss]
            table = pd.DataFrame([rows[y][2] for y in ys]).assign(y=ys)
            table = table[np.isfinite(table["ratio"].to_numpy(dtype=float))]
            bars = table[np.isfinite(table[["ci_low", "ci_high"]].to_numpy(dtype=float)).all(axis=1)]
            ax.hlines(bars["y"], bars["ci_low"].clip(lower=low), bars["ci_high"].clip(upper=high), color=colour(loss),
                      lw=2)
            style = [VERDICT_MARKERS.get(v, OTHER_VERDICT) for v in table["verdict"]]
            _marked(ax, table["ratio"], table["y"], [m for m, _ in style], colour(loss), [f for _, f in style],
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
        _loss_legend(fig, losses, extra)
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
    with _style():
        fig, axes = _figure(1, 1, 9.0, 5.2)
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
        _plain_log_ticks(ax, "x", minor_thresholds=(1, 0.3))
        _plain_log_ticks(ax)
        ax.set_xlim(ANSWER_BIN_EDGES[0] / 2, 1)
        ax.set_xlabel("probability of the true class p_true of a wrong test example (log; one bin per decade)")
        ax.set_ylabel(f"per-example ‖∂L/∂z‖ (log; floor {FLOOR:g})")
        fig.suptitle("Gradients on mistakes: logit-gradient norm of wrong test examples against p_true\n"
                     "(all conditions and seeds pooled, last evaluation)")
        extra = [Line2D([], [], color="grey", marker="o", ls="", label="measured median"),
                 Line2D([], [], color="grey", lw=1.6, label="measured quartiles"),
                 Line2D([], [], color="grey", ls="--", label="closed form (one wrong class)"),
                 Line2D([], [], color="grey", ls=":", label=f"vanished below {threshold:g}")]
        _loss_legend(fig, losses, extra)
    return fig


CONDITION_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def penalty_shares(history: pd.DataFrame) -> pd.DataFrame:
    """The three shares of ``plot_penalty_answer`` per model: ``condition, loss, lr, seed, quantity, value``."""
    corrected = analysis.corrections(history)
    corrected = corrected[corrected["quantity"] == "confident_wrong_corrected"]
    parts = [corrected[[*analysis.RUN, "quantity", "value"]]]
    for split, metric in (("train_flipped", "memorised"), ("test", "confident_wrong_loss_share")):
        rows = analysis.select(history, split, metric)
        rows = rows[rows["step"] == rows.groupby(analysis.RUN)["step"].transform("max")]
        parts.append(rows[analysis.RUN].assign(quantity=metric, value=rows["value"].to_numpy(dtype=float)))
    return pd.concat(parts, ignore_index=True)


PENALTY_PANELS = {
    "confident_wrong_corrected": "confidently wrong training examples\ncorrected by the next evaluation",
    "memorised": "flipped labels memorised\n(label noise, last evaluation)",
    "confident_wrong_loss_share": "share of the test loss carried\nby confident mistakes (own loss)",
}


def plot_penalty_answer(history: pd.DataFrame) -> Figure:
    """The confident-wrong penalty across conditions, three shares per loss (mean over seeds, one marker per
    condition): of the watched training examples confidently wrong at one evaluation, the share classified right
    at the next (``train_subset/confident_wrong_corrected``, pooled over evaluations as ``analysis.corrections``);
    of the flipped training labels, the share predicted as the flipped label at the last evaluation
    (``train_flipped/memorised``, label-noise conditions only); of each loss's own test loss (not the NLL), the
    share carried by wrong predictions with confidence >= 0.9 at the last evaluation
    (``test/confident_wrong_loss_share``). ``history``: the long history table of every condition."""
    shares = penalty_shares(history)
    means = shares.groupby(["quantity", "condition", "loss"], sort=False)["value"].mean().reset_index()
    losses = analysis.ordered(history["loss"])
    conditions = list(dict.fromkeys(history["condition"]))
    markers = {c: CONDITION_MARKERS[i % len(CONDITION_MARKERS)] for i, c in enumerate(conditions)}
    # Each condition a little above or below the loss's line, so that equal shares do not hide each other.
    offsets = {c: 0.5 * (i / max(len(conditions) - 1, 1) - 0.5) for i, c in enumerate(conditions)}
    with _style():
        fig, axes = _figure(1, 3, 12.5, 1.6 + 0.42 * max(len(losses), 3), sharey=True)
        for ax, (quantity, title) in zip(axes[0], PENALTY_PANELS.items(), strict=True):
            rows = means[(means["quantity"] == quantity) & np.isfinite(means["value"].to_numpy(dtype=float))]
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
            ax.set_title(title)
            ax.set_xlabel("share (mean over seeds)")
        ax = axes[0, 0]
        ax.set_yticks(range(len(losses)), losses)
        ax.set_ylim(len(losses) - 0.5, -0.5)
        for tick, loss in zip(ax.get_yticklabels(), losses, strict=True):
            tick.set_color(colour(loss))
        fig.suptitle("The confident-wrong penalty: what it corrects, what it memorises, how much loss it carries")
        extra = [Line2D([], [], color="grey", marker=markers[c], ls="", ms=7, label=c) for c in conditions]
        _loss_legend(fig, losses, extra)
    return fig


def plot_tuning(tune: pd.DataFrame, chosen: Mapping[str, Mapping[str, float]],
                targets: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Every loss at every learning rate of the grid, one column per tuned condition: final validation accuracy
    (top; dots are tuning seeds, the line their mean, the star the chosen rate) and steps to the condition's first
    target (bottom; median over tuning seeds, hollow where fewer than half reached it). Diverged seeds are
    crosses drawn at 0, collapsed seeds open squares at their final accuracy."""
    scores = analysis.tuning_scores(tune)
    conditions = list(dict.fromkeys(tune["condition"]))
    losses = analysis.ordered(tune["loss"])
    targets = targets or {}
    with _style():
        # Per condition a pair of panels, one above the other; the pairs CONDITIONS_PER_ROW to a row.
        nrows, ncols = _shape(len(conditions), CONDITIONS_PER_ROW)
        fig, axes = _figure(2 * nrows, ncols, max(4.8 * ncols, 7.5), 7.2 * nrows)
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
            steps = (analysis.steps_to_target(tune[tune["condition"] == condition], first) if first is not None
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
            _fraction_limits(ax)
            ax.set_ylabel("final validation accuracy")
            ax.set_title(condition)
            if steps is not None and any_reached:
                below.set_yscale("log")
                _plain_log_ticks(below)
                below.set_ylabel(f"steps to val acc {first:g}\n(median; missing = most never did)")
            elif steps is not None:
                _empty(below, f"no rate reached val acc {first:g}\nin most tuning seeds")
            else:
                _empty(below, "no target")
        fig.suptitle("Every loss at every learning rate (tuning runs, validation split)")
        extra = [Line2D([], [], color="grey", marker="*", ls="", ms=12, markeredgecolor="black", label="chosen lr"),
                 Line2D([], [], color="grey", marker="x", ls="", label="diverged (drawn at 0)"),
                 Line2D([], [], color="grey", marker="s", markerfacecolor="none", ls="", label="collapsed")]
        _loss_legend(fig, losses, extra)
    return fig


def _target_panels(history: pd.DataFrame, targets: Mapping[str, Sequence[float]], *,
                   height: float) -> tuple[Figure, list[tuple[object, str, pd.DataFrame]]]:
    """One panel per condition that has targets: the figure and (axes, condition, its history) for each."""
    conditions = [c for c in dict.fromkeys(history["condition"]) if targets.get(c)]
    fig, axes, _ = _condition_panels(len(conditions), 4.2, height)
    if not conditions:
        _empty(axes[0], "no targets")
    return fig, [(ax, c, history[history["condition"] == c]) for ax, c in zip(axes, conditions, strict=False)]


def plot_time_to_target(history: pd.DataFrame, targets: Mapping[str, Sequence[float]]) -> Figure:
    """Share of seeds that have reached the first validation-accuracy target by each step (a Kaplan-Meier curve
    without censoring before the end: every seed runs to the end or diverges), one panel per condition. A curve
    that stops below 1 is the share that never reached it."""
    losses = analysis.ordered(history["loss"])
    with _style():
        fig, panels = _target_panels(history, targets, height=3.8)
        for ax, condition, mine in panels:
            target = targets[condition][0]
            table = analysis.steps_to_target(mine, target)
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
        _loss_legend(fig, losses)
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
    condition = _single(history)
    losses = analysis.ordered(history["loss"])
    with _style():
        fig, axes = _figure(1, 2, 12, 4.2)
        ax = axes[0, 0]
        # Most of the race happens in the first epoch: steps on a log axis (step 0 left out), accuracy zoomed
        # onto the targets, so that the losses' curves can be told apart.
        accuracy = analysis.select(history, "val", "accuracy")
        accuracy = accuracy[accuracy["step"] > 0]
        _band_lines(ax, accuracy, "step")
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
            _fraction_limits(ax)
        ax.set_xlabel("optimizer step (log scale)")
        ax.set_ylabel("validation accuracy (fraction, zoomed)")
        ax = axes[0, 1]
        _band_lines(ax, _finite(analysis.select(history, "train", "loss")), "step", log=True)
        _plain_log_ticks(ax)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss, batch mean (own units, log scale)")
        _epoch_axis(ax, _steps_per_epoch(history))
        fig.suptitle(f"{condition}: convergence (mean over seeds, 95% t-band)")
        _loss_legend(fig, losses)
    return fig


def plot_steps_to_target(history: pd.DataFrame, targets: Mapping[str, Sequence[float]]) -> Figure:
    """Steps until validation accuracy first reaches each target: one dot per seed, a bar at the median; a hollow
    triangle marks a seed that never reached it, drawn at its last evaluation (right-censored)."""
    losses = analysis.ordered(history["loss"])
    with _style():
        fig, panels = _target_panels(history, targets, height=4.2)
        for ax, condition, mine in panels:
            present = analysis.ordered(mine["loss"])  # conditions may train different losses
            width = 0.8 / max(len(present), 1)
            for i, target in enumerate(targets[condition]):
                table = analysis.steps_to_target(mine, target)
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
        _loss_legend(fig, losses, extra)
    return fig


def plot_lr_views(tune: pd.DataFrame, chosen: Mapping[str, Mapping[str, float]],
                  reference: str = analysis.REFERENCE) -> Figure:
    """Tuned-lr vs shared-lr view from the tuning runs: validation accuracy against steps for each loss at its own
    tuned learning rate (solid) and at the reference loss's tuned learning rate (dashed), mean over tuning seeds."""
    conditions = [c for c in dict.fromkeys(tune["condition"]) if reference in chosen.get(c, {})]
    losses = analysis.ordered(tune["loss"])
    with _style():
        fig, axes, _ = _condition_panels(len(conditions), 5.0, 4.2)
        if not conditions:
            _empty(axes[0], f"no tuned learning rate for {reference}")
        for ax, condition in zip(axes, conditions, strict=False):
            mine = analysis.select(tune[tune["condition"] == condition], "val", "accuracy")
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
        _loss_legend(fig, losses, extra)
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
    condition = _single(history)
    losses = analysis.ordered(history["loss"])
    train = history[history["split"] == "train"]
    palette = {loss: colour(loss) for loss in losses}
    with _style():
        fig, axes = _figure(2, 3, 13, 7.2)
        flat = axes.ravel()
        for ax, (metric, title) in zip(flat, GRADIENT_PANELS.items(), strict=False):
            rows = _finite(train[train["metric"] == metric])
            rows = rows[rows["value"] > 0]
            if rows.empty:
                _empty(ax, f"no {metric} measured")
            else:
                # Quartiles over seeds per step by one groupby: seaborn's estimator="median" with errorbar=("pi", 50)
                # drew the same lines and bands, computed group by group, in a fifth of the report stage's time.
                spread = rows.groupby(["loss", "step"], observed=True)["value"].quantile([0.25, 0.5, 0.75]).unstack()
                for loss in (loss for loss in losses if loss in spread.index):
                    mine = spread.loc[loss]
                    ax.plot(mine.index, mine[0.5], color=palette[loss])
                    ax.fill_between(mine.index, mine[0.25], mine[0.75], color=palette[loss], alpha=0.2, lw=0)
                ax.set_yscale("log")
                _plain_log_ticks(ax)
            ax.set_title(title)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("L2 norm (log scale)")
        ax = flat[-1]
        population = analysis.select(history, "test", "logit_grad_median")
        if population.empty:
            _empty(ax, "no test-set gradients measured")
        else:
            quartiles = {q: analysis.select(history, "test", f"logit_grad_{q}").set_index([*analysis.RUN, "step"])
                         ["value"] for q in ("q25", "q75")}
            for loss in losses:
                mine = population[population["loss"] == loss].set_index([*analysis.RUN, "step"])["value"]
                if mine.empty:
                    continue
                by_step = pd.DataFrame({"median": mine, **{q: v.reindex(mine.index) for q, v in quartiles.items()}})
                by_step = by_step.groupby(level="step").median().clip(lower=FLOOR)
                ax.plot(by_step.index, by_step["median"], color=colour(loss), lw=1.6)
                ax.fill_between(by_step.index, by_step["q25"], by_step["q75"], color=colour(loss), alpha=0.2, lw=0)
            ax.set_yscale("log")
            _plain_log_ticks(ax)
        ax.set_title("per-example ‖∂L/∂z‖, whole test set")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("median and quartiles (log scale)")
        fig.suptitle(f"{condition}: gradient magnitudes (median over seeds; band: seeds' quartiles, last panel: "
                     "examples' quartiles)")
        _loss_legend(fig, losses)
    return fig


def plot_logit_grad(examples: pd.DataFrame, penalty: pd.DataFrame | None,
                    threshold: float = analysis.SATURATION) -> Figure:
    """Per-example logit-gradient norm against the probability of the true class on the probe examples (every
    evaluation and seed) for one condition, one panel per loss: dots correct, crosses wrong, the solid line the
    binned median, the dashed black line the closed form of the probe stage (one wrong class, the rest at 0)."""
    condition = _single(examples)
    probe = examples[examples["split"] == "probe"]
    probe = probe[np.isfinite(probe["p_true"].to_numpy(dtype=float))
                  & np.isfinite(probe["logit_grad_norm"].to_numpy(dtype=float))]
    losses = analysis.ordered(examples["loss"])
    edges = np.logspace(-8, 0, 33)
    with _style():
        fig, panels, first = _loss_panels(len(losses), 3.6, 4.0, sharex=True, sharey=True)
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
        _loss_legend(fig, losses, extra)
    return fig


# --------------------------------------------------------------------------------------------------------------
# Confident-wrong penalties and calibration


def plot_penalty(penalty: pd.DataFrame) -> Figure:
    """Closed-form loss and logit-gradient norm of every loss against the wrong-class logit margin a (one wrong
    class at a, the others and the true class at 0), with the probability of the true class on the top axis."""
    losses = analysis.ordered(penalty["loss"])
    k = analysis.classes_from_penalty(penalty)
    with _style():
        fig, axes = _figure(1, 2, 12, 4.4, sharex=True)
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
            _plain_log_ticks(ax)
        axes[0, 1].set_ylabel("‖∂L/∂z‖ (log scale)")
        fig.suptitle("Closed form: penalty (left) and logit gradient (right) of a confidently wrong prediction"
                     + (f", K = {k}" if k else ""))
        _loss_legend(fig, losses)
    return fig


def plot_wrong_confidence(examples: pd.DataFrame, confident: float = analysis.CONFIDENT) -> Figure:
    """ECDF of the probability of the true class among misclassified test examples (last evaluation, all seeds),
    one panel per condition. Left of the dotted line, the wrong prediction is confident."""
    wrong = analysis.wrong_examples(examples)
    conditions = list(dict.fromkeys(examples["condition"]))
    losses = analysis.ordered(examples["loss"])
    with _style():
        fig, axes, first = _condition_panels(len(conditions), 4.0, 3.9, sharey=True)
        for ax, condition in zip(axes, conditions, strict=False):
            rows = wrong[wrong["condition"] == condition]
            rows = rows.assign(p_true=np.clip(rows["p_true"].astype(float), FLOOR, 1))
            rows = _finite(rows, "p_true")
            if rows.empty:
                _empty(ax, "no misclassified test examples")
            else:
                present = [loss for loss in losses if (rows["loss"] == loss).any()]
                sns.ecdfplot(data=rows, x="p_true", hue="loss", hue_order=present,
                             palette={loss: colour(loss) for loss in present}, log_scale=(True, False), ax=ax,
                             legend=False)
                ax.axvline(1 - confident, color="black", ls=":", lw=1)
                _plain_log_ticks(ax, "x", minor_thresholds=(1, 0.3))
                # At most five labelled decades: on a panel four inches wide '1e-08' is wider than a decade.
                ax.xaxis.set_major_locator(mticker.LogLocator(numticks=5))
            ax.set_xlabel("p_true of misclassified examples (log)")
            ax.set_title(condition)
        for ax in first:
            ax.set_ylabel("cumulative share of wrong examples")
        fig.suptitle("How wrong are the mistakes? p_true among misclassified test examples")
        extra = [Line2D([], [], color="black", ls=":", label=f"p_true = {1 - confident:g}: left of it, confidence "
                                                             f"≥ {confident:g}")]
        _loss_legend(fig, losses, extra)
    return fig


def plot_reliability(examples: pd.DataFrame, bins: int = 15) -> Figure:
    """Reliability diagrams for one condition: accuracy against confidence in equal-width bins of the last test
    evaluation, pooled over seeds; one panel per loss with its pooled ECE."""
    condition = _single(examples)
    table = analysis.calibration_bins(examples, bins)
    losses = analysis.ordered(examples["loss"])
    with _style():
        fig, panels, first = _loss_panels(len(losses), 3.4, 3.8, sharey=True)
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
        _loss_legend(fig, losses, extra)
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
        sns.pointplot(**common, estimator=_t_mean, errorbar=_t_interval, dodge=_dodge(len(quantities)),
                      markers=list(markers.values()), linestyle="none", markersize=6, linewidth=1.5, capsize=0.12,
                      zorder=3)
        for line, quantity in zip([line for line in ax.lines[drawn:] if line.get_marker() != "None"], quantities):
            if quantity != filled.get(loss):  # the means' lines, in hue order (error bars have no marker)
                line.set_markerfacecolor("white")
    _category_ticks(ax, losses, wrap=wrap)


def plot_label_noise(history: pd.DataFrame) -> Figure:
    """Label noise, one condition: validation-selected vs final test accuracy per loss (mean, 95% t-interval), and
    the shares of flipped training examples predicted as their noisy label (memorised) or their true label
    (recovered)."""
    condition = _single(history)
    losses = analysis.ordered(history["loss"])
    per_seed = analysis.label_noise(history)
    with _style():
        fig, axes = _figure(1, 3, 14, 4.2, width_ratios=[max(1.0, len(losses) / 5), 1, 1])  # room for the names
        _loss_points(axes[0, 0], per_seed, losses, {"selected_accuracy": "o", "final_accuracy": "s"},
                     dict.fromkeys(losses, "selected_accuracy"), wrap=True)
        _fraction_limits(axes[0, 0])
        axes[0, 0].set_ylabel("test accuracy (fraction)")
        axes[0, 0].set_title("val-selected (filled) vs final (hollow) test acc")
        for ax, metric, title in ((axes[0, 1], "memorised", "memorised: predicted as the noisy label"),
                                  (axes[0, 2], "recovered", "recovered: predicted as the true label")):
            rows = analysis.select(history, "train_flipped", metric)
            if rows.empty:
                _empty(ax, f"no {metric} measured")
            else:
                _band_lines(ax, rows, "step")
            ax.set_ylim(0, 1)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("share of flipped training examples")
            ax.set_title(title)
        fig.suptitle(f"{condition}: label noise (mean over seeds, 95% t-interval)")
        extra = [Line2D([], [], color="grey", marker="o", ls="", label="at the best validation accuracy"),
                 Line2D([], [], color="grey", marker="s", mfc="white", ls="", label="final")]
        _loss_legend(fig, losses, extra)
    return fig


HELDOUT_PANELS = (
    (("auroc_max_softmax", "o", "max softmax"), ("auroc_max_sigmoid", "s", "max sigmoid")),
    (("none_share_heldout", "o", "held-out classes"), ("none_share_test", "s", "trained classes")),
)


def plot_heldout(history: pd.DataFrame) -> Figure:
    """"None of the above", one condition: per loss, the AUROC of held-out against trained-class test images by
    max softmax and by max sigmoid (each loss's own score filled), and the share of images every sigmoid puts below
    0.5 ("none"), on held-out and on trained classes; one dot per seed, a bar at the mean with its 95% t-interval."""
    condition = _single(history)
    per_seed = analysis.heldout_per_seed(history)
    losses = analysis.ordered(per_seed["loss"])
    with _style():
        width = 0.95 * len(losses) + 1  # each loss's name its room
        # Side by side while that stays readable at DISPLAY_WIDTH; one above the other beyond.
        fig, grid = (_figure(1, 2, max(12.0, 2 * width), 4.4) if 2 * width <= 13
                     else _figure(2, 1, max(7.5, width), 8.4))
        axes = grid.reshape(1, 2)
        # left: filled = the loss's own score; right: filled = held-out classes
        own = {loss: analysis.NATURAL_SCORE.get(loss, "auroc_max_softmax") for loss in losses}
        for ax, panel, filled in zip(axes[0], HELDOUT_PANELS, (own, dict.fromkeys(losses, "none_share_heldout")),
                                     strict=True):
            _loss_points(ax, per_seed, losses, {quantity: marker for quantity, marker, _ in panel}, filled,
                         seeds=True)
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
        _loss_legend(fig, losses, extra)
    return fig
