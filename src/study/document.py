"""Assembles the report from the files under ``results/`` alone: ``report/report.md``, a self-contained
``report/index.html`` (figures embedded as data URIs), ``report/figures/*.png`` and ``metrics.json``.

The words live here; numbers come from ``study.analysis`` and figures from ``study.report``. Never reads MLflow.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from study import analysis, report, tables
from study import losses as registry
from study.analysis import REFERENCE

PENALTY = "penalty.csv"
CLAIMS = "claims.csv"
QUANTITY_LABELS = {
    "final_accuracy": "final test acc",
    "selected_accuracy": "val-selected test acc",
    "test_nll": "test NLL",
    "ece": "ECE",
    "val_auc": "mean val acc (AUC)",
}


# --------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class Inputs:
    """Everything the report reads, cleaned. ``notes`` says what was missing or dropped."""

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
    notes: list[str] = field(default_factory=list)


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
    notes: list[str] = []
    histories, examples, setups = [], [], {}
    for condition in conditions:
        directory = results / condition
        setups[condition] = tables.read_json(_required(directory / tables.SETUP, "train"))
        history, dropped = analysis.drop_nonfinite(tables.read_history(_required(directory / tables.HISTORY, "train")))
        if dropped:
            notes.append(f"{condition}: dropped {dropped} non-finite values from {tables.HISTORY}.")
        histories.append(history)
        path = directory / tables.EXAMPLES
        if path.exists():
            frame = tables.read_examples(path)
            needed = frame[["p_true", "confidence", "logit_grad_norm"]].to_numpy(dtype=float)
            keep = np.isfinite(needed).all(axis=1)
            if not keep.all():
                notes.append(f"{condition}: dropped {int((~keep).sum())} examples with non-finite probabilities or "
                             f"gradient norms from {tables.EXAMPLES}.")
            examples.append(frame[keep])
        else:
            notes.append(f"{condition}: {tables.EXAMPLES} is missing; per-example figures leave it out.")
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
            tune, dropped = analysis.drop_nonfinite(tables.read_history(tune_path))
            if dropped:
                notes.append(f"{source}: dropped {dropped} non-finite values from {tables.TUNE}.")
            tunes.append(tune.astype({"lr": float, "seed": int, "step": int, "value": float}))
        else:
            notes.append(f"{source}: {tables.TUNE} is missing; the tuning curves and the shared-lr view leave it out.")
    tune_frame = pd.concat(tunes, ignore_index=True) if tunes else None

    penalty = claims = None
    if (probe / PENALTY).exists():
        penalty = pd.read_csv(probe / PENALTY)
        penalty = penalty[np.isfinite(penalty[["p_true", "loss_value", "logit_grad_norm"]].to_numpy(float)).all(1)]
    else:
        notes.append(f"{PENALTY} of the probe stage is missing; closed-form curves are left out.")
    if (probe / CLAIMS).exists():
        claims = pd.read_csv(probe / CLAIMS, dtype=str, keep_default_na=False)
    else:
        notes.append(f"{CLAIMS} of the probe stage is missing; only the claims measured from training are checked.")
    return Inputs(list(conditions), history, example_frame, setups, targets, lrs, sources, tuning, tune_frame,
                  penalty, claims, notes)


# --------------------------------------------------------------------------------------------------------------
# A small document model rendered twice: Markdown (links to figures/*.png) and HTML (figures embedded)


@dataclass(frozen=True)
class Ref:
    """An inline link to a figure (``kind='figure'``) or a section (``kind='section'``, by slug)."""

    text: str
    kind: str
    target: str


Segment = str | Ref


@dataclass
class Document:
    blocks: list[tuple] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)  # name -> caption

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", level, text))

    def para(self, *segments: Segment) -> None:
        self.blocks.append(("para", segments))

    def bullets(self, items: Sequence[Sequence[Segment]]) -> None:
        if items:
            self.blocks.append(("bullets", [tuple(i) for i in items]))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Segment]]) -> None:
        if rows:
            self.blocks.append(("table", list(header), [list(r) for r in rows]))

    def figure(self, name: str, caption: str) -> None:
        self.figures[name] = caption
        self.blocks.append(("figure", name, caption))


def slug(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text.strip().lower()))


def _md_inline(segments: Sequence[Segment]) -> str:
    out = []
    for s in segments:
        if isinstance(s, Ref):
            href = f"figures/{s.target}.png" if s.kind == "figure" else f"#{s.target}"
            out.append(f"[{s.text}]({href})")
        else:
            out.append(s)
    return "".join(out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: Document) -> str:
    lines: list[str] = []
    for block in doc.blocks:
        kind = block[0]
        if kind == "heading":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "para":
            lines += [_md_inline(block[1]), ""]
        elif kind == "bullets":
            lines += [f"- {_md_inline(item)}" for item in block[1]] + [""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(_md_cell(_md_inline([c])) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "figure":
            lines += [f"![{block[2]}](figures/{block[1]}.png)", "", f"*Figure `{block[1]}`: {block[2]}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def _html_inline(segments: Sequence[Segment]) -> str:
    out = []
    for s in segments:
        if isinstance(s, Ref):
            href = f"#fig-{s.target}" if s.kind == "figure" else f"#{s.target}"
            out.append(f'<a href="{html.escape(href)}">{html.escape(s.text)}</a>')
        else:
            out.append(html.escape(s))
    return "".join(out)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0 1.4em; font-size: 0.88em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def render_html(doc: Document, figures: Path, title: str) -> str:
    """One HTML file with every figure inlined as a base64 PNG data URI (opens from disk, nothing else needed)."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>"]
    for block in doc.blocks:
        kind = block[0]
        if kind == "heading":
            level, text = block[1], block[2]
            parts.append(f'<h{level} id="{slug(text)}">{html.escape(text)}</h{level}>')
        elif kind == "para":
            parts.append(f"<p>{_html_inline(block[1])}</p>")
        elif kind == "bullets":
            parts.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{_html_inline([c])}</td>" for c in row) + "</tr>"
                           for row in block[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "figure":
            name, caption = block[1], block[2]
            data = base64.b64encode((figures / f"{name}.png").read_bytes()).decode("ascii")
            parts.append(f'<figure id="fig-{html.escape(name)}"><img alt="{html.escape(caption)}" '
                         f'src="data:image/png;base64,{data}"><figcaption>Figure <code>{html.escape(name)}</code>: '
                         f"{html.escape(caption)}</figcaption></figure>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


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


def fmt_difference(row: dict | None, digits: int = 3, unit: str = "", percent: bool = False) -> str:
    """'+0.012 [-0.003, +0.027], p=0.09, within noise'; ``unit`` follows the mean ('+5 steps [...]'); ``percent``
    writes shares as percentage points."""
    if row is None or not math.isfinite(row["diff"]):
        return "–"

    def number(x: float) -> str:
        if percent:  # a difference of two shares lies in [-100, +100] pp, whatever a t-interval says
            x = min(max(100 * x, -100.0), 100.0)
        return f"{round(x, 1 if percent else digits) + 0.0:+.{1 if percent else digits}f}"  # + 0.0: no "-0"

    unit = " pp" if percent else (f" {unit}" if unit else "")
    text = number(row["diff"]) + unit
    if row["within_noise"] is None:
        return text + f" ({int(row['n'])} pair, no interval)"
    text += f" [{number(row['ci_low'])}, {number(row['ci_high'])}], {fmt_p(row['p_value'])}"
    p_holm = row.get("p_holm", math.nan)
    if isinstance(p_holm, float) and math.isfinite(p_holm):
        text += f", Holm {fmt_p(p_holm)}"
    return text + (f", not distinguishable with {int(row['n'])} seeds" if row["within_noise"] else "")


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
    lr_views: dict[str, pd.DataFrame]
    heldout: pd.DataFrame  # per seed: analysis.heldout_per_seed
    claims: pd.DataFrame
    metrics: dict


CALIBRATION = {
    "ece": ("test", "ece"), "ece_ts": ("test", "ece_ts"), "test_nll": ("test", "nll"), "nll_ts": ("test", "nll_ts"),
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
    measured = pd.DataFrame([
        analysis.claim_faster(head),
        analysis.claim_reliable(head),
        analysis.claim_sigmoid_multiclass(head),
        analysis.claim_penalty_works(head, noise_per_seed),
        analysis.claim_nll_misclassification(inputs.history),
        analysis.claim_none_of_the_above(heldout),
        analysis.claim_gradient(saturation, inputs.penalty, inputs.conditions),
    ], columns=analysis.CLAIM_COLUMNS)
    claims = measured if inputs.claims is None else pd.concat(
        [inputs.claims.reindex(columns=analysis.CLAIM_COLUMNS), measured.astype({"value": str})], ignore_index=True)
    metrics = analysis.metrics(head)
    for row in analysis.summarise(heldout).itertuples():
        if row.quantity == "auroc_natural" and row.condition in metrics and row.loss in metrics[row.condition]:
            metrics[row.condition][row.loss]["heldout_auroc"] = row.mean
    return Computed(head, saturation, calibration, noise, views, heldout, claims.fillna(""), metrics)


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

    def save(self, name: str, draw: Callable[..., object], *args) -> str:
        report.save(draw(*args), self.directory / f"{name}.png")
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


def compose(inputs: Inputs, computed: Computed, figures: Figures) -> Document:
    doc = Document()
    head = computed.head
    conditions = inputs.conditions
    losses = analysis.ordered(inputs.history["loss"])
    noise_conditions = _noise_conditions(inputs)

    # Figures first, so that every reference below can check the figure exists.
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
        if c in noise_conditions:
            figures.save(f"label_noise_{c}", report.plot_label_noise, hist)
        if c in _heldout_conditions(computed):
            figures.save(f"heldout_{c}", report.plot_heldout, hist)
    if inputs.penalty is not None and not inputs.penalty.empty:
        figures.save("penalty", report.plot_penalty, inputs.penalty)
    if (inputs.examples["split"] == "test").any():
        figures.save("wrong_confidence", report.plot_wrong_confidence, inputs.examples, _confident(inputs))

    doc.heading(1, "Loss study: how the classification loss shapes training")
    seeds = sorted({s for c in conditions for s in inputs.setups[c].get("seeds", [])})
    doc.para(f"Generated by the report stage (python -m study report) from the tables under results/ alone, for "
             f"the conditions {', '.join(conditions)}; "
             f"losses {', '.join(losses)}; seeds {', '.join(map(str, seeds))}. Numbers are means over seeds with "
             f"95% t-intervals in brackets unless stated; differences to {REFERENCE} are paired by seed (same "
             "initial weights and batches) with a paired t-test. Each condition's paired tests form two families, "
             "the primary comparisons (one per question: speed, gradient magnitude, confident-wrong penalty; see "
             "the headline table) and all others, each corrected for multiplicity with Holm's method at a "
             f"family-wise {analysis.ALPHA:g}: a difference is called a difference only when it survives the "
             "correction, otherwise 'not distinguishable' with the seeds at hand. Intervals are not corrected.")

    doc.heading(2, "Findings")
    doc.bullets(findings(inputs, computed, figures))

    _setup_section(doc, inputs, computed, figures, losses)
    _headline_section(doc, inputs, computed, figures, losses)
    _convergence_section(doc, inputs, computed, figures, losses)
    _gradient_section(doc, inputs, computed, figures, losses)
    _confident_wrong_section(doc, inputs, computed, figures, losses, noise_conditions)
    _heldout_section(doc, inputs, computed)
    _claims_section(doc, computed, figures)
    _anchors_section(doc, inputs, computed)

    doc.heading(2, "Data notes")
    notes = list(inputs.notes)
    diverged = head.models[head.models["diverged"]]
    for row in diverged.itertuples():
        notes.append(f"{row.condition}: {row.loss} (lr {row.lr:g}, seed {row.seed}) diverged at step "
                     f"{row.diverged_step:.0f}; its final metrics are left out of the means, its steps-to-target "
                     "count it as not reached unless it reached the target before diverging.")
    collapsed = head.models[head.models["collapsed"]]
    for row in collapsed.itertuples():
        notes.append(f"{row.condition}: {row.loss} (lr {row.lr:g}, seed {row.seed}) collapsed at step "
                     f"{row.collapsed_step:.0f} (training loss back above half-way from its minimum to its start, "
                     "or validation accuracy back near chance, to the end of training); its final metrics stay in "
                     "the means, as the result of that rate.")
    if not notes:
        notes.append("Every expected input was present; no value was dropped; no model diverged or collapsed.")
    doc.bullets([[n] for n in notes])
    return doc


def _bins(inputs: Inputs, condition: str) -> int:
    return int(inputs.setups[condition].get("ece_bins", 15))


def _confident(inputs: Inputs) -> float:
    return float(next((s["confident"] for s in inputs.setups.values() if "confident" in s), analysis.CONFIDENT))


def _fig(figures: Figures, stem: str, text: str | None = None) -> list[Segment]:
    name = figures.resolve(stem)
    return [" (", Ref(text or f"figure {name}", "figure", name), ")"] if name else []


# ---- Findings ---------------------------------------------------------------------------------------------------


def findings(inputs: Inputs, computed: Computed, figures: Figures) -> list[list[Segment]]:
    """Plain sentences generated from the numbers, each pointing at its figure or table."""
    head, items = computed.head, []
    q1 = analysis.steps_quantity(1)
    for c in inputs.conditions:
        targets = inputs.targets.get(c, ())
        rows = head.summary[(head.summary["condition"] == c) & (head.summary["quantity"] == q1)]
        if not targets or rows.empty:
            continue
        reached = rows[np.isfinite(rows["median"].to_numpy(dtype=float))].sort_values("median")
        if reached.empty:
            items.append([f"Speed, {c}: no loss reached validation accuracy {targets[0]:g} in at least half its "
                          "seeds."]
                         + _fig(figures, "steps_to_target"))
            continue
        fastest = analysis.ordered(reached[reached["median"] == reached["median"].iloc[0]]["loss"])
        best = _value(reached, loss=fastest[0])
        if len(fastest) == len(rows) > 1:
            who = "all losses tie with"
        else:
            who = _join(fastest) + (" tie with" if len(fastest) > 1 else " has")
        # "Lowest median", not "fastest": whether it is faster is the paired comparison's to say (below).
        text = (f"Speed, {c}: {who} the lowest median steps to validation accuracy {targets[0]:g}, "
                f"{best['median']:.0f} ({int(best['n_reached'])}/{int(best['n'])} seeds reached it)")
        ref = _value(rows, loss=REFERENCE)
        if REFERENCE not in fastest and ref is not None:
            d = _value(head.differences, condition=c, loss=best["loss"], quantity=q1)
            text += f", against {fmt_steps(ref)} for {REFERENCE}"
            if d is not None:
                text += f"; paired difference {best['loss']} − {REFERENCE}: {fmt_difference(d, 0, 'steps')}"
        elif len(reached) > len(fastest):
            runner = reached.iloc[len(fastest)].to_dict()
            d = _value(head.differences, condition=c, loss=runner["loss"], quantity=q1)
            text += f"; next {runner['loss']} at {runner['median']:.0f}"
            if d is not None:
                text += f" (paired difference to {REFERENCE}: {fmt_difference(d, 0, 'steps')})"
        slow = rows[~np.isfinite(rows["median"].to_numpy(dtype=float))]["loss"].tolist()
        if slow:
            text += f". Not reached by at least half the seeds: {', '.join(slow)}"
        items.append([text + "."] + _fig(figures, "steps_to_target") + [" (", Ref("headline table", "section",
                                                                                   "headline-table"), ")"])

    for c in inputs.conditions:
        rows = head.summary[(head.summary["condition"] == c) & (head.summary["quantity"] == "final_accuracy")]
        rows = rows[np.isfinite(rows["mean"].to_numpy(dtype=float))]
        if rows.empty:
            continue
        best = rows.sort_values("mean", ascending=False).iloc[0].to_dict()
        diffs = head.differences[(head.differences["condition"] == c)
                                 & (head.differences["quantity"] == "final_accuracy")]
        noise_level = [r["loss"] for r in diffs.to_dict("records") if r["within_noise"] in (True,)]
        apart = [f"{r['loss']} {r['diff']:+.3f}" for r in diffs.to_dict("records") if r["within_noise"] in (False,)]
        text = f"Accuracy, {c}: highest final test accuracy {best['mean']:.3f} with {best['loss']}."
        seeds = int(diffs["n"].max()) if len(diffs) else 0
        if noise_level:
            text += (f" Not distinguishable from {REFERENCE} with {seeds} seeds (Holm-corrected): "
                     f"{', '.join(noise_level)}.")
        if apart:
            text += f" Different from {REFERENCE} after Holm's correction (paired Δ accuracy): {', '.join(apart)}."
        items.append([text] + _fig(figures, "headline"))

    for c in inputs.conditions:
        items += _collapse_findings(c, head, inputs.setups[c], figures)

    cal = computed.calibration
    for c in inputs.conditions:
        rows = cal[(cal["condition"] == c) & (cal["quantity"] == "ece")]
        rows = rows[np.isfinite(rows["mean"].to_numpy(dtype=float))]
        if rows.empty:
            continue
        ranked = rows.sort_values("mean")
        best = ranked.iloc[0].to_dict()
        text = f"Calibration, {c}: lowest ECE {best['loss']} ({fmt_estimate(best)})"
        if len(ranked) > 1:
            second = ranked.iloc[1].to_dict()
            ece = head.per_seed[(head.per_seed["condition"] == c) & (head.per_seed["quantity"] == "ece")]
            by_loss = {loss: g.set_index("seed")["value"] for loss, g in ece.groupby("loss")}
            d = analysis.paired_difference(by_loss[second["loss"]], by_loss[best["loss"]])
            if d.within_noise in (False,):
                text += f", lower than the next, {second['loss']} ({second['mean']:.3f}; paired Δ {d.mean:+.3f} " \
                        f"[{d.ci_low:+.3f}, {d.ci_high:+.3f}])"
            else:
                text += (f", not distinguishable from the next, {second['loss']} ({second['mean']:.3f}), with "
                         f"{d.n} seeds")
        temp = _value(cal, condition=c, loss=REFERENCE, quantity="temperature")
        if temp is not None and math.isfinite(temp["mean"]):
            low, high = analysis.TEMPERATURE_BOUNDS
            if temp["ci_low"] >= high * 0.99 or temp["ci_high"] <= low * 1.01 or temp["mean"] >= high * 0.99:
                text += (f"; {REFERENCE}'s temperature fit hit its search bound ({temp['mean']:.2f}, searched "
                         f"{low:g} to {high:g}): no temperature in range calibrates it")
            else:
                mood = ("about calibrated" if abs(temp["mean"] - 1) < 0.02 else
                        "overconfident" if temp["mean"] > 1 else "underconfident")
                text += f"; {REFERENCE}'s fitted temperature is {temp['mean']:.2f} (it was {mood})"
        parts = []
        # The reference's unbounded penalty beside the bounded losses', each loss's own rate.
        for loss in (REFERENCE, *(name for name in registry.names() if registry.spec(name).bounded)):
            share = _value(cal, condition=c, loss=loss, quantity="confident_wrong_loss_share")
            rate = _value(cal, condition=c, loss=loss, quantity="confident_wrong_rate")
            if share is not None and rate is not None and math.isfinite(share["mean"]):
                parts.append(f"{loss}'s ({rate['mean']:.1%} of its test examples) carry {share['mean']:.1%} of its "
                             "test loss")
        if parts:
            text += ". Confidently wrong predictions: " + "; ".join(parts)
        if c in _noise_conditions(inputs):
            text += (". Here the training labels are noisy while validation and test labels are clean, so a model "
                     "that fits the noisy labels is underconfident on test by construction: this ECE ranking mixes "
                     "label noise with calibration")
        items.append([text + "."] + _fig(figures, f"reliability_{c}"))

    sat = computed.saturation
    parts = []
    for c in inputs.conditions:
        mine = sat[sat["condition"] == c]
        if mine.empty:
            continue
        means = {loss: analysis.mean_ci(g["value"]).mean for loss, g in mine.groupby("loss")}
        wrong = mine.groupby("loss")["n_wrong"].sum()
        parts.append(f"{c}: " + ", ".join(f"{loss} {means[loss]:.1%} of {int(wrong[loss])}"
                                          for loss in analysis.ordered(means) if math.isfinite(means[loss])))
    if parts:
        text = ("Gradients: share of the wrong test examples (whole test set, all seeds' counts given) whose logit "
                f"gradient has vanished (‖∂L/∂z‖ < {analysis.SATURATION:g}) at the last evaluation: "
                + "; ".join(parts) + ".")
        if inputs.penalty is not None and not inputs.penalty.empty:
            worst = inputs.penalty.loc[inputs.penalty.groupby("loss")["p_true"].idxmin()]
            text += (f" In closed form at p_true = {worst['p_true'].min():.2g}: " + ", ".join(
                f"{r.loss} {r.logit_grad_norm:.3g}" for r in worst.itertuples()) + ".")
        items.append([text] + _fig(figures, "logit_grad"))

    items += _optimizer_findings(inputs, head, figures)

    for c, summary in computed.noise.items():
        rows = []
        for loss in analysis.ordered(summary["loss"]):
            drop = _value(summary, loss=loss, quantity="accuracy_drop")
            mem = _value(summary, loss=loss, quantity="memorised")
            if drop is not None and mem is not None:
                rows.append((loss, drop["mean"], mem["mean"]))
        if rows:
            most = max(rows, key=lambda r: r[2] if math.isfinite(r[2]) else -1)
            least = min(rows, key=lambda r: r[2] if math.isfinite(r[2]) else 2)
            text = (f"Label noise, {c}: validation-selected to final test accuracy drop " + ", ".join(
                f"{loss} {d:+.3f}" for loss, d, _ in rows) + f"; {most[0]} memorised the most flipped labels "
                f"({most[2]:.1%}), {least[0]} the fewest ({least[2]:.1%}).")
            items.append([text] + _fig(figures, f"label_noise_{c}"))

    claims = computed.claims
    if not claims.empty:
        buckets = claims["verdict"].map(analysis.verdict_bucket)
        counts = {v: int((buckets == v).sum()) for v in analysis.VERDICTS}
        text = (f"Claims of the source text: {counts['holds']} hold, {counts['holds with a nuance']} hold with a "
                f"nuance, {counts['does not hold here']} do not hold here, {counts['not established here']} are not "
                "established here")
        against = claims[buckets == "does not hold here"]["claim"].tolist()
        if against:
            text += " — against the textbook story: " + "; ".join(f"“{c.rstrip('.')}”" for c in against)
        items.append([text + ". ", Ref("claims table", "section", "claims-of-the-source-text-checked")])

    diverged = computed.head.models[computed.head.models["diverged"]]
    if not diverged.empty:
        items.append([f"Divergence: {len(diverged)} model(s) diverged: " + ", ".join(
            f"{r.condition}/{r.loss}/seed {r.seed}" for r in diverged.itertuples()) + ". ",
            Ref("data notes", "section", "data-notes")])
    return items


def _collapse_findings(condition: str, head: analysis.Headline, setup: dict,
                       figures: Figures) -> list[list[Segment]]:
    """Rates that failed: models that collapsed or diverged in the reported runs, and rates the train stage gave up
    for a smaller one (setup.json's lr_fallbacks). A collapse is never called overfitting."""
    items = []
    mine = head.models[head.models["condition"] == condition]
    for loss in analysis.ordered(mine["loss"]):
        m = mine[mine["loss"] == loss]
        bad = m[m["collapsed"] | m["diverged"]]
        if bad.empty:
            continue
        parts = [f"seed {int(r.seed)} " + (f"diverged at step {r.diverged_step:.0f}" if r.diverged
                                           else f"collapsed at step {r.collapsed_step:.0f}")
                 for r in bad.itertuples()]
        items.append([f"Stability, {condition}: {loss} at lr {m['lr'].iloc[0]:g} failed in {len(bad)} of {len(m)} "
                      f"seeds ({'; '.join(parts)}): its training loss climbed back or its validation accuracy fell "
                      "to chance after it had learned; these numbers describe an unstable rate, not the loss at its "
                      "best."] + _fig(figures, f"convergence_{condition}"))
    for loss, attempts in (setup.get("lr_fallbacks") or {}).items():
        for attempt in attempts:
            seeds = sorted({*attempt.get("collapsed", {}), *attempt.get("diverged", {})}, key=int)
            then = (f"trained again at lr {attempt['next_lr']:g}" if attempt.get("next_lr") is not None
                    else "no smaller stable rate was left, so its numbers are those of the failed rate")
            items.append([f"Learning-rate fallback, {condition}: {loss} at the tuned lr {attempt['lr']:g} collapsed or "
                          f"diverged in seed(s) {', '.join(map(str, seeds))} of training (tuning is shorter than "
                          f"training here); {then}."] + _fig(figures, "tuning"))
    return items


def _join(names: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _optimizer_findings(inputs: Inputs, head: analysis.Headline, figures: Figures) -> list[list[Segment]]:
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
        parts = []
        for loss in analysis.ordered(head.differences["loss"]):
            d_sgd = _value(head.differences, condition=c_sgd, loss=loss, quantity=q1)
            d_adam = _value(head.differences, condition=c_adam, loss=loss, quantity=q1)
            if d_sgd is None or d_adam is None:
                continue
            # within_noise is True, False or None (no interval); numpy's bools compare equal to Python's.
            apart = {name: d["within_noise"] in (False,) for name, d in (("sgd", d_sgd), ("adam", d_adam))}
            ahead = "a lag" if d_sgd["diff"] > 0 else "a lead"
            verdict = {(True, False): f"{ahead} under sgd that is not distinguishable from 0 under adam",
                       (True, True): "apart under both optimizers",
                       (False, True): "apart only under adam",
                       (False, False): "not distinguishable from it under either optimizer"}[apart["sgd"],
                                                                                             apart["adam"]]
            parts.append(f"{loss} {fmt_difference(d_sgd, 0, 'steps')} under sgd vs "
                         f"{fmt_difference(d_adam, 0, 'steps')} under adam ({verdict})")
        if parts:
            items.append([f"Optimizer: paired difference to {REFERENCE} in steps to validation accuracy "
                          f"{t_sgd[0]:g} ({c_sgd} vs {c_adam}): " + "; ".join(parts) + "."]
                         + _fig(figures, "steps_to_target"))
    return items


# ---- Sections ---------------------------------------------------------------------------------------------------


OPTION_SYMBOLS = {"eps": "ε", "gamma": "γ"}  # how the methods paragraph writes an option


def _loss_formula(loss: str, setups: dict[str, dict]) -> str:
    """``loss = formula with its options``: the options a setup.json states (``loss_options``, or the older
    ``smoothing_eps``, which set ``eps``), else the registry's defaults, which training binds."""
    if loss not in registry.names():
        return f"{loss} (no longer in the loss registry)"
    spec = registry.spec(loss)
    options = dict(spec.options)
    for setup in setups.values():
        stated = setup.get("loss_options", {}).get(loss)
        if stated is None and "eps" in options and "smoothing_eps" in setup:
            stated = {"eps": setup["smoothing_eps"]}
        if stated is not None:
            options.update(stated)
            break
    shown = ", ".join(f"{OPTION_SYMBOLS.get(key, key)} = {value:g}" for key, value in options.items())
    return f"{loss} = {spec.formula}" + (f" with {shown}" if shown else "")


def _setup_section(doc: Document, inputs: Inputs, computed: Computed, figures: Figures, losses: list[str]) -> None:
    doc.heading(2, "Setup")

    def describe(c: str) -> dict[str, str]:
        s = inputs.setups[c]
        p, sizes = s.get("params", {}), s.get("sizes", {})
        return {
            "dataset": str(s.get("dataset", "")),
            "model": str(s.get("model", "")),
            "optimizer": str(p.get("optimizer", "")) + (f" (momentum {p.get('momentum')})"
                                                        if p.get("optimizer") == "sgd" else ""),
            "batch size": str(p.get("batch_size", "")),
            "epochs": str(p.get("epochs", "")),
            "label noise (flipped training labels)": f"{p.get('label_noise', 0):g} ({sizes.get('flipped', 0)})",
            "examples train / val / test": " / ".join(str(sizes.get(k, "?")) for k in ("train", "val", "test")),
            "seeds": ", ".join(map(str, s.get("seeds", []))),
            "optimizer steps per epoch / total": f"{s.get('steps_per_epoch', '')} / {s.get('total_steps', '')}",
            "validation-accuracy targets": ", ".join(f"{t:g}" for t in inputs.targets.get(c, ())),
            "learning rates tuned in": inputs.sources[c],
            "device": str(s.get("device", "")),
        }

    described = {c: describe(c) for c in inputs.conditions}
    fields = list(next(iter(described.values())))
    doc.table(["", *inputs.conditions], [[f, *(described[c][f] for c in inputs.conditions)] for f in fields])
    doc.para("Losses (per example, from logits z and label y; batch loss = mean): "
             + "; ".join(_loss_formula(loss, inputs.setups) for loss in losses)
             + ". Prediction is argmax z for every loss.")
    doc.para("Learning rate each loss trained with (tuned on the validation split of the condition named in "
             "'lr from'):")
    doc.table(["condition", *losses],
              [[c, *(f"{inputs.lrs[c][loss]:g}" if loss in inputs.lrs[c] else "–" for loss in losses)]
               for c in inputs.conditions])
    if not inputs.tuning and inputs.tune is None:
        doc.para("No tuning results (lr.json, tune.csv) were found, so the tuning curves are not shown.")
        return
    for source, info in inputs.tuning.items():
        scores = info.get("scores") or {}
        grid = sorted({float(lr) for s in scores.values() for lr in s})
        if not grid:
            doc.para(f"Tuning in {source}, criterion: {info.get('criterion', 'not stated')} (lr.json lists no "
                     "scores).")
            continue
        doc.para(f"Tuning in {source}, criterion: {info.get('criterion', 'not stated')}. Score of each learning "
                 "rate (the chosen one is marked *) and how many of the choices made with one tune seed left out "
                 "pick the same rate:")
        chosen = _chosen(inputs, source)
        agreement = info.get("agreement") or {}
        doc.table(["loss", *(f"lr {lr:g}" for lr in grid), "agreement"], [
            [loss, *(_score_cell(scores.get(loss, {}), lr, chosen.get(loss)) for lr in grid),
             str(agreement.get(loss, "–"))]
            for loss in analysis.ordered(scores)])
        fragile = _fragile_choices(agreement)
        if fragile:
            doc.para(f"Fragile choices in {source}: {', '.join(fragile)}. Leaving out one tune seed moves the rate "
                     "of these losses, so another machine or thread count may train them at a neighbouring rate; "
                     "the findings that rest on them (speed above all) are the least settled of the report.")
        elif agreement:
            doc.para(f"Every choice in {source} is made again with any one tune seed left out.")
    if "tuning" in figures.names:
        doc.figure("tuning", "Every loss at every learning rate of the grid (tuning runs, validation split): "
                             "final validation accuracy (the star is the rate each loss trained with; crosses "
                             "diverged, squares collapsed) and steps to the first target. How much of 'loss A is "
                             "slower' is only 'loss A wants another learning rate' shows here.")


def _fragile_choices(agreement: dict) -> list[str]:
    """Losses whose leave-one-seed-out agreement ('k of n') falls short of n, as 'loss (k of n)'."""
    out = []
    for loss in analysis.ordered(agreement):
        found = re.fullmatch(r"(\d+) of (\d+)", str(agreement[loss]))
        if found and int(found[1]) < int(found[2]):
            out.append(f"{loss} ({agreement[loss]})")
    return out


def _score_cell(scores: dict, lr: float, chosen: float | None) -> str:
    value = next((v for k, v in scores.items() if math.isclose(float(k), lr)), None)
    text = "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{float(value):.4f}"
    return text + (" *" if chosen is not None and math.isclose(lr, chosen) else "")


def _headline_section(doc: Document, inputs: Inputs, computed: Computed, figures: Figures,
                      losses: list[str]) -> None:
    head = computed.head
    doc.heading(2, "Headline table")
    doc.para("Per condition and loss: mean over seeds and 95% t-interval of final test accuracy, validation-selected "
             "test accuracy (at the evaluation with the best validation accuracy: early stopping on the clean "
             "validation split), test NLL (softmax, any loss) and ECE; steps to each validation-accuracy target "
             "(interpolated) as the median over seeds (a seed that never reached it counts as beyond the run), how "
             "many seeds reached it, and ± the widest bracket of a crossing as a share of its step (the resolution "
             "of the evaluations). Models that diverged are left out of the means and counted in the "
             "'diverged' column; models that collapsed stay in and are counted in the 'collapsed' column.")
    for c in inputs.conditions:
        targets = inputs.targets.get(c, ())
        mine = head.models[head.models["condition"] == c]
        doc.heading(3, f"{c}")
        header = ["loss", "lr", "seeds", "diverged", "collapsed", *(QUANTITY_LABELS[q] for q in
                                                         ("final_accuracy", "selected_accuracy", "test_nll", "ece")),
                  *(f"steps to val acc {t:g}" for t in targets)]
        rows = []
        for loss in losses:
            m = mine[mine["loss"] == loss]
            if m.empty:
                continue
            row = [loss, f"{inputs.lrs[c].get(loss, math.nan):g}", str(m["seed"].nunique()),
                   str(int(m["diverged"].sum())), str(int(m["collapsed"].sum()))]
            row += [fmt_estimate(_value(head.summary, condition=c, loss=loss, quantity=q))
                    for q in ("final_accuracy", "selected_accuracy", "test_nll", "ece")]
            row += [fmt_steps(_value(head.summary, condition=c, loss=loss, quantity=analysis.steps_quantity(i)))
                    for i in range(1, len(targets) + 1)]
            rows.append(row)
        doc.table(header, rows)
        diff_rows = []
        for loss in losses if REFERENCE in set(mine["loss"]) else []:
            if loss == REFERENCE or mine[mine["loss"] == loss].empty:
                continue
            row = [loss]
            row += [fmt_difference(_value(head.differences, condition=c, loss=loss, quantity=q))
                    for q in ("final_accuracy", "selected_accuracy", "test_nll", "ece")]
            row += [fmt_difference(_value(head.differences, condition=c, loss=loss,
                                          quantity=analysis.steps_quantity(i)), 0, "steps")
                    for i in range(1, len(targets) + 1)]
            diff_rows.append(row)
        if diff_rows:
            doc.para(f"Paired difference to {REFERENCE} (loss − {REFERENCE}, same seeds), 95% CI and paired t-test; "
                     "'within noise' when the interval covers 0. Steps pair only seeds where both reached the target.")
            doc.table(["loss", *(f"Δ {QUANTITY_LABELS[q]}" for q in ("final_accuracy", "selected_accuracy", "test_nll",
                                                                      "ece")),
                       *(f"Δ steps to {t:g}" for t in targets)], diff_rows)
        elif REFERENCE not in set(mine["loss"]):
            doc.para(f"{REFERENCE} was not trained in {c}, so no paired differences are shown.")
    doc.figure("headline", "Final test accuracy, test NLL and ECE per condition and loss; mean over seeds with 95% "
                           "t-intervals.")
    doc.heading(3, "Primary comparisons")
    doc.para(f"Declared before looking: one comparison per question, each loss against {REFERENCE} in every "
             "condition, paired by seed; Holm-corrected within the condition. "
             + "; ".join(f"{q}: {text}" for q, text in analysis.PRIMARY.items()) + ".")
    primary = head.differences[head.differences["family"] == "primary"]
    units = {"steps_to_target_1": (0, "steps", False), "saturated_share": (3, "", True), "ece": (3, "", False)}
    rows = []
    for c in inputs.conditions:
        for quantity in analysis.PRIMARY:
            for loss in losses:
                d = _value(primary, condition=c, loss=loss, quantity=quantity)
                if d is None:
                    continue
                digits, unit, percent = units[quantity]
                verdict = ("no test" if d["within_noise"] is None else
                           f"not distinguishable with {int(d['n'])} seeds" if d["within_noise"] else "different")
                rows.append([c, quantity, loss, fmt_difference(d, digits, unit, percent=percent), fmt_p(d["p_holm"]),
                             verdict])
    if rows:
        doc.table(["condition", "quantity", "loss", f"Δ vs {REFERENCE} [95% CI], p", "Holm-adjusted p", "verdict"],
                  rows)
    else:
        doc.para("No paired comparison could be made (the reference loss is missing).")


def _convergence_section(doc: Document, inputs: Inputs, computed: Computed, figures: Figures,
                         losses: list[str]) -> None:
    head = computed.head
    doc.heading(2, "Convergence speed")
    doc.para("Optimizer steps until validation accuracy first reaches each target, interpolated linearly between "
             "the two validation readings around the crossing (dots: seeds; bars: medians; hollow triangles: never "
             "reached, drawn at the last evaluation). " + _resolution_sentence(head.steps))
    doc.figure("steps_to_target", "Steps to each validation-accuracy target per condition and loss.")
    doc.figure("time_to_target", "Share of seeds that reached the first target by each step; a curve that ends "
                                 "below 1 counts the seeds that never reached it (censored, not hidden in a median).")
    doc.para("The threshold-free companion: the mean validation accuracy over log-steps (area under the "
             "validation-accuracy curve against log10(step), from the first evaluation after step 0 to the last, "
             f"divided by that span), with the paired difference to {REFERENCE}.")
    rows = []
    for c in inputs.conditions:
        for loss in losses:
            est = _value(head.summary, condition=c, loss=loss, quantity="val_auc")
            if est is None:
                continue
            diff = _value(head.differences, condition=c, loss=loss, quantity="val_auc")
            rows.append([c, loss, fmt_estimate(est), "–" if loss == REFERENCE else fmt_difference(diff)])
    doc.table(["condition", "loss", "mean val acc over training", f"Δ vs {REFERENCE}"], rows)
    for c in inputs.conditions:
        doc.figure(f"convergence_{c}", f"{c}: validation accuracy and training loss against optimizer steps; mean "
                                       "over seeds with 95% t-bands; dotted lines are the targets.")

    doc.heading(3, "Tuned learning rate vs shared learning rate")
    if not computed.lr_views or all(v.empty for v in computed.lr_views.values()):
        doc.para(f"The shared-lr view needs the tuning runs (tune.csv) with {REFERENCE}'s tuned learning rate in the "
                 "grid; they were not found, so this view is not shown.")
        return
    doc.para(f"From the tuning runs: each loss at its own tuned learning rate and at {REFERENCE}'s tuned learning "
             "rate (the 'shared' one). A loss that is slow only at the shared rate is slow because of the learning "
             "rate, not because of its shape.")
    rows = []
    for source, view in computed.lr_views.items():
        if view.empty:
            continue
        targets = inputs.targets.get(source) or next(
            (inputs.targets[c] for c, s in inputs.sources.items() if s == source), ())
        target = f"{targets[0]:g}" if targets else "–"
        for loss in analysis.ordered(view["loss"]):
            own = _value(view, loss=loss, view="own lr")
            shared = _value(view, loss=loss, view="shared lr")
            rows.append([source, target, loss] + [cell for row in (own, shared) for cell in _view_cells(row)])
    doc.table(["tuned in", "val target", "loss", "own lr", "final val acc", "steps to target", "shared lr",
               "final val acc (shared lr)", "steps to target (shared lr)"], rows)
    if "lr_views" in figures.names:
        doc.figure("lr_views", f"Validation accuracy of the tuning runs at each loss's own tuned learning rate "
                               f"(solid) and at {REFERENCE}'s (dashed).")


def _resolution_sentence(steps: pd.DataFrame) -> str:
    """How well the evaluation schedule pins the crossings down: the widest bracket as a share of its step."""
    reached = steps[steps["reached"] & (steps["step"] > 0)]
    if reached.empty:
        return "No model reached a target, so no crossing was measured."
    worst = reached.loc[reached["resolution"].idxmax()]
    return (f"Every crossing lies between two readings at most {100 * worst['resolution']:.1f}% of its step apart "
            f"(the widest: {worst['condition']}, {worst['loss']}, seed {int(worst['seed'])}, between steps "
            f"{int(worst['bracket_low'])} and {int(worst['bracket_high'])}), so each steps-to-target is known to "
            "within that share of its value.")


def _view_cells(row: dict | None) -> list[str]:
    if row is None:
        return ["–", "not in grid", "–"]
    steps, n_reached = row.get("steps_to_target", math.nan), row.get("n_reached", math.nan)
    steps_text = "–" if n_reached != n_reached else (
        ("not reached" if not math.isfinite(steps) else f"{steps:.0f}") + f" ({int(n_reached)}/{int(row['n'])})")
    acc = fmt(row["final_val_accuracy"]) + (f" ({int(row['n_diverged'])} diverged)" if row["n_diverged"] else "")
    return [f"{row['lr']:g}", acc, steps_text]


def _gradient_section(doc: Document, inputs: Inputs, computed: Computed, figures: Figures,
                      losses: list[str]) -> None:
    doc.heading(2, "Gradient magnitudes")
    doc.para("Global L2 norm of all parameter gradients (the clip_grad_norm_ convention), per-layer norms (weight and "
             "bias of each linear layer) and the batch mean of the per-example norm of ∂L/∂logits, every logging "
             "step, on a log scale.")
    for c in inputs.conditions:
        doc.figure(f"grad_norms_{c}", f"{c}: gradient norms against optimizer steps; median over seeds with the "
                                      "seeds' quartiles as the band; last panel: the per-example logit-gradient "
                                      "norm over the whole test set at each evaluation (median and quartiles of the "
                                      "examples, median over seeds).")
    doc.para("Per-example logit-gradient norm against the probability of the true class on the fixed probe "
             "examples, every evaluation and seed, over the closed form of the probe stage (one wrong class with "
             "margin a, the rest 0). The closed form covers p_true ≤ 1/(K − 1), mostly the confidently-wrong side.")
    for c in inputs.conditions:
        if f"logit_grad_{c}" in figures.names:
            doc.figure(f"logit_grad_{c}", f"{c}: measured ‖∂L/∂z‖ against p_true; dots correct, crosses wrong, "
                                          "solid line binned median, dashed line closed form.")
        else:
            doc.para(f"{c}: no probe examples were recorded, so the measured logit gradients are not shown.")
    doc.heading(3, "Saturation")
    doc.para(f"Share of the WRONG examples of the whole test set whose logit-gradient norm is below "
             f"{analysis.SATURATION:g} at the model's last evaluation (the gradient has vanished although the "
             f"prediction is wrong), mean over seeds with 95% t-interval, and the paired difference to {REFERENCE}; "
             "the counts say how many examples each share rests on.")
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
    if rows:
        doc.table(["condition", "loss", "saturated share of wrong", "wrong (all seeds)", "saturated (all seeds)",
                   f"Δ vs {REFERENCE}"], rows)
    else:
        doc.para("No per-example test outputs were recorded, so saturation cannot be measured.")


def _confident_wrong_section(doc: Document, inputs: Inputs, computed: Computed, figures: Figures,
                             losses: list[str], noise_conditions: list[str]) -> None:
    cal = computed.calibration
    doc.heading(2, "Confident-wrong penalties and calibration")
    if inputs.penalty is not None and not inputs.penalty.empty:
        k = analysis.classes_from_penalty(inputs.penalty)
        doc.para("Closed form (probe stage): loss and logit gradient when one wrong class has logit margin a over the "
                 f"other classes, all at 0{f' (K = {k})' if k else ''}, at a = 0 (uniform output) and at the largest "
                 "margin of the sweep:")
        rows = []
        for loss in analysis.ordered(inputs.penalty["loss"]):
            p = inputs.penalty[inputs.penalty["loss"] == loss].reset_index(drop=True)
            picks = dict.fromkeys([int(p["margin"].abs().idxmin()), int(p["margin"].idxmax())])
            for i in picks:
                r = p.loc[i]
                rows.append([loss, f"{round(r['margin'], 9) + 0.0:g}", f"{r['p_true']:.3g}", f"{r['loss_value']:.4g}",
                             f"{r['logit_grad_norm']:.4g}",
                             f"{r['grad_true']:.4g}" if "grad_true" in p and math.isfinite(r["grad_true"]) else "–"])
        doc.table(["loss", "margin a", "p_true", "loss on the example", "‖∂L/∂z‖", "∂L/∂z_true"], rows)
        doc.figure("penalty", "Closed-form loss (left) and logit-gradient norm (right, log) against the probability "
                              "of the true class.")
    else:
        doc.para("The probe stage's penalty.csv was not found, so the closed-form curves are not shown.")
    confident = _confident(inputs)
    if "wrong_confidence" in figures.names:
        doc.figure("wrong_confidence", "Cumulative distribution of p_true among misclassified test examples at the "
                                       f"last evaluation, seeds pooled; left of the dotted line the wrong prediction "
                                       f"has confidence ≥ {confident:g}.")
    doc.para(f"Confidently wrong = wrong with max probability ≥ {confident:g}. Rate among test examples, and the "
             "share of the test loss they carry (own loss and NLL), at the last evaluation:")
    rows = []
    for c in inputs.conditions:
        for loss in losses:
            cells = [fmt_percent(_value(cal, condition=c, loss=loss, quantity=q))
                     for q in ("confident_wrong_rate", "confident_wrong_loss_share", "confident_wrong_nll_share")]
            if any(cell != "–" for cell in cells):
                rows.append([c, loss, *cells])
    doc.table(["condition", "loss", "confident-wrong rate", "share of own test loss", "share of test NLL"], rows)
    fixed = analysis.summarise(analysis.corrections(inputs.history))
    if not fixed.empty:
        doc.para("Does the penalty pull confidently wrong examples back? On a fixed subset of the training examples "
                 "(with their training labels, flipped ones included), of the examples a model got confidently wrong "
                 "at one evaluation, the share it classified right at the next, pooled over the evaluations; mean "
                 "over seeds with 95% t-interval, and how many confidently-wrong cases it rests on:")
        rows = []
        for c in inputs.conditions:
            for loss in losses:
                share = _value(fixed, condition=c, loss=loss, quantity="confident_wrong_corrected")
                seen = _value(fixed, condition=c, loss=loss, quantity="confident_wrong_seen")
                if share is not None:
                    rows.append([c, loss, fmt_percent(share), f"{seen['mean'] * seen['n']:.0f}" if seen else "–"])
        doc.table(["condition", "loss", "corrected by the next evaluation", "confidently wrong (all seeds)"], rows)

    doc.heading(3, "Calibration")
    bins = sorted({_bins(inputs, c) for c in inputs.conditions})
    doc.para(f"ECE with {'/'.join(map(str, bins))} equal-width confidence bins, before and after temperature scaling "
             "(temperature fitted on "
             "the validation split; > 1 means the model was overconfident), test NLL before and after:")
    rows = []
    for c in inputs.conditions:
        for loss in losses:
            cells = [fmt_estimate(_value(cal, condition=c, loss=loss, quantity=q))
                     for q in ("ece", "ece_ts", "temperature", "test_nll", "nll_ts", "brier")]
            if any(cell != "–" for cell in cells):
                rows.append([c, loss, *cells])
    doc.table(["condition", "loss", "ECE", "ECE after TS", "temperature", "test NLL", "NLL after TS", "Brier"], rows)
    for c in inputs.conditions:
        if f"reliability_{c}" in figures.names:
            doc.figure(f"reliability_{c}", f"{c}: reliability diagrams; bars are the accuracy in each confidence bin, "
                                           "dots the same accuracy at the bin's mean confidence, the dashed line "
                                           "perfect calibration.")

    doc.heading(3, "Label noise")
    if not noise_conditions:
        doc.para("No condition of this study has noisy training labels (no train_flipped measurements), so this part "
                 "is not shown.")
        return
    for c in noise_conditions:
        summary = computed.noise[c]
        noise = inputs.setups[c].get("params", {}).get("label_noise")
        flipped = inputs.setups[c].get("sizes", {}).get("flipped")
        doc.para(f"{c}: {noise if noise is not None else '?'} of the training labels flipped ({flipped} examples). "
                 "Validation-selected test accuracy (at the evaluation with the best accuracy on the clean validation "
                 "split) vs final test accuracy, their drop, and the share of flipped training "
                 "examples predicted as the noisy label (memorised; at the end and at its peak) or as the true label "
                 "(recovered), and accuracy on the clean training examples:")
        rows = []
        for loss in analysis.ordered(summary["loss"]):
            rows.append([loss, *(fmt_estimate(_value(summary, loss=loss, quantity=q)) for q in
                                 ("selected_accuracy", "final_accuracy", "accuracy_drop")),
                         *(fmt_percent(_value(summary, loss=loss, quantity=q)) for q in
                           ("memorised", "memorised_peak", "recovered", "clean_train_accuracy"))])
        doc.table(["loss", "val-selected test acc", "final test acc", "drop", "memorised", "memorised (peak)",
                   "recovered", "clean train acc"], rows)
        doc.figure(f"label_noise_{c}", f"{c}: validation-selected vs final test accuracy, memorised and recovered "
                                       "shares of the flipped training labels over training.")


def _heldout_conditions(computed: Computed) -> list[str]:
    return list(dict.fromkeys(computed.heldout["condition"]))


HELDOUT_COLUMNS = {"auroc_max_softmax": "AUROC by max softmax", "auroc_max_sigmoid": "AUROC by max sigmoid",
                   "none_share_heldout": "'none' on held-out classes", "none_share_test": "'none' on trained classes"}


def _heldout_section(doc: Document, inputs: Inputs, computed: Computed) -> None:
    conditions = _heldout_conditions(computed)
    if not conditions:
        return
    doc.heading(2, "None of the above: classes never seen in training")
    doc.para("A condition with classes held out of training asks what a model does with an input that belongs to "
             "none of its classes. Its test images of the held-out classes are scored against the test images of "
             "the trained classes by two confidence scores, the largest softmax probability and the largest of the "
             "per-class sigmoids of the same logits; AUROC is the probability that a random trained-class image "
             "scores above a random held-out one (0.5: no separation). 'None' is the share of images on which "
             "every sigmoid is below 0.5 (every logit below 0), the answer one sigmoid per class can give and "
             "softmax cannot. At the last evaluation, mean over seeds with 95% t-intervals:")
    for c in conditions:
        summary = analysis.summarise(computed.heldout[computed.heldout["condition"] == c])
        held = inputs.setups[c].get("params", {}).get("heldout_classes", [])
        doc.heading(3, f"{c} (held out: classes {', '.join(map(str, held))})")
        doc.figure(f"heldout_{c}", f"{c}: AUROC of held-out against trained-class test images by each score (left) "
                                   "and the share answered 'none' by the sigmoids (right); dot = seed.")
        rows = []
        for loss in analysis.ordered(summary["loss"]):
            rows.append([loss] + [fmt_estimate(_value(summary, loss=loss, quantity=q)) if q.startswith("auroc")
                                  else fmt_percent(_value(summary, loss=loss, quantity=q)) for q in HELDOUT_COLUMNS])
        doc.table(["loss", *HELDOUT_COLUMNS.values()], rows)
        doc.bullets(_heldout_findings(computed.heldout[computed.heldout["condition"] == c], c))


def _heldout_findings(per_seed: pd.DataFrame, condition: str, sigmoid: str = "sigmoid_bce") -> list[list[Segment]]:
    """Each loss by its own score against the reference by its own, paired by seed, the comparisons of a condition
    one family corrected with Holm's method (as the report's other findings); the sigmoids' 'none'."""
    out = []
    losses = analysis.ordered(per_seed["loss"])
    natural = analysis.summarise(per_seed[per_seed["quantity"] == "auroc_natural"])
    if REFERENCE in losses:
        ref = _value(natural, loss=REFERENCE, quantity="auroc_natural")
        others = [x for x in losses if x != REFERENCE]
        found = [analysis.heldout_difference(per_seed, condition, (loss, "auroc_natural"),
                                             (REFERENCE, "auroc_natural")) for loss in others]
        adjusted = analysis.holm([d.p_value for d in found])
        for loss, d, p_holm in zip(others, found, adjusted):
            mine = _value(natural, loss=loss, quantity="auroc_natural")
            score = "max sigmoid" if analysis.NATURAL_SCORE.get(loss) == "auroc_max_sigmoid" else "max softmax"
            if not math.isfinite(p_holm):
                verdict = "no test"
            elif p_holm >= analysis.ALPHA:
                verdict = f"not distinguishable from {REFERENCE} with {d.n} seeds"
            else:
                verdict = f"{'better' if d.mean > 0 else 'worse'} than {REFERENCE}"
            out.append([f"{loss} by its own score ({score}) separates the held-out classes with AUROC "
                        f"{fmt_estimate(mine)} against {REFERENCE}'s {fmt_estimate(ref)} by max softmax: "
                        f"Δ {d.mean:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}], Holm {fmt_p(p_holm)}, {verdict}."])
    if sigmoid in losses:
        d = analysis.heldout_difference(per_seed, condition, (sigmoid, "none_share_heldout"),
                                        (sigmoid, "none_share_test"))
        shares = analysis.summarise(per_seed[per_seed["loss"] == sigmoid])
        held = _value(shares, quantity="none_share_heldout")
        known = _value(shares, quantity="none_share_test")
        more = ("not distinguishable" if d.within_noise in (True, None)
                else "more often" if d.mean > 0 else "less often")
        out.append([f"{sigmoid} answers 'none' to {fmt_percent(held)} of the held-out images and "
                    f"{fmt_percent(known)} of the trained-class ones ({more} for the unseen classes: Δ "
                    f"{100 * d.mean:+.1f} pp [{100 * d.ci_low:+.1f}, {100 * d.ci_high:+.1f}]); the remaining held-out "
                    "images it assigns to a trained class, as softmax assigns every one."])
    return out


def _anchors_section(doc: Document, inputs: Inputs, computed: Computed) -> None:
    doc.heading(2, "Published results side by side")
    doc.para("Each row: a published number, the study's own in the same metric, and whether it is reproduced here "
             "(the verdict and its reason are computed from the tables).")
    table = analysis.anchors(computed.head, inputs.history, inputs.setups)
    doc.table(list(table.columns), [[str(v) for v in row] for row in table.itertuples(index=False)])


def _claims_section(doc: Document, computed: Computed, figures: Figures) -> None:
    doc.heading(2, "Claims of the source text, checked")
    doc.para("One row per claim of the source text (understanding-cross-entropy.txt). Analytic claims come from the "
             "probe stage (claims.csv); the claims about training are measured from the histories above. Every "
             "verdict is computed from the numbers: holds / holds with a nuance / does not hold here / not "
             f"established here. The rule for claims measured by several checks: {analysis.VERDICT_RULE}; the "
             "value column counts the checks.")
    rows = []
    for row in computed.claims.to_dict("records"):
        figure = figures.resolve(str(row["figure"])) if row["figure"] else None
        rows.append([str(row["claim"]), str(row["measured"]), str(row["value"]), str(row["reference"]),
                     str(row["verdict"]), str(row["note"]),
                     Ref(figure, "figure", figure) if figure else str(row["figure"]) or "–"])
    doc.table(["claim", "measured", "value", "reference", "verdict", "note", "figure"], rows)


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
        doc = compose(inputs, computed, figures)
        title = "Loss study report"
        (staged / "report.md").write_text(render_markdown(doc), encoding="utf-8")
        (staged / "index.html").write_text(render_html(doc, staged / "figures", title), encoding="utf-8")
        with tables.atomic_path(metrics) as tmp:
            tmp.write_text(json.dumps(_plain(computed.metrics), indent=2, allow_nan=False) + "\n", encoding="utf-8")
            _swap(staged, out)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
