"""The report's three answers (convergence speed, gradient magnitudes, the confident-wrong penalty and its
consequences), computed from the analysis tables: which loss, in how many conditions, with which verdict. Plain
values only (``versus`` and ``winners`` arrange them the way a sentence reads: the study's own losses against the
reference, the losses a condition adds apart); the words live in templates/answers.md.j2, at most three sentences
an answer. Imports no plotting library and no document code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from study import analysis, comparisons, quantities
from study import losses as registry
from study.analysis import REFERENCE
from study.measures import healthy, last_values, runs

# The verdict vocabulary of analysis.
DIFFERENT = analysis.DIFFERENT
NOT_ESTABLISHED = analysis.NOT_ESTABLISHED
EQUIVALENT = analysis.EQUIVALENT
IDENTICAL = analysis.IDENTICAL
UNTESTED = "no test"
LOWER, HIGHER = "lower", "higher"  # a DIFFERENT verdict with its direction (loss - reference)
# The order in which a tally lists its parts: the decided verdicts first.
ORDER = (LOWER, HIGHER, EQUIVALENT, IDENTICAL, NOT_ESTABLISHED, UNTESTED)
SAME = (EQUIVALENT, IDENTICAL)  # verdicts that say "no difference", each in its own terms


def verdict(row: Mapping | None) -> str:
    """The verdict word of one row of ``analysis.differences`` (its ``verdict`` column where analysis writes one,
    else ``evidence``); UNTESTED without a test."""
    if row is None:
        return UNTESTED
    for column in ("verdict", "evidence"):
        word = row.get(column)
        if isinstance(word, str) and word:
            return word
    return UNTESTED


def direction(row: Mapping | None) -> str:
    """LOWER or HIGHER for a DIFFERENT verdict (by the sign of loss - reference), else the verdict itself."""
    word = verdict(row)
    if word != DIFFERENT:
        return word
    return LOWER if float(row["diff"]) < 0 else HIGHER


# --------------------------------------------------------------------------------------------------------------
# Numbers that cannot contradict their verdict


@functools.lru_cache(maxsize=64)
def thresholds(n: int) -> tuple[float, ...]:
    """The p-values where a verdict on ``n`` seeds changes its word: the family-wise level and, where analysis
    reads a p-value through its replication probability, the bounds of that rule."""
    bounds = [analysis.ALPHA]
    if n >= 2:
        bounds += [float(b) for b in analysis.evidence_bounds(n)]
    return tuple(sorted(set(bounds)))


def fmt_holm(p: float, n: int = 0) -> str:
    """A Holm-adjusted p-value printed with as many significant digits as it takes for the printed number to lie
    on the same side of every verdict threshold (``thresholds(n)``) as the value itself: two equal printed values
    then never carry different verdicts (0.0115 and 0.0125 around 0.012 print as 0.0115 and 0.0125)."""
    if p is None or not math.isfinite(p):
        return "n/a"
    if p < 0.001 and all(t >= 0.001 for t in thresholds(n)):
        return "<0.001"
    for digits in range(2, 8):
        text = f"{p:.{digits}g}"
        printed = float(text)
        if all((printed < t) == (p < t) for t in thresholds(n)):
            return text
    return f"{p:.8g}"


def fmt_ratio(ratio: float, low: float, high: float) -> str:
    """'0.63× [0.55, 0.72]' (a ratio of steps, loss over reference); '–' without a value."""
    if ratio is None or not math.isfinite(ratio):
        return "–"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{ratio:.2f}×"
    return f"{ratio:.2f}× [{low:.2f}, {high:.2f}]"


def percent_change(ratio: float) -> str:
    """A ratio of steps as the change it makes: 0.63 -> '37% fewer steps', 1.6 -> '60% more steps'."""
    if not math.isfinite(ratio):
        return "–"
    change = round(100 * (ratio - 1))
    return f"{abs(change)}% {'fewer' if change < 0 else 'more'} steps"


# --------------------------------------------------------------------------------------------------------------
# Tallies: where an answer holds


@dataclass(frozen=True)
class Part:
    word: str  # LOWER, HIGHER or a verdict word
    conditions: tuple[str, ...]
    effects: tuple[float, ...]  # the effect (ratio or difference) in each of those conditions

    @property
    def n(self) -> int:
        return len(self.conditions)


@dataclass(frozen=True)
class Tally:
    """One loss against the reference on one quantity over the conditions that compared them."""

    loss: str
    parts: tuple[Part, ...]
    total: int

    def count(self, *words: str) -> int:
        return sum(p.n for p in self.parts if p.word in words)

    def part(self, word: str) -> Part | None:
        return next((p for p in self.parts if p.word == word), None)


def tally(differences: pd.DataFrame, quantity: str, conditions: Sequence[str], *, effect: str = "diff",
          losses: Iterable[str] | None = None) -> list[Tally]:
    """Per loss (registry order), how many of ``conditions`` give each verdict on ``quantity`` against the
    reference; ``effect`` names the column whose value each part keeps (``ratio`` for speed)."""
    rows = differences[(differences["quantity"] == quantity) & differences["condition"].isin(conditions)]
    out = []
    for loss in analysis.ordered(losses if losses is not None else rows["loss"]):
        mine = rows[rows["loss"] == loss]
        if mine.empty:
            continue
        by_word: dict[str, tuple[list[str], list[float]]] = {}
        for condition in conditions:  # the report's order of conditions
            row = analysis.lookup(mine, condition=condition)
            if row is None:
                continue
            cs, es = by_word.setdefault(direction(row), ([], []))
            cs.append(condition)
            es.append(float(row.get(effect, math.nan)))
        parts = tuple(Part(w, tuple(by_word[w][0]), tuple(by_word[w][1])) for w in sorted(by_word, key=_rank))
        out.append(Tally(loss, parts, sum(p.n for p in parts)))
    return out


def _rank(word: str) -> int:
    return ORDER.index(word) if word in ORDER else len(ORDER)


# --------------------------------------------------------------------------------------------------------------
# Speed


def speed_ratios(head: analysis.Headline, reference: str = REFERENCE) -> pd.DataFrame:
    """The speed comparisons as ratios of steps (loss / reference) with their verdicts: ``analysis.differences``'
    rows of the first target, with ``ratio, ratio_low, ratio_high`` where analysis writes them, else the geometric
    mean of the per-seed ratios (seeds where both reached the target) with its t-interval on the log scale."""
    q1 = analysis.steps_quantity(1)
    rows = head.differences[head.differences["quantity"] == q1].copy()
    if "ratio" in rows.columns and rows["ratio"].notna().any():
        return rows
    ratios, lows, highs = [], [], []
    steps = head.per_seed[head.per_seed["quantity"] == q1]
    for row in rows.itertuples():
        mine = steps[steps["condition"] == row.condition]
        a = mine[mine["loss"] == row.loss].set_index("seed")["value"]
        b = mine[mine["loss"] == reference].set_index("seed")["value"]
        joined = pd.concat({"a": a, "b": b}, axis=1).astype(float).dropna()
        joined = joined[(joined["a"] > 0) & (joined["b"] > 0)]
        est = analysis.mean_ci(np.log(joined["a"] / joined["b"]))
        ratios.append(math.exp(est.mean) if math.isfinite(est.mean) else math.nan)
        lows.append(math.exp(est.ci_low) if math.isfinite(est.ci_low) else math.nan)
        highs.append(math.exp(est.ci_high) if math.isfinite(est.ci_high) else math.nan)
    return rows.assign(ratio=ratios, ratio_low=lows, ratio_high=highs)


def fastest(head: analysis.Headline, conditions: Sequence[str]) -> list[dict]:
    """Per loss, in how many conditions it belongs to the fastest group (the loss with the fewest mean steps to the
    first target and every loss no Holm-corrected paired test establishes as slower than it; a loss that did not
    reach the target in at least half its seeds is left out). Most conditions first, then the registry's order."""
    q1 = analysis.steps_quantity(1)
    counts: dict[str, list[str]] = {}
    trained: dict[str, int] = {}
    for c in conditions:
        rows = head.per_seed[(head.per_seed["condition"] == c) & (head.per_seed["quantity"] == q1)]
        summary = head.summary[(head.summary["condition"] == c) & (head.summary["quantity"] == q1)]
        reached = set(summary.loc[np.isfinite(summary["median"].to_numpy(dtype=float)), "loss"])
        for loss in set(summary["loss"]):
            trained[loss] = trained.get(loss, 0) + 1
        by_loss = {loss: g.set_index("seed")["value"] for loss, g in rows.groupby("loss") if loss in reached}
        lead = analysis.leaders(by_loss, quantity=q1) if by_loss else None
        if lead is None:
            continue
        for loss in lead.tied:
            counts.setdefault(loss, []).append(c)
    order = analysis.ordered(counts)
    order.sort(key=lambda loss: -len(counts[loss]))  # stable: ties keep the registry's order
    return [{"loss": loss, "n": len(counts[loss]), "of": trained[loss], "conditions": counts[loss]}
            for loss in order]


def rate_views(views: Mapping[str, pd.DataFrame], reference: str = REFERENCE) -> dict | None:
    """Whether each loss's order against the reference in steps to the first target (from the tuning runs) is the
    same at its own tuned rate and at the reference's rate: ``held`` and ``moved`` list (condition, loss)."""
    held, moved = [], []
    for source, view in views.items():
        if view is None or view.empty or "steps_to_target" not in view:
            continue
        ref = analysis.lookup(view, loss=reference, view="own lr")
        if ref is None or not math.isfinite(ref["steps_to_target"]):
            continue
        for loss in analysis.ordered(view["loss"]):
            if loss == reference:
                continue
            own = analysis.lookup(view, loss=loss, view="own lr")
            shared = analysis.lookup(view, loss=loss, view="shared lr")
            if own is None or shared is None:
                continue
            a, b = _order(own["steps_to_target"], ref["steps_to_target"]), _order(shared["steps_to_target"],
                                                                                  ref["steps_to_target"])
            (held if a == b else moved).append({"condition": source, "loss": loss})
    if not held and not moved:
        return None
    return {"held": held, "moved": moved, "views": ("its own tuned rate", f"{reference}'s rate"),
            "decided_only": False}


def three_views(speed_views: pd.DataFrame, ratios: pd.DataFrame, conditions: Sequence[str],
                reference: str = REFERENCE) -> dict | None:
    """Of the speed comparisons decided at the tuned rate (faster or slower), which keep their direction at the
    loss's best stable grid rate and at the reference's rate too (comparisons.speed_views' ``agrees``): ``held`` and
    ``moved`` list (condition, loss). Where none is decided, every compared pair counts."""
    q1 = analysis.steps_quantity(1)
    pairs = speed_views[speed_views["condition"].isin(conditions) & (speed_views["loss"] != reference)]
    pairs = pairs.drop_duplicates(["condition", "loss"])
    decided = {(r["condition"], r["loss"]) for r in ratios[ratios["quantity"] == q1].to_dict("records")
               if direction(r) in (LOWER, HIGHER)}
    if decided:
        pairs = pairs[[(c, loss) in decided for c, loss in zip(pairs["condition"], pairs["loss"], strict=True)]]
    if pairs.empty:
        return None
    order = {c: i for i, c in enumerate(conditions)}
    pairs = pairs.assign(_at=pairs["condition"].map(order)).sort_values(["_at"], kind="stable")
    agrees = pairs["agrees"].fillna(False).astype(bool)
    return {"held": pairs[agrees][["condition", "loss"]].to_dict("records"),
            "moved": pairs[~agrees][["condition", "loss"]].to_dict("records"),
            "views": ("each loss's tuned rate", "its best stable rate of the grid", f"{reference}'s rate"),
            "decided_only": bool(decided)}


def _order(steps: float, reference: float, tolerance: float = 0.1) -> int:
    """-1 faster, +1 slower than the reference beyond ``tolerance`` (a share of its steps), 0 within it; a target
    never reached counts as slower."""
    if not math.isfinite(steps):
        return 1
    if abs(steps - reference) <= tolerance * reference:
        return 0
    return -1 if steps < reference else 1


def speed(head: analysis.Headline, conditions: Sequence[str], views: Mapping[str, pd.DataFrame] | None = None,
          speed_views: pd.DataFrame | None = None, reference: str = REFERENCE) -> dict | None:
    """The speed answer: the fastest group's members and in how many conditions; each loss against the reference
    (faster / slower / equivalent / ...) in how many conditions, with its ratios of steps; whether the ordering
    holds under the learning-rate views. None without a steps comparison."""
    ratios = speed_ratios(head, reference)
    tallies = tally(ratios, analysis.steps_quantity(1), conditions, effect="ratio")
    if not tallies:
        return None
    decided = [t for t in tallies if t.count(LOWER, HIGHER)]
    views_answer = None
    if speed_views is not None and not speed_views.empty and "agrees" in speed_views:
        views_answer = three_views(speed_views, ratios, conditions, reference)
    elif views:
        views_answer = rate_views(views, reference)
    core = mission(head.per_seed, conditions) or [t.loss for t in tallies]
    plain = versus(tallies, core, ratio=True, reference=reference)
    extra = versus(tallies, [t.loss for t in tallies if t.loss not in core], ratio=True, reference=reference)
    return {"reference": reference, "conditions": len(conditions), "fastest": fastest(head, conditions),
            "tallies": tallies, "none_different": not decided, "views": views_answer,
            "plain": plain, "winners": winners(plain, LOWER), "extra": extra,
            "others": [loss for loss in plain["losses"] if loss != reference]}


# --------------------------------------------------------------------------------------------------------------
# Gradient magnitudes


VANISHED = 0.1  # a closed-form gradient below this share of the reference's at the same point has vanished


def closed_form(penalty: pd.DataFrame | None, reference: str = REFERENCE) -> dict | None:
    """Each loss's logit-gradient norm at the most confidently wrong point of the probe sweep (its smallest
    p_true), beside the reference's."""
    if penalty is None or penalty.empty:
        return None
    worst = penalty.loc[penalty.groupby("loss")["p_true"].idxmin()].set_index("loss")
    if reference not in worst.index:
        return None
    ref = float(worst.loc[reference, "logit_grad_norm"])
    losses = [{"loss": loss, "norm": float(worst.loc[loss, "logit_grad_norm"]),
               "vanished": float(worst.loc[loss, "logit_grad_norm"]) < VANISHED * ref}
              for loss in analysis.ordered(worst.index) if loss != reference]
    return {"p_true": float(worst.loc[reference, "p_true"]), "reference_norm": ref, "losses": losses}


def gradients(head: analysis.Headline, saturation: pd.DataFrame, penalty: pd.DataFrame | None,
              conditions: Sequence[str], reference: str = REFERENCE) -> dict | None:
    """The gradient answer: the losses whose logit gradient vanishes on wrong examples (in closed form, or a share
    of wrong test examples with a vanished gradient established as higher than the reference's in some
    condition), with where that holds; the losses that keep a gradient."""
    tallies = tally(head.differences, analysis.SATURATED, conditions)
    form = closed_form(penalty, reference)
    if not tallies and form is None:
        return None
    shares = {}
    for t in tallies:
        mine = saturation[(saturation["loss"] == t.loss) & saturation["condition"].isin(conditions)]
        shares[t.loss] = float(mine.groupby("condition")["value"].mean().max()) if not mine.empty else math.nan
    by_form = {x["loss"]: x for x in (form["losses"] if form else [])}
    vanishing = [loss for loss in analysis.ordered({*by_form, *(t.loss for t in tallies)})
                 if (loss in by_form and by_form[loss]["vanished"])
                 or any(t.loss == loss and t.count(HIGHER) for t in tallies)]
    kept = [t for t in tallies if t.loss not in vanishing]
    entries = [{"loss": loss, "closed_form": by_form.get(loss),
                "tally": next((t for t in tallies if t.loss == loss), None),
                "largest_share": shares.get(loss, math.nan)} for loss in vanishing]
    for x in entries:  # the measured share in a sentence: where it is higher, and the other verdicts
        t, cf = x["tally"], x["closed_form"]
        x["higher"] = t.part(HIGHER) if t else None
        x["elsewhere"] = [p.word for p in t.parts if p.word != HIGHER] if t else []
        x["smaller"] = fmt_times(form["reference_norm"] / cf["norm"]) if cf and cf["norm"] > 0 else None
    trained = mission(head.per_seed, conditions)
    core = trained or analysis.ordered({reference, *by_form, *(t.loss for t in tallies)})
    compared = analysis.ordered({reference, *by_form, *(t.loss for t in tallies)})
    return {"reference": reference, "threshold": analysis.SATURATION, "closed_form": form,
            "p_true": fmt_small(form["p_true"]) if form else None,
            "vanishing": entries, "kept": kept, "conditions": len(conditions),
            "core_vanishing": [x for x in entries if x["loss"] in core],
            "core_kept": [loss for loss in [reference, *(x for x in compared if x != reference)]
                          if loss in core and loss not in vanishing],
            "extra_vanishing": [x for x in entries if x["loss"] not in core]}


# --------------------------------------------------------------------------------------------------------------
# The confident-wrong penalty and its consequences


# quantity -> (split, metric) at each healthy model's last evaluation; ece_own is the training helpers' ECE on each
# loss's own probabilities (none for logit_mse), read where it exists, else the ECE on the softmax.
PENALTY_FINAL = {"confident_wrong_loss_share": ("test", "confident_wrong_loss_share"), "ece_ts": ("test", "ece_ts"),
                 "ece_own": ("test", "ece_own"), "ece": ("test", "ece"),
                 **{q: quantities.spec(q).source for q in (comparisons.SEPARATION, comparisons.TRANSFER,
                                                           comparisons.FINAL_ACCURACY)}}
CORRELATION_WORDS = {comparisons.FINAL_ACCURACY: "in-task test accuracy", comparisons.SEPARATION: "class separation",
                     comparisons.TRANSFER: "transfer to the unseen classes"}


def penalty_per_seed(history: pd.DataFrame, noise_per_seed: Mapping[str, pd.DataFrame],
                     heldout: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per seed (``RUN, quantity, value``): the penalty's quantities at the last evaluation, the share of
    confidently wrong training examples corrected by the next evaluation, the memorised share of flipped labels
    (label-noise conditions) and the held-out AUROC by each loss's own score."""
    models = runs(history)
    parts = [healthy(last_values(history, split, metric), models).assign(quantity=q)
             for q, (split, metric) in PENALTY_FINAL.items()]
    fixed = comparisons.corrections(history)
    parts.append(fixed[fixed["quantity"] == "confident_wrong_corrected"])
    for per_seed in noise_per_seed.values():
        if not per_seed.empty:
            parts.append(per_seed[per_seed["quantity"] == "memorised"])
    if heldout is not None and not heldout.empty:
        parts.append(heldout[heldout["quantity"].isin(["auroc_natural"])])
    parts = [p[[*analysis.RUN, "quantity", "value"]] for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=[*analysis.RUN, "quantity", "value"])
    return pd.concat(parts, ignore_index=True).astype({"value": float})


def _conditions_of(frame: pd.DataFrame, quantity: str, conditions: Sequence[str]) -> list[str]:
    found = set(frame.loc[frame["quantity"] == quantity, "condition"])
    return [c for c in conditions if c in found]


def _means(per_seed: pd.DataFrame, quantity: str, loss: str, conditions: Sequence[str]) -> list[float]:
    rows = per_seed[(per_seed["quantity"] == quantity) & (per_seed["loss"] == loss)
                    & per_seed["condition"].isin(conditions)]
    return [float(v) for v in rows.groupby("condition")["value"].mean() if math.isfinite(v)]


def penalty(per_seed: pd.DataFrame | None, conditions: Sequence[str], reference: str = REFERENCE) -> dict | None:
    """The confident-wrong answer from ``penalty_per_seed``: how much of the reference's test loss its confident
    mistakes carry and how often its pull corrects them, against the other losses; the same pull memorising flipped
    labels under noise; its consequences for calibration (ECE after temperature scaling) and for unseen classes."""
    if per_seed is None or per_seed.empty:
        return None
    per_seed = per_seed[per_seed["condition"].isin(conditions)]
    if per_seed.empty or reference not in set(per_seed["loss"]):
        return None
    diffs = analysis.differences(per_seed, reference)
    bounded = [name for name in registry.names() if registry.spec(name).bounded]

    core = mission(per_seed, conditions)

    def quantity(q: str) -> dict | None:
        where = _conditions_of(per_seed, q, conditions)
        if not where:
            return None
        means = _means(per_seed, q, reference, where)
        tallies = tally(diffs, q, where)
        mine = per_seed[per_seed["quantity"] == q]
        by_condition = {key: float(v) for key, v in mine.groupby(["condition", "loss"])["value"].mean().items()}
        return {"quantity": q, "conditions": where, "reference": (min(means), max(means)) if means else None,
                "tallies": tallies,
                "means": {loss: _means(per_seed, q, loss, where) for loss in analysis.ordered(per_seed["loss"])},
                "core": versus(tallies, core, means=by_condition, reference=reference),
                "all": versus(tallies, means=by_condition, reference=reference)}

    found = {q: quantity(q) for q in ("confident_wrong_loss_share", "confident_wrong_corrected", "memorised",
                                      "ece_ts", "ece_own", "ece", "auroc_natural", comparisons.SEPARATION,
                                      comparisons.TRANSFER)}
    return {"reference": reference, "bounded": bounded, "conditions": len(conditions),
            **{q: v for q, v in found.items()},
            # what the loss leaves in the penultimate layer, under names the answer's template reads
            "separation": found[comparisons.SEPARATION], "transfer": found[comparisons.TRANSFER],
            "correlations": [{**row, "x_words": CORRELATION_WORDS[row["x"]], "y_words": CORRELATION_WORDS[row["y"]]}
                             for row in comparisons.transfer_correlations(per_seed).to_dict("records")
                             if comparisons.TRANSFER in (row["x"], row["y"])],
            "ece_own_measured": found["ece_own"] is not None}


def evidence_rows(tallies: Sequence[Tally], differences: pd.DataFrame, quantity: str, conditions: Sequence[str]
                  ) -> list[dict]:
    """Per loss, per condition, the row of ``differences`` (None where not compared): the evidence table's cells."""
    out = []
    for t in tallies:
        cells = {c: analysis.lookup(differences, condition=c, loss=t.loss, quantity=quantity) for c in conditions}
        out.append({"loss": t.loss, "tally": t, "cells": cells})
    return out


def effect_range(t: Tally, words: Sequence[str] = (LOWER, HIGHER)) -> tuple[float, float] | None:
    """The smallest and largest finite effect among the parts of ``t`` whose word is in ``words``."""
    effects = [e for p in t.parts if p.word in words for e in p.effects if math.isfinite(e)]
    return (min(effects), max(effects)) if effects else None


def compact(tallies: Sequence[Tally]) -> dict:
    """The tallies in few words: per direction of a decided difference, the losses with it in their most frequent
    direction and in how many conditions ('fewer for mse (3 of 6) and gce (1 of 1)'); the other losses grouped by
    their most frequent verdict ('not established for smoothed_ce and focal')."""
    decided: dict[str, list[dict]] = {}
    rest: dict[str, list[str]] = {}
    for t in tallies:
        parts = [p for p in t.parts if p.word in (LOWER, HIGHER)]
        if parts:
            top = max(parts, key=lambda p: p.n)
            decided.setdefault(top.word, []).append({"loss": t.loss, "n": top.n, "total": t.total})
        elif t.parts:
            top = max(t.parts, key=lambda p: p.n)
            rest.setdefault(top.word, []).append(t.loss)
    return {"decided": sorted(decided.items(), key=lambda item: _rank(item[0])),
            "rest": sorted(rest.items(), key=lambda item: _rank(item[0]))}


# --------------------------------------------------------------------------------------------------------------
# The answers in plain words: the study's own losses in the sentence, the losses a condition adds in a clause


def mission(frame: pd.DataFrame | None, conditions: Sequence[str]) -> list[str]:
    """The losses every one of ``conditions`` trains (``frame``'s ``condition, loss`` pairs), in the registry's
    order: the study's own losses. The registry marks no loss as the mission's and setup.json records only each
    condition's list, so the losses common to all conditions stand for the study's list (a condition may add losses
    of its own: the answers name those in a clause, the sections in full)."""
    if frame is None or frame.empty:
        return []
    present = [set(frame.loc[frame["condition"] == c, "loss"]) for c in conditions]
    present = [p for p in present if p]
    return analysis.ordered(set.intersection(*present)) if present else []


@dataclass(frozen=True)
class Side:
    """One loss's comparisons with the reference that share a decided direction: ``word`` is the loss's direction
    (LOWER: its value below the reference's), ``reference_word`` the reference's against it; ``largest`` the
    effect largest in size among them (a ratio is sized on the log scale), in ``condition``, with both means there
    where they were given."""

    loss: str
    word: str
    n: int
    total: int
    largest: float
    condition: str
    value: float = math.nan
    reference_value: float = math.nan

    @property
    def reference_word(self) -> str:
        return HIGHER if self.word == LOWER else LOWER

    @property
    def factor(self) -> float:
        """A ratio's largest effect as a factor of at least 1 (0.63 -> 1.59): how many times fewer or more."""
        return 1 / self.largest if 0 < self.largest < 1 else self.largest


def versus(tallies: Sequence[Tally], losses: Iterable[str] | None = None, *, ratio: bool = False,
           means: Mapping[tuple[str, str], float] | None = None, reference: str = REFERENCE) -> dict:
    """The comparisons of ``tallies`` (those of ``losses`` when given) in the words of a sentence: ``decided``, one
    Side per loss and direction (more conditions first, then the larger effect); ``rest``, the other comparisons'
    verdicts with their counts (``rest_n`` in all); ``undecided``, the losses without a decided comparison grouped by
    their most frequent verdict; ``n``, every comparison; ``losses``, the losses compared.
    ``means`` maps (condition, loss) to the loss's mean there, for the Side's values."""
    keep = None if losses is None else set(losses)
    chosen = [t for t in tallies if keep is None or t.loss in keep]
    means = means or {}
    decided, rest = [], {}
    for t in chosen:
        for p in t.parts:
            if p.word not in (LOWER, HIGHER):
                rest[p.word] = rest.get(p.word, 0) + p.n
                continue
            sized = [(abs(math.log(e)) if ratio and e > 0 else abs(e), e, c)
                     for e, c in zip(p.effects, p.conditions, strict=True) if math.isfinite(e)]
            _, largest, where = max(sized) if sized else (0.0, math.nan, p.conditions[0])
            decided.append(Side(t.loss, p.word, p.n, t.total, largest, where,
                                means.get((where, t.loss), math.nan), means.get((where, reference), math.nan)))
    decided.sort(key=lambda s: (-s.n, -(abs(math.log(s.largest)) if ratio and s.largest > 0 else abs(s.largest))
                                if math.isfinite(s.largest) else 0.0))
    ordered_rest = sorted(rest.items(), key=lambda item: _rank(item[0]))
    undecided: dict[str, list[str]] = {}  # the losses without a decided comparison, by their most frequent verdict
    for t in chosen:
        if t.parts and not t.count(LOWER, HIGHER):
            undecided.setdefault(max(t.parts, key=lambda p: p.n).word, []).append(t.loss)
    return {"decided": decided, "rest": ordered_rest, "rest_n": sum(rest.values()),
            "undecided": sorted(undecided.items(), key=lambda item: _rank(item[0])),
            "n": sum(t.total for t in chosen), "losses": [t.loss for t in chosen], "reference": reference}


def winners(v: dict, better: str = LOWER) -> list[dict]:
    """``versus``' decided comparisons grouped by the loss that comes out ahead (``better``: the direction that is
    ahead, LOWER for steps): the reference ahead of the losses whose word is the other direction, each other loss
    ahead of the reference on its own. Each group: ``winner``, ``losers`` (their Sides), ``n`` its most conditions;
    the group with the most conditions first (then the larger effect), the reference's first on a tie."""
    behind = [s for s in v["decided"] if s.word != better]
    groups = [{"winner": v["reference"], "losers": behind, "reference": True}] if behind else []
    groups += [{"winner": s.loss, "losers": [s], "reference": False} for s in v["decided"] if s.word == better]
    for g in groups:
        g["n"] = max(s.n for s in g["losers"])
        g["size"] = max(abs(math.log(s.largest)) if s.largest > 0 else 0.0 for s in g["losers"]
                        if math.isfinite(s.largest)) if any(math.isfinite(s.largest) for s in g["losers"]) else 0.0
    groups.sort(key=lambda g: (-g["n"], not g["reference"], -g["size"]))
    return groups


def fmt_factor(factor: float) -> str:
    """'2.4×'; '–' without a value."""
    return f"{factor:.1f}×" if math.isfinite(factor) else "–"


def fmt_small(p: float) -> str:
    """A small probability as a reader writes it: 6.1e-06 -> '6e-6', 0.02 -> '0.02'."""
    if not math.isfinite(p):
        return "–"
    if p >= 0.001:
        return f"{p:.1g}"
    mantissa, exponent = f"{p:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def fmt_times(factor: float) -> str:
    """A large factor in two significant digits with thousands separators: 10846 -> '11,000×'."""
    if not math.isfinite(factor):
        return "–"
    return f"{float(f'{factor:.2g}'):,.0f}×" if factor >= 10 else f"{factor:.1f}×"
