"""What each trained model did, read from a condition's history table (``history.csv``): its last and best values,
validation-selected test accuracy, steps to a validation-accuracy target, and whether it diverged or collapsed.
One row per model; statistics across seeds are ``study.analysis``'s.

The training stages use it (``summary.csv``, the learning-rate fallback), so it stays small and free of the
report's statistics: a change to how the report words its verdicts does not rerun training. pandas and numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

RUN = ["condition", "loss", "lr", "seed"]  # one trained model


def drop_nonfinite(frame: pd.DataFrame, column: str = "value") -> tuple[pd.DataFrame, int]:
    """Rows whose ``column`` is finite, and how many were dropped."""
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(values)
    return frame[keep].reset_index(drop=True), int((~keep).sum())


def select(frame: pd.DataFrame, split: str, metric: str) -> pd.DataFrame:
    return frame[(frame["split"] == split) & (frame["metric"] == metric)]


def runs(history: pd.DataFrame) -> pd.DataFrame:
    """One row per model: ``condition, loss, lr, seed, last_step, diverged_step, collapsed_step`` (NaN when it did
    not diverge or collapse; collapses are the ``train/collapsed_step`` rows the train stage writes) and the flags
    ``diverged``, ``collapsed``."""
    last = history.groupby(RUN)["step"].max().rename("last_step")
    diverged = select(history, "train", "diverged_step").groupby(RUN)["value"].min().rename("diverged_step")
    collapsed = select(history, "train", "collapsed_step").groupby(RUN)["value"].min().rename("collapsed_step")
    out = pd.concat([last, diverged, collapsed], axis=1).reset_index()
    out["diverged"] = out["diverged_step"].notna()
    out["collapsed"] = out["collapsed_step"].notna()
    return out


def healthy(frame: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """Rows of models that did not diverge (a diverged model has no final value to average)."""
    bad = models.loc[models["diverged"], RUN]
    if bad.empty:
        return frame
    merged = frame.merge(bad.assign(_bad=True), on=RUN, how="left")
    return frame[merged["_bad"].isna().to_numpy()]


def last_values(history: pd.DataFrame, split: str, metric: str) -> pd.DataFrame:
    """Value at each model's last evaluation of ``split/metric``: columns ``condition, loss, lr, seed, step, value``."""
    rows = select(history, split, metric)
    if rows.empty:
        return pd.DataFrame(columns=[*RUN, "step", "value"])
    rows = rows.reset_index(drop=True)
    return rows.loc[rows.groupby(RUN)["step"].idxmax(), [*RUN, "step", "value"]].reset_index(drop=True)


def best_values(history: pd.DataFrame, split: str, metric: str, *, after_step: int = -1) -> pd.DataFrame:
    """Largest value of ``split/metric`` per model over its evaluations after ``after_step``."""
    rows = select(history, split, metric)
    rows = rows[rows["step"] > after_step]
    if rows.empty:
        return pd.DataFrame(columns=[*RUN, "value"])
    return rows.groupby(RUN)["value"].max().reset_index()


def val_selected(history: pd.DataFrame) -> pd.DataFrame:
    """Early stopping on the validation split: test accuracy at each model's full evaluation (one that read test
    too) with the best validation accuracy, the earliest on ties. Columns ``condition, loss, lr, seed, step,
    value``."""
    val = select(history, "val", "accuracy")
    test = select(history, "test", "accuracy")[[*RUN, "step", "value"]].rename(columns={"value": "test"})
    full = val.merge(test, on=[*RUN, "step"]).sort_values([*RUN, "step"])
    if full.empty:
        return pd.DataFrame(columns=[*RUN, "step", "value"])
    best = full.loc[full.groupby(RUN)["value"].idxmax()]
    return best[[*RUN, "step", "test"]].rename(columns={"test": "value"}).reset_index(drop=True)


# One rule for reaching a target, used wherever an accuracy is compared against one (summary.csv, the report's
# steps-to-target, the tuning figures): readings are taken at the 6 significant digits history.csv stores
# (tables.write_csv's %.6g), so a float32 reading in memory and its CSV round-trip are the same reading, and a
# reading counts as reaching the target when it is at least target - TARGET_TOLERANCE. The tolerance absorbs
# float32 and decimal rounding (0.8799999 is 0.88) and is far below one example of the smallest validation split
# (1/2000 = 5e-4 on MNIST-1D, 1/6000 on Fashion-MNIST), so no reading one example short of a target counts.
READING_DIGITS = 6
TARGET_TOLERANCE = 1e-6


def as_read(values) -> np.ndarray:
    """Accuracy readings as float64 at the precision the history table stores (READING_DIGITS significant digits)."""
    values = np.asarray(values, dtype=np.float64)
    return np.array([float(f"{v:.{READING_DIGITS}g}") for v in values.ravel()]).reshape(values.shape)


def reached(values, target: float) -> np.ndarray:
    """Whether each accuracy reading reached ``target``: at least ``target - TARGET_TOLERANCE`` once taken at the
    stored precision (``as_read``). float32 or float64 readings equal to the target both count."""
    return as_read(values) >= float(target) - TARGET_TOLERANCE


def steps_to_target(history: pd.DataFrame, target: float) -> pd.DataFrame:
    """Optimizer steps until validation accuracy first reached ``target``, per model, interpolated linearly between
    the last reading below the target and the first at or above it.

    Columns ``condition, loss, lr, seed, target, step, reached, censored_at, bracket_low, bracket_high,
    resolution``: ``[bracket_low, bracket_high]`` are the two readings around the crossing and ``resolution`` is
    their distance as a share of ``step`` (how well the evaluation schedule pins it down). ``step`` is NaN when the
    model never reached the target (right-censored at ``censored_at``, its last evaluation or divergence).
    Reaching is ``reached``'s rule, and readings enter the interpolation as ``as_read`` takes them, so the result is
    the same from records in memory and from history.csv read back.
    """
    val = select(history, "val", "accuracy").sort_values([*RUN, "step"])
    rows = []
    for key, group in val.groupby(RUN, sort=False):
        steps, values = group["step"].to_numpy(dtype=float), as_read(group["value"].to_numpy(dtype=float))
        row = dict(zip(RUN, key), target=float(target), step=math.nan, reached=False, censored_at=steps[-1],
                   bracket_low=math.nan, bracket_high=math.nan, resolution=math.nan)
        hits = np.flatnonzero(reached(values, target))
        if len(hits):
            i = int(hits[0])
            if i == 0:
                row.update(step=steps[0], bracket_low=steps[0], bracket_high=steps[0], resolution=0.0)
            else:
                a, b, va, vb = steps[i - 1], steps[i], values[i - 1], values[i]
                step = min(b, a + (target - va) / (vb - va) * (b - a))  # at most b: vb may sit within the tolerance
                row.update(step=step, bracket_low=a, bracket_high=b, resolution=(b - a) / step)
            row["reached"] = True
        rows.append(row)
    columns = [*RUN, "target", "step", "reached", "censored_at", "bracket_low", "bracket_high", "resolution"]
    return pd.DataFrame(rows, columns=columns)


def val_auc(history: pd.DataFrame) -> pd.DataFrame:
    """Mean validation accuracy over log-steps: the area under the validation-accuracy curve against log10(step)
    from the first evaluation after step 0 to the last, divided by that span. Threshold-free, and weighted like
    the steps-to-target axis (the first hundred steps count as much as the hundred after step 1,000)."""
    val = select(history, "val", "accuracy")
    val = val[val["step"] > 0].sort_values([*RUN, "step"])
    rows = []
    for key, group in val.groupby(RUN, sort=False):
        x, y = np.log10(group["step"].to_numpy(dtype=float)), group["value"].to_numpy(dtype=float)
        span = x[-1] - x[0]
        rows.append((*key, float(np.trapezoid(y, x) / span) if span > 0 else float(y[-1])))
    return pd.DataFrame(rows, columns=[*RUN, "value"])


# Collapse: the model learned, then lost it for good. A climb of the training loss back past half-way from its
# running minimum to where it started, held to the end (at least COLLAPSE_HOLD readings), or validation accuracy
# back within a quarter of the way from chance to its best, held to the end (at least 2 evaluations), after it
# had learned (best at least chance + 0.2). Divergence (non-finite values) is recorded separately.
COLLAPSE_CLIMB = 0.5
COLLAPSE_HOLD = 3
COLLAPSE_ACCURACY = 0.25
LEARNED = 0.2


def collapses(history: pd.DataFrame, chance: float) -> pd.DataFrame:
    """Per model that collapsed: ``condition, loss, lr, seed, collapsed_step, reason`` (the first step of the
    collapse that lasts to the end of training). Models that did not collapse have no row."""
    rows = []
    loss = select(history, "train", "loss").sort_values([*RUN, "step"])
    for key, group in loss.groupby(RUN, sort=False):
        values, steps = group["value"].to_numpy(dtype=float), group["step"].to_numpy()
        start = _loss_collapse(values)
        if start is not None:
            rows.append((*key, int(steps[start]), "training loss climbed back"))
    val = select(history, "val", "accuracy").sort_values([*RUN, "step"])
    for key, group in val.groupby(RUN, sort=False):
        values, steps = group["value"].to_numpy(dtype=float), group["step"].to_numpy()
        start = _accuracy_collapse(values, chance)
        if start is not None:
            rows.append((*key, int(steps[start]), "validation accuracy fell to chance"))
    out = pd.DataFrame(rows, columns=[*RUN, "collapsed_step", "reason"])
    return out.sort_values("collapsed_step").drop_duplicates(RUN).sort_values(RUN).reset_index(drop=True)


def _loss_collapse(values: np.ndarray) -> int | None:
    """First index from which the loss stays above half-way back to its first value from the running minimum."""
    if len(values) < COLLAPSE_HOLD + 1 or not np.isfinite(values).all():
        return None
    running_min = np.minimum.accumulate(values)
    bound = running_min + COLLAPSE_CLIMB * (values[0] - running_min)
    above = values > bound
    learned = running_min < values[0] * (1 - LEARNED)
    held = np.flip(np.logical_and.accumulate(np.flip(above)))  # above from here to the end
    candidates = np.flatnonzero(held & learned & (np.arange(len(values)) <= len(values) - COLLAPSE_HOLD))
    return int(candidates[0]) if len(candidates) else None


def _accuracy_collapse(values: np.ndarray, chance: float) -> int | None:
    """First index after the best from which accuracy stays within a quarter of the way from chance to the best."""
    if len(values) < 3:
        return None
    best = int(np.argmax(values))
    if values[best] < chance + LEARNED:
        return None
    low = values <= chance + COLLAPSE_ACCURACY * (values[best] - chance)
    held = np.flip(np.logical_and.accumulate(np.flip(low)))
    candidates = np.flatnonzero(held & (np.arange(len(values)) > best) & (np.arange(len(values)) <= len(values) - 2))
    return int(candidates[0]) if len(candidates) else None


def run_summary(history: pd.DataFrame, targets: Sequence[float]) -> pd.DataFrame:
    """One row per model (``summary.csv``): final and validation-selected numbers, divergence, collapse (the
    ``collapsed_step`` rows of the history), and steps to each validation-accuracy target with the resolution its
    evaluations give."""
    models = runs(history).set_index(RUN)
    final = {name: last_values(history, split, metric).set_index(RUN)["value"] for name, (split, metric) in {
        "final_val_accuracy": ("val", "accuracy"), "final_test_accuracy": ("test", "accuracy"),
        "final_test_nll": ("test", "nll"), "final_test_ece": ("test", "ece")}.items()}
    steps = {t: steps_to_target(history, t).set_index(RUN) for t in targets}
    selected = val_selected(history).set_index(RUN)
    best_val = select(history, "val", "accuracy").set_index([*RUN, "step"])["value"]
    dataset = history["dataset"].iloc[0] if "dataset" in history and len(history) else ""
    rows = []
    for key in models.index:
        condition, loss, lr, seed = key
        step = int(selected.loc[key, "step"]) if key in selected.index else -1
        row = {"condition": condition, "dataset": dataset, "loss": loss, "lr": lr, "seed": seed,
               "run": f"{loss}-lr{lr:g}-s{seed}"}
        row.update({name: float(values.get(key, math.nan)) for name, values in final.items()})
        row.update({
            "best_val_accuracy": float(best_val.get((*key, step), math.nan)),
            "best_val_step": step,
            "test_accuracy_at_best_val": float(selected.loc[key, "value"]) if step >= 0 else math.nan,
            "diverged_step": float(models.loc[key, "diverged_step"]),
            "collapsed_step": float(models.loc[key, "collapsed_step"]),
        })
        for target, table in steps.items():
            row[f"steps_to_{target:g}"] = float(table.loc[key, "step"]) if key in table.index else math.nan
            row[f"steps_to_{target:g}_resolution"] = (float(table.loc[key, "resolution"]) if key in table.index
                                                      else math.nan)
        rows.append(row)
    return pd.DataFrame(rows)
