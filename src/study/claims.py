"""The source text's claims, checked on the study's measurements (published results beside the study's own are
``study.published``).

Every check reads the statistics layer (``study.analysis``: its paired comparisons and verdicts;
``study.comparisons``: the tables of each question) and the loss registry (which losses take part in each claim,
never a loss's name); nothing here computes a statistic of its own beyond counting. Neither imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from study import comparisons, verdicts
from study import losses as registry
from study.analysis import (
    DIFFERENT,
    EQUIVALENT,
    IDENTICAL,
    NOT_ESTABLISHED,
    REFERENCE,
    REPLICATION,
    RUN,
    SATURATION,
    Difference,
    Headline,
    evidence_word,
    finite,
    lookup,
    mean_ci,
    paired_difference,
    steps_quantity,
)
from study.measures import select

VERDICTS = verdicts.VERDICTS
UNMEASURED = "not measured"  # the verdict on a claim no condition of this study measures
# ``of_source``: True for a sentence of the source text; False for a row that is the study's own question (counted
# apart, never among the source's claims).
CLAIM_COLUMNS = ["claim_id", "claim", "measured", "value", "reference", "verdict", "note", "figure", "of_source"]
# A check's outcome. NO_DIFFERENCE only where the comparison was shown EQUIVALENT or IDENTICAL; UNCLEAR where it
# was not established either way (or not testable), so it counts for nothing.
SUPPORTS, CONTRADICTS, NO_DIFFERENCE = "supports", "contradicts", "no difference"
UNCLEAR = NOT_ESTABLISHED  # the paired verdict's own word

VERDICT_RULE = ("a claim measured by several checks holds when every check supports it; holds with a nuance "
                "when at least half support it and none contradicts it; does not hold here when more checks "
                "contradict it than support it; otherwise it is not established here")


def verdict_bucket(text: str) -> str:
    """The verdict as counted: one of VERDICTS, or "not measured" for a claim no condition of the study measured.
    Anything else is a stage writing outside the shared vocabulary (study.verdicts), which is a bug."""
    if text in VERDICTS or text == UNMEASURED:
        return text
    raise ValueError(f"unknown verdict {text!r}: claims.csv and the claims checks write one of {VERDICTS} "
                     "(study.verdicts)")


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
           figure: str, of_source: bool = True) -> dict:
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
        "of_source": of_source,
    }


def _outcome(found: str | None, positive: bool, positive_supports: bool) -> str:
    """A check's outcome from the verdict of its comparison and the sign of its difference: 'no difference' only
    for a comparison shown EQUIVALENT or IDENTICAL."""
    if found == DIFFERENT:
        return SUPPORTS if positive == positive_supports else CONTRADICTS
    return NO_DIFFERENCE if found in (EQUIVALENT, IDENTICAL) else UNCLEAR


def _from_difference(d: Difference, positive_supports: bool) -> str:
    return _outcome(d.evidence, d.mean > 0, positive_supports)


def _taking_part(claim: str, given: Sequence[str] | None) -> tuple[str, ...]:
    """The losses a claim compares with the reference: ``given``, or the registry's losses that take part in it."""
    return registry.taking_part(claim) if given is None else tuple(given)


def _fmt_steps(value: float) -> str:
    return "not reached" if not math.isfinite(value) else f"{value:.0f} steps"


def sigmoid_loss() -> str | None:
    """The first registered loss trained to output one sigmoid per class (its natural score is the max sigmoid)."""
    return next((s.name for s in registry.specs() if s.probabilities == "sigmoid"), None)


# Sentences of the source text (../shared/seed/understanding-cross-entropy.txt), quoted verbatim.
TWO_BENEFITS = "It results in faster and more reliable training."
SIGMOID_MULTICLASS = ("This won’t work for the multiclass classification such as MNIST digit, Pets or other datasets, "
                      "so we can’t just take the sigmoid.")
PENALTY_WORKS = "This kind of penalty works well in practice to aid in more effective model training."
NLL_MISCLASSIFICATION = ("In ML, we are also taking negative log, which means high value of negative log = more "
                         "misclassification and thus higher total loss.")
NONE_OF_THE_ABOVE = ("It may be less ideal during inference, as you might want your model to sometimes tell you it "
                     "doesn’t recognize any of the classes that it has seen during training")
GRADIENT_QUESTION = ("Not a sentence of the source text but the study's own question: the cross-entropy gradient "
                     "stays meaningful where sigmoid/MSE saturate.")


def claim_sigmoid_multiclass(head: Headline, reference: str = REFERENCE, losses: Sequence[str] | None = None,
                             margin: float = 0.02) -> dict:
    """'Sigmoid won't work for multiclass': one sigmoid per class (the losses taking part in the claim) against
    softmax, final test accuracy per condition. It works when it is within ``margin`` of the reference, above it, or
    shown equivalent to it."""
    losses = _taking_part("sigmoid_multiclass", losses)
    checks = []
    for condition in head.targets:
        for loss in losses:
            row = lookup(head.differences, condition=condition, loss=loss, quantity=comparisons.FINAL_ACCURACY)
            mine = lookup(head.summary, condition=condition, loss=loss, quantity=comparisons.FINAL_ACCURACY)
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


def claim_penalty_clean(head: Headline, noisy: Sequence[str] = (), reference: str = REFERENCE,
                        bounded: Sequence[str] | None = None) -> dict:
    """'The confident-wrong penalty aids training', on clean labels: in each condition not in ``noisy``, final test
    accuracy of each bounded loss taking part in the claim against the reference (Holm-corrected verdict)."""
    bounded = _taking_part("penalty_works", bounded)
    checks = []
    for condition in head.targets:
        if condition in noisy:
            continue
        for loss in bounded:
            row = lookup(head.differences, condition=condition, loss=loss, quantity=comparisons.FINAL_ACCURACY)
            if row is None or row["evidence"] is None:
                continue
            text = (f"{condition}: {loss} − {reference} final test accuracy {row['diff']:+.3f} "
                    f"({row['evidence']}, Holm p={row['p_holm']:.2g})")
            checks.append((_outcome(row["evidence"], row["diff"] > 0, positive_supports=False), text))
    return _claim("penalty_works_clean", f"{PENALTY_WORKS} (on clean labels)", checks,
                  f"checks where {reference} reaches a higher final test accuracy than the bounded "
                  f"{' / '.join(bounded)} on clean labels, established after Holm's correction; shown equivalent "
                  "is no difference",
                  "Clean labels only: the penalty's other side, under label noise, is the next row.", "headline")


def claim_penalty_noise(noise: Mapping[str, pd.DataFrame], reference: str = REFERENCE,
                        bounded: Sequence[str] | None = None) -> dict:
    """'The confident-wrong penalty aids training', under label noise: per noisy condition (``noise``: its
    ``comparisons.label_noise`` per-seed table), how much accuracy the reference loses after its validation-selected
    best against each bounded loss, paired by seed."""
    bounded = _taking_part("penalty_works", bounded)
    checks = []
    drop_name = comparisons.NOISE_DROP
    for condition, per_seed in noise.items():
        drop = per_seed[per_seed["quantity"] == drop_name]
        by_loss = {loss: g.set_index("seed")["value"] for loss, g in drop.groupby("loss")}
        for loss in bounded:
            if reference not in by_loss or loss not in by_loss:
                continue
            d = paired_difference(by_loss[reference], by_loss[loss])
            text = (f"{condition} (noisy labels): accuracy lost after the validation-selected best, {reference} − "
                    f"{loss} {d.mean:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]")
            # The unbounded penalty fits the flipped labels: losing more than a bounded loss contradicts the claim.
            checks.append((_from_difference(d, positive_supports=False), text))
    return _claim("penalty_works_noise", f"{PENALTY_WORKS} (under label noise)", checks,
                  f"checks where {reference} loses less accuracy after its validation-selected best than the bounded "
                  f"{' / '.join(bounded)} when training labels are noisy (paired by seed)",
                  "Under label noise the same penalty pulls the model towards the flipped labels.",
                  "label_noise" if checks else "")


def claim_penalty_works(head: Headline, noise: Mapping[str, pd.DataFrame], reference: str = REFERENCE,
                        bounded: Sequence[str] | None = None) -> tuple[dict, dict]:
    """The penalty sentence as two claims with their own verdicts: clean labels, then label noise."""
    return (claim_penalty_clean(head, tuple(noise), reference, bounded),
            claim_penalty_noise(noise, reference, bounded))


def _span(values: Sequence[float], up: str, down: str, unit: str) -> str:
    """'rose 3.6 to 7.1 points', 'fell 0.2 points', 'changed -0.4 to +1.2 points': the range over seeds."""
    low, high = min(values), max(values)
    if low >= 0 or high <= 0:
        word, a, b = (up, low, high) if low >= 0 else (down, -high, -low)
        return f"{word} {a:.1f} {unit}" if math.isclose(a, b, abs_tol=0.05) else f"{word} {a:.1f} to {b:.1f} {unit}"
    return f"changed {low:+.1f} to {high:+.1f} {unit}"


def _growth(ratios: Sequence[float]) -> str:
    """How a quantity that cannot fall below its lowest grew from it: 'doubled (1.9-2.2× its lowest)'."""
    low, high = min(ratios), max(ratios)
    if high <= 1.1:
        return f"stayed within {high - 1:.0%} of its lowest"
    shown = f"{low:.2f}× its lowest" if math.isclose(low, high, abs_tol=0.005) else f"{low:.2f}–{high:.2f}× its lowest"
    k = round((low + high) / 2)
    if k >= 2 and all(abs(r - k) <= 0.15 * k for r in ratios):
        return f"{ {2: 'doubled', 3: 'tripled'}.get(k, f'grew {k}-fold') } ({shown})"
    return f"rose to {shown}"


def claim_nll_misclassification(history: pd.DataFrame, reference: str = REFERENCE, rise: float = 1.1,
                                flat: float = 0.01) -> dict:
    """'Higher NLL = more misclassification': per condition, for each seed of the reference, from its lowest test
    NLL to its last evaluation, how test accuracy changed and how much the NLL grew (the check's text says both, as
    measured); a seed parts them when its NLL ends ``rise`` times above its lowest while its accuracy did not fall
    by more than ``flat``."""
    checks = []
    for condition, group in history[history["loss"] == reference].groupby("condition", sort=False):
        nll, acc = select(group, "test", "nll"), select(group, "test", "accuracy")
        both = nll.merge(acc, on=[*RUN, "step"], suffixes=("_nll", "_acc")).sort_values([*RUN, "step"])
        apart, changes, ratios = 0, [], []
        for _, run in both.groupby(RUN, sort=False):
            low = run.loc[run["value_nll"].idxmin()]
            end = run.iloc[-1]
            changes.append(100 * float(end["value_acc"] - low["value_acc"]))
            ratios.append(float(end["value_nll"] / low["value_nll"]) if low["value_nll"] > 0 else math.nan)
            apart += bool(end["value_nll"] > rise * low["value_nll"] and end["value_acc"] >= low["value_acc"] - flat)
        seeds = len(changes)
        if not seeds:
            continue
        ratios = [r for r in ratios if math.isfinite(r)] or [1.0]
        text = (f"{condition}: from its lowest test NLL to the last evaluation, test accuracy "
                f"{_span(changes, 'rose', 'fell', 'points')} while the NLL {_growth(ratios)}; in {apart}/{seeds} "
                f"seeds the NLL ends more than {rise - 1:.0%} above its lowest with accuracy no more than {flat:g} "
                "below its value there")
        checks.append((CONTRADICTS if 2 * apart > seeds else SUPPORTS if apart == 0 else UNCLEAR, text))
    return _claim("nll_misclassification", NLL_MISCLASSIFICATION, checks,
                  "checks where NLL and misclassification move together for the reference loss (no seed whose NLL "
                  "rises while its accuracy holds); contradicted where most seeds part them",
                  "NLL also grows with the confidence of the examples that are wrong anyway: it can rise while the "
                  "error rate stays flat (overconfidence, not more mistakes).", "convergence")


def claim_none_of_the_above(heldout: pd.DataFrame, reference: str = REFERENCE, sigmoid: str | None = None) -> dict:
    """'Softmax is less ideal when an input belongs to no class seen in training': per condition with held-out
    classes, (1) how well one sigmoid per class (``sigmoid``: the registry's first loss whose probabilities are
    sigmoids, by default) separates held-out from known test images by its own score (max sigmoid) against softmax
    by its own (max softmax), as AUROC paired by seed; (2) whether it actually says "none" (every sigmoid below 0.5)
    more often for the held-out images than for known ones."""
    sigmoid = sigmoid or sigmoid_loss()
    natural, (heldout_none, test_none) = comparisons.NATURAL, comparisons.NONE_SHARES
    checks = []
    for condition in dict.fromkeys(heldout["condition"]):
        mine = heldout[heldout["condition"] == condition]
        if sigmoid is None or not {reference, sigmoid} <= set(mine["loss"]):
            continue
        d = comparisons.heldout_difference(mine, condition, (sigmoid, natural), (reference, natural))
        a, b = (mean_ci(mine.loc[(mine["loss"] == loss) & (mine["quantity"] == natural), "value"]).mean
                for loss in (sigmoid, reference))
        checks.append((_from_difference(d, positive_supports=True),
                       f"{condition}: AUROC held-out vs known classes, {sigmoid} by max sigmoid {a:.3f}, {reference} "
                       f"by max softmax {b:.3f}, Δ {d.mean:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}]"))
        none = comparisons.heldout_difference(mine, condition, (sigmoid, heldout_none), (sigmoid, test_none))
        shares = {q: mean_ci(mine.loc[(mine["loss"] == sigmoid) & (mine["quantity"] == q), "value"]).mean
                  for q in (heldout_none, test_none)}
        checks.append((_from_difference(none, positive_supports=True),
                       f"{condition}: {sigmoid} says 'none' (every sigmoid < 0.5) to {shares[heldout_none]:.1%}"
                       f" of held-out images vs {shares[test_none]:.1%} of known-class ones, Δ "
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
            # A primary comparison: its Holm-corrected verdict decides; untested is not 'no difference'.
            outcome = UNCLEAR if row is None else _outcome(row["evidence"], row["diff"] > 0, positive_supports=True)
            checks.append((outcome, text))
    return _claim(
        "faster_training", f"{TWO_BENEFITS} (the 'faster' half)", checks,
        f"checks (condition × compared loss) where {reference} reached the first validation-accuracy target in "
        "fewer steps (paired by seed, established after Holm's correction) or in more seeds",
        "Each loss at its own tuned learning rate; 'no difference' only where shown equivalent within the declared "
        "margin (or identical), 'not established' otherwise, as everywhere in the report.",
        "steps_to_target")


def claim_reliable(head: Headline, reference: str = REFERENCE, others: Sequence[str] | None = None,
                   alpha: float = 0.05) -> dict:
    """'More reliable training': fewer divergences, or a smaller seed spread of final test accuracy (one-sided
    variance-ratio F-test at ``alpha``)."""
    others = _taking_part("reliable_training", others)
    checks = []
    for condition in head.targets:
        acc = head.per_seed[(head.per_seed["condition"] == condition)
                            & (head.per_seed["quantity"] == comparisons.FINAL_ACCURACY)]
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
                checks.append((UNCLEAR, text + ", spread not testable"))
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
    examples whose gradient vanished, per condition). Not a sentence of the source text: ``of_source`` False."""
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
        "gradient_meaningful", GRADIENT_QUESTION, checks,
        f"checks where {reference}'s logit gradient is larger in closed form, or its share of wrong test examples "
        f"with ‖∂L/∂z‖ < {threshold:g} at the last evaluation is established as smaller (paired by seed)",
        "Per-class sigmoid BCE does not saturate on a confidently wrong example: its gradient on the true class is "
        "sigmoid(z_true) − 1. Trained networks may put few wrong examples where MSE's gradient vanishes.",
        "logit_grad", of_source=False)


def measured(head: Headline, history: pd.DataFrame, noise: Mapping[str, pd.DataFrame], heldout: pd.DataFrame,
             saturation: pd.DataFrame, penalty: pd.DataFrame | None, conditions: Sequence[str] = ()
             ) -> pd.DataFrame:
    """Every claim measured from training, one row each (CLAIM_COLUMNS). ``noise``: condition -> its
    ``comparisons.label_noise`` table, for the conditions with noisy labels; ``heldout``:
    ``comparisons.heldout_per_seed``; ``saturation``: ``analysis.saturation``; ``penalty``: the probe's sweep (None
    without it)."""
    return pd.DataFrame([
        claim_faster(head),
        claim_reliable(head),
        claim_sigmoid_multiclass(head),
        *claim_penalty_works(head, noise),
        claim_nll_misclassification(history),
        claim_none_of_the_above(heldout),
        claim_gradient(saturation, penalty, conditions),
    ], columns=CLAIM_COLUMNS)


def combine(probe: pd.DataFrame | None, measured_rows: pd.DataFrame) -> pd.DataFrame:
    """The claims table: the probe stage's closed-form checks (claims.csv, each a sentence of the source text) and
    the measured ones, in CLAIM_COLUMNS."""
    if probe is None:
        return measured_rows.reset_index(drop=True)
    quoted = probe.reindex(columns=CLAIM_COLUMNS).assign(of_source=True)
    return pd.concat([quoted, measured_rows.astype({"value": str})], ignore_index=True)


def of_source(table: pd.DataFrame) -> pd.Series:
    """Which rows are sentences of the source text (a table without the column: all of them)."""
    if "of_source" not in table.columns:
        return pd.Series(True, index=table.index)
    return table["of_source"].map(lambda v: v is True or v is np.True_ or str(v).lower() in ("true", "1", ""))


def finding(table: pd.DataFrame) -> dict:
    """The claims finding: ``counts`` of the source text's claims by verdict (the study's own questions excluded),
    ``against`` the source's claims that do not hold, ``own`` the rows that are not sentences of the source
    (``claim``, ``verdict``), counted apart."""
    quoted = of_source(table)
    source, own = table[quoted], table[~quoted]
    buckets = source["verdict"].map(verdict_bucket)
    return {"counts": {v: int((buckets == v).sum()) for v in VERDICTS},
            "against": [c.rstrip(".") for c in source[buckets == verdicts.FAILS]["claim"]],
            "own": [{"claim": str(r["claim"]), "verdict": verdict_bucket(str(r["verdict"]))}
                    for r in own.to_dict("records")]}
