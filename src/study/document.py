"""Assembles the report from the files under ``results/`` alone: ``report/report.md``, a self-contained
``report/index.html`` (figures embedded as data URIs), ``report/figures/*.png``, ``metrics.json`` and one test
accuracy file per condition.

Numbers come from ``study.analysis`` and figures from the figure modules; this module selects and shapes them into
a context, the words live in ``templates/`` (Jinja2), markdown-it renders report.md as HTML. Never reads MLflow.
This module draws the figures, computes the answers and their evidence tables, assembles the context and builds;
``reader`` reads the inputs, ``digest`` computes the statistics once, ``bullets`` the findings, ``sections`` the
tables of each section, ``render`` the words and the HTML.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from study import (
    analysis,
    answers,
    comparisons,
    confidence_figures,
    quantities,
    question_figures,
    tables,
    training_figures,
)
from study.analysis import REFERENCE

# The report's parts live in their own modules (reader, digest, bullets, sections, render); the names spelled
# "x as x" stay importable from document for its callers.
from study.bullets import _by_loss, _leaders, findings
from study.bullets import heldout_findings as heldout_findings
from study.bullets import optimizer_findings as optimizer_findings
from study.digest import Computed, Figures, compute
from study.reader import Inputs, _bins, _chosen, _confident, _noise_conditions, load
from study.render import fmt_difference as fmt_difference
from study.render import fmt_p as fmt_p
from study.render import main_words as main_words
from study.render import render_answer as render_answer
from study.render import render_bullets as render_bullets
from study.render import render_html, render_markdown
from study.render import slug as slug
from study.sections import (
    NO_PROBABILITIES,
    _anchors,
    _claims,
    _confident_wrong,
    _convergence,
    _gradients,
    _headline,
    _heldout,
    _heldout_conditions,
    _notes,
    _own_probabilities,
    _rate_choices,
    _setup,
)
from study.sections import _fragile_choices as _fragile_choices


def draw_figures(inputs: Inputs, computed: Computed, figures: Figures) -> None:
    """Every figure of the report, drawn before the text so that the text can check which exist."""
    conditions = inputs.conditions
    draw_answer_figures(inputs, computed, figures)
    figures.save("headline", question_figures.plot_headline, inputs.history)
    if inputs.tune is not None and not inputs.tune.empty:
        chosen = {s: _chosen(inputs, s) for s in inputs.tune["condition"].unique()}
        figures.save("tuning", training_figures.plot_tuning, inputs.tune, chosen, inputs.targets)
        if any(REFERENCE in c for c in chosen.values()):
            figures.save("lr_views", training_figures.plot_lr_views, inputs.tune, chosen)
    figures.save("steps_to_target", training_figures.plot_steps_to_target, inputs.history, inputs.targets)
    figures.save("time_to_target", training_figures.plot_time_to_target, inputs.history, inputs.targets)
    for c in conditions:
        hist = inputs.history[inputs.history["condition"] == c]
        ex = inputs.examples[inputs.examples["condition"] == c]
        figures.save(f"convergence_{c}", training_figures.plot_convergence, hist, inputs.targets.get(c, ()))
        figures.save(f"grad_norms_{c}", training_figures.plot_grad_norms, hist)
        if (ex["split"] == "probe").any():
            figures.save(f"logit_grad_{c}", confidence_figures.plot_logit_grad, ex, inputs.penalty)
        if (ex["split"] == "test").any():
            figures.save(f"reliability_{c}", confidence_figures.plot_reliability, ex, _bins(inputs, c))
        if c in _noise_conditions(inputs):
            figures.save(f"label_noise_{c}", confidence_figures.plot_label_noise, hist)
        if c in _heldout_conditions(computed):
            figures.save(f"heldout_{c}", confidence_figures.plot_heldout, hist)
    if inputs.penalty is not None and not inputs.penalty.empty:
        figures.save("penalty", confidence_figures.plot_penalty, inputs.penalty)
    if (inputs.examples["split"] == "test").any():
        figures.save("wrong_confidence", confidence_figures.plot_wrong_confidence, inputs.examples, _confident(inputs))


SPEED_FOREST, GRADIENT_ANSWER, PENALTY_ANSWER = "speed_forest", "gradient_answer", "penalty_answer"
FEATURES = "features"  # the confident-wrong answer's second figure: class separation and transfer


def draw_answer_figures(inputs: Inputs, computed: Computed, figures: Figures) -> None:
    """One summary figure per answer, across all conditions, where its data exist (the speed forest plot, the
    measured gradient of wrong examples against its closed form, the confident-wrong shares)."""
    if not computed.head.differences.empty:
        figures.save(SPEED_FOREST, question_figures.plot_speed_forest, comparisons.speed_ratios(computed.head))
    if (inputs.examples["split"] == "test").any():
        figures.save(GRADIENT_ANSWER, question_figures.plot_gradient_answer, inputs.examples, inputs.penalty)
    figures.save(PENALTY_ANSWER, question_figures.plot_penalty_answer, inputs.history)
    seeds = computed.penalty_seeds
    if seeds is not None and (seeds["quantity"] == comparisons.SEPARATION).any():
        figures.save(FEATURES, question_figures.plot_features, seeds)


def answer_figures(inputs: Inputs, figures: Figures) -> list[tuple[str, str]]:
    """The answers' figures in the answers' order (name, caption): each answer's summary figure where drawn, else
    the figure of the detail that comes closest."""
    first = inputs.conditions[0]
    choices = [
        ((SPEED_FOREST, "Speed: steps to the first validation-accuracy target as a ratio to " + REFERENCE
          + "'s, per loss and condition (log scale, 95% interval; the verdict marked)."),
         ("steps_to_target", "Speed: steps to each validation-accuracy target per condition and loss.")),
        ((GRADIENT_ANSWER, "Gradients: median per-example logit-gradient norm of wrong examples against the "
          "probability of the true class (binned), per loss, measured beside the closed form."),
         (f"logit_grad_{first}", f"Gradients, {first}: measured logit-gradient norm against p_true; dots correct, "
          "crosses wrong, solid line binned median, dashed line closed form.")),
        ((PENALTY_ANSWER, "Confident-wrong penalty: per loss, the share of confidently wrong examples corrected by "
          "the next evaluation, the share of flipped labels memorised under noise and the share of test loss "
          "carried by confident mistakes."),
         ("penalty", "Confident-wrong penalty in closed form: loss and logit-gradient norm against the probability "
          "of the true class.")),
        ((FEATURES, "Features: class separation R² of the penultimate layer per loss and condition (Kornblith et "
          "al. 2021), and, per model, a linear probe's accuracy on the classes never trained on against it."),) * 2,
    ]
    out = []
    for preferred, fallback in choices:
        pick = next(((name, caption) for name, caption in (preferred, fallback) if name in figures.names), None)
        if pick is not None:
            out.append(pick)
    return out


FINDINGS_BY_QUESTION = {  # which section's folded detail holds each kind of finding
    "speed": ("speed", "optimizer"), "accuracy": ("accuracy", "stability", "fallback", "divergence"),
    "calibration": ("calibration",), "gradients": ("gradients",), "label_noise": ("label_noise",),
    "claims": ("claims",),
}


def context(inputs: Inputs, computed: Computed, figures: Figures) -> dict:
    losses = analysis.ordered(inputs.history["loss"])
    items = findings(inputs, computed, figures)
    return {
        **question_context(inputs, computed, figures),
        "findings": {part: [f for f in items if f["kind"] in kinds] for part, kinds in FINDINGS_BY_QUESTION.items()},
        "text_px": dict(figures.text_px),
        "placed": [],  # the figures the report has shown so far, in rendering order (macros.md.j2: each once)
        "conditions": inputs.conditions,
        "losses": losses,
        "seeds": sorted({s for c in inputs.conditions for s in inputs.setups[c].get("seeds", [])}),
        # how many seeds the conditions train (MNIST-1D's cheap conditions train more than Fashion-MNIST's)
        "seed_counts": sorted({len(inputs.setups[c].get("seeds", [])) for c in inputs.conditions}),
        "figures": list(figures.names),
        "setup": _setup(inputs, losses),
        "headline": _headline(inputs, computed, losses),
        "convergence": _convergence(inputs, computed, losses),
        "gradients": _gradients(inputs, computed, losses),
        "confident_wrong": _confident_wrong(inputs, computed, losses),
        "heldout": _heldout(inputs, computed),
        "claims": _claims(computed, figures),
        "anchors": _anchors(inputs, computed),
        "notes": _notes(inputs, computed),
    }


def question_context(inputs: Inputs, computed: Computed, figures: Figures) -> dict:
    """The answers (answers.py), the evidence table of each question and the summaries the main text shows."""
    conditions, head = inputs.conditions, computed.head
    speed = answers.speed(head, conditions, computed.lr_views, speed_views=_speed_views(inputs, computed))
    gradients = answers.gradients(head, computed.saturation, inputs.penalty, conditions)
    penalty = answers.penalty(computed.penalty_seeds, conditions)
    first = inputs.conditions[0]
    gradient_figure = next((n for n in (f"logit_grad_{first}", f"grad_norms_{first}") if n in figures.names), None)
    return {
        "answers": {"speed": speed, "gradients": gradients, "penalty": penalty},
        "answer_figures": answer_figures(inputs, figures),
        "evidence": {
            "speed": _comparison_table(answers.speed_ratios(head), analysis.steps_quantity(1), conditions, _ratio_cell),
            "gradients": {**_comparison_table(head.differences, analysis.SATURATED, conditions,
                                              _share_cell(computed.saturation)),
                          "figure": gradient_figure,
                          "caption": f"{first}: measured ‖∂L/∂z‖ against p_true; dots correct, crosses wrong, "
                                     "solid line binned median, dashed line closed form."},
            "penalty": _penalty_table(penalty),
        },
        "words": {"equivalent": answers.EQUIVALENT, "not_established": answers.NOT_ESTABLISHED,
                  "identical": answers.IDENTICAL},
        "margins": _margins(),
        "accuracy_summary": _accuracy_summary(inputs, computed),
        "rate_choices": _rate_choices(inputs),
        "calibration_summary": _calibration_summary(inputs, computed, penalty),
    }


def _speed_views(inputs: Inputs, computed: Computed) -> pd.DataFrame | None:
    """comparisons.speed_views (tuned rate, best stable grid rate, the reference's rate) of the conditions that tuned
    their own rates; None where no tuning runs were found."""
    if inputs.tune is None or not inputs.tuning:
        return None
    tunes = {c: inputs.tune[inputs.tune["condition"] == c] for c in inputs.tuning}
    views = comparisons.speed_views(computed.head, tunes, inputs.tuning)
    return views if not views.empty else None


def _comparison_table(rows: pd.DataFrame, quantity: str, conditions: Sequence[str], cell: Callable) -> dict:
    """Per loss (at most one row each, so at most as many rows as losses), per condition the cell ``cell(row)``
    of its comparison with the reference, and the loss's tally over the conditions."""
    mine = rows[rows["quantity"] == quantity]
    where = [c for c in conditions if c in set(mine["condition"])]
    out = []
    for t in answers.tally(mine, quantity, where, effect="ratio" if "ratio" in mine else "diff"):
        cells = [cell(analysis.lookup(mine, condition=c, loss=t.loss)) for c in where]
        out.append({"loss": t.loss, "tally": t, "cells": cells})
    return {"conditions": where, "rows": out}


def _ratio_cell(row: dict | None) -> dict | None:
    if row is None:
        return None
    holm = row.get("p_holm", math.nan)
    return {"text": answers.fmt_ratio(row["ratio"], row["ratio_low"], row["ratio_high"]),
            "holm": answers.fmt_holm(holm, int(row["n"])) if math.isfinite(holm) else "",
            "word": answers.direction(row)}


def _share_cell(saturation: pd.DataFrame) -> Callable:
    def cell(row: dict | None) -> dict | None:
        if row is None:
            return None
        mine = saturation[(saturation["condition"] == row["condition"]) & (saturation["loss"] == row["loss"])]
        holm = row.get("p_holm", math.nan)
        return {"text": quantities.spec(analysis.SATURATED).text(analysis.mean_ci(mine["value"]).mean),
                "holm": answers.fmt_holm(holm, int(row["n"])) if math.isfinite(holm) else "",
                "word": answers.direction(row)}
    return cell


PENALTY_COLUMNS = {  # quantity -> (column header, words for a difference's direction); means print as declared
    "confident_wrong_loss_share": ("share of test loss carried by confident mistakes", ("more", "less")),
    "confident_wrong_corrected": ("confidently wrong training examples corrected by the next evaluation",
                                  ("more", "fewer")),
    "memorised": ("flipped labels memorised (label noise)", ("more", "fewer")),
    "ece_ts": ("ECE after temperature scaling", ("higher", "lower")),
    "auroc_natural": ("held-out AUROC by its own score", ("higher", "lower")),
    comparisons.SEPARATION: ("class separation R² of the penultimate features", ("higher", "lower")),
    comparisons.TRANSFER: ("linear-probe accuracy on classes never trained on", ("higher", "lower")),
}


def _penalty_table(penalty: dict | None) -> dict:
    """One row per loss; per quantity the range of the loss's means over conditions and its tally against the
    reference. The calibration section's table carries the ECE on each loss's own probabilities."""
    if penalty is None:
        return {"columns": [], "rows": []}
    shown = [q for q in PENALTY_COLUMNS if penalty.get(q)]
    losses = analysis.ordered({loss for q in shown for loss in penalty[q]["means"]})
    rows = []
    for loss in losses:
        cells = []
        for q in shown:
            means = penalty[q]["means"].get(loss) or []
            _, (up, down) = PENALTY_COLUMNS[q]
            if not means:
                cells.append(None)
                continue
            low, high = quantities.spec(q).text(min(means)), quantities.spec(q).text(max(means))
            tally = next((t for t in penalty[q]["tallies"] if t.loss == loss), None)
            cells.append({"range": low if low == high else f"{low} to {high}", "tally": tally,
                          "words": {"higher": up, "lower": down}})
        rows.append({"loss": loss, "cells": cells})
    return {"columns": [PENALTY_COLUMNS[q][0] for q in shown], "rows": rows}


def _calibration_summary(inputs: Inputs, computed: Computed, penalty: dict | None) -> dict:
    """The calibration section's main table, one row per loss: ECE after temperature scaling (the comparison every
    loss can enter: its range over the conditions and its tally against the reference), the fitted temperature
    beside it, and the ECE on the loss's own probabilities where it has any (``ece_own``, measured by newer
    training runs; else '–')."""
    cal = computed.calibration
    if penalty is None or not penalty.get("ece_ts"):
        return {"rows": [], "own_measured": False}
    ts = penalty["ece_ts"]
    own = penalty.get("ece_own")

    def spread(values: Sequence[float], quantity: str) -> str:
        values = [v for v in values if math.isfinite(v)]
        if not values:
            return "–"
        spec = quantities.spec(quantity)
        low, high = spec.text(min(values)), spec.text(max(values))
        return low if low == high else f"{low} to {high}"

    rows = []
    for loss in analysis.ordered(ts["means"]):
        temps = [float(r["mean"]) for r in cal[(cal["loss"] == loss) & (cal["quantity"] == comparisons.TEMPERATURE)
                                              & cal["condition"].isin(ts["conditions"])].to_dict("records")]
        tally = next((t for t in ts["tallies"] if t.loss == loss), None)
        if not _own_probabilities(loss):
            own_text = NO_PROBABILITIES
        else:
            own_text = spread((own or {}).get("means", {}).get(loss) or [], "ece_own")
        rows.append({"loss": loss, "ece_ts": {"range": spread(ts["means"].get(loss) or [], "ece_ts"), "tally": tally,
                                              "words": {"higher": "higher", "lower": "lower"}},
                     "temperature": spread(temps, comparisons.TEMPERATURE), "own": own_text})
    return {"rows": rows, "own_measured": own is not None, "conditions": ts["conditions"]}


def _margins() -> str:
    """The declared equivalence margins of the compared quantities (the quantity registry), as one phrase."""
    return ", ".join(f"{q.label} ±{q.margin:g}{(' ' + q.unit) if q.unit else ''}"
                     for q in quantities.QUANTITIES if q.compared)


def _accuracy_summary(inputs: Inputs, computed: Computed) -> list[dict]:
    """Per condition the highest-accuracy group (``_leaders`` on final test accuracy's declared margin)."""
    out = []
    for c in inputs.conditions:
        final = comparisons.FINAL_ACCURACY
        lead = _leaders(_by_loss(computed.head.per_seed, c, final), final)
        if lead is not None:
            out.append({"condition": c, "losses": [x["loss"] for x in lead["members"]], "group": lead})
    return out


def _plain(data):
    """Recursively turn NaN/inf into None and numpy scalars into Python ones, for strict JSON."""
    if isinstance(data, dict):
        return {str(k): _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    if isinstance(data, (bool, np.bool_)):
        return bool(data)
    if isinstance(data, (int, np.integer)):
        return int(data)
    if isinstance(data, (float, np.floating)):
        return float(data) if math.isfinite(data) else None
    return data


def write_accuracy(metrics: dict, out: Path) -> None:
    """``out``/<condition>.json: each loss's final test accuracy (``metrics``' test_accuracy), one flat file per
    condition, so that `dvc metrics show` prints one row per condition with a column per loss; metrics.json's three
    numbers per condition and loss would be a single row of over 100 columns. Replaces ``out`` as a whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for condition, per_loss in metrics.items():
            accuracy = {loss: values["test_accuracy"] for loss, values in per_loss.items()}
            (staged / f"{condition}.json").write_text(json.dumps(_plain(accuracy), indent=2, allow_nan=False) + "\n",
                                                      encoding="utf-8")
        _swap(staged, out)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def _swap(staged: Path, out: Path) -> None:
    """Put the staged directory at ``out``; an existing ``out`` is replaced only once the new one is in place."""
    if not out.exists():
        os.replace(staged, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(staged, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def build(results: Path, probe: Path, conditions: Sequence[str], out: Path, metrics: Path,
          accuracy: Path | None = None) -> None:
    """Write ``out``/{report.md, index.html, figures/*.png}, ``metrics`` and ``accuracy``/<condition>.json (when
    given) from ``results/<condition>/`` (train and tune stages) and ``probe/`` (probe stage) alone.

    Everything is written into a temporary directory beside ``out`` and moved into place at the end, so a
    failure leaves the previous report (or none) and the previous metrics, never a half-written one.
    """
    out, metrics = Path(out), Path(metrics)
    inputs = load(results, probe, conditions)
    computed = compute(inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*out.parent.glob(f".{out.name}.*.tmp"), *out.parent.glob(f".{out.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a build that was killed before it could clean up
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (staged / "figures").mkdir()
        figures = Figures(staged / "figures")
        draw_figures(inputs, computed, figures)
        markdown = render_markdown(context(inputs, computed, figures))
        (staged / "report.md").write_text(markdown, encoding="utf-8")
        (staged / "index.html").write_text(render_html(markdown, staged / "figures", "Loss study report"),
                                           encoding="utf-8")
        with tables.atomic_path(metrics) as tmp:
            tmp.write_text(json.dumps(_plain(computed.metrics), indent=2, allow_nan=False) + "\n", encoding="utf-8")
            if accuracy is not None:
                write_accuracy(computed.metrics, Path(accuracy))
            _swap(staged, out)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)

