"""Published results beside the study's own: each published number or comparison next to the same metric measured
here, with a verdict computed from the tables (reproduced, not reproduced, contradicted here, not established here,
not measured here, or shown beside for scale). Reads the statistics layer (``study.analysis``,
``study.comparisons``) and the loss registry (which losses take part in each published comparison, never a loss's
name).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from study import comparisons, verdicts
from study import losses as registry
from study.analysis import (
    DIFFERENT,
    EQUIVALENT,
    IDENTICAL,
    NOT_ESTABLISHED,
    REFERENCE,
    Headline,
    lookup,
    steps_quantity,
)
from study.measures import select

ANCHOR_COLUMNS = ["anchor", "source", "published", "here", "verdict", "why"]
REPRODUCED, NOT_REPRODUCED, CONTRADICTED, NOT_MEASURED = (
    "reproduced", "not reproduced", "contradicted here", "not measured here")
UNSETTLED = verdicts.UNSETTLED  # neither the published difference nor its absence shown (NOT_ESTABLISHED)
MEASURED_BESIDE = "shown beside"  # a published value shown for scale, with no verdict (another dataset and network)


@dataclass(frozen=True)
class PublishedAccuracy:
    """A published test accuracy of the reference loss on a dataset and network: ``point`` for 'about x' (reproduced
    when the study's 95% interval contains it), or ``low``-``high`` for a published range (reproduced when the
    interval meets it)."""

    anchor: str
    source: str
    published: str
    dataset: str
    kind: str = "mlp"
    point: float | None = None
    low: float | None = None
    high: float | None = None


ACCURACIES = (
    PublishedAccuracy("Fashion-MNIST MLP test accuracy", "Xiao et al. 2017 (Fashion-MNIST benchmark)",
                      "0.87-0.90 (MLP, cross-entropy)", "fashion_mnist", low=0.87, high=0.90),
    PublishedAccuracy("MNIST-1D MLP test accuracy", "Greydanus 2020 (MNIST-1D)", "about 0.68 (MLP)", "mnist1d",
                      point=0.68),
    PublishedAccuracy("MNIST-1D CNN test accuracy", "Greydanus 2020 (MNIST-1D)", "about 0.94 (CNN)", "mnist1d",
                      "cnn1d", point=0.94),
)


def _params(setups: Mapping[str, Mapping], condition: str) -> Mapping:
    return setups[condition].get("params", {})


def _noisy(setups: Mapping[str, Mapping], condition: str) -> bool:
    return bool(_params(setups, condition).get("label_noise", 0.0))


def _find(setups: Mapping[str, Mapping], dataset: str, kind: str = "mlp") -> str | None:
    """The dataset's clean condition with every class and a ``kind`` network, SGD's when there are several."""
    clean = [c for c, s in setups.items()
             if s.get("dataset") == dataset and not _noisy(setups, c) and not _params(setups, c).get("heldout_classes")
             and _params(setups, c).get("model", {}).get("kind", "mlp") == kind]
    return next((c for c in clean if _params(setups, c).get("optimizer") == "sgd"), clean[0] if clean else None)


def _accuracy_row(anchor: PublishedAccuracy, head: Headline, condition: str | None) -> list[str]:
    est = None if condition is None else lookup(head.summary, condition=condition, loss=REFERENCE,
                                                quantity=comparisons.FINAL_ACCURACY)
    if est is None or not math.isfinite(est["mean"]):
        return [anchor.anchor, anchor.source, anchor.published, "–", NOT_MEASURED, "no such condition in this study"]
    low, high = est["ci_low"], est["ci_high"]
    interval = math.isfinite(low) and math.isfinite(high)
    here = f"{est['mean']:.3f} ({condition}, {REFERENCE})" + (f", 95% interval [{low:.3f}, {high:.3f}]" if interval
                                                                else "")
    other = "another architecture, schedule or number of epochs than the published runs"
    if not interval:
        return [anchor.anchor, anchor.source, anchor.published, here, UNSETTLED,
                "one seed: no interval to set against the published value"]
    if anchor.point is not None:
        inside = low <= anchor.point <= high
        side = "below" if high < anchor.point else "above"
        why = (f"the study's 95% interval contains {anchor.point:g}" if inside else
               f"the study's 95% interval lies {side} {anchor.point:g}: {other}")
    else:
        inside = low <= anchor.high and high >= anchor.low
        side = "below" if high < anchor.low else "above"
        why = (f"the study's 95% interval meets the published range {anchor.low:g}-{anchor.high:g}" if inside else
               f"the study's 95% interval lies {side} the published range: {other}")
    return [anchor.anchor, anchor.source, anchor.published, here, REPRODUCED if inside else NOT_REPRODUCED, why]


def anchors(head: Headline, history: pd.DataFrame, setups: Mapping[str, Mapping]) -> pd.DataFrame:
    """Published numbers next to the study's own, same metric, each with a verdict computed from the tables;
    comparisons of losses one row per condition where the study made them. ``setups`` maps condition -> its
    setup.json (dataset, optimizer, label noise, model)."""
    rows = [_accuracy_row(a, head, _find(setups, a.dataset, a.kind)) for a in ACCURACIES]
    mnist1d = _find(setups, "mnist1d")
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
    trained = [c for c in setups if c in head.targets] or list(setups)
    noisy = [c for c in trained if _noisy(setups, c)]
    clean = [c for c in trained if not _noisy(setups, c)]
    for anchor in PUBLISHED:
        if isinstance(anchor, PublishedValues):
            rows.extend(_published_values(anchor, head))
        else:
            rows.extend(_published_rows(anchor, head, noisy if anchor.noisy else clean))
    rows.extend(_transfer_rows(head))
    return pd.DataFrame(rows, columns=ANCHOR_COLUMNS)


TRANSFER_ANCHOR = ("better-separated classes transfer worse", "Kornblith et al. 2021 (ImageNet, ResNet-50)",
                   "across objectives, higher class separation R² goes with lower linear-probe transfer accuracy")
TRANSFER_VERDICTS = {comparisons.AS_PUBLISHED: REPRODUCED, comparisons.OPPOSITE: CONTRADICTED,
                     comparisons.NO_CORRELATION: UNSETTLED}


def _transfer_rows(head: Headline) -> list[list[str]]:
    """Kornblith et al.'s transfer finding per condition with a transfer probe: Spearman's rank correlation of class
    separation and the probe's accuracy on the never-trained classes over every model (loss and seed)."""
    found = comparisons.transfer_correlations(head.per_seed)
    found = found[(found["x"] == comparisons.SEPARATION) & (found["y"] == comparisons.TRANSFER)]
    if found.empty:
        return [[*TRANSFER_ANCHOR, "–", NOT_MEASURED, "no condition with held-out classes measured a transfer probe"]]
    return [[*TRANSFER_ANCHOR, f"Spearman ρ = {row.rho:+.2f} over {row.n} models (loss × seed), p = "
             f"{row.p_value:.2g} ({row.condition})", TRANSFER_VERDICTS[row.reading],
             "the probe is fitted on training images of all ten classes and scored on the test images of the two "
             "classes the network never trained on; the losses and seeds are the models ranked"]
            for row in found.itertuples(index=False)]


@dataclass(frozen=True)
class Published:
    """A published comparison of some losses with the reference, checked on one quantity's paired difference in
    every condition where the study made it. ``claim``: the registry's claim id that names the losses; ``sign``: the
    sign of (loss - reference) the publication reports (+1, -1), or 0 for 'no worse than ``tolerance`` below it';
    ``words``: how a negative and a positive difference read ('lower', 'higher'); ``by_temperature``: the reason
    is read from the fitted temperatures (an ECE comparison)."""

    claim: str
    anchor: str
    source: str
    published: str
    quantity: str
    sign: int
    here: str  # format of the measured difference: {loss}, {reference}, {diff}
    why: str  # format: {loss}
    noisy: bool = False  # checked in the conditions with noisy labels, else in the clean ones
    tolerance: float = 0.0
    words: tuple[str, str] = ("lower", "higher")
    by_temperature: bool = False


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
              "model is", by_temperature=True),
    Published("bounded_resists_noise", "bounded losses (GCE, MAE) resist label noise",
              "Zhang & Sabuncu 2018; Ghosh et al. 2017", "higher accuracy than cross-entropy under symmetric noise",
              comparisons.FINAL_ACCURACY, +1, "Δ final test accuracy {loss} − {reference} {diff:+.3f}",
              "a bounded loss gives a flipped label a bounded pull; it also learns the clean labels more slowly",
              noisy=True),
    Published("squared_error_slower", "squared error trains worse than cross-entropy from random initialisation",
              "Golik et al. 2013", "slower, worse optimum", steps_quantity(1), +1,
              "{loss} − {reference}: {diff:+.0f} steps to the first target",
              "each loss at its own tuned rate: a larger rate can make up for {loss}'s smaller gradients",
              words=("faster", "slower")),
    Published("square_loss_competitive", "square loss on logits is competitive with cross-entropy",
              "Hui & Belkin 2021", "within about 1% accuracy", comparisons.FINAL_ACCURACY, 0,
              "Δ final test accuracy {loss} − {reference} {diff:+.3f}",
              "{loss} is the square loss on raw logits, not the squared error of softmax probabilities (Brier)",
              tolerance=0.01),
    Published("separates_more", "other objectives separate the classes more than cross-entropy",
              "Kornblith et al. 2021 (ImageNet, ResNet-50)",
              "higher class separation R² of the penultimate layer than softmax cross-entropy (label smoothing, "
              "sigmoid cross-entropy, squared error)", comparisons.SEPARATION, +1,
              "Δ R² {loss} − {reference} {diff:+.3f}",
              "R² = 1 − mean within-class / mean overall cosine distance of the penultimate features, on the test set "
              "at the last evaluation", words=("lower", "higher")),
    Published("focal_calibrates", "focal loss lowers the calibration error of cross-entropy", "Mukhoti et al. 2020",
              "lower ECE than cross-entropy", "ece", -1, "Δ ECE {loss} − {reference} {diff:+.3f}",
              "down-weighting confident examples keeps logits smaller", by_temperature=True),
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


CALIBRATED = 0.05  # a fitted temperature within 1 ± this reads as calibrated


def _confidence(t: float) -> str:
    """What a fitted temperature says: T > 1 softens an overconfident model, T < 1 sharpens an underconfident one."""
    if t > 1 + CALIBRATED:
        return f"overconfident, T = {t:.2f} > 1"
    if t < 1 - CALIBRATED:
        return f"underconfident, T = {t:.2f} < 1"
    return f"about calibrated, T = {t:.2f}"


def temperature_reason(head: Headline, condition: str, loss: str, reference: str = REFERENCE) -> str | None:
    """Why a loss's ECE differs from the reference's in ``condition``, read from the fitted temperatures (means over
    seeds of the registry's temperature quantity): who was overconfident (T > 1), whether ``loss`` tempered it or
    overshot into underconfidence (T < 1). None when either temperature is missing."""
    found = [lookup(head.summary, condition=condition, loss=x, quantity=comparisons.TEMPERATURE) for x in (reference,
                                                                                                       loss)]
    if any(f is None or not math.isfinite(f["mean"]) for f in found):
        return None
    t_ref, t_loss = (float(f["mean"]) for f in found)
    over_ref, over, under = t_ref > 1 + CALIBRATED, t_loss > 1 + CALIBRATED, t_loss < 1 - CALIBRATED
    text = f"{reference} {_confidence(t_ref)}; {loss} {_confidence(t_loss)}"
    if over_ref and under:
        return f"{text}: {loss} overshoots into underconfidence"
    if over_ref and over:
        return f"{text}: {loss} " + ("tempers the overconfidence" if t_loss < t_ref else "is no less overconfident")
    if over_ref:
        return f"{text}: {loss} removes the overconfidence"
    return f"{text}: {reference} is not overconfident to begin with, so there is little for {loss} to lower"


def _published_rows(anchor: Published, head: Headline, conditions: Sequence[str]) -> list[list[str]]:
    """One row per condition and loss taking part in ``anchor.claim`` that the study compared with the reference
    there; one 'not measured here' row when none was."""
    rows = []
    for condition in conditions:
        for loss in registry.taking_part(anchor.claim):
            row = lookup(head.differences, condition=condition, loss=loss, quantity=anchor.quantity)
            if row is None or row["evidence"] is None:
                continue
            diff, word = row["diff"], row["evidence"]
            apart = word == DIFFERENT
            if anchor.sign:
                found = (REPRODUCED if apart and np.sign(diff) == anchor.sign else CONTRADICTED if apart else
                         UNSETTLED if word == NOT_ESTABLISHED else NOT_REPRODUCED)
            else:
                found = REPRODUCED if diff >= -anchor.tolerance else CONTRADICTED if apart else NOT_REPRODUCED
            if apart:
                reads = anchor.words[diff > 0]
            elif word in (EQUIVALENT, IDENTICAL):
                margin = row.get("margin", math.nan)
                reads = f"{word} within ±{margin:g}" if word == EQUIVALENT and math.isfinite(margin) else word
            else:
                reads = word
            here = anchor.here.format(loss=loss, reference=REFERENCE, diff=diff)
            why = (temperature_reason(head, condition, loss) if anchor.by_temperature else None) or anchor.why
            rows.append([anchor.anchor, anchor.source, anchor.published,
                         f"{here}, {reads} ({condition}, Holm p={row['p_holm']:.2g})", found,
                         why.format(loss=loss)])
    if not rows:
        where = "no such condition in this study" if not conditions else (
            f"no paired test of {' / '.join(registry.taking_part(anchor.claim)) or 'such a loss'} against "
            f"{REFERENCE} in {' / '.join(conditions)}: not trained there, or fewer than two seeds to pair")
        rows.append([anchor.anchor, anchor.source, anchor.published, "–", NOT_MEASURED, where])
    return rows
