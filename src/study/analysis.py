"""The report's statistics: per-seed summaries, 95% t-intervals, paired tests against the reference loss and their
verdicts (the one vocabulary of paired verdicts), the headline table, steps-to-target, and the per-example tables
(calibration bins, gradient saturation). The tables of each question built on these are ``study.comparisons``; the
source text's claims and the published anchors that read them are ``study.claims`` and ``study.published``.

pandas, numpy and scipy, the loss registry for the losses' order and the reference, and the quantity registry for
what each quantity is (never a loss's name): no plotting, no file I/O, nothing from training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, stats

from study import losses as registry
from study import quantities
from study.measures import (
    RUN,
    healthy,
    last_values,
    runs,
    steps_to_target,
    val_auc,
    val_selected,
)

# Every paired difference is (loss - reference), seed by seed: the registry's reference loss, read once at import
# (the registry refuses a second reference, so a loss registered later cannot change it).
REFERENCE = registry.reference()
LEVEL = 0.95  # confidence level of every interval
SATURATION = 1e-3  # = study.grads.SATURATION, repeated to keep this module free of torch (a test holds them equal)
TEMPERATURE_BOUNDS = (0.05, 20.0)  # = train.fit_temperature's search interval (a test holds them equal)
CONFIDENT = 0.9  # a wrong prediction with max probability >= this is confidently wrong (setup.json carries it too)


def final() -> dict[str, tuple[str, str]]:
    """The headline's per-seed quantities read at the model's last evaluation: {quantity: (split, metric)} of the
    registry's headline quantities (``Quantity.headline``), asked at each call so that a quantity registered later
    is compared too."""
    return {name: source for name, source in quantities.read_last().items() if quantities.spec(name).headline}


# Two quantities the report's statistics name, asked of the registry by how they are read.
VAL_AUC = quantities.read_as("val", "accuracy", "auc")  # the threshold-free speed: validation accuracy over log-steps
SATURATED = quantities.read_as("test", "logit_grad_norm", "saturation")  # the gradient question's primary quantity


def loss_order() -> tuple[str, ...]:
    """The study's fixed order of losses: the registry's, including losses registered at run time."""
    return registry.names()


def ordered(losses: Iterable[str]) -> list[str]:
    """Losses in the study's fixed order; names outside it follow, sorted. A column is reduced to its distinct
    values first (iterating a million-row arrow string column element by element took seconds of the report)."""
    present, order = set(losses.unique() if isinstance(losses, pd.Series) else losses), loss_order()
    return [loss for loss in order if loss in present] + sorted(present - set(order))


def steps_quantity(i: int) -> str:
    """Name of the per-seed quantity 'steps to the i-th target' (1-based): the quantity registry's."""
    return quantities.steps_name(i)


# --------------------------------------------------------------------------------------------------------------
# Intervals and paired tests


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds with a two-sided t-interval; NaN bounds when fewer than two values."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n}


@dataclass(frozen=True)
class Difference:
    """Mean paired difference (loss - reference) over seeds, its t-interval and the paired t-test p-value."""

    mean: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int

    @property
    def within_noise(self) -> bool | None:
        """True when the interval covers 0; None when there is no interval (fewer than two pairs)."""
        if not (math.isfinite(self.ci_low) and math.isfinite(self.ci_high)):
            return None
        return self.ci_low <= 0.0 <= self.ci_high

    @property
    def evidence(self) -> str | None:
        """``evidence`` of this (uncorrected) comparison's p-value."""
        return evidence(self.p_value, self.n)


def finite(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values) if not isinstance(values, (np.ndarray, pd.Series)) else values, dtype=float)
    return array[np.isfinite(array)]


def mean_ci(values: Iterable[float], level: float = LEVEL) -> Estimate:
    """Mean and t-interval of the finite values (non-finite ones are dropped, never averaged)."""
    x = finite(values)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Estimate(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Estimate(mean, mean - half, mean + half, n)


def paired_difference(values: pd.Series, reference: pd.Series, level: float = LEVEL) -> Difference:
    """(values - reference) on the seeds both have, with a t-interval and the paired t-test (two-sided)."""
    joined = pd.concat({"a": values, "b": reference}, axis=1).astype(float)
    joined = joined[np.isfinite(joined["a"]) & np.isfinite(joined["b"])]
    diff = (joined["a"] - joined["b"]).to_numpy()
    est = mean_ci(diff, level)
    if est.n < 2:
        return Difference(est.mean, est.ci_low, est.ci_high, math.nan, est.n)
    sd = float(diff.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(est.mean)):
        # The same difference on every seed: the t statistic is infinite (or 0/0 when the differences are all 0).
        return Difference(est.mean, est.mean, est.mean, 0.0 if est.mean != 0 else 1.0, est.n)
    t = est.mean / (sd / math.sqrt(est.n))  # the paired t-test (scipy.stats.ttest_rel) on the differences
    p_value = float(2 * stats.t.sf(abs(t), est.n - 1))
    return Difference(est.mean, est.ci_low, est.ci_high, p_value, est.n)


def censored_median(steps: Iterable[float]) -> float:
    """Median of steps-to-target where NaN means 'never reached' (right-censored, counted as +inf).

    NaN when at least half the seeds never reached the target (the median is then beyond the run).
    """
    x = np.asarray(list(steps), dtype=float)
    if len(x) == 0:
        return math.nan
    median = float(np.median(np.where(np.isnan(x), np.inf, x)))
    return median if math.isfinite(median) else math.nan


def band(frame: pd.DataFrame, x: str, by: Sequence[str], level: float = LEVEL) -> pd.DataFrame:
    """Mean of ``value`` over seeds at each ``x`` with a t-interval: columns ``*by, x, mean, ci_low, ci_high, n``."""
    data = frame[np.isfinite(frame["value"])]
    grouped = data.groupby([*by, x], sort=True)["value"].agg(["mean", "std", "count"]).reset_index()
    n = grouped["count"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(n > 1, stats.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1)), np.nan)
        half = t * grouped["std"].to_numpy(dtype=float) / np.sqrt(n)
    grouped["ci_low"] = grouped["mean"] - half
    grouped["ci_high"] = grouped["mean"] + half
    return grouped.rename(columns={"count": "n"}).drop(columns="std")


# --------------------------------------------------------------------------------------------------------------
# Headline table


@dataclass(frozen=True)
class Headline:
    """Everything the headline table and metrics.json show, long and per seed.

    per_seed: ``condition, loss, lr, seed, quantity, value`` (steps are NaN when never reached; diverged models have
    no final/best/NLL/ECE/AUC rows). summary: per condition, loss and quantity the mean, t-interval and n, and for
    steps the censored median, n_reached and n_runs. differences: per condition, loss (not the reference) and
    quantity the paired difference to the reference. steps: per model and target the raw steps-to-target table.
    """

    per_seed: pd.DataFrame
    summary: pd.DataFrame
    differences: pd.DataFrame
    steps: pd.DataFrame
    models: pd.DataFrame
    targets: Mapping[str, tuple[float, ...]]


def headline(history: pd.DataFrame, targets: Mapping[str, Sequence[float]], reference: str = REFERENCE,
             saturation: pd.DataFrame | None = None) -> Headline:
    """Per-seed quantities of every condition in ``history``; ``targets`` maps condition -> validation accuracies;
    ``saturation`` (from ``saturation()``) adds the per-seed saturated share, a primary comparison."""
    models = runs(history)
    parts = []
    for quantity, (split, metric) in final().items():
        parts.append(healthy(last_values(history, split, metric), models).assign(quantity=quantity))
    readers = {"selected": val_selected, "auc": val_auc}  # the registry's other per-model readings of the history
    for q in quantities.QUANTITIES:
        if q.reading in readers and q.group in ("accuracy", "speed"):
            parts.append(healthy(readers[q.reading](history), models).assign(quantity=q.name))
        if q.reading == "saturation" and saturation is not None and not saturation.empty:
            parts.append(saturation[np.isfinite(saturation["value"].to_numpy(dtype=float))].assign(quantity=q.name))
    steps = []
    for condition, group in history.groupby("condition", sort=False):
        for i, target in enumerate(targets.get(condition, ()), start=1):
            table = steps_to_target(group, target).assign(quantity=steps_quantity(i))
            steps.append(table)
            parts.append(table[[*RUN, "quantity", "step"]].rename(columns={"step": "value"}))
    per_seed = pd.concat([p[[*RUN, "quantity", "value"]] for p in parts], ignore_index=True)
    per_seed["value"] = per_seed["value"].astype(float)
    steps_table = pd.concat(steps, ignore_index=True) if steps else pd.DataFrame(
        columns=[*RUN, "target", "step", "reached", "censored_at", "quantity"])
    summary = summarise(per_seed)
    if steps:  # how well the evaluations pin each crossing down: the widest bracket over the seeds that reached it
        widest = steps_table.groupby(["condition", "loss", "quantity"])["resolution"].max().rename("resolution")
        summary = summary.merge(widest.reset_index(), on=["condition", "loss", "quantity"], how="left")
    return Headline(
        per_seed=per_seed,
        summary=summary,
        differences=differences(per_seed, reference),
        steps=steps_table,
        models=models,
        targets={c: tuple(float(t) for t in ts) for c, ts in targets.items()},
    )


def summarise(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean and t-interval per condition, loss and quantity; censored median and counts for steps quantities."""
    rows = []
    for (condition, loss, quantity), group in per_seed.groupby(["condition", "loss", "quantity"], sort=False):
        values = group["value"].to_numpy(dtype=float)
        if quantities.is_steps(quantity):
            reached = np.isfinite(values)
            rows.append({"condition": condition, "loss": loss, "quantity": quantity,
                         "mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": len(values),
                         "median": censored_median(values), "n_reached": int(reached.sum())})
        else:
            est = mean_ci(values)
            rows.append({"condition": condition, "loss": loss, "quantity": quantity, **est.as_dict(),
                         "median": math.nan, "n_reached": math.nan})
    return pd.DataFrame(rows, columns=["condition", "loss", "quantity", "mean", "ci_low", "ci_high", "n", "median",
                                       "n_reached"])


# The comparisons the study is built to make, one per mission question (the quantity registry's primary quantities),
# each loss against the reference in every condition: one family per condition, corrected with Holm's method. Every
# other paired comparison belongs to the condition's secondary family, corrected the same way.
PRIMARY = quantities.primary()
ALPHA = 0.05  # family-wise error rate of each family

# How sure a verdict must be to be stated. With five seeds a p-value is itself noisy: another thread count or
# machine changes the float order, which long training turns into a fresh draw of the seeds' noise, and a verdict
# read at p < 0.05 can flip on such a rerun (docs/reproducibility.md counts how often). So a difference is stated
# only when a rerun would repeat it with probability REPLICATION, and an equivalence only when a rerun's two
# one-sided tests would both pass with that probability; in between it is "not established".
REPLICATION = 0.9
# The one vocabulary of paired verdicts (loss against the reference, or against the best).
DIFFERENT = "different"  # a difference a rerun would repeat
EQUIVALENT = "equivalent"  # within the quantity's declared margin (printed with it), shown by two one-sided tests
NOT_ESTABLISHED = "not established"  # neither shown
IDENTICAL = "identical"  # the same value in every seed: no test, and no part in Holm's correction
EVIDENCE = (DIFFERENT, EQUIVALENT, NOT_ESTABLISHED, IDENTICAL)


def replication(p_value: float, n: int, alpha: float = ALPHA, *, sides: int = 2) -> float:
    """Goodman's (1992) replication probability, an approximation: the probability that a rerun with as many seeds
    gives p < ``alpha`` in the same direction, were the observed mean difference and spread the true ones (the
    rerun's t statistic is then noncentral t with n - 1 degrees of freedom, centred on the observed t). ``sides``:
    2 for the paired t-test (p two-sided), 1 for a one-sided test (one side of the TOST). At p = alpha it is about
    0.5. NaN without a test."""
    if not math.isfinite(p_value) or n < 2:
        return math.nan
    df = n - 1
    observed = float(stats.t.isf(min(p_value, 1.0) / sides, df)) if p_value > 0 else math.inf
    chance = float(stats.nct.sf(stats.t.isf(alpha / sides, df), df, observed)) if observed < 1e6 else 1.0
    return chance if math.isfinite(chance) else (1.0 if observed > 0 else 0.0)  # NaN only far out in a tail


def evidence_word(chance: float) -> str | None:
    """DIFFERENT when a rerun repeats the difference with probability at least REPLICATION, NOT_ESTABLISHED
    otherwise (the absence of a difference is never read from a p-value: see ``equivalence``); None without a
    test."""
    if not math.isfinite(chance):
        return None
    return DIFFERENT if chance >= REPLICATION else NOT_ESTABLISHED


def evidence(p_value: float, n: int, alpha: float = ALPHA) -> str | None:
    """The word a paired t-test's p-value on ``n`` seeds supports (``evidence_word`` of its ``replication``). A
    Holm-adjusted p-value is read as it is: the adjustment scales the raw p by the family's step-down factor."""
    return evidence_word(replication(p_value, n, alpha))


def equivalence_chance(p_low: float, p_high: float, n: int, alpha: float = ALPHA) -> float:
    """How likely a rerun's two one-sided tests both pass at ``alpha``: each side's one-sided ``replication``, joined
    by Bonferroni's inequality (P(both) >= P(low) + P(high) - 1), so the approximation errs on the cautious side
    where both bounds are close. NaN without a test."""
    low, high = (replication(p, n, alpha, sides=1) for p in (p_low, p_high))
    if not (math.isfinite(low) and math.isfinite(high)):
        return math.nan
    return max(0.0, low + high - 1.0)


def evidence_bounds(n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """The Holm-adjusted p-values where a verdict on ``n`` seeds becomes stated: below the first (two-sided, the
    t-test) a difference; below the second (one-sided, the TOST's larger p) an equivalence, when the other side of
    the TOST is far from its bound (five seeds: about 0.012 and 0.011)."""

    def where(sides: int) -> float:
        return 10 ** optimize.brentq(lambda lg: replication(10**lg, n, alpha, sides=sides) - REPLICATION, -12.0,
                                     -1e-9, xtol=1e-6)

    return where(2), where(1)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count in the family)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), math.nan)
    index = np.flatnonzero(np.isfinite(p))
    order = index[np.argsort(p[index], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def declared(quantity: str) -> quantities.Quantity | None:
    """The quantity's declaration in the registry (its margin, scale and direction), None when undeclared."""
    return quantities.get(quantity)


COMPARISON_COLUMNS = ["diff", "ci_low", "ci_high", "p_value", "n", "margin", "p_equiv", "p_equiv_low",
                      "p_equiv_high", "ratio", "ratio_low", "ratio_high", "identical"]


def compare(values: pd.Series, reference: pd.Series, quantity: quantities.Quantity | None = None,
            level: float = LEVEL) -> dict:
    """(values - reference) paired by seed, on the seeds where both are finite: the difference and its t-interval in
    the quantity's units, the paired t-test's p, and the two one-sided tests (TOST) of equivalence within the
    declared margin (``p_equiv`` = the larger one-sided p, NaN without a margin).

    A RELATIVE quantity (steps) is tested on log values: the p-values come from log(values) - log(reference),
    whose margin is ±log(1 + margin), and ``ratio``, ``ratio_low``, ``ratio_high`` are the geometric mean of
    values / reference and its t-interval (NaN for other quantities); ``diff`` and its interval stay in steps, a
    description. ``identical``: the same value in every paired seed; then no test is made (p-values NaN).
    """
    joined = pd.concat({"a": values, "b": reference}, axis=1).astype(float)
    log = quantity is not None and quantity.log_scale
    if log:  # log steps: a non-positive value has no log (never seen: a target is not reached at step 0)
        joined = joined.where(joined > 0)
    joined = joined[np.isfinite(joined["a"]) & np.isfinite(joined["b"])]
    a, b = joined["a"].to_numpy(), joined["b"].to_numpy()
    plain = paired_difference(joined["a"], joined["b"], level)
    margin = math.nan if quantity is None else quantity.margin
    row = {"diff": plain.mean, "ci_low": plain.ci_low, "ci_high": plain.ci_high, "p_value": plain.p_value,
           "n": plain.n, "margin": margin, "p_equiv": math.nan, "p_equiv_low": math.nan, "p_equiv_high": math.nan,
           "ratio": math.nan, "ratio_low": math.nan, "ratio_high": math.nan,
           "identical": bool(len(a) > 0 and np.all(np.abs(a - b) <= 1e-12 * np.maximum(1.0, np.abs(b))))}
    if row["identical"]:
        row["p_value"] = math.nan
        if log:
            row.update(ratio=1.0, ratio_low=1.0, ratio_high=1.0)
        return row
    tested = np.log(a) - np.log(b) if log else a - b
    if log:
        on_log = paired_difference(pd.Series(np.log(a)), pd.Series(np.log(b)), level)
        row.update(p_value=on_log.p_value, ratio=math.exp(on_log.mean), ratio_low=math.exp(on_log.ci_low)
                   if math.isfinite(on_log.ci_low) else math.nan,
                   ratio_high=math.exp(on_log.ci_high) if math.isfinite(on_log.ci_high) else math.nan)
    if quantity is not None and len(tested) >= 2:
        row["p_equiv_low"], row["p_equiv_high"] = tost(tested, quantity.test_margin)
        row["p_equiv"] = max(row["p_equiv_low"], row["p_equiv_high"])
    return row


def tost(differences: np.ndarray, margin: float) -> tuple[float, float]:
    """Two one-sided paired t-tests (Schuirmann 1987) of the mean difference against -margin and +margin: the
    p-values of H0: mean <= -margin and of H0: mean >= +margin. Equivalence at alpha needs both below alpha (the
    larger one is the TOST's p). A spread of 0 makes each side 0 or 1 by where the mean lies."""
    d = np.asarray(differences, dtype=float)
    n, mean = len(d), float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se <= 1e-12 * max(1.0, abs(mean)):
        return (0.0 if mean > -margin else 1.0), (0.0 if mean < margin else 1.0)
    return float(stats.t.sf((mean + margin) / se, n - 1)), float(stats.t.cdf((mean - margin) / se, n - 1))


def decide(family: pd.DataFrame) -> pd.DataFrame:
    """Holm's correction and the verdict of every comparison of one family (rows from ``compare``).

    The difference p-values and the TOST p-values are corrected as two sets, each with Holm's method over the
    family's tested comparisons; an IDENTICAL comparison has neither and takes no part. Why two sets and not one:
    the two null hypotheses of a comparison are disjoint (no difference; a difference beyond the margin), so a
    comparison can make at most one false claim, and each set's family-wise error is at most its Holm level. A
    verdict is stated only when the adjusted p gives a rerun the chance REPLICATION to repeat it, which needs an
    adjusted p below ``evidence_bounds`` (at most 0.021 for either set from three seeds on): both sets together
    keep the family-wise error below ALPHA. The replication rule is also what keeps verdicts stable across
    machines (another thread count redraws the seeds' noise).

    Verdicts: IDENTICAL; DIFFERENT (the Holm-adjusted t-test p's replication probability at least REPLICATION);
    EQUIVALENT (the TOST's two sides, each scaled by the Holm factor of the larger, give ``equivalence_chance`` at
    least REPLICATION); NOT_ESTABLISHED otherwise; None without a test (fewer than two pairs). A difference smaller
    than the margin yet established is DIFFERENT: the stronger, signed statement.
    """
    out = family.copy()
    identical = out["identical"].astype(bool).to_numpy()
    p = np.where(identical, math.nan, out["p_value"].to_numpy(dtype=float))
    p_equiv = np.where(identical, math.nan, out["p_equiv"].to_numpy(dtype=float))
    out["p_value"], out["p_equiv"] = p, p_equiv
    out["p_holm"], out["p_equiv_holm"] = holm(p), holm(p_equiv)
    words = []
    for row in out.itertuples(index=False):
        n = int(row.n)
        if row.identical:
            words.append(IDENTICAL)
            continue
        word = evidence(row.p_holm, n)
        if word == NOT_ESTABLISHED and math.isfinite(row.p_equiv_holm):
            scale = row.p_equiv_holm / row.p_equiv if row.p_equiv > 0 else 1.0
            low, high = (min(1.0, side * scale) for side in (row.p_equiv_low, row.p_equiv_high))
            if equivalence_chance(low, high, n) >= REPLICATION:
                word = EQUIVALENT
        words.append(word)
    # object, not pandas' string dtype: an untested comparison keeps None (a string column would make it NaN)
    out["verdict"] = pd.Series(words, index=out.index, dtype=object)
    out["evidence"] = out["verdict"]  # the former name of the column
    return out


DIFFERENCE_COLUMNS = ["condition", "loss", "quantity", "diff", "ci_low", "ci_high", "p_value", "n", "family",
                      "p_holm", "evidence", "margin", "p_equiv", "p_equiv_holm", "verdict", "ratio", "ratio_low",
                      "ratio_high"]


def differences(per_seed: pd.DataFrame, reference: str = REFERENCE) -> pd.DataFrame:
    """Paired comparison (loss - reference) by seed for every condition, loss and quantity (``compare``), with
    Holm-adjusted p-values within the condition's primary or secondary family (``family``, ``p_holm``,
    ``p_equiv_holm``) and the verdict (``verdict``, also as ``evidence``: DIFFERENT, EQUIVALENT, NOT_ESTABLISHED,
    IDENTICAL, or None without a test); ``decide`` says how. ``margin``: the quantity's declared margin (relative
    for steps: a ratio within 1 ± margin; NaN when the registry declares none, and then no equivalence is tested).

    Steps-to-target pairs only the seeds where both models reached the target (the others are counted in the
    summary's n_reached) and is tested on log steps (``ratio`` columns). Intervals are the uncorrected 95% ones.
    """
    rows = []
    for (condition, quantity), group in per_seed.groupby(["condition", "quantity"], sort=False):
        by_loss = {loss: g.set_index("seed")["value"] for loss, g in group.groupby("loss")}
        if reference not in by_loss:
            continue
        spec = declared(quantity)
        for loss in ordered(by_loss):
            if loss == reference:
                continue
            rows.append({"condition": condition, "loss": loss, "quantity": quantity,
                         **compare(by_loss[loss], by_loss[reference], spec),
                         "family": "primary" if quantity in PRIMARY else "secondary"})
    frame = pd.DataFrame(rows, columns=["condition", "loss", "quantity", *COMPARISON_COLUMNS, "family"])
    if frame.empty:
        return pd.DataFrame(columns=DIFFERENCE_COLUMNS)
    parts = [decide(group) for _, group in frame.groupby(["condition", "family"], sort=False)]
    out = pd.concat(parts).sort_index()
    return out[DIFFERENCE_COLUMNS].reset_index(drop=True)


@dataclass(frozen=True)
class Leaders:
    """Which losses lead on a quantity: ``best`` has the best mean; ``tied`` (in the registry's order, ``best``
    among them) are those whose verdict against ``best`` (``decide``, Holm over the comparisons with ``best``) is
    EQUIVALENT within the quantity's margin or IDENTICAL. A loss merely not established as different is not among
    them. A ranking inside ``tied`` is noise: another thread count can reorder it, so a finding names the group."""

    best: str
    tied: tuple[str, ...]
    means: dict[str, float]
    alone: bool  # True when no other loss is shown equivalent to ``best``
    verdicts: dict[str, str | None] = field(default_factory=dict)  # each other loss's verdict against ``best``


def leaders(by_loss: Mapping[str, pd.Series], higher_is_better: bool | None = None, *, quantity: str | None = None,
            margin: float | None = None) -> Leaders | None:
    """``by_loss``: each loss's values indexed by seed. ``quantity`` names the registry's declaration (direction and
    margin); ``higher_is_better`` and ``margin`` (absolute) override it. Without a margin only IDENTICAL losses tie.
    None when no loss has a finite mean."""
    spec = declared(quantity) if quantity is not None else None
    if higher_is_better is None:
        if spec is None or spec.higher_is_better is None:
            raise ValueError(f"leaders: no direction for {quantity!r}; pass higher_is_better")
        higher_is_better = spec.higher_is_better
    if margin is not None:
        spec = quantities.Quantity(quantity or "given", "given", ("", ""), higher_is_better, margin)
    means = {loss: mean_ci(values).mean for loss, values in by_loss.items()}
    means = {loss: m for loss, m in means.items() if math.isfinite(m)}
    if not means:
        return None
    # Ties on the mean are broken by the registry's order, never by dictionary or float order.
    best = min(ordered(means), key=lambda loss: -means[loss] if higher_is_better else means[loss])
    others = [loss for loss in ordered(means) if loss != best]
    words: dict[str, str | None] = {}
    if others:
        found = pd.DataFrame([compare(by_loss[loss], by_loss[best], spec) for loss in others],
                             columns=COMPARISON_COLUMNS)
        words = dict(zip(others, decide(found)["verdict"], strict=True))
    tied = {best, *(loss for loss, word in words.items() if word in (EQUIVALENT, IDENTICAL))}
    return Leaders(best, tuple(ordered(tied)), means, alone=len(tied) == 1, verdicts=words)


def lookup(frame: pd.DataFrame, **keys) -> dict | None:
    """The single row of ``frame`` matching ``keys`` as a dict, or None."""
    mask = np.ones(len(frame), dtype=bool)
    for column, value in keys.items():
        mask &= (frame[column] == value).to_numpy()
    rows = frame[mask]
    return None if rows.empty else rows.iloc[0].to_dict()


# --------------------------------------------------------------------------------------------------------------
# Per-example tables (examples.parquet)


def last_evaluation(examples: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of ``split`` at each model's last evaluation."""
    rows = examples[examples["split"] == split]
    if rows.empty:
        return rows
    last = rows.groupby(RUN)["step"].transform("max")
    return rows[rows["step"] == last]


def saturation(examples: pd.DataFrame, threshold: float = SATURATION) -> pd.DataFrame:
    """Per model, among WRONG examples of the whole test set at its last evaluation, the share whose per-example
    logit-gradient norm is below ``threshold``. Columns ``RUN, n_wrong, n_saturated, value`` (value NaN when nothing
    is wrong)."""
    probe = last_evaluation(examples, "test")
    probe = probe[np.isfinite(probe["logit_grad_norm"].to_numpy(dtype=float))]
    wrong = probe.assign(wrong=probe["predicted"] != probe["label"],
                         saturated=(probe["predicted"] != probe["label"]) & (probe["logit_grad_norm"] < threshold))
    out = wrong.groupby(RUN)[["wrong", "saturated"]].sum().reset_index()
    out = out.rename(columns={"wrong": "n_wrong", "saturated": "n_saturated"})
    with np.errstate(invalid="ignore", divide="ignore"):
        out["value"] = np.where(out["n_wrong"] > 0, out["n_saturated"] / out["n_wrong"].clip(lower=1), np.nan)
    return out


def calibration_bins(examples: pd.DataFrame, bins: int = 15) -> pd.DataFrame:
    """Reliability-diagram bins of the last ``test`` evaluation, pooled over seeds: equal-width bins over the max
    probability with (lower, upper] membership (Guo et al. 2017). Columns ``condition, loss, bin, lower, upper,
    count, accuracy, confidence``; empty bins are left out."""
    test = last_evaluation(examples, "test")
    conf = test["confidence"].to_numpy(dtype=float)
    keep = np.isfinite(conf)
    test, conf = test[keep], conf[keep]
    index = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    frame = pd.DataFrame({
        "condition": test["condition"].to_numpy(), "loss": test["loss"].to_numpy(), "bin": index,
        "correct": (test["predicted"].to_numpy() == test["label"].to_numpy()).astype(float), "confidence": conf,
    })
    out = frame.groupby(["condition", "loss", "bin"]).agg(
        count=("correct", "size"), accuracy=("correct", "mean"), confidence=("confidence", "mean")).reset_index()
    out["lower"] = out["bin"] / bins
    out["upper"] = (out["bin"] + 1) / bins
    return out


def ece_from_bins(bins: pd.DataFrame) -> float:
    """Expected calibration error of pooled bins: sum_b n_b/n |acc_b - conf_b|."""
    total = bins["count"].sum()
    if total == 0:
        return math.nan
    return float((bins["count"] / total * (bins["accuracy"] - bins["confidence"]).abs()).sum())


def wrong_examples(examples: pd.DataFrame) -> pd.DataFrame:
    """Misclassified examples of each model's last ``test`` evaluation."""
    test = last_evaluation(examples, "test")
    return test[test["predicted"] != test["label"]]


def classes_from_penalty(penalty: pd.DataFrame | None) -> int | None:
    """The number of classes K of the probe sweep: at margin 0 every logit is equal and p_true = 1/K."""
    if penalty is None or penalty.empty:
        return None
    row = penalty.loc[penalty["margin"].abs().idxmin()]
    return round(1 / float(row["p_true"])) if abs(float(row["margin"])) < 1e-9 and row["p_true"] > 0 else None


def binned_median(frame: pd.DataFrame, x: str, y: str, edges: np.ndarray) -> pd.DataFrame:
    """Median of ``y`` in bins of ``x`` (columns ``x, y, n``; x is the bin's geometric centre)."""
    data = frame[np.isfinite(frame[x].to_numpy(dtype=float)) & np.isfinite(frame[y].to_numpy(dtype=float))]
    index = np.digitize(data[x].to_numpy(dtype=float), edges) - 1
    inside = (index >= 0) & (index < len(edges) - 1)
    grouped = pd.DataFrame({"bin": index[inside], y: data[y].to_numpy(dtype=float)[inside]}).groupby("bin")[y]
    out = grouped.agg(["median", "size"]).reset_index()
    centres = np.sqrt(edges[:-1] * edges[1:]) if edges[0] > 0 else (edges[:-1] + edges[1:]) / 2
    return pd.DataFrame({x: centres[out["bin"].to_numpy()], y: out["median"].to_numpy(), "n": out["size"].to_numpy()})
