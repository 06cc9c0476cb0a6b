"""The tables of the study's questions beyond the headline, built on ``study.analysis``'s statistics: held-out
classes (each loss's own score), label noise, corrections of confident mistakes, the learning-rate views, speed
three ways, and the numbers of ``results/metrics.json``.

pandas, numpy, the loss and quantity registries and ``study.analysis``: no plotting, no file I/O, nothing from training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from study import losses as registry
from study import quantities
from study.analysis import (
    REFERENCE,
    Difference,
    Headline,
    censored_median,
    compare,
    declared,
    lookup,
    mean_ci,
    ordered,
    paired_difference,
    steps_quantity,
    summarise,
)
from study.measures import RUN, best_values, healthy, last_values, runs, select, steps_to_target, val_selected

# --------------------------------------------------------------------------------------------------------------
# Per-seed values at the last evaluation, for any list of measurements


def final_table(history: pd.DataFrame, specs: Mapping[str, tuple[str, str]]) -> pd.DataFrame:
    """Summary (mean, t-interval, n) of ``{quantity: (split, metric)}`` at each healthy model's last evaluation."""
    models = runs(history)
    parts = [healthy(last_values(history, s, m), models).assign(quantity=q) for q, (s, m) in specs.items()]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return summarise(pd.DataFrame(columns=[*RUN, "quantity", "value"]))
    per_seed = pd.concat([p[[*RUN, "quantity", "value"]] for p in parts], ignore_index=True)
    return summarise(per_seed)


# "None of the above": the held-out-class measurements (study.ood) are the quantity registry's "heldout" group.
NATURAL = quantities.derived("heldout")[0]  # the AUROC of each loss's own score
NONE_HELDOUT = quantities.read_as("heldout", "none_share")  # share of held-out-class images answered "none"
NONE_TRAINED = quantities.read_as("test", "none_share")  # the same on the trained classes' test images
NONE_SHARES = (NONE_HELDOUT, NONE_TRAINED)
SOFTMAX_SCORE = quantities.max_probability_auroc("softmax")
SIGMOID_SCORE = quantities.max_probability_auroc("sigmoid")


def natural_score(loss: str) -> str:
    """The held-out AUROC of ``loss``'s own score: the maximum of the probabilities it is trained to output (the
    loss registry's ``probabilities``); max softmax for a loss that models none or is not registered."""
    probabilities = registry.spec(loss).probabilities if loss in registry.names() else "softmax"
    return quantities.max_probability_auroc(probabilities) or SOFTMAX_SCORE


# Each registered loss whose own score is not the max softmax: {loss: its held-out AUROC quantity}.
NATURAL_SCORE = {loss: natural_score(loss) for loss in registry.names() if natural_score(loss) != SOFTMAX_SCORE}


def heldout_per_seed(history: pd.DataFrame) -> pd.DataFrame:
    """Per-seed held-out quantities (the registry's "heldout" group) at each healthy model's last evaluation, plus
    NATURAL (the AUROC of the loss's own score, ``natural_score``). Long: ``RUN, quantity, value``; empty without
    held-out classes."""
    if not (history["split"] == "heldout").any():
        return pd.DataFrame(columns=[*RUN, "quantity", "value"])
    models = runs(history)
    parts = [healthy(last_values(history, split, metric), models).assign(quantity=q)
             for q, (split, metric) in quantities.read_last("heldout").items()]
    parts = [p[[*RUN, "quantity", "value"]] for p in parts if not p.empty]
    per_seed = pd.concat(parts, ignore_index=True)
    scores = {loss: natural_score(loss) for loss in per_seed["loss"].unique()}
    own = per_seed["quantity"] == per_seed["loss"].map(scores)
    return pd.concat([per_seed, per_seed[own].assign(quantity=NATURAL)], ignore_index=True)


def heldout_difference(per_seed: pd.DataFrame, condition: str, a: tuple[str, str], b: tuple[str, str]
                       ) -> Difference:
    """Paired by seed: quantity a[1] of loss a[0] minus quantity b[1] of loss b[0] in ``condition``."""
    def series(loss: str, quantity: str) -> pd.Series:
        rows = per_seed[(per_seed["condition"] == condition) & (per_seed["loss"] == loss)
                        & (per_seed["quantity"] == quantity)]
        return rows.set_index("seed")["value"]

    return paired_difference(series(*a), series(*b))


# The label-noise table's quantities, from the quantity registry: test accuracy at the validation-selected best and
# at the end, the label_noise group's readings, and the accuracy lost between the two (the group's derived one).
SELECTED = quantities.read_as("test", "accuracy", "selected")
FINAL_ACCURACY = quantities.read_as("test", "accuracy")
NOISE_DROP = quantities.derived("label_noise")[0]
TEMPERATURE = quantities.read_as("val", "temperature")


# --------------------------------------------------------------------------------------------------------------
# What the losses leave in the penultimate layer: class separation and transfer (study.features)

SEPARATION = quantities.read_as("test", "class_separation")  # Kornblith et al.'s R^2 on the test set
TRANSFER = quantities.read_as("transfer", "heldout_accuracy")  # a linear probe's accuracy on never-seen classes
# (x, y, the sign Kornblith et al. 2021 found across objectives): per-model quantities whose rank correlation the
# features section reports. Their objectives with higher accuracy separated classes more and transferred worse.
CORRELATED = ((FINAL_ACCURACY, SEPARATION, +1), (SEPARATION, TRANSFER, -1), (FINAL_ACCURACY, TRANSFER, -1))
CORRELATION_ALPHA = 0.05  # a rank correlation is read as shown when its two-sided p is below this
AS_PUBLISHED, OPPOSITE, NO_CORRELATION = "in Kornblith et al.'s direction", "against Kornblith et al.'s direction", (
    "no correlation shown")


def correlation_reading(rho: float, p_value: float, sign: int) -> str:
    """How a rank correlation reads against the published sign: shown (p below CORRELATION_ALPHA) in its
    direction, shown against it, or not shown."""
    if not (math.isfinite(p_value) and p_value < CORRELATION_ALPHA):
        return NO_CORRELATION
    return AS_PUBLISHED if np.sign(rho) == sign else OPPOSITE


CORRELATION_COLUMNS = ["condition", "x", "y", "rho", "p_value", "n", "reading"]


def transfer_correlations(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per condition with a transfer probe, Spearman's rank correlation over every model (loss and seed) of each
    pair in CORRELATED: does higher in-task accuracy or class separation go with worse transfer (Kornblith et
    al. 2021)? Columns CORRELATION_COLUMNS (``reading``: ``correlation_reading``); scipy's two-sided test of rho = 0
    (an asymptotic t approximation, fair from about 10 models)."""
    rows = []
    wide = per_seed.pivot_table(index=["condition", "loss", "seed"], columns="quantity", values="value",
                                aggfunc="first")
    if TRANSFER not in wide:
        return pd.DataFrame(columns=CORRELATION_COLUMNS)
    for condition, group in wide.groupby(level="condition", sort=False):
        if group[TRANSFER].notna().sum() < 3:
            continue
        for x, y, sign in CORRELATED:
            if x not in group or y not in group:
                continue
            pair = group[[x, y]].dropna()
            if len(pair) < 3 or pair[x].nunique() < 2 or pair[y].nunique() < 2:
                continue
            found = stats.spearmanr(pair[x], pair[y])
            rho, p_value = float(found.statistic), float(found.pvalue)
            rows.append({"condition": condition, "x": x, "y": y, "rho": rho, "p_value": p_value, "n": len(pair),
                         "reading": correlation_reading(rho, p_value, sign)})
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def label_noise(history: pd.DataFrame) -> pd.DataFrame:
    """Per-seed label-noise measurements: test accuracy at the validation-selected best and at the end, NOISE_DROP
    (the accuracy lost between them), and the registry's label_noise quantities (memorised and recovered shares of
    the flipped training examples, the peak after step 0, clean-train accuracy). Long: ``RUN, quantity, value``."""
    models = runs(history)
    parts = [healthy(val_selected(history), models).assign(quantity=SELECTED),
             healthy(last_values(history, "test", "accuracy"), models).assign(quantity=FINAL_ACCURACY)]
    for q in quantities.QUANTITIES:
        if q.group != "label_noise" or q.reading not in ("last", "peak"):
            continue
        # The peak of training: at step 0 the shared random initialisation agrees with some noisy labels by chance.
        read = (last_values(history, *q.source) if q.reading == "last"
                else best_values(history, *q.source, after_step=0))
        parts.append(healthy(read, models).assign(quantity=q.name))
    per_seed = pd.concat([p[[*RUN, "quantity", "value"]] for p in parts if not p.empty], ignore_index=True)
    if per_seed.empty:
        return per_seed
    wide = per_seed.pivot_table(index=RUN, columns="quantity", values="value").reset_index()
    if {SELECTED, FINAL_ACCURACY} <= set(wide.columns):
        drop = wide[RUN].assign(quantity=NOISE_DROP, value=wide[SELECTED] - wide[FINAL_ACCURACY])
        per_seed = pd.concat([per_seed, drop], ignore_index=True)
    return per_seed


def corrections(history: pd.DataFrame) -> pd.DataFrame:
    """Per model, of the watched training examples that were confidently wrong at one full evaluation, the share
    classified right at the next, pooled over the evaluations (weighted by how many were confidently wrong).
    Long: ``RUN, quantity ('confident_wrong_corrected', 'confident_wrong_seen'), value``."""
    before = select(history, "train_subset", "confident_wrong_before")[[*RUN, "step", "value"]]
    share = select(history, "train_subset", "confident_wrong_corrected")[[*RUN, "step", "value"]]
    both = before.merge(share, on=[*RUN, "step"], suffixes=("_before", "_share"))
    both = both[both["value_before"] > 0]
    if both.empty:
        return pd.DataFrame(columns=[*RUN, "quantity", "value"])
    both = both.assign(fixed=both["value_before"] * both["value_share"])
    pooled = both.groupby(RUN)[["fixed", "value_before"]].sum().reset_index()
    return pd.concat([
        pooled[RUN].assign(quantity="confident_wrong_corrected", value=pooled["fixed"] / pooled["value_before"]),
        pooled[RUN].assign(quantity="confident_wrong_seen", value=pooled["value_before"]),
    ], ignore_index=True)


# --------------------------------------------------------------------------------------------------------------
# Learning-rate views from the tuning stage


def tuning_scores(tune: pd.DataFrame) -> pd.DataFrame:
    """Final validation accuracy of every tuning run (diverged runs get ``diverged=True`` and value NaN; collapsed
    ones ``collapsed=True`` and keep their final value)."""
    models = runs(tune)
    last = last_values(tune, "val", "accuracy").merge(models[[*RUN, "diverged", "collapsed"]], on=RUN, how="right")
    last.loc[last["diverged"], "value"] = math.nan
    return last


def lr_views(tune: pd.DataFrame, lrs: Mapping[str, float], targets: Sequence[float], reference: str = REFERENCE
             ) -> pd.DataFrame:
    """Each loss at its own tuned lr and at the reference loss's tuned lr, from the tuning runs of one condition.

    Columns ``loss, view ('own lr' | 'shared lr'), lr, final_val_accuracy, steps_to_target (median), n_reached, n``.
    Empty when the reference lr is unknown or a needed lr is not in the grid.
    """
    if reference not in lrs:
        return pd.DataFrame()
    scores = tuning_scores(tune)
    rows = []
    for loss in ordered(lrs):
        for view, lr in (("own lr", lrs[loss]), ("shared lr", lrs[reference])):
            mask = (scores["loss"] == loss) & np.isclose(scores["lr"].astype(float), lr, rtol=1e-9, atol=0)
            if not mask.any():
                continue
            chosen = tune[(tune["loss"] == loss) & np.isclose(tune["lr"].astype(float), lr, rtol=1e-9, atol=0)]
            row = {"loss": loss, "view": view, "lr": float(lr),
                   "final_val_accuracy": mean_ci(scores.loc[mask, "value"]).mean,
                   "n_diverged": int(scores.loc[mask, "diverged"].sum()), "n": int(mask.sum())}
            if targets:
                steps = steps_to_target(chosen, targets[0])
                row["steps_to_target"] = censored_median(steps["step"])
                row["n_reached"] = int(steps["reached"].sum())
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# Speed three ways


def speed_ratios(head: Headline, quantity: str | None = None) -> pd.DataFrame:
    """For a forest plot: per condition and loss (not the reference) the geometric mean over paired seeds of loss
    steps / reference steps to the first target (``quantity``), its 95% interval, the pairs and the verdict.
    Columns ``condition, loss, ratio, ci_low, ci_high, n, verdict``."""
    quantity = quantity or steps_quantity(1)
    rows = head.differences[head.differences["quantity"] == quantity]
    out = rows[["condition", "loss", "ratio", "ratio_low", "ratio_high", "n", "verdict"]].rename(
        columns={"ratio_low": "ci_low", "ratio_high": "ci_high"})
    return out.reset_index(drop=True)


SPEED_VIEWS = ("tuned", "envelope", "shared")  # at the loss's tuned rate; best stable grid rate; the reference's rate
SPEED_COLUMNS = ["condition", "loss", "view", "lr", "steps", "n_reached", "n", "ratio", "ratio_low", "ratio_high",
                 "direction", "agrees", "best_lr", "peak_lr"]


def _direction(ratio: float) -> str | None:
    if not math.isfinite(ratio):
        return None
    return "faster" if ratio < 1 else "slower" if ratio > 1 else "same"


def _tune_steps(tune: pd.DataFrame, loss: str, lr: float, target: float) -> pd.Series:
    """Steps to ``target`` of the tuning runs of ``loss`` at ``lr``, by seed (NaN: never reached)."""
    runs_at = tune[(tune["loss"] == loss) & np.isclose(tune["lr"].astype(float), lr, rtol=1e-9, atol=0)]
    if runs_at.empty:
        return pd.Series(dtype=float)
    return steps_to_target(runs_at, target).set_index("seed")["step"].astype(float)


def speed_views(head: Headline, tunes: Mapping[str, pd.DataFrame], lr_files: Mapping[str, Mapping],
                reference: str = REFERENCE) -> pd.DataFrame:
    """Steps to the first target per condition and loss, three ways (``view``): 'tuned', each loss at its tuned rate
    (the training seeds); 'envelope', the best over its stable grid rates (the tuning runs and their seeds; a rate
    is stable when no tune seed diverged or collapsed there and lr.json does not list it as unstable); 'shared', at
    the reference's tuned rate (the tuning runs). ``steps``: censored median; ``ratio``: geometric mean over paired
    seeds of loss / reference steps in the same view, with its interval; ``direction`` against the reference
    ('faster' / 'slower'); ``agrees``: the same direction in all three views (False when a view is missing: then
    the ordering is not shown to be the loss's rather than the rate rule's). ``best_lr`` and ``peak_lr`` come from
    lr.json's ``best_lrs`` / ``peak_lrs`` when present. ``tunes``: condition -> tune.csv; ``lr_files``:
    condition -> lr.json."""
    q = steps_quantity(1)
    spec = declared(q)
    rows = []
    for condition, targets in head.targets.items():
        if not targets or condition not in lr_files:
            continue
        lr_file, tune = lr_files[condition], tunes.get(condition)
        lrs = lr_file.get("lrs", {})
        mine = head.per_seed[(head.per_seed["condition"] == condition) & (head.per_seed["quantity"] == q)]
        trained = {loss: g.set_index("seed")["value"].astype(float) for loss, g in mine.groupby("loss")}
        envelope: dict[str, tuple[float, pd.Series]] = {}
        shared: dict[str, pd.Series] = {}
        if tune is not None and not tune.empty:
            scores = tuning_scores(tune)
            for loss in ordered(scores["loss"]):
                theirs = scores[scores["loss"] == loss]
                bad = theirs.groupby("lr")[["diverged", "collapsed"]].any().any(axis=1)
                unstable = {float(x) for x in lr_file.get("unstable", {}).get(loss, [])}
                best = None
                for lr in sorted(float(x) for x in bad.index[~bad.to_numpy()]):
                    if any(math.isclose(lr, u) for u in unstable):
                        continue
                    steps = _tune_steps(tune, loss, lr, targets[0])
                    median = censored_median(steps)
                    if math.isfinite(median) and (best is None or median < best[0]):
                        best = (median, lr, steps)
                if best is not None:
                    envelope[loss] = (best[1], best[2])
                if reference in lrs:
                    shared[loss] = _tune_steps(tune, loss, float(lrs[reference]), targets[0])
        views = {"tuned": ({loss: lrs.get(loss, math.nan) for loss in trained}, trained),
                 "envelope": ({loss: lr for loss, (lr, _) in envelope.items()},
                              {loss: s for loss, (_, s) in envelope.items()}),
                 "shared": ({loss: float(lrs[reference]) for loss in shared} if reference in lrs else {}, shared)}
        losses = ordered({*trained, *envelope, *shared})
        found = []
        for loss in losses:
            for view, (rates, steps) in views.items():
                if loss not in steps:
                    continue
                row = {"condition": condition, "loss": loss, "view": view, "lr": float(rates.get(loss, math.nan)),
                       "steps": censored_median(steps[loss]), "n_reached": int(np.isfinite(steps[loss]).sum()),
                       "n": len(steps[loss]), "ratio": math.nan, "ratio_low": math.nan, "ratio_high": math.nan,
                       "best_lr": _plain_float(lr_file.get("best_lrs", {}).get(loss)),
                       "peak_lr": _plain_float(lr_file.get("peak_lrs", {}).get(loss))}
                if reference in steps:
                    c = compare(steps[loss], steps[reference], spec)
                    row.update(ratio=c["ratio"], ratio_low=c["ratio_low"], ratio_high=c["ratio_high"])
                    if not math.isfinite(row["ratio"]) and math.isfinite(row["steps"]):
                        ref_median = censored_median(steps[reference])  # no pairs: the medians' ratio
                        row["ratio"] = row["steps"] / ref_median if math.isfinite(ref_median) else math.nan
                row["direction"] = _direction(row["ratio"])
                found.append(row)
        for loss in losses:
            directions = [r["direction"] for r in found if r["loss"] == loss]
            agrees = len(directions) == len(SPEED_VIEWS) and None not in directions and len(set(directions)) == 1
            for r in found:
                if r["loss"] == loss:
                    r["agrees"] = agrees
        rows.extend(found)
    return pd.DataFrame(rows, columns=SPEED_COLUMNS)


def _plain_float(value) -> float:
    return math.nan if value is None else float(value)


# --------------------------------------------------------------------------------------------------------------
# metrics.json


def _plain(value: float | int | None) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def metrics(head: Headline) -> dict:
    """The headline numbers that `dvc metrics show` and `dvc exp show` compare, three per condition and loss:
    {condition: {loss: {test_accuracy, steps_to_target, ece}}}. Final test accuracy and ECE are means over the
    seeds that did not diverge; steps_to_target is the median over seeds of the optimizer steps until validation
    accuracy first reached the condition's first target (None when most seeds never did). Intervals, counts and
    everything else stay in the report and the tables under results/. NaN becomes None (JSON null)."""
    out: dict = {}
    for condition in head.targets:
        models = head.models[head.models["condition"] == condition]
        out[condition] = {}
        for loss in ordered(models["loss"]):
            def value(quantity: str, statistic: str, condition: str = condition, loss: str = loss) -> float | None:
                row = lookup(head.summary, condition=condition, loss=loss, quantity=quantity) or {}
                return _plain(row.get(statistic, math.nan))

            out[condition][loss] = {
                "test_accuracy": value(FINAL_ACCURACY, "mean"),
                "steps_to_target": value(steps_quantity(1), "median"),
                "ece": value("ece", "mean"),
            }
    return out
