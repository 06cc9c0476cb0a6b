"""Assembles the report from the files under ``results/`` alone: ``report/report.md``, a self-contained
``report/index.html`` (figures embedded as data URIs), ``report/figures/*.png`` and ``metrics.json``.

Numbers come from ``study.analysis`` and figures from ``study.report``; this module selects and shapes them into
a context, the words live in ``templates/`` (Jinja2), markdown-it renders report.md as HTML. Never reads MLflow.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import markupsafe
import numpy as np
import pandas as pd
from markdown_it import MarkdownIt
from markdown_it.token import Token

from study import analysis, answers, measures, report, tables
from study import claims as checks
from study import losses as registry
from study.analysis import REFERENCE

PENALTY = "penalty.csv"
CLAIMS = "claims.csv"


# --------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Inputs:
    """Everything the report reads, cleaned. ``notes`` says what was missing or dropped (dicts whose ``kind`` names
    their macro in templates/findings.md.j2)."""

    conditions: list[str]
    history: pd.DataFrame
    examples: pd.DataFrame
    setups: dict[str, dict]
    targets: dict[str, tuple[float, ...]]
    lrs: dict[str, dict[str, float]]  # condition -> loss -> learning rate it trained with
    sources: dict[str, str]  # condition -> condition whose tuning chose its learning rates
    tuning: dict[str, dict]  # tuning condition -> its lr.json
    tune: pd.DataFrame | None
    penalty: pd.DataFrame | None
    claims: pd.DataFrame | None
    notes: list[dict] = field(default_factory=list)


def _required(path: Path, stage: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; the {stage} stage writes it (run `dvc repro` or "
                                f"`python -m study {stage}` for that condition first)")
    return path


def load(results: Path, probe: Path, conditions: Sequence[str]) -> Inputs:
    """Read and clean the tables of ``conditions`` (``results/<condition>/``) and of the probe stage (``probe/``);
    optional inputs may be missing."""
    results, probe = Path(results), Path(probe)
    if not conditions:
        raise ValueError("no conditions to report on")
    notes: list[dict] = []
    histories, examples, setups = [], [], {}
    for condition in conditions:
        directory = results / condition
        setups[condition] = tables.read_json(_required(directory / tables.SETUP, "train"))
        history, dropped = measures.drop_nonfinite(tables.read_history(_required(directory / tables.HISTORY, "train")))
        if dropped:
            notes.append({"kind": "dropped_values", "source": condition, "count": dropped, "file": tables.HISTORY})
        histories.append(history)
        path = directory / tables.EXAMPLES
        if path.exists():
            frame = tables.read_examples(path)
            needed = frame[["p_true", "confidence", "logit_grad_norm"]].to_numpy(dtype=float)
            keep = np.isfinite(needed).all(axis=1)
            if not keep.all():
                notes.append({"kind": "dropped_examples", "source": condition, "count": int((~keep).sum()),
                              "file": tables.EXAMPLES})
            examples.append(frame[keep])
        else:
            notes.append({"kind": "missing_examples", "source": condition, "file": tables.EXAMPLES})
    history = pd.concat(histories, ignore_index=True)
    history = history.astype({"lr": float, "seed": int, "step": int, "epoch": float, "value": float})
    example_frame = (pd.concat(examples, ignore_index=True) if examples
                     else pd.DataFrame(columns=tables.EXAMPLE_COLUMNS))
    example_frame = example_frame.astype({"lr": float, "seed": int, "step": int, "p_true": float,
                                          "confidence": float, "loss_value": float, "logit_grad_norm": float})

    targets = {c: tuple(float(t) for t in setups[c].get("params", {}).get("targets", ())) for c in conditions}
    lrs, sources = {}, {}
    for condition in conditions:
        trained = history[history["condition"] == condition].groupby("loss")["lr"].first()
        lrs[condition] = {loss: float(lr) for loss, lr in trained.items()}
        sources[condition] = str(setups[condition].get("lr_source") or setups[condition].get("params", {}).get(
            "lr_from") or condition)

    tuning, tunes = {}, []
    for source in dict.fromkeys(sources.values()):
        lr_path, tune_path = results / source / tables.LRS, results / source / tables.TUNE
        if lr_path.exists():
            tuning[source] = tables.read_json(lr_path)
        if tune_path.exists():
            tune, dropped = measures.drop_nonfinite(tables.read_history(tune_path))
            if dropped:
                notes.append({"kind": "dropped_values", "source": source, "count": dropped, "file": tables.TUNE})
            tunes.append(tune.astype({"lr": float, "seed": int, "step": int, "value": float}))
        else:
            notes.append({"kind": "missing_tune", "source": source, "file": tables.TUNE})
    tune_frame = pd.concat(tunes, ignore_index=True) if tunes else None

    penalty = claims = None
    if (probe / PENALTY).exists():
        penalty = pd.read_csv(probe / PENALTY)
        penalty = penalty[np.isfinite(penalty[["p_true", "loss_value", "logit_grad_norm"]].to_numpy(float)).all(1)]
    else:
        notes.append({"kind": "missing_penalty", "file": PENALTY})
    if (probe / CLAIMS).exists():
        claims = pd.read_csv(probe / CLAIMS, dtype=str, keep_default_na=False)
    else:
        notes.append({"kind": "missing_claims", "file": CLAIMS})
    return Inputs(list(conditions), history, example_frame, setups, targets, lrs, sources, tuning, tune_frame,
                  penalty, claims, notes)


# --------------------------------------------------------------------------------------------------------------
# Number formatting


def fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_estimate(row: dict | None, digits: int = 3) -> str:
    """'0.853 [0.849, 0.857]'; '0.853 (1 seed)' without an interval; '–' without a value."""
    if row is None or not math.isfinite(row["mean"]):
        return "–"
    if not (math.isfinite(row["ci_low"]) and math.isfinite(row["ci_high"])):
        return f"{row['mean']:.{digits}f} ({int(row['n'])} seed)"
    return f"{row['mean']:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]"


def fmt_p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "p n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def fmt_difference(row: dict | None, digits: int = 3, unit: str = "", percent: bool = False,
                   word: bool = True, holm: bool = True) -> str:
    """'+0.012 [-0.003, +0.027], p=0.09, Holm p=0.27, not established with 5 seeds'; ``unit`` follows the mean
    ('+5 steps [...]'); ``percent`` writes shares as percentage points; ``word=False`` leaves out the verdict and
    ``holm=False`` the Holm-adjusted p (for a table or list that gives them in their own place)."""
    if row is None or not math.isfinite(row["diff"]):
        return "–"

    def number(x: float) -> str:
        if percent:  # a difference of two shares lies in [-100, +100] pp, whatever a t-interval says
            x = min(max(100 * x, -100.0), 100.0)
        return f"{round(x, 1 if percent else digits) + 0.0:+.{1 if percent else digits}f}"  # + 0.0: no "-0"

    unit = " pp" if percent else (f" {unit}" if unit else "")
    text = number(row["diff"]) + unit
    if row["evidence"] is None:
        return text + f" ({int(row['n'])} pair, no interval)"
    text += f" [{number(row['ci_low'])}, {number(row['ci_high'])}], {fmt_p(row['p_value'])}"
    p_holm = row.get("p_holm", math.nan)
    if holm and isinstance(p_holm, float) and math.isfinite(p_holm):
        text += f", Holm p {answers.fmt_holm(p_holm, int(row['n']))}"
    if not word or row["evidence"] == analysis.DIFFERENT:
        return text
    return text + f", {row['evidence']} with {int(row['n'])} seeds"


def fmt_steps(row: dict | None) -> str:
    """Median steps over seeds, how many seeds reached the target and the widest bracket of a crossing as a share
    of its step, e.g. '450 (5/5 reached, ±4%)'."""
    if row is None:
        return "–"
    median = "not reached" if not math.isfinite(row["median"]) else f"{row['median']:.0f}"
    resolution = row.get("resolution", math.nan)
    within = f", ±{100 * resolution:.0f}%" if isinstance(resolution, float) and math.isfinite(resolution) else ""
    return f"{median} ({int(row['n_reached'])}/{int(row['n'])} reached{within})"


def fmt_percent(row: dict | None) -> str:
    """A share as '12.5% [10.1%, 14.9%]'; the t-interval is clipped to [0%, 100%]."""
    if row is None or not math.isfinite(row["mean"]):
        return "–"
    if not (math.isfinite(row["ci_low"]) and math.isfinite(row["ci_high"])):
        return f"{row['mean']:.1%} ({int(row['n'])} seed)"
    return f"{row['mean']:.1%} [{max(row['ci_low'], 0.0):.1%}, {min(row['ci_high'], 1.0):.1%}]"


# --------------------------------------------------------------------------------------------------------------
# The report


@dataclass
class Computed:
    head: analysis.Headline
    saturation: pd.DataFrame
    calibration: pd.DataFrame
    noise: dict[str, pd.DataFrame]
    noise_per_seed: dict[str, pd.DataFrame]
    lr_views: dict[str, pd.DataFrame]
    heldout: pd.DataFrame  # per seed: analysis.heldout_per_seed
    claims: pd.DataFrame
    metrics: dict
    penalty_seeds: pd.DataFrame | None = None  # answers.penalty_per_seed


CALIBRATION = {
    "ece": ("test", "ece"), "ece_ts": ("test", "ece_ts"), "ece_own": ("test", "ece_own"),
    "classwise_ece": ("test", "classwise_ece"), "test_nll": ("test", "nll"), "nll_ts": ("test", "nll_ts"),
    "temperature": ("val", "temperature"), "confident_wrong_rate": ("test", "confident_wrong_rate"),
    "confident_wrong_loss_share": ("test", "confident_wrong_loss_share"),
    "confident_wrong_nll_share": ("test", "confident_wrong_nll_share"), "brier": ("test", "brier"),
    "confidence": ("test", "confidence"), "accuracy": ("test", "accuracy"),
}


def _noise_conditions(inputs: Inputs) -> list[str]:
    found = set(inputs.history.loc[inputs.history["split"] == "train_flipped", "condition"])
    return [c for c in inputs.conditions if c in found]


def compute(inputs: Inputs) -> Computed:
    saturation = analysis.saturation(inputs.examples)
    head = analysis.headline(inputs.history, inputs.targets, saturation=saturation)
    calibration = analysis.final_table(inputs.history, CALIBRATION)
    noise_per_seed = {c: analysis.label_noise(inputs.history[inputs.history["condition"] == c])
                      for c in _noise_conditions(inputs)}
    noise = {c: analysis.summarise(per_seed) for c, per_seed in noise_per_seed.items()}
    views = {}
    if inputs.tune is not None:
        for source in dict.fromkeys(inputs.sources.values()):
            tune = inputs.tune[inputs.tune["condition"] == source]
            chosen = _chosen(inputs, source)
            targets = inputs.targets.get(source) or next(
                (inputs.targets[c] for c, s in inputs.sources.items() if s == source), ())
            if not tune.empty and chosen:
                views[source] = analysis.lr_views(tune, chosen, targets)
    heldout = analysis.heldout_per_seed(inputs.history)
    measured = checks.measured(head, inputs.history, noise_per_seed, heldout, saturation, inputs.penalty,
                               inputs.conditions)
    claims = checks.combine(inputs.claims, measured)
    metrics = analysis.metrics(head)
    for row in analysis.summarise(heldout).itertuples():
        if row.quantity == "auroc_natural" and row.condition in metrics and row.loss in metrics[row.condition]:
            metrics[row.condition][row.loss]["heldout_auroc"] = row.mean
    penalty_seeds = answers.penalty_per_seed(inputs.history, noise_per_seed, heldout)
    return Computed(head, saturation, calibration, noise, noise_per_seed, views, heldout, claims.fillna(""),
                    metrics, penalty_seeds if not penalty_seeds.empty else None)


def _chosen(inputs: Inputs, source: str) -> dict[str, float]:
    """The learning rates a tuning condition chose: its lr.json, else what its training used."""
    if source in inputs.tuning:
        return {loss: float(lr) for loss, lr in inputs.tuning[source].get("lrs", {}).items()}
    return dict(inputs.lrs.get(source, {}))


class Figures:
    """Renders figures into ``directory`` and remembers which exist (by name)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.names: list[str] = []
        self.text_px: dict[str, float] = {}  # each figure's smallest text in px at its full (PNG) size

    def save(self, name: str, draw: Callable[..., object], *args) -> str:
        fig = draw(*args)
        smallest = report.min_text_px(fig, math.inf)
        if math.isfinite(smallest):
            self.text_px[name] = smallest
        report.save(fig, self.directory / f"{name}.png")
        self.names.append(name)
        return name

    def resolve(self, stem: str) -> str | None:
        """A figure called ``stem`` (a file name such as ``penalty.png`` works too) or, for per-condition figures,
        the first ``stem_<condition>``."""
        stem = Path(stem).stem
        if stem in self.names:
            return stem
        return next((n for n in self.names if n.startswith(f"{stem}_")), None)


def _value(frame: pd.DataFrame, **keys) -> dict | None:
    return analysis.lookup(frame, **keys)


# --------------------------------------------------------------------------------------------------------------
# Figures


def draw_figures(inputs: Inputs, computed: Computed, figures: Figures) -> None:
    """Every figure of the report, drawn before the text so that the text can check which exist."""
    conditions = inputs.conditions
    draw_answer_figures(inputs, computed, figures)
    figures.save("headline", report.plot_headline, inputs.history)
    if inputs.tune is not None and not inputs.tune.empty:
        chosen = {s: _chosen(inputs, s) for s in inputs.tune["condition"].unique()}
        figures.save("tuning", report.plot_tuning, inputs.tune, chosen, inputs.targets)
        if any(REFERENCE in c for c in chosen.values()):
            figures.save("lr_views", report.plot_lr_views, inputs.tune, chosen)
    figures.save("steps_to_target", report.plot_steps_to_target, inputs.history, inputs.targets)
    figures.save("time_to_target", report.plot_time_to_target, inputs.history, inputs.targets)
    for c in conditions:
        hist = inputs.history[inputs.history["condition"] == c]
        ex = inputs.examples[inputs.examples["condition"] == c]
        figures.save(f"convergence_{c}", report.plot_convergence, hist, inputs.targets.get(c, ()))
        figures.save(f"grad_norms_{c}", report.plot_grad_norms, hist)
        if (ex["split"] == "probe").any():
            figures.save(f"logit_grad_{c}", report.plot_logit_grad, ex, inputs.penalty)
        if (ex["split"] == "test").any():
            figures.save(f"reliability_{c}", report.plot_reliability, ex, _bins(inputs, c))
        if c in _noise_conditions(inputs):
            figures.save(f"label_noise_{c}", report.plot_label_noise, hist)
        if c in _heldout_conditions(computed):
            figures.save(f"heldout_{c}", report.plot_heldout, hist)
    if inputs.penalty is not None and not inputs.penalty.empty:
        figures.save("penalty", report.plot_penalty, inputs.penalty)
    if (inputs.examples["split"] == "test").any():
        figures.save("wrong_confidence", report.plot_wrong_confidence, inputs.examples, _confident(inputs))


SPEED_FOREST, GRADIENT_ANSWER, PENALTY_ANSWER = "speed_forest", "gradient_answer", "penalty_answer"


def forest_rows(head: analysis.Headline) -> pd.DataFrame:
    """The speed comparisons as the forest plot reads them: ``condition, loss, ratio, ci_low, ci_high, n,
    verdict`` (a ratio of steps to the first target, loss over the reference)."""
    if hasattr(analysis, "speed_ratios"):
        return analysis.speed_ratios(head)
    ratios = answers.speed_ratios(head)
    return pd.DataFrame({"condition": ratios["condition"], "loss": ratios["loss"], "ratio": ratios["ratio"],
                         "ci_low": ratios["ratio_low"], "ci_high": ratios["ratio_high"], "n": ratios["n"],
                         "verdict": [answers.verdict(r) for r in ratios.to_dict("records")]})


def draw_answer_figures(inputs: Inputs, computed: Computed, figures: Figures) -> None:
    """One summary figure per answer, across all conditions, where report.py draws it (the speed forest plot, the
    measured gradient of wrong examples against its closed form, the confident-wrong shares)."""
    if hasattr(report, "plot_speed_forest") and not computed.head.differences.empty:
        figures.save(SPEED_FOREST, report.plot_speed_forest, forest_rows(computed.head))
    if hasattr(report, "plot_gradient_answer") and (inputs.examples["split"] == "test").any():
        figures.save(GRADIENT_ANSWER, report.plot_gradient_answer, inputs.examples, inputs.penalty)
    if hasattr(report, "plot_penalty_answer"):
        figures.save(PENALTY_ANSWER, report.plot_penalty_answer, inputs.history)


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
    ]
    out = []
    for preferred, fallback in choices:
        pick = next(((name, caption) for name, caption in (preferred, fallback) if name in figures.names), None)
        if pick is not None:
            out.append(pick)
    return out


def _bins(inputs: Inputs, condition: str) -> int:
    return int(inputs.setups[condition].get("ece_bins", 15))


def _confident(inputs: Inputs) -> float:
    return float(next((s["confident"] for s in inputs.setups.values() if "confident" in s), analysis.CONFIDENT))


# --------------------------------------------------------------------------------------------------------------
# The context: the values the templates word, looked up here. Tables arrive as rows of formatted cells, findings
# and notes as dicts whose "kind" names their macro in templates/findings.md.j2.


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


# ---- Answers and their evidence -----------------------------------------------------------------------------------


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
            "gradients": {**_comparison_table(head.differences, "saturated_share", conditions,
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
    """analysis.speed_views (tuned rate, best stable grid rate, the reference's rate) of the conditions that tuned
    their own rates; None where analysis has no such view or no tuning runs were found."""
    if not hasattr(analysis, "speed_views") or inputs.tune is None or not inputs.tuning:
        return None
    tunes = {c: inputs.tune[inputs.tune["condition"] == c] for c in inputs.tuning}
    views = analysis.speed_views(computed.head, tunes, inputs.tuning)
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
        return {"text": f"{analysis.mean_ci(mine['value']).mean:.1%}",
                "holm": answers.fmt_holm(holm, int(row["n"])) if math.isfinite(holm) else "",
                "word": answers.direction(row)}
    return cell


PENALTY_COLUMNS = {  # quantity -> (column header, words for a difference's direction, formatter of a mean)
    "confident_wrong_loss_share": ("share of test loss carried by confident mistakes", ("more", "less"), "{:.1%}"),
    "confident_wrong_corrected": ("confidently wrong training examples corrected by the next evaluation",
                                  ("more", "fewer"), "{:.1%}"),
    "memorised": ("flipped labels memorised (label noise)", ("more", "fewer"), "{:.1%}"),
    "ece_ts": ("ECE after temperature scaling", ("higher", "lower"), "{:.3f}"),
    "auroc_natural": ("held-out AUROC by its own score", ("higher", "lower"), "{:.3f}"),
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
            header, (up, down), spec = PENALTY_COLUMNS[q]
            if not means:
                cells.append(None)
                continue
            low, high = spec.format(min(means)), spec.format(max(means))
            tally = next((t for t in penalty[q]["tallies"] if t.loss == loss), None)
            cells.append({"range": low if low == high else f"{low} to {high}", "tally": tally,
                          "words": {"higher": up, "lower": down}})
        rows.append({"loss": loss, "cells": cells})
    return {"columns": [PENALTY_COLUMNS[q][0] for q in shown], "rows": rows}


NO_PROBABILITIES = "not applicable: no probabilities"  # the own-probability ECE of a loss that models none


def _own_probabilities(loss: str) -> bool:
    """Whether the loss registry says the loss outputs probabilities of its own (``LossSpec.probabilities``);
    True for a loss it does not know or a registry without the field (absence of the metric then says the rest)."""
    if loss not in registry.names():
        return True
    return getattr(registry.spec(loss), "probabilities", "softmax") != "none"


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

    def spread(values: Sequence[float], spec: str) -> str:
        values = [v for v in values if math.isfinite(v)]
        if not values:
            return "–"
        low, high = spec.format(min(values)), spec.format(max(values))
        return low if low == high else f"{low} to {high}"

    rows = []
    for loss in analysis.ordered(ts["means"]):
        temps = [float(r["mean"]) for r in cal[(cal["loss"] == loss) & (cal["quantity"] == "temperature")
                                              & cal["condition"].isin(ts["conditions"])].to_dict("records")]
        tally = next((t for t in ts["tallies"] if t.loss == loss), None)
        if not _own_probabilities(loss):
            own_text = NO_PROBABILITIES
        else:
            own_text = spread((own or {}).get("means", {}).get(loss) or [], "{:.3f}")
        rows.append({"loss": loss, "ece_ts": {"range": spread(ts["means"].get(loss) or [], "{:.3f}"), "tally": tally,
                                              "words": {"higher": "higher", "lower": "lower"}},
                     "temperature": spread(temps, "{:.2f}"), "own": own_text})
    return {"rows": rows, "own_measured": own is not None, "conditions": ts["conditions"]}


def _margins() -> str:
    """The declared equivalence margins, where analysis declares them (quantities registry), as one phrase."""
    try:
        from study import quantities
    except ImportError:
        return ""
    parts = []
    for q in getattr(quantities, "QUANTITIES", ()):
        margin = getattr(q, "margin", None)
        if margin:
            unit = getattr(q, "unit", "") or ""
            parts.append(f"{getattr(q, 'label', getattr(q, 'name', ''))} ±{margin:g}{(' ' + unit) if unit else ''}")
    return ", ".join(parts)


def _accuracy_summary(inputs: Inputs, computed: Computed) -> list[dict]:
    """Per condition the highest-accuracy group (``_leaders`` on final test accuracy's declared margin)."""
    out = []
    for c in inputs.conditions:
        lead = _leaders(_by_loss(computed.head.per_seed, c, "final_accuracy"), True, None, "final_accuracy")
        if lead is not None:
            out.append({"condition": c, "losses": [x["loss"] for x in lead["members"]], "group": lead})
    return out


# ---- Findings ---------------------------------------------------------------------------------------------------


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


def _leaders(by_loss: dict[str, pd.Series], higher_is_better: bool, summary: pd.DataFrame | None = None,
             quantity: str | None = None) -> dict | None:
    """analysis.leaders (on ``quantity``'s declared margin) as the templates word it: the group of the best mean
    and every loss not established as different from it (registry order), each member with its estimate; which
    members were shown equivalent to the best within the margin and which are only not established as different
    (a ranking inside the group is noise's to change, so the words never say which member has the best mean)."""
    lead = analysis.leaders(by_loss, higher_is_better, quantity=quantity if analysis.declared(quantity or "")
                            else None)
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
    rows = head.summary[(head.summary["condition"] == c) & (head.summary["quantity"] == "final_accuracy")]
    rows = rows[np.isfinite(rows["mean"].to_numpy(dtype=float))]
    if rows.empty:
        return None
    by_verdict = _verdicts(head.differences, c, "final_accuracy")
    return {"kind": "accuracy", "condition": c,
            "leaders": _leaders(_by_loss(head.per_seed, c, "final_accuracy"), True, rows, "final_accuracy"),
            "seeds": _paired_seeds(by_verdict),
            "within_noise": [r["loss"] for r in by_verdict["same"]], "margin": _margin_text("final_accuracy"),
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
    lowest = _leaders(by_loss, False, rows, quantity)
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
        drop = _value(summary, loss=loss, quantity="accuracy_drop")
        mem = _value(summary, loss=loss, quantity="memorised")
        if drop is not None and mem is not None:
            rows.append({"loss": loss, "drop": drop["mean"], "memorised": mem["mean"]})
    if not rows:
        return None
    memorised = _by_loss(per_seed, c, "memorised")
    return {"kind": "label_noise", "condition": c, "losses": rows,
            "most": _leaders(memorised, True, None, "memorised"),
            "fewest": _leaders(memorised, False, None, "memorised"),
            "figure": figures.resolve(f"label_noise_{c}")}


def _claims_finding(computed: Computed) -> dict | None:
    claims = computed.claims
    if claims.empty:
        return None
    return {"kind": "claims", **checks.finding(claims)}  # counts and against: the source's claims only


def heldout_findings(per_seed: pd.DataFrame, condition: str, sigmoid: str = "sigmoid_bce") -> list[dict]:
    """Each loss by its own score against the reference by its own, paired by seed, the comparisons of a condition
    one family decided as the report's other comparisons (analysis.compare on the declared margin, then
    analysis.decide: Holm, different / equivalent / not established / identical); the sigmoids' 'none' on the
    held-out classes against the trained ones, decided the same way."""
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
        found = [analysis.heldout_difference(per_seed, condition, (loss, "auroc_natural"),
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
                        "by_sigmoid": analysis.NATURAL_SCORE.get(loss) == "auroc_max_sigmoid",
                        "auroc": _value(natural, loss=loss, quantity="auroc_natural"), "reference_auroc": ref,
                        "diff": d, "p_holm": float(row["p_holm"]), "verdict": verdict,
                        "margin": _margin_text("auroc_natural")})
    if sigmoid in losses:
        d = analysis.heldout_difference(per_seed, condition, (sigmoid, "none_share_heldout"),
                                        (sigmoid, "none_share_test"))
        row = analysis.decide(pd.DataFrame([analysis.compare(
            series(sigmoid, "none_share_heldout"), series(sigmoid, "none_share_test"),
            analysis.declared("none_share_heldout"))], columns=analysis.COMPARISON_COLUMNS)).iloc[0]
        word = row["verdict"]
        shares = analysis.summarise(per_seed[per_seed["loss"] == sigmoid])
        out.append({"kind": "heldout_none", "loss": sigmoid, "heldout": _value(shares, quantity="none_share_heldout"),
                    "trained": _value(shares, quantity="none_share_test"), "diff": d,
                    "direction": (("more" if d.mean > 0 else "less") if word == analysis.DIFFERENT
                                  else word if word is not None else "no test"),
                    "margin": _margin_text("none_share_heldout")})
    return out


# ---- Sections ---------------------------------------------------------------------------------------------------


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


HEADLINE = ("final_accuracy", "selected_accuracy", "test_nll", "ece")  # the headline table's estimates, in order
PRIMARY_UNITS = {"steps_to_target_1": (0, "steps", False), "saturated_share": (3, "", True), "ece": (3, "", False)}


def _units(quantity: str) -> tuple[int, str, bool]:
    """(digits, unit, percent) of a quantity as its declaration in study.quantities prints it, where declared."""
    try:
        from study import quantities
    except ImportError:
        quantities = None
    spec = next((q for q in getattr(quantities, "QUANTITIES", ()) if q.name == quantity), None)
    if spec is not None:
        return int(spec.digits), str(spec.unit), bool(spec.percent)
    return PRIMARY_UNITS.get(quantity, (3, "", False))


def _headline(inputs: Inputs, computed: Computed, losses: list[str]) -> dict:
    head = computed.head
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
                         *(fmt_estimate(_value(head.summary, condition=c, loss=loss, quantity=q)) for q in HEADLINE),
                         *(fmt_steps(_value(head.summary, condition=c, loss=loss, quantity=q)) for q in steps)])
        has_reference = REFERENCE in set(mine["loss"])
        differences = [[loss, *(fmt_difference(_value(head.differences, condition=c, loss=loss, quantity=q))
                                for q in HEADLINE),
                        *(fmt_difference(_value(head.differences, condition=c, loss=loss, quantity=q), 0, "steps")
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
    return {"conditions": conditions, "primary_questions": analysis.PRIMARY, "primary": comparisons}


def _convergence(inputs: Inputs, computed: Computed, losses: list[str]) -> dict:
    head = computed.head
    val_auc = []
    for c in inputs.conditions:
        for loss in losses:
            est = _value(head.summary, condition=c, loss=loss, quantity="val_auc")
            if est is None:
                continue
            diff = _value(head.differences, condition=c, loss=loss, quantity="val_auc")
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
    return {"widest": _widest_bracket(head.steps), "val_auc": val_auc, "lr_views": views}


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
            diff = _value(computed.head.differences, condition=c, loss=loss, quantity="saturated_share")
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

    def estimates(quantities: Sequence[str], cell: Callable) -> list[list[str]]:
        """[condition, loss, cells...] for every model with at least one of ``quantities``."""
        rows = []
        for c in inputs.conditions:
            for loss in losses:
                cells = [cell(_value(cal, condition=c, loss=loss, quantity=q)) for q in quantities]
                if any(x != "–" for x in cells):
                    rows.append([c, loss, *cells])
        return rows

    corrections = None
    fixed = analysis.summarise(analysis.corrections(inputs.history))
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
                      "rows": [[loss, *(fmt_estimate(_value(summary, loss=loss, quantity=q)) for q in
                                        ("selected_accuracy", "final_accuracy", "accuracy_drop")),
                                *(fmt_percent(_value(summary, loss=loss, quantity=q)) for q in
                                  ("memorised", "memorised_peak", "recovered", "clean_train_accuracy"))]
                               for loss in analysis.ordered(summary["loss"])]})
    return {"penalty": penalty, "confident": _confident(inputs),
            "rates": estimates(("confident_wrong_rate", "confident_wrong_loss_share", "confident_wrong_nll_share"),
                               fmt_percent),
            "corrections": corrections, "bins": sorted({_bins(inputs, c) for c in inputs.conditions}),
            "calibration": _calibration_rows(estimates(CALIBRATION_COLUMNS, fmt_estimate)),
            "label_noise": noise}


CALIBRATION_COLUMNS = ("ece_ts", "temperature", "ece_own", "classwise_ece", "ece", "test_nll", "nll_ts", "brier")


def _calibration_rows(rows: list[list[str]]) -> list[list[str]]:
    """The folded calibration table's rows ([condition, loss, *CALIBRATION_COLUMNS]): a loss without probabilities
    of its own says so in the own-probability ECE column instead of '–'."""
    at = 2 + CALIBRATION_COLUMNS.index("ece_own")
    return [[*row[:at], NO_PROBABILITIES if not _own_probabilities(row[1]) else row[at], *row[at + 1:]]
            for row in rows]


def _heldout_conditions(computed: Computed) -> list[str]:
    return list(dict.fromkeys(computed.heldout["condition"]))


HELDOUT = ("auroc_max_softmax", "auroc_max_sigmoid", "none_share_heldout", "none_share_test")  # table columns


def _heldout(inputs: Inputs, computed: Computed) -> list[dict]:
    out = []
    for c in _heldout_conditions(computed):
        per_seed = computed.heldout[computed.heldout["condition"] == c]
        summary = analysis.summarise(per_seed)
        rows = [[loss, *((fmt_estimate if q.startswith("auroc") else fmt_percent)(_value(summary, loss=loss,
                                                                                          quantity=q))
                         for q in HELDOUT)] for loss in analysis.ordered(summary["loss"])]
        out.append({"condition": c, "classes": inputs.setups[c].get("params", {}).get("heldout_classes", []),
                    "rows": rows, "findings": heldout_findings(per_seed, c)})
    return out


def _claims(computed: Computed, figures: Figures) -> list[dict]:
    """The claims table's rows as text; ``figure_name`` is the drawn figure a row's ``figure`` names, if any."""
    return [{**{k: str(v) for k, v in row.items()},
             "figure_name": figures.resolve(str(row["figure"])) if row["figure"] else None}
            for row in computed.claims.to_dict("records")]


def _anchors(inputs: Inputs, computed: Computed) -> dict:
    table = checks.anchors(computed.head, inputs.history, inputs.setups)
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


# --------------------------------------------------------------------------------------------------------------
# Rendering: the templates write report.md; markdown-it turns that text into index.html.


def slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text.strip().lower()))


def _cell(text: object) -> str:
    """A table cell's text: a pipe would end the cell, a newline the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _join(names: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("study", "templates"), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             autoescape=jinja2.select_autoescape(["html.j2"], default_for_string=False))
    env.filters.update({"num": format, "each": lambda values, spec: [spec.format(v) for v in values],
                        "cell": _cell, "join_and": _join, "estimate": fmt_estimate, "difference": fmt_difference,
                        "steps": fmt_steps, "percent": fmt_percent, "p": fmt_p, "holm": answers.fmt_holm})
    env.globals.update({"reference": REFERENCE, "alpha": analysis.ALPHA, "saturation": analysis.SATURATION,
                        "replication": analysis.REPLICATION, "evidence_bounds": analysis.evidence_bounds,
                        "verdict_rule": checks.VERDICT_RULE, "effect_range": answers.effect_range,
                        "compact": answers.compact, "words_equivalent": answers.EQUIVALENT})
    return env


def _fold(text: str) -> str:
    """Blocks apart by exactly one blank line, one newline at the end (the templates' own spacing varies)."""
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def render_markdown(values: dict) -> str:
    return _fold(_environment().get_template("report.md.j2").render(values))


def render_bullets(items: Sequence[dict]) -> list[str]:
    """Each finding or note as the one line of Markdown its macro writes (what a bullet of report.md says)."""
    say = _environment().get_template("findings.md.j2").module
    return [str(getattr(say, item["kind"])(item)) for item in items]


def _markdown_parser(figures: Path) -> MarkdownIt:
    """CommonMark with tables, where a heading gets its slug as id, a link to figures/<name>.png points at the
    figure's id ``fig-<name>``, and a figure (see the ``figure`` macro) becomes one <figure> with its image inlined."""
    # HTML blocks only (the folds' <details> lines); inline text that looks like a tag stays text.
    parser = MarkdownIt("commonmark", {"html": True}).enable("table").disable("html_inline")

    def anchors(state) -> None:
        tokens = state.tokens
        for i, token in enumerate(tokens):
            if token.type == "heading_open":
                token.attrSet("id", slug(tokens[i + 1].content))
            elif token.type == "inline":
                for child in token.children or []:
                    href = str(child.attrGet("href") or "")
                    if child.type == "link_open" and href.startswith("figures/"):
                        child.attrSet("href", f"#fig-{Path(href).stem}")
                image = token.children[0] if token.children and len(token.children) == 1 else None
                if image is not None and image.type == "image" and str(image.attrGet("src")).startswith("figures/"):
                    _as_figure(tokens, i, figures)

    parser.core.ruler.push("anchors", anchors)
    return parser


TEXT_PX = re.compile(r"smallest text ([0-9.]+) px")  # the figure macro's image title


def _as_figure(tokens: list[Token], i: int, figures: Path) -> None:
    """Tokens ``i - 1 .. i + 4`` are the figure macro's two paragraphs, the image and its caption: make them
    <figure id="fig-<name>"><a href="figures/<name>.png"><img src="data:..."></a><figcaption>...</figcaption>
    </figure>. The link opens the PNG at full size; the image's title (its smallest text at full size, in px)
    becomes the attribute data-min-text-px, for a browser to compare with the width it displays."""
    image = tokens[i].children[0]
    src = str(image.attrGet("src"))
    name = Path(src).stem
    image.attrSet("src", "data:image/png;base64," + base64.b64encode((figures / f"{name}.png").read_bytes()).decode())
    title = TEXT_PX.search(str(image.attrGet("title") or ""))
    if image.attrs and "title" in image.attrs:
        del image.attrs["title"]
    if title:
        image.attrSet("data-min-text-px", title[1])
    link_open, link_close = Token("link_open", "a", 1), Token("link_close", "a", -1)
    link_open.attrSet("href", src)
    tokens[i].children = [link_open, image, link_close]
    image_open, image_close, caption_open, caption, caption_close = tokens[i - 1], *tokens[i + 1:i + 5]
    image_open.tag, image_close.hidden = "figure", True
    image_open.attrSet("id", f"fig-{name}")
    caption_open.tag = caption_close.tag = "figcaption"
    caption.children = [c for c in caption.children if c.type not in ("em_open", "em_close")]
    tokens.insert(i + 5, Token("figure_close", "figure", -1, block=True))


def main_words(html_text: str) -> int:
    """The words a reader sees without opening a fold: the text of index.html's body outside <details> blocks
    (their <summary> lines count), tables and captions included, styles and image data left out."""
    counter = _WordCounter()
    counter.feed(html_text)
    return counter.words


class _WordCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.words = 0
        self._details = 0  # nesting depth of <details>
        self._summary = False
        self._skip = 0  # inside <style>, <script> or <title>

    def handle_starttag(self, tag, attrs):
        if tag == "details":
            self._details += 1
        elif tag == "summary":
            self._summary = True
        elif tag in ("style", "script", "title"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag == "details":
            self._details -= 1
        elif tag == "summary":
            self._summary = False
        elif tag in ("style", "script", "title"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and (self._details == 0 or (self._details == 1 and self._summary)):
            self.words += len(data.split())


def render_html(markdown: str, figures: Path, title: str) -> str:
    """report.md as one HTML file with every figure inlined (opens from disk, nothing else needed)."""
    body = _markdown_parser(figures).render(markdown)
    return _environment().get_template("index.html.j2").render(title=title, body=markupsafe.Markup(body),
                                                                display_width=report.DISPLAY_WIDTH)


# --------------------------------------------------------------------------------------------------------------
# Entry point


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


def build(results: Path, probe: Path, conditions: Sequence[str], out: Path, metrics: Path) -> None:
    """Write ``out``/{report.md, index.html, figures/*.png} and ``metrics`` from ``results/<condition>/`` (train
    and tune stages) and ``probe/`` (probe stage) alone.

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
            _swap(staged, out)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def render_answer(kind: str, values: dict) -> str:
    """One answer's sentences (``kind``: speed, gradients or penalty) as report.md words them."""
    return str(getattr(_environment().get_template("answers.md.j2").module, kind)(values)).strip()
