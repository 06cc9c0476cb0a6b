"""The report's statistics: per-seed summaries, 95% t-intervals, paired tests against the reference loss,
steps-to-target, calibration bins, gradient saturation, the measured claims and the content of ``results/metrics.json``.

pandas, numpy and scipy, and the loss registry for the losses' order, the reference and the losses each claim
compares (never a loss's name): no plotting, no file I/O, nothing from training.
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
from study import verdicts
from study.measures import (
    RUN,
    best_values,
    healthy,
    last_values,
    runs,
    select,
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

# Per-seed quantities of the headline table read at the model's last evaluation: {quantity: (split, metric)}, from the
# quantity registry (the headline's estimates and the calibration in each loss's own terms).
FINAL = {name: source for name, source in quantities.read_last().items()
         if quantities.spec(name).headline or name == "ece_own"}
VERDICTS = verdicts.VERDICTS
UNMEASURED = "not measured"  # the verdict on a claim no condition of this study measures


def verdict_bucket(text: str) -> str:
    """The verdict as counted: one of VERDICTS, or "not measured" for a claim no condition of the study measured.
    Anything else is a stage writing outside the shared vocabulary (study.verdicts), which is a bug."""
    if text in VERDICTS or text == UNMEASURED:
        return text
    raise ValueError(f"unknown verdict {text!r}: claims.csv and analysis write one of {VERDICTS} (study.verdicts)")


def loss_order() -> tuple[str, ...]:
    """The study's fixed order of losses: the registry's, including losses registered at run time."""
    return registry.names()


def ordered(losses: Iterable[str]) -> list[str]:
    """Losses in the study's fixed order; names outside it follow, sorted. A column is reduced to its distinct
    values first (iterating a million-row arrow string column element by element took seconds of the report)."""
    present, order = set(losses.unique() if isinstance(losses, pd.Series) else losses), loss_order()
    return [loss for loss in order if loss in present] + sorted(present - set(order))


def _taking_part(claim: str, given: Sequence[str] | None) -> tuple[str, ...]:
    """The losses a claim compares with the reference: ``given``, or the registry's losses that take part in it."""
    return registry.taking_part(claim) if given is None else tuple(given)


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
    for quantity, (split, metric) in FINAL.items():
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

# How sure a verdict must be to be stated. With five seeds a p-value is itself noisy: the same params rerun with
# another thread count (a different float order, which long training turns into a fresh draw of the seeds' noise)
# moved 12 of 170 paired verdicts across p = 0.05, one from Holm p = 0.0018 to 0.23 (README, "Same params, another
# machine"). So a difference is stated only when a rerun would repeat it with probability REPLICATION, and an
# equivalence only when a rerun's two one-sided tests would both pass with that probability; in between it is "not
# established".
REPLICATION = 0.9
# The one vocabulary of paired verdicts (loss against the reference, or against the best).
DIFFERENT = "different"  # a difference a rerun would repeat
EQUIVALENT = "equivalent"  # within the quantity's declared margin (printed with it), shown by two one-sided tests
NOT_ESTABLISHED = "not established"  # neither shown
IDENTICAL = "identical"  # the same value in every seed: no test, and no part in Holm's correction
EVIDENCE = (DIFFERENT, EQUIVALENT, NOT_ESTABLISHED, IDENTICAL)
ALIKE = EQUIVALENT  # the former word for 'no difference found'; kept for document.py and rerun.py until they move


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


# "None of the above": the held-out-class measurements at each model's last evaluation (study.ood).
HELDOUT = {
    "auroc_max_softmax": ("heldout", "auroc_max_softmax"), "auroc_max_sigmoid": ("heldout", "auroc_max_sigmoid"),
    "none_share_heldout": ("heldout", "none_share"), "none_share_test": ("test", "none_share"),
}
# Each loss's own score: the maximum of the probabilities it was trained to output.
NATURAL_SCORE = {"sigmoid_bce": "auroc_max_sigmoid"}


def heldout_per_seed(history: pd.DataFrame) -> pd.DataFrame:
    """Per-seed HELDOUT quantities at each healthy model's last evaluation, plus ``auroc_natural`` (the AUROC of
    the loss's own score, NATURAL_SCORE, max softmax otherwise). Long: ``RUN, quantity, value``; empty without
    held-out classes."""
    if not (history["split"] == "heldout").any():
        return pd.DataFrame(columns=[*RUN, "quantity", "value"])
    models = runs(history)
    parts = [healthy(last_values(history, s, m), models).assign(quantity=q) for q, (s, m) in HELDOUT.items()]
    parts = [p[[*RUN, "quantity", "value"]] for p in parts if not p.empty]
    per_seed = pd.concat(parts, ignore_index=True)
    own = per_seed["quantity"] == per_seed["loss"].map(NATURAL_SCORE).fillna("auroc_max_softmax")
    return pd.concat([per_seed, per_seed[own].assign(quantity="auroc_natural")], ignore_index=True)


def heldout_difference(per_seed: pd.DataFrame, condition: str, a: tuple[str, str], b: tuple[str, str]
                       ) -> Difference:
    """Paired by seed: quantity a[1] of loss a[0] minus quantity b[1] of loss b[0] in ``condition``."""
    def series(loss: str, quantity: str) -> pd.Series:
        rows = per_seed[(per_seed["condition"] == condition) & (per_seed["loss"] == loss)
                        & (per_seed["quantity"] == quantity)]
        return rows.set_index("seed")["value"]

    return paired_difference(series(*a), series(*b))


def label_noise(history: pd.DataFrame) -> pd.DataFrame:
    """Per-seed label-noise measurements: best and final test accuracy, their drop, memorised and recovered shares
    of the flipped training examples (final and peak), clean-train accuracy. Long: ``RUN, quantity, value``."""
    models = runs(history)
    parts = [
        healthy(val_selected(history), models).assign(quantity="selected_accuracy"),
        healthy(last_values(history, "test", "accuracy"), models).assign(quantity="final_accuracy"),
        healthy(last_values(history, "train_flipped", "memorised"), models).assign(quantity="memorised"),
        # The peak of training: at step 0 the shared random initialisation agrees with some noisy labels by chance.
        healthy(best_values(history, "train_flipped", "memorised", after_step=0), models).assign(
            quantity="memorised_peak"),
        healthy(last_values(history, "train_flipped", "recovered"), models).assign(quantity="recovered"),
        healthy(last_values(history, "train_clean", "accuracy"), models).assign(quantity="clean_train_accuracy"),
    ]
    per_seed = pd.concat([p[[*RUN, "quantity", "value"]] for p in parts if not p.empty], ignore_index=True)
    if per_seed.empty:
        return per_seed
    wide = per_seed.pivot_table(index=RUN, columns="quantity", values="value").reset_index()
    if {"selected_accuracy", "final_accuracy"} <= set(wide.columns):
        drop = wide[RUN].assign(quantity="accuracy_drop", value=wide["selected_accuracy"] - wide["final_accuracy"])
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
# Measured claims of the source text


CLAIM_COLUMNS = ["claim_id", "claim", "measured", "value", "reference", "verdict", "note", "figure"]
# A check's outcome; UNCLEAR: the evidence is between a difference and none (``evidence``), so it counts for nothing.
SUPPORTS, CONTRADICTS, NO_DIFFERENCE, UNCLEAR = "supports", "contradicts", "no difference", "not established"


VERDICT_RULE = ("a claim measured by several checks holds when every check supports it; holds with a nuance "
                "when at least half support it and none contradicts it; does not hold here when more checks "
                "contradict it than support it; otherwise it is not established here")


def verdict(outcomes: Sequence[str]) -> str:
    """The verdict of VERDICT_RULE from the checks' outcomes (supports / contradicts / no difference / not
    established)."""
    if not outcomes:
        return UNMEASURED
    supports = sum(o == SUPPORTS for o in outcomes)
    contradicts = sum(o == CONTRADICTS for o in outcomes)
    if supports == len(outcomes):
        return verdicts.HOLDS
    if 2 * supports >= len(outcomes) and contradicts == 0:
        return verdicts.NUANCE
    if contradicts > supports:
        return verdicts.FAILS
    return verdicts.UNSETTLED


def _claim(claim_id: str, claim: str, checks: Sequence[tuple[str, str]], reference: str, note: str,
           figure: str) -> dict:
    """A claims-table row from its checks, each (outcome, text)."""
    outcomes = [o for o, _ in checks]
    return {
        "claim_id": claim_id,
        "claim": claim,
        "measured": " • ".join(f"{text} → {outcome}" for outcome, text in checks) or "not measured",
        "value": (f"{sum(o == SUPPORTS for o in outcomes)} support, {sum(o == CONTRADICTS for o in outcomes)} "
                  f"contradict, of {len(outcomes)}"),
        "reference": reference,
        "verdict": verdict(outcomes),
        "note": note,
        "figure": figure,
    }


def _outcome(found: str | None, positive: bool, positive_supports: bool) -> str:
    """A check's outcome from the ``evidence`` of its comparison and the sign of its difference."""
    if found == DIFFERENT:
        return SUPPORTS if positive == positive_supports else CONTRADICTS
    return NO_DIFFERENCE if found in (EQUIVALENT, IDENTICAL) else UNCLEAR


def _from_difference(d: Difference, positive_supports: bool) -> str:
    return _outcome(d.evidence, d.mean > 0, positive_supports)


def _fmt_steps(value: float) -> str:
    return "not reached" if not math.isfinite(value) else f"{value:.0f} steps"


# Sentences of the source text (../shared/seed/understanding-cross-entropy.txt), quoted verbatim.
TWO_BENEFITS = "It results in faster and more reliable training."
SIGMOID_MULTICLASS = ("This won’t work for the multiclass classification such as MNIST digit, Pets or other datasets, "
                      "so we can’t just take the sigmoid.")
PENALTY_WORKS = "This kind of penalty works well in practice to aid in more effective model training."
NLL_MISCLASSIFICATION = ("In ML, we are also taking negative log, which means high value of negative log = more "
                         "misclassification and thus higher total loss.")
NONE_OF_THE_ABOVE = ("It may be less ideal during inference, as you might want your model to sometimes tell you it "
                     "doesn’t recognize any of the classes that it has seen during training")


def claim_sigmoid_multiclass(head: Headline, reference: str = REFERENCE, losses: Sequence[str] | None = None,
                             margin: float = 0.02) -> dict:
    """'Sigmoid won't work for multiclass': one sigmoid per class (the losses taking part in the claim) against
    softmax, final test accuracy per condition. It works when it is within ``margin`` of the reference or not
    distinguishable from it."""
    losses = _taking_part("sigmoid_multiclass", losses)
    checks = []
    for condition in head.targets:
        for loss in losses:
            row = lookup(head.differences, condition=condition, loss=loss, quantity="final_accuracy")
            mine = lookup(head.summary, condition=condition, loss=loss, quantity="final_accuracy")
            if row is None or mine is None:
                continue
            text = (f"{condition}: {loss} final test accuracy {mine['mean']:.3f}, Δ vs {reference} "
                    f"{row['diff']:+.3f} (Holm p={row['p_holm']:.2g})")
            if abs(row["diff"]) <= margin or row["diff"] > 0 or row["verdict"] in (EQUIVALENT, IDENTICAL):
                checks.append((CONTRADICTS, text))  # it works: close to the reference, above it, or no gap found
            else:
                checks.append((SUPPORTS if row["evidence"] == DIFFERENT else UNCLEAR, text))
    return _claim("sigmoid_multiclass", SIGMOID_MULTICLASS, checks,
                  f"tested: whether one-vs-rest sigmoids ({' / '.join(losses)}, argmax prediction) reach the same "
                  f"final test accuracy as {reference}. A check supports the claim where they fall clearly short: "
                  f"more than {margin:g} below it and established as different after Holm's correction; it "
                  "contradicts it where they reach the same accuracy (within that, above it, or shown equivalent)",
                  "The text means sigmoid and 1 − sigmoid as the two probabilities of a binary model; one sigmoid per "
                  "class with a summed BCE is a multiclass classifier that trains.", "headline")


def claim_penalty_works(head: Headline, noise: Mapping[str, pd.DataFrame], reference: str = REFERENCE,
                        bounded: Sequence[str] | None = None) -> dict:
    """'The confident-wrong penalty aids training': clean conditions, final test accuracy of the reference against
    each bounded loss taking part in the claim; noisy conditions, how much accuracy each loses after its
    validation-selected best."""
    bounded = _taking_part("penalty_works", bounded)
    checks = []
    for condition in head.targets:
        if condition in noise:
            continue
        for loss in bounded:
            row = lookup(head.differences, condition=condition, loss=loss, quantity="final_accuracy")
            if row is None or row["evidence"] is None:
                continue
            text = (f"{condition}: {loss} − {reference} final test accuracy {row['diff']:+.3f} "
                    f"(Holm p={row['p_holm']:.2g})")
            checks.append((_outcome(row["evidence"], row["diff"] > 0, positive_supports=False), text))
    for condition, per_seed in noise.items():
        drop = per_seed[per_seed["quantity"] == "accuracy_drop"]
        by_loss = {loss: g.set_index("seed")["value"] for loss, g in drop.groupby("loss")}
        for loss in bounded:
            if reference not in by_loss or loss not in by_loss:
                continue
            d = paired_difference(by_loss[reference], by_loss[loss])
            text = (f"{condition} (noisy labels): accuracy lost after the validation-selected best, {reference} − "
                    f"{loss} {d.mean:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]")
            # The unbounded penalty fits the flipped labels: losing more than a bounded loss contradicts the claim.
            checks.append((_from_difference(d, positive_supports=False), text))
    return _claim("penalty_works", PENALTY_WORKS, checks,
                  f"checks where {reference} beats the bounded {' / '.join(bounded)} on clean labels (final test "
                  "accuracy, Holm-corrected), or loses less accuracy than it after its best under label noise",
                  "Under label noise the same penalty pulls the model towards the flipped labels.", "label_noise")


def claim_nll_misclassification(history: pd.DataFrame, reference: str = REFERENCE, rise: float = 1.1,
                                flat: float = 0.01) -> dict:
    """'Higher NLL = more misclassification': per condition and seed of the reference, after the lowest test NLL
    does the NLL rise by ``rise`` while test accuracy stays within ``flat`` of its value there?"""
    checks = []
    for condition, group in history[history["loss"] == reference].groupby("condition", sort=False):
        nll, acc = select(group, "test", "nll"), select(group, "test", "accuracy")
        both = nll.merge(acc, on=[*RUN, "step"], suffixes=("_nll", "_acc")).sort_values([*RUN, "step"])
        apart = 0
        for _, run in both.groupby(RUN, sort=False):
            low = run.loc[run["value_nll"].idxmin()]
            end = run.iloc[-1]
            apart += bool(end["value_nll"] > rise * low["value_nll"] and end["value_acc"] >= low["value_acc"] - flat)
        seeds = both["seed"].nunique()
        text = (f"{condition}: in {apart}/{seeds} seeds test NLL ends more than {rise - 1:.0%} above its lowest while "
                f"test accuracy stays within {flat:g} of its value there")
        checks.append((CONTRADICTS if 2 * apart > seeds else SUPPORTS if apart == 0 else NO_DIFFERENCE, text))
    return _claim("nll_misclassification", NLL_MISCLASSIFICATION, checks,
                  "checks where NLL and misclassification move together for the reference loss (no seed whose NLL "
                  "rises while its accuracy holds); contradicted where most seeds part them",
                  "NLL also grows with the confidence of the examples that are wrong anyway: it can rise while the "
                  "error rate stays flat (overconfidence, not more mistakes).", "convergence")


def claim_none_of_the_above(heldout: pd.DataFrame, reference: str = REFERENCE, sigmoid: str = "sigmoid_bce"
                            ) -> dict:
    """'Softmax is less ideal when an input belongs to no class seen in training': per condition with held-out
    classes, (1) how well one sigmoid per class separates held-out from known test images by its own score (max
    sigmoid) against softmax by its own (max softmax), as AUROC paired by seed; (2) whether one sigmoid per class
    actually says "none" (every sigmoid below 0.5) more often for the held-out images than for known ones."""
    checks = []
    for condition in dict.fromkeys(heldout["condition"]):
        mine = heldout[heldout["condition"] == condition]
        if not {reference, sigmoid} <= set(mine["loss"]):
            continue
        d = heldout_difference(mine, condition, (sigmoid, "auroc_natural"), (reference, "auroc_natural"))
        a, b = (mean_ci(mine.loc[(mine["loss"] == loss) & (mine["quantity"] == "auroc_natural"), "value"]).mean
                for loss in (sigmoid, reference))
        checks.append((_from_difference(d, positive_supports=True),
                       f"{condition}: AUROC held-out vs known classes, {sigmoid} by max sigmoid {a:.3f}, {reference} "
                       f"by max softmax {b:.3f}, Δ {d.mean:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]"))
        none = heldout_difference(mine, condition, (sigmoid, "none_share_heldout"), (sigmoid, "none_share_test"))
        shares = {q: mean_ci(mine.loc[(mine["loss"] == sigmoid) & (mine["quantity"] == q), "value"]).mean
                  for q in ("none_share_heldout", "none_share_test")}
        checks.append((_from_difference(none, positive_supports=True),
                       f"{condition}: {sigmoid} says 'none' (every sigmoid < 0.5) to {shares['none_share_heldout']:.1%}"
                       f" of held-out images vs {shares['none_share_test']:.1%} of known-class ones, Δ "
                       f"{none.mean:+.3f} [{none.ci_low:+.3f}, {none.ci_high:+.3f}]"))
    return _claim("none_of_the_above", NONE_OF_THE_ABOVE, checks,
                  f"test images of classes held out of training against those of the trained classes: AUROC of each "
                  f"loss's own confidence score ({sigmoid}: max sigmoid; {reference}: max softmax), paired by seed, "
                  f"and how often {sigmoid} answers 'none'",
                  "The text contrasts softmax with nothing explicit; one sigmoid per class is the alternative that can "
                  "answer 'none' (no probability has to win). It holds whole when both checks support it (the sigmoids "
                  "separate unseen classes better and say 'none' more for them); one supporting check with no "
                  "contradiction is a nuance, by the verdict rule.", "heldout" if checks else "")


def claim_faster(head: Headline, reference: str = REFERENCE, others: Sequence[str] | None = None) -> dict:
    """'Cross-entropy gives faster training': per condition and compared loss, steps to the first target."""
    others = _taking_part("faster_training", others)
    q = steps_quantity(1)
    checks = []
    for condition, targets in head.targets.items():
        ref = lookup(head.summary, condition=condition, loss=reference, quantity=q)
        for other in others:
            oth = lookup(head.summary, condition=condition, loss=other, quantity=q)
            if ref is None or oth is None:
                continue
            text = (f"{condition} (val acc ≥ {targets[0]:g}), median: {other} {_fmt_steps(oth['median'])} "
                    f"({int(oth['n_reached'])}/{int(oth['n'])} seeds reached it) vs {_fmt_steps(ref['median'])} "
                    f"({int(ref['n_reached'])}/{int(ref['n'])})")
            if ref["n_reached"] != oth["n_reached"]:
                checks.append((SUPPORTS if ref["n_reached"] > oth["n_reached"] else CONTRADICTS,
                               text + ", reached by different numbers of seeds"))
                continue
            row = lookup(head.differences, condition=condition, loss=other, quantity=q)
            d = Difference(math.nan, math.nan, math.nan, math.nan, 0) if row is None else Difference(
                row["diff"], row["ci_low"], row["ci_high"], row["p_value"], int(row["n"]))
            if math.isfinite(d.mean):
                text += f", paired Δ {d.mean:+.0f} steps"
                if d.within_noise is not None:
                    text += f" [{d.ci_low:+.0f}, {d.ci_high:+.0f}], Holm p={row['p_holm']:.2g}"
            # A primary comparison: its Holm-corrected evidence decides.
            outcome = NO_DIFFERENCE if row is None else _outcome(row["evidence"], row["diff"] > 0,
                                                                 positive_supports=True)
            checks.append((outcome, text))
    return _claim(
        "faster_training", f"{TWO_BENEFITS} (the 'faster' half)", checks,
        f"checks (condition × compared loss) where {reference} reached the first validation-accuracy target in "
        "fewer steps (paired by seed, established after Holm's correction) or in more seeds",
        "Each loss at its own tuned learning rate; 'no difference' or 'not established' by the Holm-adjusted p, as "
        "everywhere in the report.",
        "steps_to_target")


def claim_reliable(head: Headline, reference: str = REFERENCE, others: Sequence[str] | None = None,
                   alpha: float = 0.05) -> dict:
    """'More reliable training': fewer divergences, or a smaller seed spread of final test accuracy (one-sided
    variance-ratio F-test at ``alpha``)."""
    others = _taking_part("reliable_training", others)
    checks = []
    for condition in head.targets:
        acc = head.per_seed[(head.per_seed["condition"] == condition)
                            & (head.per_seed["quantity"] == "final_accuracy")]
        values = {loss: finite(g["value"]) for loss, g in acc.groupby("loss")}
        div = head.models[head.models["condition"] == condition].groupby("loss")["diverged"].sum()
        if reference not in values:
            continue
        for other in others:
            if other not in values:
                continue
            d_ref, d_oth = int(div.get(reference, 0)), int(div.get(other, 0))
            sd = {k: float(np.std(values[k], ddof=1)) if len(values[k]) > 1 else math.nan for k in (reference, other)}
            text = (f"{condition}: {other} sd {sd[other]:.4f}, {d_oth} diverged vs sd {sd[reference]:.4f}, "
                    f"{d_ref} diverged")
            if d_ref != d_oth:
                checks.append((SUPPORTS if d_ref < d_oth else CONTRADICTS, text))
                continue
            if min(len(values[reference]), len(values[other])) < 3 or min(sd[reference], sd[other]) <= 0:
                # Two seeds, or a spread of exactly 0 (e.g. collapsed models), give no usable variance ratio.
                checks.append((NO_DIFFERENCE, text + ", spread not testable"))
                continue
            small, large = (reference, other) if sd[reference] < sd[other] else (other, reference)
            ratio = (sd[large] / sd[small]) ** 2
            p = float(stats.f.sf(ratio, len(values[large]) - 1, len(values[small]) - 1))
            text += f", variance ratio {ratio:.3g} (p={p:.2g})"
            # Were the observed ratio the true one, a rerun's ratio is it times an F variate: how often it passes.
            critical = float(stats.f.isf(alpha, len(values[large]) - 1, len(values[small]) - 1))
            chance = float(stats.f.sf(critical / ratio, len(values[large]) - 1, len(values[small]) - 1))
            checks.append((_outcome(evidence_word(chance), small == other, positive_supports=True), text))
    return _claim(
        "reliable_training", f"{TWO_BENEFITS} (the 'more reliable' half)", checks,
        f"checks (condition × compared loss) where {reference} diverged less often, or had a smaller seed spread of "
        f"final test accuracy established by a one-sided F-test (a rerun would repeat p < {alpha:g} with "
        f"probability at least {REPLICATION:g}; at least 3 seeds each)",
        "Seed spread = standard deviation over seeds of final test accuracy; with few seeds only large differences "
        "in spread are detectable.",
        "headline")


def claim_gradient(sat: pd.DataFrame, penalty: pd.DataFrame | None, conditions: Sequence[str] = (),
                   reference: str = REFERENCE, others: Sequence[str] | None = None,
                   threshold: float = SATURATION) -> dict:
    """'The gradient stays meaningful where sigmoid/MSE saturate', checked in closed form (logit-gradient norm at
    the most confidently wrong point of the probe sweep) and measured (paired by seed: share of wrong test
    examples whose gradient vanished, per condition)."""
    others = _taking_part("gradient_meaningful", others)
    checks = []
    if penalty is not None and not penalty.empty:
        worst = penalty.loc[penalty.groupby("loss")["p_true"].idxmin()].set_index("loss")
        if reference in worst.index:
            g_ref = float(worst.loc[reference, "logit_grad_norm"])
            for other in others:
                if other in worst.index:
                    g_oth = float(worst.loc[other, "logit_grad_norm"])
                    checks.append((SUPPORTS if g_ref > g_oth else CONTRADICTS,
                                   f"closed form at p_true = {float(worst.loc[reference, 'p_true']):.2g}: {other} "
                                   f"‖∂L/∂z‖ {g_oth:.3g} vs {g_ref:.3g}"))
    for condition in conditions or dict.fromkeys(sat["condition"]):
        group = sat[sat["condition"] == condition]
        by_loss = {loss: g.set_index("seed")["value"] for loss, g in group.groupby("loss")}
        if reference not in by_loss:
            continue
        for other in others:
            if other not in by_loss:
                continue
            d = paired_difference(by_loss[other], by_loss[reference])
            text = (f"{condition}: saturated share {other} {mean_ci(by_loss[other]).mean:.1%} vs "
                    f"{mean_ci(by_loss[reference]).mean:.1%}")
            if math.isfinite(d.mean) and d.within_noise is not None:
                text += f", paired Δ {d.mean:+.1%} [{d.ci_low:+.1%}, {d.ci_high:+.1%}]"
            checks.append((_from_difference(d, positive_supports=True), text))
    return _claim(
        "gradient_meaningful", "Not a sentence of the source text but the study's own question: the cross-entropy "
        "gradient stays meaningful where sigmoid/MSE saturate.", checks,
        f"checks where {reference}'s logit gradient is larger in closed form, or its share of wrong test examples "
        f"with ‖∂L/∂z‖ < {threshold:g} at the last evaluation is established as smaller (paired by seed)",
        "Per-class sigmoid BCE does not saturate on a confidently wrong example: its gradient on the true class is "
        "sigmoid(z_true) − 1. Trained networks may put few wrong examples where MSE's gradient vanishes.",
        "logit_grad")


# --------------------------------------------------------------------------------------------------------------
# Published results beside the study's own


ANCHOR_COLUMNS = ["anchor", "source", "published", "here", "verdict", "why"]
REPRODUCED, NOT_REPRODUCED, CONTRADICTED, NOT_MEASURED = (
    "reproduced", "not reproduced", "contradicted here", "not measured here")
MEASURED_BESIDE = "shown beside"  # a published value shown for scale, with no verdict (another dataset and network)


def anchors(head: Headline, history: pd.DataFrame, setups: Mapping[str, Mapping]) -> pd.DataFrame:
    """Published numbers next to the study's own, same metric, each with a verdict computed from the tables.
    ``setups`` maps condition -> its setup.json (dataset, optimizer, label noise, model)."""
    def find(dataset: str, kind: str = "mlp") -> str | None:
        """The dataset's clean condition with every class and a ``kind`` network, SGD's when there are several."""
        def params(c: str) -> Mapping:
            return setups[c].get("params", {})

        clean = [c for c, s in setups.items()
                 if s.get("dataset") == dataset and not params(c).get("label_noise", 0.0)
                 and not params(c).get("heldout_classes") and params(c).get("model", {}).get("kind", "mlp") == kind]
        return next((c for c in clean if params(c).get("optimizer") == "sgd"), clean[0] if clean else None)

    def final(condition: str | None, quantity: str = "final_accuracy", loss: str = REFERENCE) -> dict | None:
        return None if condition is None else lookup(head.summary, condition=condition, loss=loss, quantity=quantity)

    rows = []
    fashion, mnist1d, cnn = find("fashion_mnist"), find("mnist1d"), find("mnist1d", "cnn1d")
    for name, condition, published, (low, high), source in (
            ("Fashion-MNIST MLP test accuracy", fashion, "0.87-0.90 (MLP, cross-entropy)", (0.86, 0.91),
             "Xiao et al. 2017 (Fashion-MNIST benchmark)"),
            ("MNIST-1D MLP test accuracy", mnist1d, "about 0.68 (MLP)", (0.63, 0.73), "Greydanus 2020 (MNIST-1D)"),
            ("MNIST-1D CNN test accuracy", cnn, "about 0.94 (CNN)", (0.90, 0.97), "Greydanus 2020 (MNIST-1D)")):
        est = final(condition)
        if est is None or not math.isfinite(est["mean"]):
            rows.append([name, source, published, "–", NOT_MEASURED, "no such condition in this study"])
            continue
        inside = low <= est["mean"] <= high
        rows.append([name, source, published, f"{est['mean']:.3f} ({condition}, {REFERENCE})",
                     REPRODUCED if inside else NOT_REPRODUCED,
                     "within the published range" if inside else
                     "outside it: another architecture, schedule or number of epochs than the published runs"])
    if mnist1d is not None:
        nll = select(history[history["condition"] == mnist1d], "test", "nll")
        nll = nll[nll["loss"] == REFERENCE]
        if not nll.empty:
            per_seed = nll.groupby("seed")["value"].agg(["last", "min"])
            rising = per_seed["last"] > 1.1 * per_seed["min"]
            ratio = (per_seed["last"] / per_seed["min"]).mean()
            rows.append(["test NLL rises while training goes on (overfitting)", "Greydanus 2020 (MNIST-1D)",
                         "test loss rises after its minimum", f"final / lowest test NLL {ratio:.2f} "
                         f"({int(rising.sum())}/{len(rising)} seeds end 10% above their lowest)",
                         REPRODUCED if rising.all() else NOT_REPRODUCED if not rising.any() else "in part",
                         "the softmax grows ever more confident on the examples it gets wrong" if rising.all() else
                         "NLL keeps falling when a model never fits its training set past the point of overfitting"])
    noisy = next((c for c, st in setups.items() if st.get("dataset") == "fashion_mnist"
                  and st.get("params", {}).get("label_noise", 0.0)), None)
    for anchor in PUBLISHED:
        if isinstance(anchor, PublishedValues):
            rows.extend(_published_values(anchor, head))
        else:
            rows.extend(_published_rows(anchor, head, noisy if anchor.noisy else fashion))
    return pd.DataFrame(rows, columns=ANCHOR_COLUMNS)


@dataclass(frozen=True)
class Published:
    """A published comparison of some losses with the reference, checked on one quantity's paired difference.
    ``claim``: the registry's claim id that names the losses; ``sign``: the sign of (loss - reference) the
    publication reports (+1, -1), or 0 for 'no worse than ``tolerance`` below it'."""

    claim: str
    anchor: str
    source: str
    published: str
    quantity: str
    sign: int
    here: str  # format of the measured difference: {loss}, {reference}, {diff}
    why: str  # format: {loss}
    noisy: bool = False  # checked in the noisy Fashion-MNIST condition, else in the clean SGD one
    tolerance: float = 0.0


@dataclass(frozen=True)
class PublishedValues:
    """Published values of some quantities per loss, shown beside the study's own per condition (same metric, no
    paired test: another dataset and network). ``values``: (claim id naming the losses, or "" for the reference,
    the publication's name for the loss, the published values in the order of ``quantities``)."""

    anchor: str
    source: str
    quantities: tuple[str, ...]
    values: tuple[tuple[str, str, tuple[float, ...]], ...]
    scale: float = 100.0  # published in percent
    why: str = ""


PUBLISHED_ECE = PublishedValues(
    "ECE (%) before / after temperature scaling", "Mukhoti et al. 2020 (CIFAR-10, ResNet-50)", ("ece", "ece_ts"),
    (("", "cross-entropy", (4.35, 1.35)), ("squared_error_slower", "Brier", (1.82, 1.08)),
     ("focal_calibrates", "focal γ = 3", (1.48, 1.42))),
    why="another dataset and network: the published values are the scale to read ours against, not a target")

PUBLISHED = (
    PUBLISHED_ECE,
    Published("smoothing_calibrates", "label smoothing lowers the calibration error", "Müller et al. 2019",
              "lower ECE with smoothing", "ece", -1, "Δ ECE {loss} − {reference} {diff:+.3f}",
              "smoothing pulls confidence down; whether that helps depends on how overconfident the unsmoothed "
              "model is"),
    Published("bounded_resists_noise", "bounded losses (GCE, MAE) resist label noise",
              "Zhang & Sabuncu 2018; Ghosh et al. 2017", "higher accuracy than cross-entropy under symmetric noise",
              "final_accuracy", +1, "Δ final test accuracy {loss} − {reference} {diff:+.3f}",
              "a bounded loss gives a flipped label a bounded pull; it also learns the clean labels more slowly",
              noisy=True),
    Published("squared_error_slower", "squared error trains worse than cross-entropy from random initialisation",
              "Golik et al. 2013", "slower, worse optimum", steps_quantity(1), +1,
              "{loss} − {reference}: {diff:+.0f} steps to the first target",
              "each loss at its own tuned rate: a larger rate can make up for {loss}'s smaller gradients"),
    Published("square_loss_competitive", "square loss on logits is competitive with cross-entropy",
              "Hui & Belkin 2021", "within about 1% accuracy", "final_accuracy", 0,
              "Δ final test accuracy {loss} − {reference} {diff:+.3f}",
              "{loss} is the square loss on raw logits, not the squared error of softmax probabilities (Brier)",
              tolerance=0.01),
    Published("focal_calibrates", "focal loss lowers the calibration error of cross-entropy", "Mukhoti et al. 2020",
              "lower ECE than cross-entropy", "ece", -1, "Δ ECE {loss} − {reference} {diff:+.3f}",
              "down-weighting confident examples keeps logits smaller; on a small, briefly trained model "
              "cross-entropy may not be overconfident to begin with"),
)


def _published_values(anchor: PublishedValues, head: Headline) -> list[list[str]]:
    """One row per published loss and condition where the study trained it: the published values beside the
    study's means over seeds (in the publication's scale)."""
    rows = []
    for claim, name, published in anchor.values:
        losses = (REFERENCE,) if not claim else registry.taking_part(claim)
        shown = f"{name}: " + " / ".join(f"{v:g}" for v in published)
        found = False
        for condition in head.targets:
            for loss in losses:
                means = [lookup(head.summary, condition=condition, loss=loss, quantity=q) for q in anchor.quantities]
                if any(m is None or not math.isfinite(m["mean"]) for m in means):
                    continue
                found = True
                here = " / ".join(f"{anchor.scale * m['mean']:.2f}" for m in means)
                rows.append([anchor.anchor, anchor.source, shown, f"{loss}: {here} ({condition})",
                             MEASURED_BESIDE, anchor.why])
        if not found:
            rows.append([anchor.anchor, anchor.source, shown, "–", NOT_MEASURED,
                         f"{' / '.join(losses) or 'no such loss'} with both quantities in no condition of this study"])
    return rows


def _published_rows(anchor: Published, head: Headline, condition: str | None) -> list[list[str]]:
    """One row per loss taking part in ``anchor.claim`` that was compared with the reference in ``condition``; one
    'not measured here' row when none was."""
    rows = []
    for loss in registry.taking_part(anchor.claim):
        row = None if condition is None else lookup(head.differences, condition=condition, loss=loss,
                                                    quantity=anchor.quantity)
        if row is None or row["evidence"] is None:
            continue
        diff, apart = row["diff"], row["evidence"] == DIFFERENT
        if anchor.sign:
            verdict = (REPRODUCED if apart and np.sign(diff) == anchor.sign else
                       CONTRADICTED if apart else NOT_REPRODUCED)
        else:
            verdict = (REPRODUCED if diff >= -anchor.tolerance else CONTRADICTED if apart else NOT_REPRODUCED)
        here = anchor.here.format(loss=loss, reference=REFERENCE, diff=diff)
        rows.append([anchor.anchor, anchor.source, anchor.published,
                     f"{here} ({condition}, Holm p={row['p_holm']:.2g})", verdict, anchor.why.format(loss=loss)])
    if not rows:
        where = "no such condition in this study" if condition is None else (
            f"no paired test of {' / '.join(registry.taking_part(anchor.claim)) or 'such a loss'} against "
            f"{REFERENCE} in {condition}: not trained there, or fewer than two seeds to pair")
        rows.append([anchor.anchor, anchor.source, anchor.published, "–", NOT_MEASURED, where])
    return rows


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
                "test_accuracy": value("final_accuracy", "mean"),
                "steps_to_target": value(steps_quantity(1), "median"),
                "ece": value("ece", "mean"),
            }
    return out
