"""The report's figure kit: the style, each loss's colour and label, panel grids, legends, axis helpers and saving.

It and the figure modules that draw with it (``question_figures``, ``training_figures``, ``confidence_figures``:
one function per figure, long DataFrames in, a matplotlib Figure out) are the only modules that import seaborn or
matplotlib; they read no files and import nothing from training. Every figure colours a loss with ``COLOURS`` and
names it with ``LABELS``, the loss registry's (``study.losses``); which losses a figure draws comes from its data.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
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
from matplotlib.text import Text

from study import analysis
from study.losses import COLOURS, LABELS

# Colours of losses in the data but not in the registry (results of a loss since removed), chosen from the name
# (stable): the seaborn "colorblind" entry no registered loss uses, and black.
_SPARE = ("#949494", "#000000")
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
def style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        yield


def subplots(nrows: int, ncols: int, width: float, height: float, **kwargs) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", squeeze=False, **kwargs)
    return fig, axes


def loss_legend(fig: Figure, losses: Sequence[str], extra: Sequence[Line2D] = ()) -> None:
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


def panel_shape(count: int, per_row: int) -> tuple[int, int]:
    """(rows, columns) for ``count`` panels, at most ``per_row`` to a row, rows as evenly filled as they can be
    (four panels make 2 x 2, not 3 + 1)."""
    nrows = max(1, math.ceil(count / per_row))
    return nrows, max(1, math.ceil(count / nrows))


def _panels(count: int, width: float, height: float, per_row: int, **kwargs) -> tuple[Figure, list, list]:
    """``count`` panels of ``width`` x ``height`` inches, at most ``per_row`` to a row (unused panels hidden).
    Returns the figure, the panels in order and the first panel of each row (for the y label)."""
    nrows, ncols = panel_shape(count, per_row)
    fig, axes = subplots(nrows, ncols, max(width * ncols, 7.5), height * nrows, **kwargs)
    flat = list(axes.flat)
    for ax in flat[max(count, 1):]:
        ax.set_visible(False)
    return fig, flat[:max(count, 1)], list(axes[:, 0])


def loss_panels(count: int, width: float, height: float, **kwargs) -> tuple[Figure, list, list]:
    """One panel per loss, ``PANELS_PER_ROW`` to a row (see ``_panels``)."""
    return _panels(count, width, height, PANELS_PER_ROW, **kwargs)


def condition_panels(count: int, width: float, height: float, **kwargs) -> tuple[Figure, list, list]:
    """One panel per condition, ``CONDITIONS_PER_ROW`` to a row (see ``_panels``)."""
    return _panels(count, width, height, CONDITIONS_PER_ROW, **kwargs)


def single(frame: pd.DataFrame, column: str = "condition") -> str:
    values = frame[column].dropna().unique()
    if len(values) != 1:
        raise ValueError(f"expected one {column} in the frame, got {list(values)}")
    return str(values[0])




def palette(losses: Sequence[str]) -> dict[str, str]:
    return {loss: colour(loss) for loss in losses}


def t_mean(values: pd.Series) -> float:
    """seaborn estimator: the mean of the finite values (``analysis.mean_ci``'s)."""
    return analysis.mean_ci(values).mean


def t_interval(values: pd.Series) -> tuple[float, float]:
    """seaborn errorbar: the 95% t-interval over seeds of ``analysis.mean_ci`` (NaN, drawn as nothing, for one seed)."""
    est = analysis.mean_ci(values)
    return est.ci_low, est.ci_high


def _floored(function):
    """``function`` (an estimator or errorbar) with its results raised to ``FLOOR``, for a log axis."""
    def floored(values: pd.Series):
        return np.clip(function(values), FLOOR, None)
    return floored


def band_lines(ax, frame: pd.DataFrame, x: str, *, log: bool = False) -> list[str]:
    """Mean over seeds per loss with its 95% t-band (seaborn's lineplot); ``frame`` is long (``loss, seed, x,
    value``). On a log axis means and band edges at or below 0 are drawn at ``FLOOR``. Returns the losses drawn."""
    frame = finite_rows(frame)
    losses = analysis.ordered(frame["loss"])
    if losses:
        sns.lineplot(data=frame, x=x, y="value", hue="loss", hue_order=losses, palette=palette(losses),
                     estimator=_floored(t_mean) if log else t_mean,
                     errorbar=_floored(t_interval) if log else t_interval,
                     err_kws={"lw": 0}, lw=1.6, legend=False, ax=ax)
    if log:
        ax.set_yscale("log")
    return losses


class _PlainLogFormatter(mticker.LogFormatter):
    """LogFormatter's choice of labelled ticks, written as plain numbers (0.3, 2, 0.001)."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


def plain_log_ticks(ax, axis: str = "y", minor_thresholds: tuple[float, float] = (1.5, 0.5)) -> None:
    """Log-scale tick labels as plain numbers instead of 3×10⁻¹; minor ticks labelled on short ranges only."""
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(_PlainLogFormatter())
    target.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=minor_thresholds))


def fraction_limits(ax) -> None:
    """Keep a fraction axis inside [0, 1]: t-bands from few seeds may reach past it."""
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 1.0))


def empty_panel(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def finite_rows(frame: pd.DataFrame, column: str = "value") -> pd.DataFrame:
    return frame[np.isfinite(frame[column].to_numpy(dtype=float))]


def dodge(levels: int, width: float = 0.8) -> float:
    """pointplot's ``dodge`` that spreads ``levels`` hue levels over ``width`` of a category, centred in equal
    slots (where stripplot's ``dodge=True`` puts them)."""
    return width * (1 - 1 / levels) if levels > 1 else False


def category_ticks(ax, names: Sequence[str], *, wrap: bool = False) -> None:
    """Horizontal category labels (rotated ones overlap their neighbours); ``wrap`` breaks names at underscores."""
    ax.set_xticks(range(len(names)), [name.replace("_", "\n") if wrap else name for name in names])
    ax.set_xlabel("")
