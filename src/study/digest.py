"""The report's statistics computed once from its inputs (``Computed``: analysis' headline, saturation, calibration,
label noise, learning-rate views, held-out classes, claims, metrics) and the figures it draws (``Figures``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from study import analysis, answers, comparisons, figures, quantities
from study import claims as checks
from study.reader import Inputs, _chosen, _noise_conditions


@dataclass
class Computed:
    head: analysis.Headline
    saturation: pd.DataFrame
    calibration: pd.DataFrame
    noise: dict[str, pd.DataFrame]
    noise_per_seed: dict[str, pd.DataFrame]
    lr_views: dict[str, pd.DataFrame]
    heldout: pd.DataFrame  # per seed: comparisons.heldout_per_seed
    claims: pd.DataFrame
    metrics: dict
    penalty_seeds: pd.DataFrame | None = None  # answers.penalty_per_seed


def calibration_quantities() -> dict[str, tuple[str, str]]:
    """{quantity: (split, metric)} read at the last evaluation for the calibration and confident-wrong tables: the
    registry's calibration group and whatever those tables show."""
    tables = ("calibration", "confident_wrong")
    return {q.name: q.source for q in quantities.QUANTITIES if q.reading == "last"
            and (q.group == "calibration" or any(c.table in tables for c in q.columns))}


def compute(inputs: Inputs) -> Computed:
    saturation = analysis.saturation(inputs.examples)
    head = analysis.headline(inputs.history, inputs.targets, saturation=saturation)
    calibration = comparisons.final_table(inputs.history, calibration_quantities())
    noise_per_seed = {c: comparisons.label_noise(inputs.history[inputs.history["condition"] == c])
                      for c in _noise_conditions(inputs)}
    noise = {c: analysis.summarise(per_seed) for c, per_seed in noise_per_seed.items()}
    views = {}
    if inputs.tune is not None:
        for source in dict.fromkeys(inputs.sources.values()):
            tune = inputs.tune[inputs.tune["condition"] == source]
            chosen = _chosen(inputs, source)
            targets = inputs.targets.get(source) or next(
                (inputs.targets[c] for c, s in inputs.sources.items() if s == source), ())
            if not tune.empty and chosen:
                views[source] = comparisons.lr_views(tune, chosen, targets)
    heldout = comparisons.heldout_per_seed(inputs.history)
    measured = checks.measured(head, inputs.history, noise_per_seed, heldout, saturation, inputs.penalty,
                               inputs.conditions)
    claims = checks.combine(inputs.claims, measured)
    metrics = comparisons.metrics(head)
    for row in analysis.summarise(heldout).itertuples():
        if row.quantity == comparisons.NATURAL and row.condition in metrics and row.loss in metrics[row.condition]:
            metrics[row.condition][row.loss]["heldout_auroc"] = row.mean
    penalty_seeds = answers.penalty_per_seed(inputs.history, noise_per_seed, heldout)
    return Computed(head, saturation, calibration, noise, noise_per_seed, views, heldout, claims.fillna(""),
                    metrics, penalty_seeds if not penalty_seeds.empty else None)


class Figures:
    """Renders figures into ``directory`` and remembers which exist (by name)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.names: list[str] = []
        self.text_px: dict[str, float] = {}  # each figure's smallest text in px at its full (PNG) size

    def save(self, name: str, draw: Callable[..., object], *args) -> str:
        fig = draw(*args)
        smallest = figures.min_text_px(fig, math.inf)
        if math.isfinite(smallest):
            self.text_px[name] = smallest
        figures.save(fig, self.directory / f"{name}.png")
        self.names.append(name)
        return name

    def resolve(self, stem: str) -> str | None:
        """A figure called ``stem`` (a file name such as ``penalty.png`` works too) or, for per-condition figures,
        the first ``stem_<condition>``."""
        stem = Path(stem).stem
        if stem in self.names:
            return stem
        return next((n for n in self.names if n.startswith(f"{stem}_")), None)


def _value(frame: pd.DataFrame, **keys) -> dict | None:
    return analysis.lookup(frame, **keys)

