"""The values of the report's tables and sections (setup, learning-rate choices, headline, convergence, gradients,
the confident-wrong penalty, calibration, held-out classes, claims, anchors, data notes) as rows of formatted
cells and dicts the templates word.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pandas as pd

from study import analysis, answers, comparisons, published, quantities
from study import losses as registry
from study.analysis import REFERENCE
from study.bullets import heldout_findings
from study.digest import Computed, Figures, _value
from study.reader import Inputs, _bins, _chosen, _confident, _noise_conditions
from study.render import fmt, fmt_difference, fmt_estimate, fmt_percent, fmt_steps

NO_PROBABILITIES = "not applicable: no probabilities"  # the own-probability ECE of a loss that models none


def _own_probabilities(loss: str) -> bool:
    """Whether the loss registry says the loss outputs probabilities of its own (``LossSpec.probabilities``);
    True for a loss it does not know or a registry without the field (absence of the metric then says the rest)."""
    if loss not in registry.names():
        return True
    return getattr(registry.spec(loss), "probabilities", "softmax") != "none"


OPTION_SYMBOLS = {"eps": "ε", "gamma": "γ"}  # how the methods paragraph writes an option


def _loss_formula(loss: str, setups: dict[str, dict]) -> dict:
    """A loss's formula and the options a setup.json states (``loss_options``, or the older ``smoothing_eps``,
    which set ``eps``), else the registry's defaults, which training binds. ``formula`` is None for a loss that is
    no longer registered."""
    if loss not in registry.names():
        return {"loss": loss, "formula": None, "options": []}
    spec = registry.spec(loss)
    options = dict(spec.options)
    for setup in setups.values():
        stated = setup.get("loss_options", {}).get(loss)
        if stated is None and "eps" in options and "smoothing_eps" in setup:
            stated = {"eps": setup["smoothing_eps"]}
        if stated is not None:
            options.update(stated)
            break
    return {"loss": loss, "formula": spec.formula,
            "options": [(OPTION_SYMBOLS.get(key, key), value) for key, value in options.items()]}


def _describe(inputs: Inputs, c: str) -> dict[str, str]:
    """One column of the setup table."""
    s = inputs.setups[c]
    p, sizes = s.get("params", {}), s.get("sizes", {})
    return {
        "dataset": str(s.get("dataset", "")),
        "model": str(s.get("model", "")),
        "optimizer": str(p.get("optimizer", "")) + (f" (momentum {p.get('momentum')})"
                                                    if p.get("optimizer") == "sgd" else ""),
        "batch_size": str(p.get("batch_size", "")),
        "epochs": str(p.get("epochs", "")),
        "label_noise": f"{p.get('label_noise', 0):g} ({sizes.get('flipped', 0)})",
        "examples": " / ".join(str(sizes.get(k, "?")) for k in ("train", "val", "test")),
        "seeds": ", ".join(map(str, s.get("seeds", []))),
        "steps": f"{s.get('steps_per_epoch', '')} / {s.get('total_steps', '')}",
        "targets": ", ".join(f"{t:g}" for t in inputs.targets.get(c, ())),
        "lr_source": inputs.sources[c],
        "device": str(s.get("device", "")),
    }


def _setup(inputs: Inputs, losses: list[str]) -> dict:
    tuning = []
    for source, info in inputs.tuning.items():
        scores = info.get("scores") or {}
        grid = sorted({float(lr) for s in scores.values() for lr in s})
        chosen = _chosen(inputs, source)
        agreement = info.get("agreement") or {}
        tuning.append({"source": source, "criterion": info.get("criterion"), "grid": grid,
                       "rows": [[loss, *(_score_cell(scores.get(loss, {}), lr, chosen.get(loss)) for lr in grid),
                                 str(agreement.get(loss, "–"))] for loss in analysis.ordered(scores)],
                       "fragile": _fragile_choices(agreement), "agreement": bool(agreement)})
    return {"conditions": [_describe(inputs, c) for c in inputs.conditions],
            "formulas": [_loss_formula(loss, inputs.setups) for loss in losses],
            "lrs": [[c, *(f"{inputs.lrs[c][loss]:g}" if loss in inputs.lrs[c] else "–" for loss in losses)]
                    for c in inputs.conditions],
            "no_tuning": not inputs.tuning and inputs.tune is None, "tuning": tuning}


def _rate_choices(inputs: Inputs) -> dict:
    """Per tuning condition and loss, the rate each loss trained with beside the best-scoring stable rate of its
    grid (lr.json's ``best_lrs``, else the best score among the rates not listed unstable), the fitted peak where
    lr.json gives one, the grid's range, and why a choice sits at an edge of its grid (lr.json's ``edge``; for an
    lr.json without it, an edge choice says that its reason was not recorded). ``noisy``: the tuning conditions
    whose validation labels were noisy (lr.json's ``validation_labels``)."""
    rows, edges, noisy = [], [], []
    for source, info in inputs.tuning.items():
        chosen = _chosen(inputs, source)
        scores = info.get("scores") or {}
        unstable = info.get("unstable") or {}
        grids = info.get("grids") or {}
        if info.get("validation_labels") == "noisy":
            noisy.append(source)
        for loss in analysis.ordered(chosen):
            lr = chosen[loss]
            grid = sorted(float(x) for x in (grids.get(loss) or scores.get(loss, {}) or [lr]))
            best = (info.get("best_lrs") or {}).get(loss)
            if best is None:
                stable = {float(k): float(v) for k, v in scores.get(loss, {}).items()
                          if not any(math.isclose(float(k), float(u)) for u in unstable.get(loss, []))
                          and isinstance(v, (int, float)) and math.isfinite(float(v))}
                best = max(stable, key=lambda x: (stable[x], -x)) if stable else None
            peak = (info.get("peak_lrs") or {}).get(loss)
            if "edge" in info:
                reason = (info.get("edge") or {}).get(loss)
            elif len(grid) > 1 and (math.isclose(lr, grid[0]) or math.isclose(lr, grid[-1])):
                side = "smallest" if math.isclose(lr, grid[0]) else "largest"
                reason = f"the {side} rate of the grid; this tuning run did not record why (lr.json has no 'edge')"
            else:
                reason = None
            trained = inputs.lrs.get(source, {}).get(loss)
            fell_back = trained is not None and not math.isclose(trained, lr)  # setup.json's lr_fallbacks
            lr_text = f"{lr:g}" + (f" (trained at {trained:g} after the fallback)" if fell_back else "")
            row = {"source": source, "loss": loss, "lr": lr, "best": best, "peak": peak, "edge": reason,
                   "trained": trained if fell_back else None,
                   "cells": [source, loss, lr_text, "–" if best is None else f"{float(best):g}",
                             "–" if peak is None else f"{float(peak):.3g}",
                             f"{grid[0]:g} to {grid[-1]:g} ({len(grid)} rates)", reason or "–"]}
            rows.append(row)
            if reason:
                edges.append(row)
    return {"rows": rows, "edges": edges, "noisy": noisy}


def _fragile_choices(agreement: dict) -> list[tuple[str, str]]:
    """Losses whose leave-one-seed-out agreement ('k of n') falls short of n, as (loss, 'k of n')."""
    out = []
    for loss in analysis.ordered(agreement):
        found = re.fullmatch(r"(\d+) of (\d+)", str(agreement[loss]))
        if found and int(found[1]) < int(found[2]):
            out.append((loss, str(agreement[loss])))
    return out


def _score_cell(scores: dict, lr: float, chosen: float | None) -> str:
    value = next((v for k, v in scores.items() if math.isclose(float(k), lr)), None)
    text = "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{float(value):.4f}"
    return text + (" *" if chosen is not None and math.isclose(lr, chosen) else "")


def _units(quantity: str) -> tuple[int, str, bool]:
    """(digits, unit, percent) of a quantity as its declaration in study.quantities prints it."""
    spec = quantities.spec(quantity)
    return int(spec.digits), str(spec.unit), bool(spec.percent)


def _headers(table: str) -> list[str]:
    return [column.header for _, column in quantities.table(table)]


def _cell(quantity: quantities.Quantity, column: quantities.Column) -> Callable[[dict | None], str]:
    """How a table of estimates writes ``quantity``'s mean and t-interval: as a percentage or a number."""
    return fmt_percent if quantities.shown_percent(quantity, column) else fmt_estimate


def _headline(inputs: Inputs, computed: Computed, losses: list[str]) -> dict:
    head = computed.head
    shown = quantities.table("headline")
    conditions = []
    for c in inputs.conditions:
        targets = inputs.targets.get(c, ())
        steps = [analysis.steps_quantity(i) for i in range(1, len(targets) + 1)]
        mine = head.models[head.models["condition"] == c]
        trained = [loss for loss in losses if not mine[mine["loss"] == loss].empty]
        rows = []
        for loss in trained:
            m = mine[mine["loss"] == loss]
            rows.append([loss, f"{inputs.lrs[c].get(loss, math.nan):g}", str(m["seed"].nunique()),
                         str(int(m["diverged"].sum())), str(int(m["collapsed"].sum())),
                         *(_cell(q, column)(_value(head.summary, condition=c, loss=loss, quantity=q.name))
                           for q, column in shown),
                         *(fmt_steps(_value(head.summary, condition=c, loss=loss, quantity=q)) for q in steps)])
        has_reference = REFERENCE in set(mine["loss"])
        differences = [[loss, *(fmt_difference(_value(head.differences, condition=c, loss=loss, quantity=q.name),
                                               percent=quantities.shown_percent(q, column))
                                for q, column in shown),
                        *(fmt_difference(_value(head.differences, condition=c, loss=loss, quantity=q), *_units(q))
                          for q in steps)]
                       for loss in (trained if has_reference else []) if loss != REFERENCE]
        conditions.append({"condition": c, "targets": targets, "rows": rows, "differences": differences,
                           "has_reference": has_reference})
    primary = head.differences[head.differences["family"] == "primary"]
    comparisons = []
    for c in inputs.conditions:
        for quantity in analysis.PRIMARY:
            for loss in losses:
                d = _value(primary, condition=c, loss=loss, quantity=quantity)
                if d is None:
                    continue
                digits, unit, percent = _units(quantity)
                comparisons.append({"condition": c, "quantity": quantity, "loss": loss,
                                    "diff": fmt_difference(d, digits, unit, percent=percent, word=False, holm=False),
                                    "p_holm": d["p_holm"],
                                    "evidence": None if answers.verdict(d) == answers.UNTESTED else answers.verdict(d),
                                    "n": int(d["n"])})
    return {"conditions": conditions, "quantities": _headers("headline"), "primary_questions": analysis.PRIMARY,
            "primary": comparisons}


def _convergence(inputs: Inputs, computed: Computed, losses: list[str]) -> dict:
    head = computed.head
    val_auc = []
    for c in inputs.conditions:
        for loss in losses:
            est = _value(head.summary, condition=c, loss=loss, quantity=analysis.VAL_AUC)
            if est is None:
                continue
            diff = _value(head.differences, condition=c, loss=loss, quantity=analysis.VAL_AUC)
            val_auc.append([c, loss, fmt_estimate(est), "–" if loss == REFERENCE else fmt_difference(diff)])
    views = []
    for source, view in computed.lr_views.items():
        if view.empty:
            continue
        targets = inputs.targets.get(source) or next(
            (inputs.targets[c] for c, s in inputs.sources.items() if s == source), ())
        target = f"{targets[0]:g}" if targets else "–"
        for loss in analysis.ordered(view["loss"]):
            own = _value(view, loss=loss, view="own lr")
            shared = _value(view, loss=loss, view="shared lr")
            views.append([source, target, loss] + [cell for row in (own, shared) for cell in _view_cells(row)])
    return {"widest": _widest_bracket(head.steps), analysis.VAL_AUC: val_auc, "lr_views": views}


def _widest_bracket(steps: pd.DataFrame) -> dict | None:
    """How well the evaluation schedule pins the crossings down: the widest bracket as a share of its step."""
    reached = steps[steps["reached"] & (steps["step"] > 0)]
    if reached.empty:
        return None
    worst = reached.loc[reached["resolution"].idxmax()]
    return {"resolution": worst["resolution"], "condition": worst["condition"], "loss": worst["loss"],
            "seed": int(worst["seed"]), "low": int(worst["bracket_low"]), "high": int(worst["bracket_high"])}


def _view_cells(row: dict | None) -> list[str]:
    if row is None:
        return ["–", "not in grid", "–"]
    steps, n_reached = row.get("steps_to_target", math.nan), row.get("n_reached", math.nan)
    steps_text = "–" if n_reached != n_reached else (
        ("not reached" if not math.isfinite(steps) else f"{steps:.0f}") + f" ({int(n_reached)}/{int(row['n'])})")
    acc = fmt(row["final_val_accuracy"]) + (f" ({int(row['n_diverged'])} diverged)" if row["n_diverged"] else "")
    return [f"{row['lr']:g}", acc, steps_text]


def _gradients(inputs: Inputs, computed: Computed, losses: list[str]) -> dict:
    sat = computed.saturation
    rows = []
    for c in inputs.conditions:
        mine = sat[sat["condition"] == c]
        for loss in losses:
            rows_l = mine[mine["loss"] == loss]
            if rows_l.empty:
                continue
            est = analysis.mean_ci(rows_l["value"])
            diff = _value(computed.head.differences, condition=c, loss=loss, quantity=analysis.SATURATED)
            diff_text = "–" if loss == REFERENCE else fmt_difference(diff, percent=True)
            rows.append([c, loss, fmt_percent(est.as_dict()), str(int(rows_l["n_wrong"].sum())),
                         str(int(rows_l["n_saturated"].sum())), diff_text])
    return {"saturation": rows}


def _confident_wrong(inputs: Inputs, computed: Computed, losses: list[str]) -> dict:
    cal = computed.calibration
    penalty = None
    if inputs.penalty is not None and not inputs.penalty.empty:
        rows = []
        for loss in analysis.ordered(inputs.penalty["loss"]):
            p = inputs.penalty[inputs.penalty["loss"] == loss].reset_index(drop=True)
            picks = dict.fromkeys([int(p["margin"].abs().idxmin()), int(p["margin"].idxmax())])
            for i in picks:
                r = p.loc[i]
                rows.append([loss, f"{round(r['margin'], 9) + 0.0:g}", f"{r['p_true']:.3g}", f"{r['loss_value']:.4g}",
                             f"{r['logit_grad_norm']:.4g}",
                             f"{r['grad_true']:.4g}" if "grad_true" in p and math.isfinite(r["grad_true"]) else "–"])
        penalty = {"classes": analysis.classes_from_penalty(inputs.penalty), "rows": rows}

    def estimates(table: str) -> list[list[str]]:
        """[condition, loss, cells...] of the registry's ``table`` for every model with at least one of its
        quantities."""
        rows = []
        for c in inputs.conditions:
            for loss in losses:
                cells = [_cell(q, column)(_value(cal, condition=c, loss=loss, quantity=q.name))
                         for q, column in quantities.table(table)]
                if any(x != "–" for x in cells):
                    rows.append([c, loss, *cells])
        return rows

    corrections = None
    fixed = analysis.summarise(comparisons.corrections(inputs.history))
    if not fixed.empty:
        corrections = []
        for c in inputs.conditions:
            for loss in losses:
                share = _value(fixed, condition=c, loss=loss, quantity="confident_wrong_corrected")
                seen = _value(fixed, condition=c, loss=loss, quantity="confident_wrong_seen")
                if share is not None:
                    seen_count = f"{seen['mean'] * seen['n']:.0f}" if seen else "–"
                    corrections.append([c, loss, fmt_percent(share), seen_count])
    noise = []
    for c in _noise_conditions(inputs):
        summary = computed.noise[c]
        noise.append({"condition": c, "noise": inputs.setups[c].get("params", {}).get("label_noise"),
                      "flipped": inputs.setups[c].get("sizes", {}).get("flipped"),
                      "rows": [[loss, *(_cell(q, column)(_value(summary, loss=loss, quantity=q.name))
                                        for q, column in quantities.table("label_noise"))]
                               for loss in analysis.ordered(summary["loss"])]})
    return {"penalty": penalty, "confident": _confident(inputs),
            "rates": estimates("confident_wrong"), "rate_headers": _headers("confident_wrong"),
            "corrections": corrections, "bins": sorted({_bins(inputs, c) for c in inputs.conditions}),
            "calibration": _calibration_rows(estimates("calibration")), "calibration_headers": _headers("calibration"),
            "label_noise": noise, "label_noise_headers": _headers("label_noise")}


def _calibration_rows(rows: list[list[str]]) -> list[list[str]]:
    """The calibration table's rows ([condition, loss, *its columns]): a loss without probabilities of its own says
    so in the column of the ECE on its own probabilities instead of '–'."""
    own = [at for at, (q, _) in enumerate(quantities.table("calibration"), start=2) if q.own_probabilities]
    return [[NO_PROBABILITIES if at in own and not _own_probabilities(row[1]) else cell for at, cell in enumerate(row)]
            for row in rows]


def _heldout_conditions(computed: Computed) -> list[str]:
    return list(dict.fromkeys(computed.heldout["condition"]))


def _heldout(inputs: Inputs, computed: Computed) -> list[dict]:
    out = []
    for c in _heldout_conditions(computed):
        per_seed = computed.heldout[computed.heldout["condition"] == c]
        summary = analysis.summarise(per_seed)
        rows = [[loss, *(_cell(q, column)(_value(summary, loss=loss, quantity=q.name))
                         for q, column in quantities.table("heldout"))] for loss in analysis.ordered(summary["loss"])]
        out.append({"condition": c, "classes": inputs.setups[c].get("params", {}).get("heldout_classes", []),
                    "headers": _headers("heldout"), "rows": rows, "findings": heldout_findings(per_seed, c)})
    return out


def _claims(computed: Computed, figures: Figures) -> list[dict]:
    """The claims table's rows as text; ``figure_name`` is the drawn figure a row's ``figure`` names, if any."""
    return [{**{k: str(v) for k, v in row.items()},
             "figure_name": figures.resolve(str(row["figure"])) if row["figure"] else None}
            for row in computed.claims.to_dict("records")]


def _anchors(inputs: Inputs, computed: Computed) -> dict:
    table = published.anchors(computed.head, inputs.history, inputs.setups)
    return {"header": list(table.columns), "rows": [[str(v) for v in row] for row in table.itertuples(index=False)]}


def _notes(inputs: Inputs, computed: Computed) -> list[dict]:
    """What was missing or dropped, and every model that diverged or collapsed."""
    models = computed.head.models
    notes = list(inputs.notes)
    notes += [{"kind": "diverged", "condition": r.condition, "loss": r.loss, "lr": r.lr, "seed": r.seed,
               "step": r.diverged_step} for r in models[models["diverged"]].itertuples()]
    notes += [{"kind": "collapsed", "condition": r.condition, "loss": r.loss, "lr": r.lr, "seed": r.seed,
               "step": r.collapsed_step} for r in models[models["collapsed"]].itertuples()]
    # A training pass that failed and was trained again at a smaller rate (setup.json's lr_fallbacks): its models
    # are not in the history, yet a model did diverge or collapse.
    for c in inputs.conditions:
        for loss, attempts in (inputs.setups[c].get("lr_fallbacks") or {}).items():
            for attempt in attempts:
                notes.append({"kind": "fallback_note", "condition": c, "loss": loss, "lr": attempt["lr"],
                              "collapsed": sorted(attempt.get("collapsed") or {}, key=int),
                              "diverged": sorted(attempt.get("diverged") or {}, key=int),
                              "next_lr": attempt.get("next_lr")})
    return notes or [{"kind": "all_present"}]

