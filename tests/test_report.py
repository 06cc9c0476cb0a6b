"""The report stage: analysis statistics, one figure per function, and document.build on a fabricated results tree."""

from __future__ import annotations

import json
import math
import re
import shutil
import zlib
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from study import (
    analysis,
    answers,
    claims,
    confidence_figures,
    document,
    figures,
    losses,
    question_figures,
    tables,
    training_figures,
)
from study import findings as findings_module
from study import losses as losses_registry

LOSSES = ["mse", "sigmoid_bce", "softmax_nll", "smoothed_ce"]
SIX = [*LOSSES, "logit_mse", "focal"]  # a condition that adds two losses of the registry
LRS = {"mse": 0.3, "sigmoid_bce": 0.3, "softmax_nll": 0.1, "smoothed_ce": 0.1, "logit_mse": 0.03, "focal": 0.1}
GRID = [0.03, 0.1, 0.3]
SEEDS = [0, 1, 2]
STEPS_PER_EPOCH, EPOCHS = 10, 2
TOTAL = STEPS_PER_EPOCH * EPOCHS
EVALS = [0, 5, 10, 15, 20]
TARGETS = [0.5, 0.75]
CLEAN, NOISY = "cond_a", "cond_noise"
DIVERGED = (CLEAN, "mse", 2, 12)  # condition, loss, seed, step


# ---------------------------------------------------------------------------------------------------------------
# Fabricated results (the schema the train, tune and probe stages write)


def _accuracy(loss: str, seed: int, step: int, lr: float | None = None) -> float:
    i = SIX.index(loss)
    final = (0.80, 0.82, 0.86, 0.85, 0.855, 0.84)[i] + 0.01 * seed
    tau = (9.0, 6.0, 4.0, 4.5, 5.0, 4.2)[i] * (1 + 0.1 * seed)
    if lr is not None:  # tuning: off the loss's own lr the curve is slower
        tau *= 1 + 3 * abs(math.log10(lr / LRS[loss]))
    return 0.1 + (final - 0.1) * (1 - math.exp(-step / tau))


def fabricate_history(condition: str, *, noise: bool = False, diverged=DIVERGED, losses=LOSSES) -> pd.DataFrame:
    rows = []
    for loss in losses:
        i = SIX.index(loss)
        for seed in SEEDS:
            lr = LRS[loss]
            stop = diverged[3] if diverged and (condition, loss, seed) == diverged[:3] else None

            def add(step, split, metric, value, *, lr=lr, loss=loss, seed=seed):
                rows.append((condition, "fashion_mnist", loss, lr, seed, step / STEPS_PER_EPOCH, step, split, metric,
                             float(value)))

            for step in range(0, TOTAL + 1, 2):
                if stop is not None and step > stop:
                    break
                add(step, "train", "loss", (2.3, 0.9, 2.3, 2.4, 1.0, 1.6)[i] * math.exp(-step / 15) + 0.05 * (seed + 1))
                scale = (0.2, 1.0, 1.5, 1.4, 2.0, 1.2)[i] / (1 + step / 8)
                add(step, "train", "grad_norm", scale * 3)
                for layer in (1, 2, 3):
                    add(step, "train", f"grad_norm_layer{layer}", scale * layer)
                add(step, "train", "logit_grad_norm", scale)
            if stop is not None:
                add(stop, "train", "diverged_step", stop)
            for step in EVALS:
                if stop is not None and step > stop:
                    break
                acc = _accuracy(loss, seed, step)
                late = 0.02 * i * max(step - 10, 0) / 10 if noise else 0.0  # late degradation under label noise
                for split, shift in (("val", 0.0), ("test", -0.01 - late)):
                    add(step, split, "accuracy", acc + shift)
                    add(step, split, "nll", 2.3 * (1 - acc) + 0.1 * i)
                    add(step, split, "brier", 0.9 * (1 - acc))
                    add(step, split, "ece", 0.02 + 0.03 * i + 0.001 * seed)
                    add(step, split, "confidence", acc + 0.05)
                    add(step, split, "loss", 2.0 * (1 - acc))
                    add(step, split, "confident_wrong_rate", 0.01 * (i + 1))
                    add(step, split, "confident_wrong_loss_share", 0.05 * (i + 1) + 0.01 * seed)
                    add(step, split, "confident_wrong_nll_share", 0.06 * (i + 1))
                if noise:
                    add(step, "train_flipped", "memorised", min(0.9, 0.1 * (i + 1) * step / TOTAL + 0.01 * seed))
                    add(step, "train_flipped", "recovered", 0.5 - 0.1 * i * step / TOTAL)
                    add(step, "train_clean", "accuracy", acc + 0.05)
            if stop is None:
                add(TOTAL, "val", "temperature", 1.0 + 0.3 * i)
                add(TOTAL, "test", "nll_ts", 2.0 * (1 - _accuracy(loss, seed, TOTAL)))
                add(TOTAL, "test", "ece_ts", 0.01 + 0.005 * i)
                if losses_registry.spec(loss).probabilities != "none":  # no row for a loss without probabilities
                    add(TOTAL, "test", "ece_own", 0.03 + 0.02 * i + 0.001 * seed)
                add(TOTAL, "test", "classwise_ece", 0.004 + 0.001 * i)
    return pd.DataFrame(rows, columns=tables.HISTORY_COLUMNS)


def fabricate_examples(condition: str, *, diverged=DIVERGED, n_probe: int = 40, n_test: int = 200,
                       losses=LOSSES) -> pd.DataFrame:
    rng = np.random.default_rng(zlib.crc32(condition.encode()))
    parts = []
    for loss in losses:
        i = SIX.index(loss)
        for seed in SEEDS:
            stop = diverged[3] if diverged and (condition, loss, seed) == diverged[:3] else None
            evals = [s for s in EVALS if stop is None or s <= stop]
            for split, steps, n in (("probe", evals, n_probe), ("test", evals[-1:], n_test)):
                for step in steps:
                    label = rng.integers(0, 10, n)
                    p_true = np.clip(rng.beta(2 + step / 4, 1.5, n), 1e-9, 1)
                    p_true[: n // 8] = 10.0 ** rng.uniform(-6, -2, n // 8)  # some confidently wrong examples
                    wrong = p_true < 0.5
                    predicted = np.where(wrong, (label + 1) % 10, label)
                    confidence = np.where(wrong, np.clip(1 - p_true, 0, 1) * 0.95, p_true)
                    grad = {"mse": 2 * p_true * (1 - p_true), "sigmoid_bce": 0.5 + 0.5 * (1 - p_true)}.get(
                        loss, np.sqrt(2) * (1 - p_true))
                    parts.append(pd.DataFrame({
                        "condition": condition, "dataset": "fashion_mnist", "loss": loss, "lr": LRS[loss],
                        "seed": seed, "epoch": step / STEPS_PER_EPOCH, "step": step, "split": split,
                        "index": np.arange(n, dtype=np.int32), "label": label.astype(np.int16),
                        "predicted": predicted.astype(np.int16), "p_true": p_true.astype(np.float32),
                        "confidence": confidence.astype(np.float32),
                        "loss_value": (-np.log(p_true) * (1 + 0.1 * i)).astype(np.float32),
                        "logit_grad_norm": grad.astype(np.float32),
                    }))
    return pd.concat(parts, ignore_index=True)[tables.EXAMPLE_COLUMNS]


def fabricate_tune(condition: str) -> pd.DataFrame:
    rows = []
    for loss in LOSSES:
        for lr in GRID:
            for seed in (100,):
                for step in (0, 10, 20):
                    for metric, value in (("accuracy", _accuracy(loss, 0, step, lr)), ("nll", 1.0), ("loss", 1.0)):
                        rows.append((condition, "fashion_mnist", loss, lr, seed, step / 10, step, "val", metric, value))
    # one tuning run diverged
    rows = [r for r in rows if not (r[2] == "sigmoid_bce" and r[3] == 0.03 and r[6] > 10)]
    rows.append((condition, "fashion_mnist", "sigmoid_bce", 0.03, 100, 1.0, 10, "train", "diverged_step", 10.0))
    return pd.DataFrame(rows, columns=tables.HISTORY_COLUMNS)


def closed_form_penalty(max_margin: float = 12.0, points: int = 25, k: int = 10, eps: float = 0.1) -> pd.DataFrame:
    rows = []
    for a in np.linspace(0, max_margin, points):
        z = np.zeros(k)
        z[1] = a  # true class 0, one wrong class with margin a
        p = np.exp(z - z.max())
        p /= p.sum()
        t = np.eye(k)[0]
        sig = 1 / (1 + np.exp(-z))
        r = p - t
        grads = {
            "mse": 2 * (p * r - p * (p @ r)),
            "sigmoid_bce": sig - t,
            "softmax_nll": p - t,
            "smoothed_ce": p - ((1 - eps) * t + eps / k),
        }
        values = {
            "mse": float(r @ r),
            "sigmoid_bce": float(-(t * np.log(sig) + (1 - t) * np.log(1 - sig)).sum()),
            "softmax_nll": float(-np.log(p[0])),
            "smoothed_ce": float((1 - eps) * -np.log(p[0]) + eps * np.mean(-np.log(p))),
        }
        for loss in LOSSES:
            rows.append((loss, a, p[0], values[loss], float(np.linalg.norm(grads[loss])), float(grads[loss][0])))
    return pd.DataFrame(rows, columns=["loss", "margin", "p_true", "loss_value", "logit_grad_norm", "grad_true"])


def setup_json(condition: str, *, noise: float = 0.0, lr_source: str = CLEAN, losses=LOSSES) -> dict:
    return {
        "condition": condition, "dataset": "fashion_mnist",
        "params": {"hidden": [256, 256], "optimizer": "sgd" if noise else "adam", "momentum": 0.9, "batch_size": 32,
                   "epochs": EPOCHS, "label_noise": noise, "val_size": 100, "lr_grid": GRID, "lr_from": lr_source,
                   "tune_epochs": 2, "tune_seeds": [100], "targets": TARGETS},
        "sizes": {"train": 320, "val": 100, "test": 200, "flipped": int(320 * noise)},
        "model": "MLP 784-256-256-10", "losses": list(losses), "seeds": SEEDS,
        "lrs": {loss: LRS[loss] for loss in losses}, "lr_source": lr_source,
        "steps_per_epoch": STEPS_PER_EPOCH, "total_steps": TOTAL, "device": "cpu", "confident": 0.9,
        "ece_bins": 15, "smoothing_eps": 0.1,
    }


def fabricate(root: Path, *, claims: bool = True, tune: bool = True, clean_losses=LOSSES) -> Path:
    """A results/ tree as the pipeline lays it out (``conditions/<condition>/``, ``probe/``) with a clean condition
    (tuned here, one diverged model; ``clean_losses`` trained) and a label-noise condition (the four losses)."""
    results = root / "conditions"
    for condition, noise, trained in ((CLEAN, 0.0, clean_losses), (NOISY, 0.4, LOSSES)):
        directory = results / condition
        directory.mkdir(parents=True, exist_ok=True)
        tables.write_csv(fabricate_history(condition, noise=bool(noise), losses=trained), directory / tables.HISTORY)
        tables.write_parquet(fabricate_examples(condition, losses=trained), directory / tables.EXAMPLES)
        tables.write_json(setup_json(condition, noise=noise, losses=trained), directory / tables.SETUP)
    if tune:
        tables.write_csv(fabricate_tune(CLEAN), results / CLEAN / tables.TUNE)
        tables.write_json({"source": CLEAN, "criterion": "final validation accuracy, mean over tune seeds",
                           "lrs": LRS, "scores": {loss: {str(lr): _accuracy(loss, 0, 20, lr) for lr in GRID}
                                                  for loss in LOSSES}}, results / CLEAN / tables.LRS)
    (root / "probe").mkdir(exist_ok=True)
    closed_form_penalty().to_csv(root / "probe" / "penalty.csv", index=False)
    if claims:
        pd.DataFrame([
            {"claim_id": "sigmoid_range", "claim": "The sigmoid function always outputs a number between 0 and 1.",
             "measured": "min 0, max 1 over [-50, 50]", "value": "1", "reference": "(0, 1)", "verdict": "holds",
             "note": "float32 rounds to exactly 0 and 1 far out", "figure": ""},
            {"claim_id": "hpq", "claim": "H(P, Q) of the worked example", "measured": "2.0588 bits",
             "value": "2.0588", "reference": "2.059", "verdict": "holds", "note": "", "figure": "penalty"},
        ]).to_csv(root / "probe" / "claims.csv", index=False)
    return root


def build(root: Path, conditions=(CLEAN, NOISY)) -> None:
    document.build(root / "conditions", root / "probe", list(conditions), root / "report", root / "metrics.json")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return fabricate(tmp_path_factory.mktemp("results") / "results")


@pytest.fixture(scope="module")
def built(tree: Path) -> Path:
    build(tree)
    return tree


# ---------------------------------------------------------------------------------------------------------------
# analysis


def test_mean_ci_is_a_t_interval_and_ignores_non_finite():
    est = analysis.mean_ci([1.0, 2.0, 3.0, math.nan, math.inf])
    assert est.n == 3 and est.mean == pytest.approx(2.0)
    assert est.ci_high - est.mean == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # t(0.975, 2)
    one = analysis.mean_ci([5.0])
    assert one.mean == 5.0 and math.isnan(one.ci_low) and one.n == 1


def test_paired_difference_pairs_by_seed():
    a = pd.Series([1.0, 2.0, 3.5], index=[0, 1, 2])
    b = pd.Series([0.5, 1.0, 3.0, 9.0], index=[0, 1, 2, 3])  # seed 3 has no partner
    d = analysis.paired_difference(a, b)
    assert d.n == 3 and d.mean == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert 0 < d.p_value < 1 and d.within_noise is not None
    assert analysis.paired_difference(a.iloc[:1], b).within_noise is None


def test_steps_to_target_is_first_crossing_and_right_censored():
    history = fabricate_history(CLEAN)
    steps = analysis.steps_to_target(history, 0.5)
    row = steps[(steps["loss"] == "softmax_nll") & (steps["seed"] == 0)].iloc[0]
    first = min(s for s in EVALS if _accuracy("softmax_nll", 0, s) >= 0.5)
    before = EVALS[EVALS.index(first) - 1]
    a, b = _accuracy("softmax_nll", 0, before), _accuracy("softmax_nll", 0, first)
    assert row["reached"] and row["step"] == pytest.approx(before + (0.5 - a) / (b - a) * (first - before))
    assert (row["bracket_low"], row["bracket_high"]) == (before, first)
    never = analysis.steps_to_target(history, 0.99)
    assert not never["reached"].any() and never["step"].isna().all()
    assert analysis.censored_median([10, math.nan, math.nan]) != analysis.censored_median([10, math.nan, math.nan])
    assert analysis.censored_median([10, 20, math.nan]) == 20


def test_headline_leaves_diverged_models_out_of_final_means():
    head = analysis.headline(fabricate_history(CLEAN), {CLEAN: TARGETS})
    mse = analysis.lookup(head.summary, condition=CLEAN, loss="mse", quantity="final_accuracy")
    assert mse["n"] == len(SEEDS) - 1
    steps = analysis.lookup(head.summary, condition=CLEAN, loss="mse", quantity="steps_to_target_1")
    assert steps["n"] == len(SEEDS)
    assert set(head.differences["loss"]) == {"mse", "sigmoid_bce", "smoothed_ce"}


def test_saturation_counts_only_wrong_examples():
    ex = fabricate_examples(CLEAN)
    sat = analysis.saturation(ex, threshold=1e-3)
    mse = sat[sat["loss"] == "mse"]["value"]
    soft = sat[sat["loss"] == "softmax_nll"]["value"]
    assert (mse > 0).all() and (soft == 0).all()


def test_calibration_bins_use_upper_closed_bins():
    ex = fabricate_examples(CLEAN).head(0)
    row = dict.fromkeys(tables.EXAMPLE_COLUMNS, 0)
    rows = [dict(row, condition="c", loss="softmax_nll", split="test", confidence=c, label=0, predicted=0)
            for c in (1 / 15, 0.5, 1.0)]
    ex = pd.concat([ex, pd.DataFrame(rows)], ignore_index=True)
    bins = analysis.calibration_bins(ex, 15)
    assert sorted(bins["bin"]) == [0, 7, 14]  # 1/15 belongs to (0, 1/15]


# ---------------------------------------------------------------------------------------------------------------
# figures: each returns a Figure with one legend entry per loss


def _legend_losses(fig: Figure) -> list[str]:
    """The loss entries of the figure's legend, in order (the legend may also explain markers)."""
    assert len(fig.legends) == 1, "figure should have exactly one legend"
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    return [t for t in texts if t in figures.LABELS.values()]


def _check(fig: Figure, losses=LOSSES) -> None:
    assert isinstance(fig, Figure)
    assert sorted(_legend_losses(fig)) == sorted(figures.label(loss) for loss in losses)
    for ax in fig.axes:
        for line in ax.get_lines():
            y = np.asarray(line.get_ydata(), dtype=float)
            assert not np.isinf(y).any()
    plt.close(fig)


@pytest.fixture(scope="module")
def frames():
    history = pd.concat([fabricate_history(CLEAN), fabricate_history(NOISY, noise=True, diverged=None)],
                        ignore_index=True)
    examples = pd.concat([fabricate_examples(CLEAN), fabricate_examples(NOISY, diverged=None)], ignore_index=True)
    return history, examples


def test_colours_and_labels_come_from_the_registry():
    assert list(figures.COLOURS) == list(figures.LABELS) == list(losses.names())
    assert len(set(figures.COLOURS.values())) == len(set(figures.LABELS.values())) == len(losses.names())
    for loss in losses.names():
        assert figures.colour(loss) == losses.spec(loss).colour and figures.label(loss) == losses.spec(loss).label
    assert figures.colour("retired_loss") == figures.colour("retired_loss")  # a spare, stable colour
    assert figures.colour("retired_loss") not in figures.COLOURS.values()
    for name in (f"retired_{c}" for c in "abcdef"):  # consecutive character sums: every spare colour in turn
        assert figures.colour(name) not in figures.COLOURS.values(), name
    assert figures.label("retired_loss") == "retired_loss"
    spec = losses.variant("smoothed_ce", "smoothed_ce_05", eps=0.05, colour="#949494")
    with losses.registered(spec):
        assert figures.colour("smoothed_ce_05") == "#949494" and figures.label("smoothed_ce_05") == spec.label


def test_plot_headline(frames):
    _check(question_figures.plot_headline(frames[0]))


def test_plot_convergence_draws_one_line_per_loss(frames):
    fig = training_figures.plot_convergence(frames[0][frames[0]["condition"] == CLEAN], TARGETS)
    val_axis = fig.axes[0]
    colours = {line.get_color() for line in val_axis.get_lines() if line.get_linestyle() == "-"}
    assert colours == {figures.colour(loss) for loss in LOSSES}
    _check(fig)


def test_plot_steps_to_target(frames):
    _check(training_figures.plot_steps_to_target(frames[0], {CLEAN: TARGETS, NOISY: TARGETS}))


def test_plot_tuning_and_lr_views():
    tune = fabricate_tune(CLEAN)
    _check(training_figures.plot_tuning(tune, {CLEAN: LRS}))
    _check(training_figures.plot_lr_views(tune, {CLEAN: LRS}))


def test_plot_tuning_says_so_when_no_rate_reached_the_target(tmp_path):
    """A target no tuning run reached (a short smoke run): the steps panel says so instead of a log axis with
    nothing on it, which matplotlib cannot draw; with a reachable target the panel is a log axis."""
    tune = fabricate_tune(CLEAN)
    unreachable = training_figures.plot_tuning(tune, {CLEAN: LRS}, {CLEAN: (0.999,)})
    reachable = training_figures.plot_tuning(tune, {CLEAN: LRS}, {CLEAN: (0.2,)})
    try:
        figures.save(unreachable, tmp_path / "unreachable.png")  # drawing is where the log axis failed
        below = unreachable.axes[1]
        assert below.get_yscale() == "linear"
        assert any("no rate reached val acc 0.999" in t.get_text() for t in below.texts)
        assert reachable.axes[1].get_yscale() == "log"
    finally:
        plt.close(reachable)


def test_plot_grad_norms_is_log_scale(frames):
    fig = training_figures.plot_grad_norms(frames[0][frames[0]["condition"] == CLEAN])
    assert fig.axes[0].get_yscale() == "log"
    _check(fig)


def test_plot_logit_grad(frames):
    ex = frames[1][frames[1]["condition"] == CLEAN]
    _check(confidence_figures.plot_logit_grad(ex, closed_form_penalty()))
    _check(confidence_figures.plot_logit_grad(ex, None))


def test_plot_penalty():
    _check(confidence_figures.plot_penalty(closed_form_penalty()))


def test_plot_wrong_confidence(frames):
    _check(confidence_figures.plot_wrong_confidence(frames[1]))


def test_plot_reliability(frames):
    _check(confidence_figures.plot_reliability(frames[1][frames[1]["condition"] == CLEAN]))


def test_plot_label_noise(frames):
    _check(confidence_figures.plot_label_noise(frames[0][frames[0]["condition"] == NOISY]))


def test_figures_with_fewer_losses_and_one_seed():
    history = fabricate_history(CLEAN, diverged=None)
    history = history[history["loss"].isin(["mse", "softmax_nll"]) & (history["seed"] == 0)]
    _check(training_figures.plot_convergence(history, TARGETS), ["mse", "softmax_nll"])
    _check(training_figures.plot_grad_norms(history), ["mse", "softmax_nll"])


# ---------------------------------------------------------------------------------------------------------------
# document.build


def test_build_writes_a_self_contained_report(built: Path):
    out = built / "report"
    html_text = (out / "index.html").read_text()
    assert "data:image/png;base64," in html_text
    assert not re.search(r'src="(?!data:)', html_text), "index.html must not load files"
    assert html_text.count("<img") == len(list((out / "figures").glob("*.png")))  # every figure, each once
    ids = re.findall(r'<figure id="([^"]+)"', html_text)
    assert ids and len(ids) == len(set(ids)) == html_text.count("<img"), sorted(ids)
    md = (out / "report.md").read_text()
    linked = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert linked and all((out / path).exists() for path in linked)
    headings = [line for line in md.splitlines() if line.startswith("#")]
    for section in ("## Answers", "## Contents", "## Convergence speed", "## Gradient magnitudes",
                    "## The confident-wrong penalty and its consequences", "### Calibration", "### Label noise",
                    "## Accuracy and stability", "### Headline table", "## Methods and statistics", "### Setup",
                    "### Claims of the source text, checked", "### Data notes"):
        assert section in headings, section
    # the answers first, the evidence by question, methods at the end
    order = [headings.index(h) for h in ("## Answers", "## Convergence speed", "## Gradient magnitudes",
                                         "## The confident-wrong penalty and its consequences",
                                         "## Methods and statistics")]
    assert order == sorted(order)
    assert "sigmoid_range" not in md and "The sigmoid function always outputs" in md  # probe claims included
    assert "faster and more reliable training" in md and "the 'more reliable' half" in md
    assert not list(built.glob(".report*")) and not list(built.glob(".metrics*"))  # no temporary leftovers


def test_each_answer_of_report_md_has_at_most_three_sentences(built: Path):
    md = (built / "report" / "report.md").read_text()
    answers_part = _part(md, "## Answers")
    entries = re.findall(r"^- \*\*([^*]+)\*\*: (.+)$", answers_part, flags=re.M)
    assert [name for name, _ in entries] == ["Convergence speed", "Gradient magnitudes",
                                             "The confident-wrong penalty"], answers_part
    for name, text in entries:
        words = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # the verdict links as their words
        found = [s for s in re.split(r"(?<=[.!?])\s+", words.strip()) if s]
        assert 1 <= len(found) <= 3 and found[-1].endswith("."), (name, found)
        assert "](#methods-and-statistics)" in text, name  # verdict words link to the methods


def test_build_writes_metrics_json(built: Path):
    metrics = json.loads((built / "metrics.json").read_text())
    assert set(metrics) == {CLEAN, NOISY}
    for per_loss in metrics.values():  # three headline numbers per condition and loss, for dvc metrics/exp show
        for entry in per_loss.values():
            assert set(entry) == {"test_accuracy", "steps_to_target", "ece"}
            assert isinstance(entry["test_accuracy"], float) and math.isfinite(entry["test_accuracy"])
    head = analysis.headline(tables.read_history(built / "conditions" / CLEAN / tables.HISTORY), {CLEAN: TARGETS})
    final = analysis.lookup(head.summary, condition=CLEAN, loss="softmax_nll", quantity="final_accuracy")
    assert metrics[CLEAN]["softmax_nll"]["test_accuracy"] == pytest.approx(final["mean"])


def _part(md: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line of report.md) up to the next heading of any level."""
    lines = md.splitlines()
    assert heading in lines, f"no heading {heading!r}"
    rest = lines[lines.index(heading) + 1:]
    end = next((i for i, line in enumerate(rest) if line.startswith("#")), len(rest))
    return "\n".join(rest[:end])


def test_findings_point_at_figures(built: Path):
    md = (built / "report" / "report.md").read_text()
    speed = _part(md, "#### Findings: speed")
    assert "steps to validation accuracy" in speed and "figures/steps_to_target.png" in speed
    noise = _part(md, "#### Findings: label noise")
    assert "memorised the most" in noise and "figures/label_noise_" in noise


def _copy(tree: Path, to: Path, *, with_report: bool = False) -> Path:
    ignore = None if with_report else shutil.ignore_patterns("report", "metrics.json")
    return Path(shutil.copytree(tree, to, ignore=ignore))


def test_numbers_follow_the_data(built: Path, tmp_path: Path):
    before = json.loads((built / "metrics.json").read_text())
    md_before = (built / "report" / "report.md").read_text()
    results = _copy(built, tmp_path / "results")

    path = results / "conditions" / CLEAN / tables.HISTORY
    history = tables.read_history(path)
    last = (history["split"] == "test") & (history["metric"] == "accuracy") & (history["step"] == TOTAL) & (
        history["loss"] == "softmax_nll")
    history.loc[last, "value"] = 0.123
    tables.write_csv(history, path)
    claims = pd.read_csv(results / "probe" / "claims.csv", dtype=str, keep_default_na=False)
    claims.loc[claims["claim_id"] == "hpq", "measured"] = "7.777 bits"
    claims.to_csv(results / "probe" / "claims.csv", index=False)
    build(results)

    after = json.loads((results / "metrics.json").read_text())
    assert after[CLEAN]["softmax_nll"]["test_accuracy"] == pytest.approx(0.123)
    assert before[CLEAN]["softmax_nll"]["test_accuracy"] != pytest.approx(0.123)
    md = (results / "report" / "report.md").read_text()
    table = f"#### Headline table, {CLEAN}"
    assert "0.123" in _part(md, table)
    assert "0.123" not in _part(md_before, table)
    assert "7.777 bits" in md and "7.777 bits" not in md_before
    assert after[NOISY] == before[NOISY]


def test_failed_build_leaves_previous_output(built: Path, tmp_path: Path, monkeypatch):
    results = _copy(built, tmp_path / "results", with_report=True)
    out, metrics = results / "report", results / "metrics.json"
    md, metrics_text = (out / "report.md").read_text(), metrics.read_text()
    entries = sorted(p.name for p in results.iterdir())

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(training_figures, "plot_steps_to_target", broken)  # fails after some figures are written
    history_path = results / "conditions" / CLEAN / tables.HISTORY
    history = tables.read_history(history_path)
    history.loc[history["metric"] == "accuracy", "value"] = 0.5
    tables.write_csv(history, history_path)
    with pytest.raises(RuntimeError, match="figure failed"):
        build(results)
    assert (out / "report.md").read_text() == md and metrics.read_text() == metrics_text
    assert sorted(p.name for p in results.iterdir()) == entries  # no temporary directory or file left

    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        document.build(results / "conditions", results / "probe", [CLEAN, NOISY], fresh / "report",
                       fresh / "metrics.json")
    assert not (fresh / "report").exists() and not (fresh / "metrics.json").exists()
    assert list(fresh.iterdir()) == []


def test_degraded_inputs_still_build(tmp_path: Path):
    """One condition, one seed, non-finite values, no tuning runs, no claims.csv, no noise condition."""
    results = tmp_path / "results"
    directory = results / "conditions" / CLEAN
    directory.mkdir(parents=True)
    history = fabricate_history(CLEAN)
    history = history[history["seed"] == 0].reset_index(drop=True)
    bad = (history["split"] == "test") & (history["metric"] == "accuracy") & (history["loss"] == "softmax_nll")
    history.loc[bad & (history["step"] == 10), "value"] = math.inf
    history.loc[(history["metric"] == "grad_norm") & (history["step"] == 4), "value"] = math.nan
    history = history[history["metric"] != "ece_own"].reset_index(drop=True)  # runs from before ece_own
    n_bad = int((~np.isfinite(history["value"])).sum())
    tables.write_csv(history, directory / tables.HISTORY)
    examples = fabricate_examples(CLEAN)
    examples = examples[examples["seed"] == 0].reset_index(drop=True)
    examples.loc[:2, "logit_grad_norm"] = np.nan
    tables.write_parquet(examples, directory / tables.EXAMPLES)
    tables.write_json(setup_json(CLEAN) | {"seeds": [0]}, directory / tables.SETUP)
    build(results, [CLEAN])  # and no probe/ directory at all

    md = (results / "report" / "report.md").read_text()
    assert f"dropped {n_bad} non-finite values" in md and "dropped 3 examples with non-finite" in md
    assert "No condition of this study has noisy training labels" in md
    assert "shared-lr view needs the tuning runs" in md
    assert "claims.csv of the probe stage is missing" in md
    assert "(1 seed)" in md
    assert "did not record the ECE on each loss's own probabilities" in md
    text = (results / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert math.isfinite(json.loads(text)[CLEAN]["softmax_nll"]["test_accuracy"])  # one seed: a mean, no interval
    html_text = (results / "report" / "index.html").read_text()
    assert "data:image/png;base64," in html_text


def test_missing_history_names_the_stage(tmp_path: Path):
    results = fabricate(tmp_path / "results")
    (results / "conditions" / NOISY / tables.HISTORY).unlink()
    with pytest.raises(FileNotFoundError, match="train stage"):
        build(results)
    assert not (results / "report").exists()


def test_numbers_are_formatted_for_people():
    row = {"diff": -0.3, "ci_low": -2.4, "ci_high": 1.6, "p_value": 0.6, "n": 5, "evidence": analysis.EQUIVALENT}
    assert document.fmt_difference(row, 0, "steps").startswith("+0 steps [-2, +2]")
    shares = {"diff": 0.6, "ci_low": -0.2, "ci_high": 1.7, "p_value": 0.2, "n": 5, "evidence": analysis.EQUIVALENT}
    assert document.fmt_difference(shares, percent=True).startswith("+60.0 pp [-20.0, +100.0]")


def test_the_temperature_bounds_are_the_fits():
    import inspect

    from study import train

    defaults = inspect.signature(train.fit_temperature).parameters
    assert analysis.TEMPERATURE_BOUNDS == (defaults["low"].default, defaults["high"].default)


def test_findings_tell_the_truth_of_a_fabricated_tree(built: Path, tmp_path: Path):
    """The quickest loss is the one with the shortest time constant (softmax_nll), never the slowest (mse); a
    collapsed model is reported as collapsed (never as overfitting); a temperature on the search bound is said to
    have hit it."""
    results = _copy(built, tmp_path / "results")
    path = results / "conditions" / CLEAN / tables.HISTORY
    history = tables.read_history(path)
    temperature = (history["metric"] == "temperature") & (history["loss"] == "softmax_nll")
    history.loc[temperature, "value"] = analysis.TEMPERATURE_BOUNDS[1]
    mark = history[(history["loss"] == "sigmoid_bce") & (history["seed"] == 1)].head(1).assign(
        split="train", metric="collapsed_step", step=15, value=15.0)
    tables.write_csv(pd.concat([history, mark], ignore_index=True), path)
    setup = tables.read_json(results / "conditions" / NOISY / tables.SETUP)
    setup["lr_fallbacks"] = {"smoothed_ce": [{"lr": 0.3, "diverged": {}, "collapsed": {"1": 14}, "next_lr": 0.1}]}
    tables.write_json(setup, results / "conditions" / NOISY / tables.SETUP)
    build(results)
    md = (results / "report" / "report.md").read_text()
    speed = next(line for line in _part(md, "#### Findings: speed").splitlines()
                 if line.startswith(f"- Speed, {CLEAN}:"))
    faster = _clause(speed, "faster after Holm's correction:")
    slower = _clause(speed, "slower after Holm's correction:")
    assert "mse" in slower and "mse" not in faster and "softmax_nll, which took" in speed
    stability = _part(md, "#### Findings: accuracy and stability")
    assert f"Stability, {CLEAN}: sigmoid_bce" in stability and "seed 1 collapsed at step 15" in stability
    assert "overfit" not in md
    calibration = _part(md, "#### Findings: calibration")
    assert f"Calibration, {CLEAN}:" in calibration and "temperature fit hit its search bound" in calibration
    notes = _part(md, "### Data notes")
    assert "sigmoid_bce (lr 0.3, seed 1) collapsed at step 15" in notes
    assert f"{NOISY}: smoothed_ce at lr 0.3 collapsed in training seed(s) 1; it was trained again at lr 0.1" in notes
    assert "no model diverged or collapsed" not in notes


def test_findings_do_not_rank_what_noise_can_reorder(built: Path, tmp_path: Path):
    """Two losses on top whose final test accuracies differ by noise, then the same with their values swapped seed by
    seed (what another thread count can do to a near tie): the findings, numbers masked, are word for word the same,
    although the loss with the best mean changed."""
    jitter = {"sigmoid_bce": np.array([0.0010, -0.0020, 0.0015, 0.0005, -0.0010]),
              "smoothed_ce": np.array([-0.0005, 0.0010, -0.0010, 0.0020, 0.0005])}
    reports, best = [], []
    for swapped in (False, True):
        results = _copy(built, tmp_path / f"swapped-{swapped}")
        path = results / "conditions" / CLEAN / tables.HISTORY
        history = tables.read_history(path)
        final = history[(history["split"] == "test") & (history["metric"] == "accuracy")]
        last = final.loc[final.groupby(["loss", "seed"])["step"].idxmax()]
        top = last.groupby("seed")["value"].max()
        for loss, other in (("sigmoid_bce", "smoothed_ce"), ("smoothed_ce", "sigmoid_bce")):
            rows = last[last["loss"] == loss].sort_values("seed")
            seeds = rows["seed"].to_numpy()
            history.loc[rows.index, "value"] = top.loc[seeds].to_numpy() + 0.05 + jitter[other if swapped else loss][
                :len(seeds)]
        tables.write_csv(history, path)
        build(results)
        reports.append((results / "report" / "report.md").read_text())
        per_seed = analysis.last_values(history, "test", "accuracy")
        best.append(per_seed[per_seed["loss"].isin(jitter)].groupby("loss")["value"].mean().idxmax())
    assert best[0] != best[1]  # a sentence naming the best mean would change
    result = findings_module.compare(*reports)
    assert not result.changed and not result.only_first and not result.only_second, result.changed
    accuracy = next(b for b in findings_module.masked(reports[0]) if b.startswith(f"- Accuracy, {CLEAN}:"))
    assert "sigmoid_bce #, smoothed_ce #" in accuracy or "sigmoid_bce # [#, #], smoothed_ce # [#, #]" in accuracy


def _clause(bullet: str, head: str) -> str:
    """The text after ``head`` up to the next clause ('; <word> ...after' or the bullet's end), '' when absent."""
    if head not in bullet:
        return ""
    rest = bullet.split(head, 1)[1]
    return re.split(r"; (?:faster|slower|not established|equivalent|too few)|\. ", rest, maxsplit=1)[0]


def test_the_headline_steps_carry_their_resolution(built: Path):
    head = analysis.headline(fabricate_history(CLEAN), {CLEAN: TARGETS})
    row = analysis.lookup(head.summary, condition=CLEAN, loss="softmax_nll", quantity="steps_to_target_1")
    widest = head.steps[(head.steps["loss"] == "softmax_nll") & (head.steps["target"] == TARGETS[0])]["resolution"]
    assert row["resolution"] == pytest.approx(widest.max()) and row["resolution"] > 0
    md = (built / "report" / "report.md").read_text()
    assert f"±{100 * row['resolution']:.0f}%)" in _part(md, f"#### Headline table, {CLEAN}")


def test_holm_adjusts_step_down_and_ignores_missing_tests():
    adjusted = analysis.holm([0.01, 0.04, math.nan, 0.03])
    # sorted 0.01, 0.03, 0.04 with m = 3: 0.03, max(0.03, 0.06) = 0.06, max(0.06, 0.04) = 0.06
    assert adjusted[0] == pytest.approx(0.03) and adjusted[3] == pytest.approx(0.06)
    assert adjusted[1] == pytest.approx(0.06) and math.isnan(adjusted[2])


def test_a_difference_that_does_not_survive_holm_is_not_called_a_difference():
    """Three primary tests in one condition: a clear lag stays 'different' after Holm's correction; a lag of about
    10% with p = 0.034 alone becomes about 0.07, which a rerun would repeat below 0.05 only about half the time, and
    is too large for the ±10% margin: 'not established'; no lag at all is 'equivalent' within the margin."""
    rows = []
    rng = np.random.default_rng(0)
    base = rng.normal(100, 10, 5)
    lags = {"mse": np.array([50.0, 52, 49, 51, 50]),  # a clear lag: tiny p
            "sigmoid_bce": np.array([16.0, 0, 20, 8, 8]),  # a lag of about 10%: p about 0.034 alone
            "smoothed_ce": np.array([1.0, -1, 0.5, -0.5, 0])}  # nothing
    for seed in range(5):
        rows.append((CLEAN, "softmax_nll", 0.1, seed, "steps_to_target_1", base[seed]))
        for loss, lag in lags.items():
            rows.append((CLEAN, loss, 0.1, seed, "steps_to_target_1", base[seed] + lag[seed]))
    per_seed = pd.DataFrame(rows, columns=[*analysis.RUN, "quantity", "value"])
    diffs = analysis.differences(per_seed).set_index("loss")
    raw = diffs["p_value"]
    assert raw["sigmoid_bce"] < 0.05  # significant alone ...
    assert diffs.loc["sigmoid_bce", "p_holm"] == pytest.approx(min(1, 2 * raw["sigmoid_bce"]))
    assert diffs.loc["sigmoid_bce", "evidence"] == analysis.NOT_ESTABLISHED  # ... but not among three
    assert diffs.loc["mse", "evidence"] == analysis.DIFFERENT and diffs.loc["mse", "family"] == "primary"
    assert diffs.loc["smoothed_ce", "evidence"] == analysis.EQUIVALENT
    text = document.fmt_difference(diffs.loc["sigmoid_bce"].to_dict(), 0, "steps")
    assert "not established with 5 seeds" in text and "Holm" in text
    assert "equivalent with 5 seeds" in document.fmt_difference(diffs.loc["smoothed_ce"].to_dict(), 0)
    assert "seeds" not in document.fmt_difference(diffs.loc["mse"].to_dict(), 0)


def test_the_primary_table_gives_each_comparison_its_holm_p_and_verdict_once(built: Path):
    """Each row of the primary table: the difference with its interval and raw p, then the Holm-adjusted p and the
    verdict in their own columns, computed from the fabricated histories (not repeated in the difference's cell)."""
    inputs = document.load(built / "conditions", built / "probe", [CLEAN, NOISY])
    head = analysis.headline(inputs.history, inputs.targets, saturation=analysis.saturation(inputs.examples))
    primary = head.differences[(head.differences["family"] == "primary") & (head.differences["condition"] == CLEAN)]
    section = (built / "report" / "report.md").read_text().split("### Primary comparisons")[1].split("\n#")[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith(f"| {CLEAN} |")]
    assert len(rows) == len(primary) > 0
    for (_, quantity, loss, diff, p_holm, verdict) in rows:
        d = primary[(primary["quantity"] == quantity) & (primary["loss"] == loss)].iloc[0]
        assert p_holm == answers.fmt_holm(d["p_holm"], int(d["n"])) and "Holm" not in diff
        assert diff.endswith(document.fmt_p(d["p_value"]))
        assert verdict == (d["evidence"] if d["evidence"] == analysis.DIFFERENT
                           else f"{d['evidence']} with {int(d['n'])} seeds")


def test_the_anchors_table_puts_the_studys_number_beside_the_published_one(built: Path):
    history = fabricate_history(CLEAN)
    final = history[(history["split"] == "test") & (history["metric"] == "accuracy") & (history["step"] == TOTAL)
                    & (history["loss"] == "softmax_nll")]["value"].mean()
    md = (built / "report" / "report.md").read_text()
    section = md.split("## Published results side by side")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| Fashion-MNIST MLP test accuracy"))
    assert f"{final:.3f} ({CLEAN}, softmax_nll)" in row
    assert ("| reproduced |" in row) == (0.86 <= final <= 0.91)
    assert "| not measured here |" in section  # the CNN, GCE/MAE and logit_mse rows


def test_verdicts_are_proportional_to_the_evidence():
    s, c, n = claims.SUPPORTS, claims.CONTRADICTS, claims.NO_DIFFERENCE
    assert claims.verdict([s, s, s]) == "holds"
    assert claims.verdict([s, s, n, n]) == "holds with a nuance"
    assert claims.verdict([s, n, n, n, n, n, n, n]) == "not established here"  # 1 of 8 is not "a nuance"
    assert claims.verdict([s, s, c]) == "not established here"  # a contradiction is never "a nuance"
    assert claims.verdict([s, c, c]) == "does not hold here"
    assert claims.verdict_bucket("not established here") in claims.VERDICTS
    with pytest.raises(ValueError, match="unknown verdict 'does not hold'"):  # one vocabulary: no prefix matching
        claims.verdict_bucket("does not hold")


def test_the_measured_claims_quote_the_source_text_verbatim():
    seed = Path(__file__).resolve().parents[2] / "shared" / "seed" / "understanding-cross-entropy.txt"
    if not seed.exists():
        pytest.skip(f"{seed} not present")
    source = re.sub(r"\s+", " ", seed.read_text(encoding="utf-8"))
    for quote in (claims.TWO_BENEFITS, claims.SIGMOID_MULTICLASS, claims.PENALTY_WORKS,
                  claims.NLL_MISCLASSIFICATION, claims.NONE_OF_THE_ABOVE):
        assert quote in source, quote
    head = analysis.headline(fabricate_history(CLEAN), {CLEAN: TARGETS})
    gradient = claims.claim_gradient(pd.DataFrame(columns=[*analysis.RUN, "value"]), None, ())
    assert gradient["claim"].startswith("Not a sentence of the source text")
    assert claims.claim_faster(head)["claim"].startswith(claims.TWO_BENEFITS)


def test_nll_rising_while_accuracy_holds_contradicts_the_misclassification_sentence():
    rows = []
    for seed in range(3):
        for step, nll, acc in [(0, 2.3, 0.1), (10, 0.9, 0.70), (20, 1.4, 0.71), (30, 2.0, 0.70)]:
            rows += [("c", "d", "softmax_nll", 0.1, seed, step / 10, step, "test", "nll", nll),
                     ("c", "d", "softmax_nll", 0.1, seed, step / 10, step, "test", "accuracy", acc)]
    history = pd.DataFrame(rows, columns=tables.HISTORY_COLUMNS)
    claim = claims.claim_nll_misclassification(history)
    assert claim["verdict"] == "does not hold here" and "3/3 seeds" in claim["measured"]
    agree = history.copy()
    agree.loc[(agree["metric"] == "accuracy") & (agree["step"] == 30), "value"] = 0.5  # NLL up, accuracy down
    assert claims.claim_nll_misclassification(agree)["verdict"] == "holds"


# ---------------------------------------------------------------------------------------------------------------
# More losses than the mission's four, and conditions with different loss lists


def test_figures_draw_six_losses_in_registry_order():
    history = fabricate_history(CLEAN, losses=SIX)
    fig = training_figures.plot_convergence(history)
    colours = set(figures.COLOURS.values())
    drawn = [line.get_color() for ax in fig.axes for line in ax.get_lines() if line.get_color() in colours]
    assert list(dict.fromkeys(drawn)) == [figures.colour(loss) for loss in losses.names() if loss in SIX]
    _check(fig, SIX)
    _check(question_figures.plot_headline(history), SIX)
    examples = fabricate_examples(CLEAN, losses=SIX)
    for fig in (confidence_figures.plot_reliability(examples), confidence_figures.plot_logit_grad(examples, None)):
        titles = [ax.get_title().split("\n")[0] for ax in fig.axes if ax.get_visible() and ax.get_title()]
        assert titles == [figures.label(loss) for loss in losses.names() if loss in SIX]  # every loss its panel
        _check(fig, SIX)


def test_claims_pick_their_losses_from_the_registry():
    head = analysis.headline(fabricate_history(CLEAN, losses=SIX), {CLEAN: TARGETS})
    faster = claims.claim_faster(head)["measured"]
    assert "mse" in faster and "sigmoid_bce" in faster and "logit_mse" not in faster and "focal" not in faster
    assert claims.claim_faster(head, others=["focal"])["measured"].count("focal") == 1
    assert analysis.ordered(["focal", "mse", "zzz"]) == ["mse", "focal", "zzz"]


@pytest.fixture(scope="module")
def built_six(tmp_path_factory) -> Path:
    root = fabricate(tmp_path_factory.mktemp("six") / "results", clean_losses=SIX)
    build(root)
    return root


def test_a_condition_with_six_losses_beside_one_with_four(built_six: Path):
    metrics = json.loads((built_six / "metrics.json").read_text())
    assert list(metrics[CLEAN]) == SIX and list(metrics[NOISY]) == LOSSES
    md = (built_six / "report" / "report.md").read_text()
    for loss in ("logit_mse", "focal"):
        assert f"| {loss} |" in md
        assert f"{loss} = {losses.spec(loss).formula}" in md  # the methods paragraph, from the registry
    assert "−(1 − p_y)^γ log p_y, p = softmax(z) with γ = 3" in md
    section = md.split("## Published results side by side")[1].split("\n## ")[0]
    for anchor in ("square loss on logits is competitive", "focal loss lowers the calibration error"):
        row = next(line for line in section.splitlines() if anchor in line)
        assert f"({CLEAN}, Holm p=" in row, row  # measured, since the clean condition trained the loss
    assert (built_six / "report" / "figures" / f"reliability_{CLEAN}.png").exists()
    calibration = _part(md, "### Calibration")  # ECE after scaling for every loss, own-probability ECE where any
    row = next(line for line in calibration.splitlines() if line.startswith("| logit_mse |"))
    assert "not applicable: no probabilities" in row and "0.030" in row  # ece_ts 0.01 + 0.005 * 4
    focal = next(line for line in calibration.splitlines() if line.startswith("| focal |"))
    assert "0.131" in focal  # ece_own 0.03 + 0.02 * 5 + 0.001 * mean seed


def test_the_speed_section_shows_each_rate_choice_beside_the_best_scoring_rate_and_why_it_sits_on_an_edge(
        built: Path, tmp_path: Path):
    """lr.json's best_lrs, peak_lrs, edge, grids and validation_labels reach the speed section: a choice at an edge
    of its grid is never shown without its reason, and noisy validation labels make the training runs' validation
    readings an oracle, said in words."""
    results = _copy(built, tmp_path / "results")
    path = results / "conditions" / CLEAN / tables.LRS
    lr_file = tables.read_json(path)
    grids = {loss: GRID for loss in LOSSES}
    lr_file.update(best_lrs={**LRS, "mse": 0.1}, peak_lrs=dict.fromkeys(LOSSES), grids=grids,
                   edge={**dict.fromkeys(LOSSES), "mse": "the grid reached its extension limit (2 rates)"},
                   validation_labels="noisy")
    lr_file["peak_lrs"]["softmax_nll"] = 0.123
    tables.write_json(lr_file, path)
    build(results)
    md = (results / "report" / "report.md").read_text()
    speed = md.split("## Convergence speed")[1].split("\n## ")[0]
    assert f"mse in {CLEAN} (lr 0.3): the grid reached its extension limit (2 rates)" in speed
    assert "sigmoid_bce in" not in speed.split("Choices at an edge")[1].split("\n")[0]  # edge: null, no reason
    rows = [line for line in _part(md, "#### Learning-rate choices").splitlines() if line.startswith(f"| {CLEAN} |")]
    mse = next(r for r in rows if r.startswith(f"| {CLEAN} | mse |"))
    assert "| 0.3 | 0.1 |" in mse and "extension limit" in mse
    assert "| 0.123 |" in next(r for r in rows if r.startswith(f"| {CLEAN} | softmax_nll |"))
    assert f"{CLEAN} was tuned on noisy validation labels" in speed and "an oracle" in speed
    before = (built / "report" / "report.md").read_text().split("## Convergence speed")[1].split("\n## ")[0]
    assert "an oracle" not in before  # clean validation labels: no such sentence
    assert "mse in cond_a (lr 0.3): the largest rate of the grid; this tuning run did not record why" in before
