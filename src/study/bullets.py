"""The report's findings (bullets of the folded detail, one dict per bullet whose ``kind`` names its macro in
templates/findings.md.j2): speed, accuracy, stability, calibration, gradients, optimizer, label noise, claims,
held-out classes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from study import analysis, comparisons
from study import claims as checks
from study import losses as registry
from study.analysis import REFERENCE
from study.digest import Computed, Figures, _value
from study.reader import Inputs, _noise_conditions


def findings(inputs: Inputs, computed: Computed, figures: Figures) -> list[dict]:
    """The Findings bullets in order, each pointing at its figure or table."""
    items = [f for c in inputs.conditions if (f := _speed_finding(c, inputs, computed, figures))]
    items += [f for c in inputs.conditions if (f := _accuracy_finding(c, computed, figures))]
    for c in inputs.conditions:
        items += _collapse_findings(c, computed.head, inputs.setups[c], figures)
    items += [f for c in inputs.conditions if (f := _calibration_finding(c, inputs, computed, figures))]
    items += [f for f in [_gradient_finding(inputs, computed, figures)] if f]
    items += optimizer_findings(inputs, computed.head, figures)
    items += [f for c, summary in computed.noise.items()
              if (f := _label_noise_finding(c, summary, computed.noise_per_seed[c], figures))]
    items += [f for f in [_claims_finding(computed)] if f]
    diverged = computed.head.models[computed.head.models["diverged"]]
    if not diverged.empty:
        items.append({"kind": "divergence", "models": [{"condition": r.condition, "loss": r.loss, "seed": r.seed}
                                                       for r in diverged.itertuples()]})
    return items


def _by_loss(per_seed: pd.DataFrame, condition: str, quantity: str) -> dict[str, pd.Series]:
    """Each loss's per-seed values of one quantity in one condition, indexed by seed."""
    rows = per_seed[(per_seed["condition"] == condition) & (per_seed["quantity"] == quantity)]
    return {loss: g.set_index("seed")["value"] for loss, g in rows.groupby("loss")}


def _margin_text(quantity: str | None) -> str:
    """A quantity's declared equivalence margin as the report prints it ('±0.005', '±0.5 pp', '±10%'); '' when
    the registry declares none."""
    spec = analysis.declared(quantity) if quantity else None
    if spec is None:
        return ""
    if spec.log_scale:
        return f"±{100 * spec.margin:g}%"
    if spec.percent:
        return f"±{100 * spec.margin:g} pp"
    return f"±{spec.margin:g}{(' ' + spec.unit) if spec.unit else ''}"


def _leaders(by_loss: dict[str, pd.Series], quantity: str, summary: pd.DataFrame | None = None, *,
             higher_is_better: bool | None = None) -> dict | None:
    """analysis.leaders (on ``quantity``'s declared margin and, unless ``higher_is_better`` asks the other way, its
    declared direction) as the templates word it: the group of the best mean
    and every loss not established as different from it (registry order), each member with its estimate; which
    members were shown equivalent to the best within the margin and which are only not established as different
    (a ranking inside the group is noise's to change, so the words never say which member has the best mean)."""
    lead = analysis.leaders(by_loss, higher_is_better, quantity=quantity)
    if lead is None:
        return None
    same = (analysis.EQUIVALENT, analysis.IDENTICAL)
    equivalent = [loss for loss, word in lead.verdicts.items() if word in same]
    unsure = [loss for loss, word in lead.verdicts.items() if word not in same and word != analysis.DIFFERENT]
    group = analysis.ordered({lead.best, *equivalent, *unsure})
    members = []
    for loss in group:
        row = _value(summary, loss=loss) if summary is not None else None
        members.append({"loss": loss, "mean": lead.means[loss], "estimate": row})
    return {"members": members, "alone": len(group) == 1 and len(lead.means) > 1, "only": len(lead.means) == 1,
            "equivalent": analysis.ordered(equivalent), "unsure": analysis.ordered(unsure),
            "margin": _margin_text(quantity), "seeds": max(len(v) for v in by_loss.values())}


def _verdicts(differences: pd.DataFrame, condition: str, quantity: str) -> dict[str, list[dict]]:
    """Each loss's paired difference to the reference, sorted by the evidence of its Holm-corrected p-value
    (registry order): established lower or higher, not established, equivalent within the margin or identical,
    untested."""
    rows = differences[(differences["condition"] == condition) & (differences["quantity"] == quantity)]
    out: dict[str, list[dict]] = {"lower": [], "higher": [], "unsure": [], "same": [], "untested": []}
    group = {analysis.NOT_ESTABLISHED: "unsure", analysis.EQUIVALENT: "same", analysis.IDENTICAL: "same",
             None: "untested"}
    for row in rows.to_dict("records"):
        if row["evidence"] == analysis.DIFFERENT:
            out["lower" if row["diff"] < 0 else "higher"].append(row)
        else:
            out[group[row["evidence"]]].append(row)
    return out


def _paired_seeds(by_verdict: dict[str, list[dict]]) -> int:
    """The most seeds any of these paired comparisons used."""
    return int(max((row["n"] for group in by_verdict.values() for row in group), default=0))


def _speed_finding(c: str, inputs: Inputs, computed: Computed, figures: Figures) -> dict | None:
    """Steps to the first target: each loss against the reference, sorted by the Holm-corrected paired verdict. No
    loss is named fastest by its median alone: a ranking within noise is what another thread count reorders."""
    head, q1 = computed.head, analysis.steps_quantity(1)
    targets = inputs.targets.get(c, ())
    rows = head.summary[(head.summary["condition"] == c) & (head.summary["quantity"] == q1)]
    if not targets or rows.empty:
        return None
    found = {"kind": "speed", "condition": c, "target": targets[0], "figure": figures.resolve("steps_to_target"),
             "reached": False}
    medians = rows["median"].to_numpy(dtype=float)
    if not np.isfinite(medians).any():
        return found
    by_verdict = _verdicts(head.differences, c, q1)
    slow = analysis.ordered(rows[~np.isfinite(medians)]["loss"])
    by_verdict["untested"] = [row for row in by_verdict["untested"] if row["loss"] not in slow]  # named once, below
    for group in by_verdict.values():
        for row in group:
            row["steps"] = _value(rows, loss=row["loss"])
    return {**found, "reached": True, "reference": _value(rows, loss=REFERENCE), "faster": by_verdict["lower"],
            "margin": _margin_text(q1),
            "slower": by_verdict["higher"], "unsure": by_verdict["unsure"], "same": by_verdict["same"],
            "untested": by_verdict["untested"],
            "seeds": _paired_seeds(by_verdict), "slow": slow}


def _accuracy_finding(c: str, computed: Computed, figures: Figures) -> dict | None:
    head = computed.head
    rows = head.summary[(head.summary["condition"] == c) & (head.summary["quantity"] == comparisons.FINAL_ACCURACY)]
    rows = rows[np.isfinite(rows["mean"].to_numpy(dtype=float))]
    if rows.empty:
        return None
    final = comparisons.FINAL_ACCURACY
    by_verdict = _verdicts(head.differences, c, final)
    return {"kind": "accuracy", "condition": c,
            "leaders": _leaders(_by_loss(head.per_seed, c, final), final, rows),
            "seeds": _paired_seeds(by_verdict),
            "within_noise": [r["loss"] for r in by_verdict["same"]], "margin": _margin_text(final),
            "unsure": [r["loss"] for r in by_verdict["unsure"]],
            "apart": [(r["loss"], r["diff"]) for r in by_verdict["lower"] + by_verdict["higher"]],
            "figure": figures.resolve("headline")}


def _collapse_findings(condition: str, head: analysis.Headline, setup: dict, figures: Figures) -> list[dict]:
    """Rates that failed: models that collapsed or diverged in the reported runs, and rates the train stage gave up
    for a smaller one (setup.json's lr_fallbacks). A collapse is never called overfitting."""
    items = []
    mine = head.models[head.models["condition"] == condition]
    for loss in analysis.ordered(mine["loss"]):
        m = mine[mine["loss"] == loss]
        bad = m[m["collapsed"] | m["diverged"]]
        if bad.empty:
            continue
        failures = [{"seed": int(r.seed), "how": "diverged" if r.diverged else "collapsed",
                     "step": r.diverged_step if r.diverged else r.collapsed_step} for r in bad.itertuples()]
        items.append({"kind": "stability", "condition": condition, "loss": loss, "lr": m["lr"].iloc[0],
                      "seeds": len(m), "failures": failures, "figure": figures.resolve(f"convergence_{condition}")})
    for loss, attempts in (setup.get("lr_fallbacks") or {}).items():
        for attempt in attempts:
            items.append({"kind": "fallback", "condition": condition, "loss": loss, "lr": attempt["lr"],
                          "seeds": sorted({*attempt.get("collapsed", {}), *attempt.get("diverged", {})}, key=int),
                          "next_lr": attempt.get("next_lr"), "figure": figures.resolve("tuning")})
    return items


def _calibration_finding(c: str, inputs: Inputs, computed: Computed, figures: Figures) -> dict | None:
    """The losses with the lowest ECE after temperature scaling (the lowest mean and those not established as
    different from it), the reference's fitted temperature, the confident-wrong share of the test loss of the
    reference and of each bounded loss."""
    cal, head = computed.calibration, computed.head
    # ECE after temperature scaling: the comparison every loss can enter; the softmax's ECE where it was not measured.
    for quantity in ("ece_ts", "ece"):
        rows = cal[(cal["condition"] == c) & (cal["quantity"] == quantity)]
        rows = rows[np.isfinite(rows["mean"].to_numpy(dtype=float))]
        by_loss = _by_loss(head.per_seed, c, quantity)
        if not rows.empty and by_loss:
            break
    else:
        return None
    lowest = _leaders(by_loss, quantity, rows)
    temperature = None
    temp = _value(cal, condition=c, loss=REFERENCE, quantity="temperature")
    if temp is not None and math.isfinite(temp["mean"]):
        low, high = analysis.TEMPERATURE_BOUNDS
        at_bound = temp["ci_low"] >= high * 0.99 or temp["ci_high"] <= low * 1.01 or temp["mean"] >= high * 0.99
        # Over- or underconfident only when the interval over seeds excludes 1: a mean near 1 is noise's to tip.
        side = "over" if temp["ci_low"] > 1 else "under" if temp["ci_high"] < 1 else "neither"
        temperature = {"mean": temp["mean"], "at_bound": at_bound, "low": low, "high": high, "side": side,
                       "n": int(temp["n"])}
    confident_wrong = []
    # The reference's unbounded penalty beside the bounded losses', each loss's own rate.
    for loss in (REFERENCE, *(name for name in registry.names() if registry.spec(name).bounded)):
        share = _value(cal, condition=c, loss=loss, quantity="confident_wrong_loss_share")
        rate = _value(cal, condition=c, loss=loss, quantity="confident_wrong_rate")
        if share is not None and rate is not None and math.isfinite(share["mean"]):
            confident_wrong.append({"loss": loss, "rate": rate["mean"], "share": share["mean"]})
    return {"kind": "calibration", "condition": c, "lowest": lowest, "temperature": temperature,
            "after_scaling": quantity == "ece_ts",
            "confident_wrong": confident_wrong, "noisy_labels": c in _noise_conditions(inputs),
            "figure": figures.resolve(f"reliability_{c}")}


def _gradient_finding(inputs: Inputs, computed: Computed, figures: Figures) -> dict | None:
    sat = computed.saturation
    conditions = []
    for c in inputs.conditions:
        mine = sat[sat["condition"] == c]
        if mine.empty:
            continue
        means = {loss: analysis.mean_ci(g["value"]).mean for loss, g in mine.groupby("loss")}
        wrong = mine.groupby("loss")["n_wrong"].sum()
        conditions.append({"condition": c, "losses": [{"loss": loss, "share": means[loss], "wrong": int(wrong[loss])}
                                                      for loss in analysis.ordered(means)
                                                      if math.isfinite(means[loss])]})
    if not conditions:
        return None
    closed_form = None
    if inputs.penalty is not None and not inputs.penalty.empty:
        worst = inputs.penalty.loc[inputs.penalty.groupby("loss")["p_true"].idxmin()]
        closed_form = {"p_true": worst["p_true"].min(),
                       "losses": [{"loss": r.loss, "norm": r.logit_grad_norm} for r in worst.itertuples()]}
    return {"kind": "gradients", "threshold": analysis.SATURATION, "conditions": conditions,
            "closed_form": closed_form, "figure": figures.resolve("logit_grad")}


def optimizer_findings(inputs: Inputs, head: analysis.Headline, figures: Figures) -> list[dict]:
    """Conditions that differ only in the optimizer (same dataset and label noise): each loss's paired lag behind
    the reference in steps to the first target, under sgd and under adam. A gradient-scale explanation of a lag
    predicts that adaptive steps (adam) shrink it."""
    q1 = analysis.steps_quantity(1)
    groups: dict[tuple, dict[str, str]] = {}
    for c in inputs.conditions:
        params = inputs.setups[c].get("params", {})
        key = (inputs.setups[c].get("dataset"), params.get("label_noise", 0.0),
               str(params.get("model", {}).get("kind", "mlp")), tuple(params.get("heldout_classes", ())))
        groups.setdefault(key, {}).setdefault(str(params.get("optimizer")), c)
    items = []
    for by_optimizer in groups.values():
        if not {"adam", "sgd"} <= set(by_optimizer):
            continue
        c_sgd, c_adam = by_optimizer["sgd"], by_optimizer["adam"]
        t_sgd, t_adam = inputs.targets.get(c_sgd, ())[:1], inputs.targets.get(c_adam, ())[:1]
        if not t_sgd or t_sgd != t_adam:
            continue
        compared = []
        for loss in analysis.ordered(head.differences["loss"]):
            d_sgd = _value(head.differences, condition=c_sgd, loss=loss, quantity=q1)
            d_adam = _value(head.differences, condition=c_adam, loss=loss, quantity=q1)
            if d_sgd is None or d_adam is None:
                continue
            compared.append({"loss": loss, "sgd": d_sgd, "adam": d_adam,
                             "apart_sgd": d_sgd["evidence"] == analysis.DIFFERENT,
                             "apart_adam": d_adam["evidence"] == analysis.DIFFERENT})
        if compared:
            items.append({"kind": "optimizer", "target": t_sgd[0], "sgd": c_sgd, "adam": c_adam, "losses": compared,
                          "figure": figures.resolve("steps_to_target")})
    return items


def _label_noise_finding(c: str, summary: pd.DataFrame, per_seed: pd.DataFrame, figures: Figures) -> dict | None:
    rows = []
    for loss in analysis.ordered(summary["loss"]):
        drop = _value(summary, loss=loss, quantity=comparisons.NOISE_DROP)
        mem = _value(summary, loss=loss, quantity="memorised")
        if drop is not None and mem is not None:
            rows.append({"loss": loss, "drop": drop["mean"], "memorised": mem["mean"]})
    if not rows:
        return None
    memorised = _by_loss(per_seed, c, "memorised")
    return {"kind": "label_noise", "condition": c, "losses": rows,
            "most": _leaders(memorised, "memorised", higher_is_better=True),
            "fewest": _leaders(memorised, "memorised"),
            "figure": figures.resolve(f"label_noise_{c}")}


def _claims_finding(computed: Computed) -> dict | None:
    claims = computed.claims
    if claims.empty:
        return None
    return {"kind": "claims", **checks.finding(claims)}  # counts and against: the source's claims only


def heldout_findings(per_seed: pd.DataFrame, condition: str, sigmoid: str | None = None) -> list[dict]:
    """Each loss by its own score against the reference by its own, paired by seed, the comparisons of a condition
    one family decided as the report's other comparisons (analysis.compare on the declared margin, then
    analysis.decide: Holm, different / equivalent / not established / identical); the sigmoids' 'none' on the
    held-out classes against the trained ones, decided the same way. ``sigmoid``: the loss whose 'none' share is
    compared, by default the registry's loss with one sigmoid per class (only sigmoids can all say no)."""
    sigmoid = sigmoid or checks.sigmoid_loss()
    out = []
    losses = analysis.ordered(per_seed["loss"])
    natural = analysis.summarise(per_seed[per_seed["quantity"] == "auroc_natural"])

    def series(loss: str, quantity: str) -> pd.Series:
        rows = per_seed[(per_seed["condition"] == condition) & (per_seed["loss"] == loss)
                        & (per_seed["quantity"] == quantity)]
        return rows.set_index("seed")["value"]

    if REFERENCE in losses:
        ref = _value(natural, loss=REFERENCE, quantity="auroc_natural")
        others = [x for x in losses if x != REFERENCE]
        spec = analysis.declared("auroc_natural")
        found = [comparisons.heldout_difference(per_seed, condition, (loss, "auroc_natural"),
                                             (REFERENCE, "auroc_natural")) for loss in others]
        decided = analysis.decide(pd.DataFrame(
            [analysis.compare(series(loss, "auroc_natural"), series(REFERENCE, "auroc_natural"), spec)
             for loss in others], columns=analysis.COMPARISON_COLUMNS)) if others else None
        for i, (loss, d) in enumerate(zip(others, found)):
            row = decided.iloc[i]
            word = row["verdict"]
            verdict = (("better" if d.mean > 0 else "worse") if word == analysis.DIFFERENT
                       else word if word is not None else "no test")
            out.append({"kind": "heldout_auroc", "loss": loss,
                        "by_sigmoid": comparisons.NATURAL_SCORE.get(loss) == "auroc_max_sigmoid",
                        "auroc": _value(natural, loss=loss, quantity="auroc_natural"), "reference_auroc": ref,
                        "diff": d, "p_holm": float(row["p_holm"]), "verdict": verdict,
                        "margin": _margin_text("auroc_natural")})
    if sigmoid in losses:
        d = comparisons.heldout_difference(per_seed, condition, (sigmoid, comparisons.NONE_HELDOUT),
                                        (sigmoid, comparisons.NONE_TRAINED))
        row = analysis.decide(pd.DataFrame([analysis.compare(
            series(sigmoid, comparisons.NONE_HELDOUT), series(sigmoid, comparisons.NONE_TRAINED),
            analysis.declared(comparisons.NONE_HELDOUT))], columns=analysis.COMPARISON_COLUMNS)).iloc[0]
        word = row["verdict"]
        shares = analysis.summarise(per_seed[per_seed["loss"] == sigmoid])
        out.append({"kind": "heldout_none", "loss": sigmoid,
                    "heldout": _value(shares, quantity=comparisons.NONE_HELDOUT),
                    "trained": _value(shares, quantity=comparisons.NONE_TRAINED), "diff": d,
                    "direction": (("more" if d.mean > 0 else "less") if word == analysis.DIFFERENT
                                  else word if word is not None else "no test"),
                    "margin": _margin_text(comparisons.NONE_HELDOUT)})
    return out

