"""Each figure of the figure modules (``study.*_figures``), fed a small synthetic long frame whose values are known,
draws those values: the y data of its lines and markers, one hue level per loss in the loss's colour, the legend's
labels. A run of two epochs still gives readable figures: no layout warning, no overlapping tick labels, no legend
cut off."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.colors import same_color, to_hex
from matplotlib.figure import Figure

from study import (
    analysis,
    comparisons,
    confidence_figures,
    figures,
    measures,
    question_figures,
    tables,
    training_figures,
)
from study import losses as registry

LOSSES = ["mse", "sigmoid_bce", "softmax_nll", "smoothed_ce"]
EVERY = list(registry.names())  # every registered loss, as many as a condition may train
INDEX = {loss: i for i, loss in enumerate(EVERY)}
SEEDS = (0, 1, 2)
SHIFT = {0: -0.01, 1: 0.0, 2: 0.01}  # per seed: the mean over seeds is the base value, exactly
STEPS = (0, 5, 10, 15, 20)  # evaluations: two epochs of ten steps
TARGETS = (0.5, 0.7)


def base(loss: str, step: int) -> float:
    """Validation accuracy of ``loss`` at ``step`` (mean over seeds): each loss its own straight line."""
    return 0.2 + (0.2 + 0.05 * INDEX[loss]) * step / 20


def history(condition: str = "cond_a", losses=LOSSES, *, collapse: str | None = None,
            noise: bool = False, heldout: bool = False, confident: bool = False) -> pd.DataFrame:
    """A two-epoch history: accuracy ``base + SHIFT[seed]``, training loss ``1 / (1 + step) * (i + 1)``, other
    metrics constant per loss. ``collapse``: that loss ends at accuracy 0.1 after reaching 0.6. ``confident``: the
    confident-wrong shares of ``confident_values``."""
    rows = []
    for loss, seed in itertools.product(losses, SEEDS):
        i = INDEX[loss]

        def add(step, split, metric, value, loss=loss, seed=seed):
            rows.append((condition, "synthetic", loss, 0.1, seed, step / 10, step, split, metric, float(value)))

        for step in range(0, 21, 2):
            add(step, "train", "loss", (i + 1) / (1 + step) * (1 + SHIFT[seed]))
            add(step, "train", "grad_norm", (i + 1) * (1 + SHIFT[seed]))
            add(step, "train", "logit_grad_norm", (i + 1) / 2)
        for step in STEPS:
            acc = base(loss, step) + SHIFT[seed]
            if loss == collapse:
                acc = 0.6 if step < 20 else 0.1 + SHIFT[seed]
            for split in ("val", "test"):
                add(step, split, "accuracy", acc)
                add(step, split, "nll", 0.5 + 0.1 * i + SHIFT[seed])
                add(step, split, "ece", 0.05 * (i + 1) + SHIFT[seed])
            add(step, "test", "logit_grad_median", 0.1 * (i + 1))
            add(step, "test", "logit_grad_q25", 0.05 * (i + 1))
            add(step, "test", "logit_grad_q75", 0.2 * (i + 1))
            if noise:
                add(step, "train_flipped", "memorised", 0.05 * i * step / 20 + 0.1 + SHIFT[seed])
                add(step, "train_flipped", "recovered", 0.5 - 0.05 * i * step / 20 + SHIFT[seed])
            if heldout:
                for split, metric, value in heldout_values(i):
                    add(step, split, metric, value + SHIFT[seed])
            if confident and step > 0:
                add(step, "train_subset", "confident_wrong_before", 10)
                for split, metric, value in confident_values(i, condition):
                    add(step, split, metric, value + SHIFT[seed])
    return pd.DataFrame(rows, columns=tables.HISTORY_COLUMNS)


def confident_values(i: int, condition: str) -> list[tuple[str, str, float]]:
    """(split, metric, mean over seeds, the same at every evaluation) of the confident-wrong shares of loss number
    ``i``; each condition its own values."""
    c = 0.01 * (sum(map(ord, condition)) % 7)
    return [("train_subset", "confident_wrong_corrected", 0.1 + 0.08 * i + c),
            ("test", "confident_wrong_loss_share", 0.6 - 0.05 * i - c)]


def heldout_values(i: int) -> list[tuple[str, str, float]]:
    """(split, metric, mean over seeds) of the held-out-class measurements of loss number ``i``."""
    return [("heldout", "auroc_max_softmax", 0.7 + 0.02 * i), ("heldout", "auroc_max_sigmoid", 0.8 - 0.03 * i),
            ("heldout", "none_share", 0.3 + 0.05 * i), ("test", "none_share", 0.1 + 0.05 * i)]


def wrong_p_true(index: np.ndarray) -> np.ndarray:
    """0.45 down to 4.5e-9 (below figures.FLOOR) by decades: the span of a real run's mistakes."""
    return 0.45 * 10.0 ** -(index % 9)


def examples(condition: str = "cond_a", losses=LOSSES, n: int = 40) -> pd.DataFrame:
    """Last test and probe evaluation: for loss i, example j has p_true ``wrong_p_true(j)`` on the wrong ones (the
    first ``(i + 1) * 4``), 0.9 on the rest; confidence 0.95 when right, 0.6 when wrong."""
    parts = []
    for loss, seed in itertools.product(losses, SEEDS):
        i = INDEX[loss]
        index = np.arange(n)
        wrong = index < (i + 1) * 4
        label = index % 10
        for split in ("test", "probe"):
            parts.append(pd.DataFrame({
                "condition": condition, "dataset": "synthetic", "loss": loss, "lr": 0.1, "seed": seed,
                "epoch": 2.0, "step": 20, "split": split, "index": index, "label": label,
                "predicted": np.where(wrong, (label + 1) % 10, label),
                "p_true": np.where(wrong, wrong_p_true(index), 0.9), "confidence": np.where(wrong, 0.6, 0.95),
                "loss_value": 1.0, "logit_grad_norm": np.where(wrong, 1.0, 0.1),
            }))
    return pd.concat(parts, ignore_index=True)[tables.EXAMPLE_COLUMNS]


def tune(condition: str = "cond_a", losses=LOSSES) -> pd.DataFrame:
    """Tuning runs on a grid of three rates, two seeds: final accuracy ``0.5 + 0.05 * i - |log10(lr / 0.1)| / 10``."""
    rows = []
    for loss, lr, seed in itertools.product(losses, (0.01, 0.1, 1.0), (100, 101)):
        final = 0.5 + 0.05 * INDEX[loss] - abs(np.log10(lr / 0.1)) / 10 + (seed - 100.5) * 0.02
        for step in (0, 10, 20):
            rows.append((condition, "synthetic", loss, lr, seed, step / 10, step, "val", "accuracy",
                         0.1 + (final - 0.1) * step / 20))
    return pd.DataFrame(rows, columns=tables.HISTORY_COLUMNS)


VERDICTS = (analysis.DIFFERENT, analysis.NOT_ESTABLISHED, analysis.EQUIVALENT, analysis.IDENTICAL)
ESTABLISHED = {analysis.DIFFERENT, analysis.EQUIVALENT, analysis.IDENTICAL}  # drawn filled; NOT_ESTABLISHED hollow


def ratios(losses=LOSSES, conditions=("cond_a", "cond_b")) -> pd.DataFrame:
    """Paired speed ratios against the reference: loss i, condition j has ratio ``0.5 * 1.5 ** (i + j)``, its
    interval a factor 1.2 either side, the verdicts in turn; the reference's own rows are left out."""
    rows = []
    for j, condition in enumerate(conditions):
        for i, loss in enumerate(loss for loss in losses if loss != analysis.REFERENCE):
            ratio = 0.5 * 1.5 ** (i + j)
            rows.append((condition, loss, ratio, ratio / 1.2, ratio * 1.2, 5, VERDICTS[(i + j) % len(VERDICTS)]))
    return pd.DataFrame(rows, columns=["condition", "loss", "ratio", "ci_low", "ci_high", "n", "verdict"])


def penalty(losses=LOSSES, k: int = 10) -> pd.DataFrame:
    margins = np.linspace(0, 10, 11)
    p_true = 1 / (k - 1 + np.exp(margins))
    return pd.concat([pd.DataFrame({"loss": loss, "margin": margins, "p_true": p_true,
                                    "loss_value": (INDEX[loss] + 1) * margins,
                                    "logit_grad_norm": np.full(len(margins), INDEX[loss] + 1.0),
                                    "grad_true": -1.0}) for loss in losses], ignore_index=True)


# ---------------------------------------------------------------------------------------------------------------
# Reading what a figure drew


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def legend_labels(fig: Figure) -> list[str]:
    assert len(fig.legends) == 1
    return [t.get_text() for t in fig.legends[0].get_texts()]


def legend_losses(fig: Figure) -> dict[str, str]:
    """The legend's loss entries: label -> colour of its handle."""
    legend = fig.legends[0]
    return {text.get_text(): to_hex(handle.get_color()) for text, handle in zip(legend.get_texts(),
                                                                                legend.legend_handles, strict=True)
            if text.get_text() in figures.LABELS.values()}


def assert_legend(fig: Figure, losses=LOSSES) -> None:
    """One legend entry per loss, with the registry's label and colour."""
    assert legend_losses(fig) == {figures.label(loss): to_hex(figures.colour(loss)) for loss in losses}


def pick(frame: pd.DataFrame, **equal) -> pd.DataFrame:
    """Rows where every named column equals its value."""
    mask = np.ones(len(frame), dtype=bool)
    for column, value in equal.items():
        mask &= (frame[column] == value).to_numpy()
    return frame[mask]


def lines_of(ax, loss: str, *, marker: str | None = None) -> list:
    """The axes' lines in the loss's colour (with ``marker``, only those drawing it)."""
    return [line for line in ax.get_lines() if same_color(line.get_color(), figures.colour(loss))
            and (marker is None or line.get_marker() == marker)]


def one_line(ax, loss: str, **kwargs):
    lines = lines_of(ax, loss, **kwargs)
    assert len(lines) == 1, f"{loss}: {len(lines)} lines"
    return lines[0]


def bands(ax) -> dict[str, PolyCollection]:
    """fill_between bands by colour (hex)."""
    return {to_hex(c.get_facecolor()[0], keep_alpha=False): c for c in ax.collections
            if isinstance(c, PolyCollection)}


def means(frame: pd.DataFrame, by: list[str]) -> pd.Series:
    return frame.groupby(by)["value"].mean()


# ---------------------------------------------------------------------------------------------------------------
# One figure at a time


def test_headline_draws_each_losss_mean_and_t_interval_per_condition():
    frame = pd.concat([history("cond_a"), history("cond_b", LOSSES[:3])], ignore_index=True)
    fig = question_figures.plot_headline(frame)
    assert_legend(fig)
    for ax, (split, metric) in zip(fig.axes[:3], (("test", "accuracy"), ("test", "nll"), ("test", "ece")),
                                   strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["cond\na", "cond\nb"]
        last = measures.select(frame, split, metric)
        last = last[last["step"] == 20]
        for loss in LOSSES:
            line = one_line(ax, loss, marker="o")
            want = [pick(last, condition=c, loss=loss)["value"].mean() for c in ("cond_a", "cond_b")]
            np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12)  # NaN where the condition lacks it
            est = analysis.mean_ci(pick(last, condition="cond_a", loss=loss)["value"])
            bar = [line for line in lines_of(ax, loss) if line.get_marker() == "None"][0]
            assert np.nanmin(bar.get_ydata()) == pytest.approx(est.ci_low)
            assert np.nanmax(bar.get_ydata()) == pytest.approx(est.ci_high)
        xs = [float(one_line(ax, loss, marker="o").get_xdata()[0]) for loss in LOSSES]
        assert xs == sorted(xs) and len(set(xs)) == len(LOSSES)  # dodged, in registry order
        assert -0.4 < xs[0] and xs[-1] < 0.4
    assert fig.axes[1].get_yscale() == "log"


def test_convergence_draws_the_mean_over_seeds_with_its_t_band():
    frame = history()
    fig = training_figures.plot_convergence(frame, TARGETS)
    accuracy, train_loss = fig.axes[:2]
    assert_legend(fig)
    val = measures.select(frame, "val", "accuracy")
    for loss in LOSSES:
        line = one_line(accuracy, loss)
        xy = line.get_xydata()
        np.testing.assert_array_equal(xy[:, 0], [5, 10, 15, 20])  # step 0 left off the log axis
        np.testing.assert_allclose(xy[:, 1], [base(loss, s) for s in (5, 10, 15, 20)], atol=1e-12)
        band = bands(accuracy)[to_hex(figures.colour(loss))]
        ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
        est = analysis.mean_ci(pick(val, loss=loss, step=20)["value"])
        assert ys.max() == pytest.approx(max(analysis.mean_ci(pick(val, loss=loss, step=s)["value"])
                                             .ci_high for s in (5, 10, 15, 20)))
        assert np.isclose(ys, est.ci_low).any()
        curve = one_line(train_loss, loss).get_xydata()
        want = means(pick(measures.select(frame, "train", "loss"), loss=loss), ["step"])
        np.testing.assert_allclose(curve[:, 1], want.to_numpy(), rtol=1e-12)
    assert train_loss.get_yscale() == "log"


def test_convergence_keeps_a_collapsed_losss_final_value_on_the_chart():
    """One loss reaches 0.6 and collapses to 0.1 at the end while the others end at 0.9: the zoom onto the
    targets must still show where every loss ends."""
    frame = history(collapse="sigmoid_bce")
    others = frame["metric"].eq("accuracy") & frame["loss"].ne("sigmoid_bce") & frame["step"].eq(20)
    frame.loc[others, "value"] = 0.9 + frame.loc[others, "seed"].map(SHIFT)
    fig = training_figures.plot_convergence(frame, (0.85, 0.88))
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    for loss in LOSSES:
        final = one_line(ax, loss).get_ydata()[-1]
        assert low < final < high, (loss, final, (low, high))
    assert one_line(ax, "sigmoid_bce").get_ydata()[-1] == pytest.approx(0.1)
    assert one_line(ax, "mse").get_ydata()[-1] == pytest.approx(0.9)


def test_convergence_keeps_a_collapse_it_recovers_from_on_the_chart():
    """mse climbs to 0.6, collapses to 0.15 at step 10 and recovers to 0.9: the zoom onto the targets may leave
    out the first climb, not the collapse."""
    frame = history()
    accuracy = frame["metric"].eq("accuracy")
    frame.loc[accuracy & frame["step"].eq(20), "value"] = 0.9 + frame.loc[accuracy & frame["step"].eq(20), "seed"].map(
        SHIFT)
    for step, value in ((5, 0.6), (10, 0.15), (15, 0.7)):
        rows = accuracy & frame["loss"].eq("mse") & frame["step"].eq(step)
        frame.loc[rows, "value"] = value + frame.loc[rows, "seed"].map(SHIFT)
    fig = training_figures.plot_convergence(frame, (0.85, 0.88))
    low, high = fig.axes[0].get_ylim()
    mse = one_line(fig.axes[0], "mse").get_ydata()
    np.testing.assert_allclose(mse, [0.6, 0.15, 0.7, 0.9], atol=1e-12)
    assert low < 0.15 and high > 0.9
    assert low > 0.0  # still zoomed: the other losses' early values (0.2 to 0.3) may fall below it


def test_steps_to_target_draws_each_seeds_crossing_and_the_median():
    frame = history()
    targets = (0.35, 0.5)  # mse reaches the first late and never the second
    fig = training_figures.plot_steps_to_target(frame, {"cond_a": targets})
    ax = fig.axes[0]
    assert_legend(fig)
    tables_ = [analysis.steps_to_target(frame, target) for target in targets]
    for loss in LOSSES:
        rows = pd.concat([pick(table, loss=loss) for table in tables_])
        drawn = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
        reached = [c for c in drawn
                   if len(c.get_facecolor()) and same_color(c.get_facecolor()[0], figures.colour(loss))]
        never = [c for c in drawn if not len(c.get_facecolor()) or not c.get_facecolor()[0][3]]
        never = [c for c in never if same_color(c.get_edgecolor()[0], figures.colour(loss))]
        steps = np.sort(np.concatenate([np.asarray(c.get_offsets())[:, 1] for c in reached]))
        np.testing.assert_allclose(steps, np.sort(rows.loc[rows["reached"], "step"].to_numpy(dtype=float)))
        assert sum(len(c.get_offsets()) for c in never) == (~rows["reached"]).sum()
        medians = [c for c in ax.collections if not isinstance(c, PathCollection)
                   and same_color(c.get_color()[0], figures.colour(loss))]
        drawn_medians = sorted(float(seg[0, 1]) for c in medians for seg in c.get_segments())
        want = sorted(analysis.censored_median(pick(table, loss=loss)["step"]) for table in tables_)
        np.testing.assert_allclose(drawn_medians, [m for m in want if np.isfinite(m)])


def test_time_to_target_ends_at_the_share_of_seeds_that_reached_it():
    frame = history()
    fig = training_figures.plot_time_to_target(frame, {"cond_a": (0.5,)})
    ax = fig.axes[0]
    table = analysis.steps_to_target(frame, 0.5)
    for loss in LOSSES:
        share = table.loc[table["loss"] == loss, "reached"].mean()
        assert one_line(ax, loss).get_ydata()[-1] == pytest.approx(share)
    assert_legend(fig)


def test_tuning_draws_the_mean_final_accuracy_per_rate_and_the_chosen_rate():
    frame = tune()
    chosen = {"cond_a": dict.fromkeys(LOSSES, 0.1)}
    fig = training_figures.plot_tuning(frame, chosen, {"cond_a": (0.3,)})
    ax = fig.axes[0]
    for loss in LOSSES:
        line = one_line(ax, loss)
        want = [0.5 + 0.05 * INDEX[loss] - d for d in (0.1, 0.0, 0.1)]
        np.testing.assert_allclose(line.get_ydata(), want, atol=1e-12)
        np.testing.assert_allclose(line.get_xdata(), [0.01, 0.1, 1.0])
    assert_legend(fig)


def test_lr_views_draws_each_loss_at_its_own_rate():
    frame = tune()
    fig = training_figures.plot_lr_views(frame, {"cond_a": {**dict.fromkeys(LOSSES, 0.1), "mse": 1.0}})
    ax = fig.axes[0]
    for loss in LOSSES:
        lr = 1.0 if loss == "mse" else 0.1
        solid = [line for line in lines_of(ax, loss) if line.get_linestyle() == "-"]
        want = means(pick(frame, loss=loss, lr=lr), ["step"]).to_numpy()
        np.testing.assert_allclose(solid[0].get_ydata(), want, atol=1e-12)
    assert len([line for line in lines_of(ax, "mse") if line.get_linestyle() == "--"]) == 1  # mse at 0.1, shared
    assert_legend(fig)


def test_grad_norms_draw_the_median_over_seeds():
    frame = history()
    fig = training_figures.plot_grad_norms(frame)
    for loss in LOSSES:
        line = one_line(fig.axes[0], loss)
        want = pick(measures.select(frame, "train", "grad_norm"), loss=loss).groupby("step")["value"].median()
        np.testing.assert_allclose(line.get_ydata(), want.to_numpy(), rtol=1e-12)
        np.testing.assert_allclose(one_line(fig.axes[-1], loss).get_ydata(), 0.1 * (INDEX[loss] + 1))
    assert_legend(fig)


def test_logit_grad_gives_each_loss_its_panel_and_points():
    frame = examples()
    fig = confidence_figures.plot_logit_grad(frame, penalty())
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == [figures.label(loss) for loss in LOSSES]
    for ax, loss in zip(panels, LOSSES, strict=True):
        assert same_color(ax.title.get_color(), figures.colour(loss))
        scattered = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
        assert scattered == len(SEEDS) * 40  # every probe example of every seed
        closed = [line for line in ax.get_lines() if line.get_linestyle() == "--"][0]
        np.testing.assert_allclose(closed.get_ydata(), INDEX[loss] + 1.0)


def test_penalty_draws_the_closed_form_on_log_axes():
    """Every loss visible: log y on both panels (on a linear axis logit_mse's parabola, up to 145, flattened the
    others), zero drawn at the floor."""
    table = penalty()
    fig = confidence_figures.plot_penalty(table)
    for loss in LOSSES:
        line = one_line(fig.axes[0], loss)
        rows = table.loc[table["loss"] == loss]
        np.testing.assert_allclose(line.get_xdata(), rows["margin"])
        np.testing.assert_allclose(line.get_ydata(), np.clip(rows["loss_value"], figures.FLOOR, None))
    assert [ax.get_yscale() for ax in fig.axes[:2]] == ["log", "log"]
    assert_legend(fig)


def test_wrong_confidence_draws_the_ecdf_of_the_wrong_examples():
    frame = pd.concat([examples("cond_a"), examples("cond_b", LOSSES[:2])], ignore_index=True)
    fig = confidence_figures.plot_wrong_confidence(frame)
    for ax, present in zip(fig.axes[:2], (LOSSES, LOSSES[:2]), strict=True):
        assert len(ax.get_lines()) == len(present) + 1  # an ECDF per loss and the dotted threshold
        for loss in present:
            xy = one_line(ax, loss).get_xydata()
            wrong = np.clip(wrong_p_true(np.arange((INDEX[loss] + 1) * 4)), figures.FLOOR, 1)
            assert xy[-1, 1] == pytest.approx(1.0)
            np.testing.assert_allclose(np.unique(xy[xy[:, 0] > 0, 0]), np.unique(wrong), rtol=1e-6)  # starts at 0
    assert_legend(fig)


def test_reliability_draws_the_accuracy_of_each_bin():
    fig = confidence_figures.plot_reliability(examples("cond_a"), bins=10)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    for ax, loss in zip(panels, LOSSES, strict=True):
        heights = {round(p.get_x(), 6): p.get_height() for p in ax.patches}
        assert heights == {0.5: 0.0, 0.9: 1.0}  # wrong ones at confidence 0.6, right ones at 0.95
        assert all(same_color(p.get_facecolor()[:3], figures.colour(loss)) for p in ax.patches)
        wrong = (INDEX[loss] + 1) * 4  # of 40: |0 - 0.6| in the lower bin, |1 - 0.95| in the upper one
        assert f"ECE (pooled) = {(0.6 * wrong + 0.05 * (40 - wrong)) / 40:.3f}" in ax.get_title()
    assert_legend(fig)


def test_label_noise_draws_selected_and_final_accuracy_and_the_flipped_shares():
    frame = history(noise=True)
    fig = confidence_figures.plot_label_noise(frame)
    points, memorised, recovered = fig.axes[:3]
    per_seed = comparisons.label_noise(frame)
    assert [t.get_text() for t in points.get_xticklabels()] == [loss.replace("_", "\n") for loss in LOSSES]
    for j, loss in enumerate(LOSSES):
        filled, hollow = one_line(points, loss, marker="o"), one_line(points, loss, marker="s")
        for line, quantity in ((filled, "selected_accuracy"), (hollow, "final_accuracy")):
            want = pick(per_seed, loss=loss, quantity=quantity)["value"].mean()
            np.testing.assert_allclose(line.get_ydata(), [want], rtol=1e-12)
        assert filled.get_xdata()[0] < j < hollow.get_xdata()[0]  # dodged around the loss's category
        assert same_color(filled.get_markerfacecolor(), figures.colour(loss))
        assert same_color(hollow.get_markerfacecolor(), "white")
        for ax, metric in ((memorised, "memorised"), (recovered, "recovered")):
            want = means(pick(measures.select(frame, "train_flipped", metric), loss=loss), ["step"])
            np.testing.assert_allclose(one_line(ax, loss).get_ydata(), want.to_numpy(), atol=1e-12)
    assert_legend(fig)
    assert {"at the best validation accuracy", "final"} <= set(legend_labels(fig))


def test_heldout_draws_the_mean_and_every_seed_with_the_losss_own_score_filled():
    frame = history(heldout=True)
    fig = confidence_figures.plot_heldout(frame)
    per_seed = comparisons.heldout_per_seed(frame)
    for ax, panel in zip(fig.axes[:2], confidence_figures.HELDOUT_PANELS, strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == LOSSES
        for loss in LOSSES:
            for quantity, marker in panel.items():
                line = one_line(ax, loss, marker=marker)
                values = pick(per_seed, loss=loss, quantity=quantity)["value"]
                np.testing.assert_allclose(line.get_ydata(), [values.mean()], rtol=1e-12)
                dots = [c for c in ax.collections if len(c.get_offsets())
                        and np.allclose(np.asarray(c.get_offsets())[:, 0], line.get_xdata()[0])]
                np.testing.assert_allclose(np.sort(np.asarray(dots[0].get_offsets())[:, 1]), np.sort(values))
        assert len(ax.get_lines()) >= 2 * len(LOSSES)
    left = fig.axes[0]
    assert same_color(one_line(left, "sigmoid_bce", marker="s").get_markerfacecolor(), figures.colour("sigmoid_bce"))
    assert same_color(one_line(left, "sigmoid_bce", marker="o").get_markerfacecolor(), "white")
    assert same_color(one_line(left, "mse", marker="o").get_markerfacecolor(), figures.colour("mse"))
    assert_legend(fig)


# ---------------------------------------------------------------------------------------------------------------
# The answers' figures, across conditions


def collections_of(ax, loss: str, kind) -> list:
    """The axes' collections of ``kind`` drawn in the loss's colour (edge colour: hollow markers have no face)."""
    return [c for c in ax.collections if isinstance(c, kind) and len(c.get_edgecolor())
            and same_color(c.get_edgecolor()[0][:3], figures.colour(loss))]


def test_speed_forest_draws_each_ratio_and_interval_on_a_log_axis_through_1():
    table = ratios()
    fig = question_figures.plot_speed_forest(table)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    low, high = ax.get_xlim()
    assert low < 1 < high
    assert any(np.allclose(line.get_xdata(), 1.0) for line in ax.get_lines())  # the vertical line at 1
    assert {t.get_text() for t in ax.get_xticklabels()} >= {"0.5", "1", "2"}  # plain numbers, not 10^0
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert figures.label(analysis.REFERENCE) not in labels
    others = [loss for loss in LOSSES if loss != analysis.REFERENCE]
    for loss in others:
        rows = table[table["loss"] == loss]
        head = labels.index(figures.label(loss))  # the loss's header row, its conditions below it
        assert same_color(ax.get_yticklabels()[head].get_color(), figures.colour(loss))
        assert labels[head + 1:head + 3] == [f"{c}  (n=5)" for c in rows["condition"]]
        points, = collections_of(ax, loss, PathCollection)  # one artist per loss
        np.testing.assert_allclose(points.get_offsets(), np.c_[rows["ratio"], [head + 1, head + 2]])
        filled = [not same_color(face, "white") for face in points.get_facecolor()]
        assert filled == [v in ESTABLISHED for v in rows["verdict"]]  # an equivalence is established: filled
        bars, = [c for c in ax.collections if isinstance(c, LineCollection)
                 and same_color(c.get_color()[0], figures.colour(loss))]
        np.testing.assert_allclose([seg[:, 0] for seg in bars.get_segments()], rows[["ci_low", "ci_high"]])
    assert_legend(fig, others)
    assert set(VERDICTS) <= set(legend_labels(fig))
    faces = {h.get_label(): h.get_markerfacecolor() for h in fig.legends[0].legend_handles if h.get_label() in VERDICTS}
    assert {v for v, face in faces.items() if not same_color(face, "white")} == ESTABLISHED


def test_gradient_answer_draws_the_median_of_wrong_examples_per_decade_and_the_closed_form():
    frame = pd.concat([examples("cond_a"), examples("cond_b")], ignore_index=True)  # pooled over conditions
    fig = question_figures.plot_gradient_answer(frame, penalty())
    ax = fig.axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    for loss in LOSSES:
        points, = collections_of(ax, loss, PathCollection)
        xy = np.asarray(points.get_offsets())
        np.testing.assert_allclose(xy[:, 1], 1.0)  # every wrong example's gradient norm
        decades = np.unique(np.floor(np.log10(np.clip(wrong_p_true(np.arange((INDEX[loss] + 1) * 4)), 1e-8, 1))))
        np.testing.assert_array_equal(np.sort(np.floor(np.log10(xy[:, 0]))), decades)  # dodged inside its decade
        closed = one_line(ax, loss)
        assert closed.get_linestyle() == "--"
        np.testing.assert_allclose(closed.get_ydata(), INDEX[loss] + 1.0)
    assert_legend(fig)


def test_gradient_answer_leaves_out_thin_bins():
    frame = examples("cond_a", ["mse"])  # four wrong examples in four decades, three seeds: three per bin
    for min_count, drawn in ((3, 4), (4, 0)):
        fig = question_figures.plot_gradient_answer(frame, None, min_count=min_count)
        assert sum(len(c.get_offsets()) for c in collections_of(fig.axes[0], "mse", PathCollection)) == drawn


def test_penalty_answer_draws_each_conditions_mean_share_per_loss():
    noisy = history("cond_noise", noise=True, confident=True)
    frame = pd.concat([history("cond_a", confident=True), noisy], ignore_index=True)
    fig = question_figures.plot_penalty_answer(frame)
    corrected, memorised, carried = fig.axes[:3]
    assert [t.get_text() for t in corrected.get_yticklabels()] == LOSSES
    for loss in LOSSES:
        i = INDEX[loss]
        want = {c: dict(((s, m), v) for s, m, v in confident_values(i, c)) for c in ("cond_a", "cond_noise")}
        for ax, key in ((corrected, ("train_subset", "confident_wrong_corrected")),
                        (carried, ("test", "confident_wrong_loss_share"))):
            points, = collections_of(ax, loss, PathCollection)  # one artist per loss
            assert all(same_color(face[:3], figures.colour(loss)) for face in points.get_facecolor())
            np.testing.assert_allclose(np.asarray(points.get_offsets())[:, 0], [want["cond_a"][key],
                                                                                want["cond_noise"][key]])
        points, = collections_of(memorised, loss, PathCollection)  # the noise condition only, last evaluation
        np.testing.assert_allclose(np.asarray(points.get_offsets())[:, 0], [0.05 * i + 0.1])
    assert_legend(fig)
    assert {"cond_a", "cond_noise"} <= set(legend_labels(fig))


# ---------------------------------------------------------------------------------------------------------------
# A run of two epochs gives readable figures


CONDITIONS = ("fashion_sgd", "fashion_adam", "fashion_noise40", "mnist1d_sgd", "fashion_heldout", "mnist1d_cnn")


FIGURE_MODULES = (question_figures, training_figures, confidence_figures)
PLOTS = sorted(name for module in FIGURE_MODULES for name in dir(module) if name.startswith("plot_"))  # every figure


def figure_builders(losses=LOSSES) -> dict[str, Callable[[], Figure]]:
    """Every figure function of the report, by name, drawing from two-epoch frames of the study's six conditions
    (each condition tuned, as a study where every condition tunes its own rates)."""
    frame = pd.concat([history(c, losses, noise="noise" in c, heldout="heldout" in c, confident=True)
                       for c in CONDITIONS], ignore_index=True)
    ex = pd.concat([examples(c, losses) for c in CONDITIONS], ignore_index=True)
    targets = dict.fromkeys(CONDITIONS, TARGETS)
    one = frame[frame["condition"] == "mnist1d_sgd"]
    tuned = pd.concat([tune(c, losses) for c in CONDITIONS], ignore_index=True)
    chosen = {c: dict.fromkeys(losses, 0.1) for c in CONDITIONS}
    return {
        "plot_headline": lambda: question_figures.plot_headline(frame),
        "plot_speed_forest": lambda: question_figures.plot_speed_forest(ratios(losses, CONDITIONS)),
        "plot_gradient_answer": lambda: question_figures.plot_gradient_answer(ex, penalty(losses)),
        "plot_penalty_answer": lambda: question_figures.plot_penalty_answer(frame),
        "plot_tuning": lambda: training_figures.plot_tuning(tuned, chosen, targets),
        "plot_lr_views": lambda: training_figures.plot_lr_views(tuned, chosen),
        "plot_steps_to_target": lambda: training_figures.plot_steps_to_target(frame, targets),
        "plot_time_to_target": lambda: training_figures.plot_time_to_target(frame, targets),
        "plot_convergence": lambda: training_figures.plot_convergence(one, TARGETS),
        "plot_grad_norms": lambda: training_figures.plot_grad_norms(one),
        "plot_logit_grad": lambda: confidence_figures.plot_logit_grad(ex[ex["condition"] == "mnist1d_sgd"],
                                                                      penalty(losses)),
        "plot_penalty": lambda: confidence_figures.plot_penalty(penalty(losses)),
        "plot_wrong_confidence": lambda: confidence_figures.plot_wrong_confidence(ex),
        "plot_reliability": lambda: confidence_figures.plot_reliability(ex[ex["condition"] == "mnist1d_sgd"]),
        "plot_label_noise": lambda: confidence_figures.plot_label_noise(frame[frame["condition"] == "fashion_noise40"]),
        "plot_heldout": lambda: confidence_figures.plot_heldout(frame[frame["condition"] == "fashion_heldout"]),
        "plot_features": lambda: question_figures.plot_features(feature_seeds(losses)),
    }


def feature_seeds(losses) -> pd.DataFrame:
    """Per model of every condition a class separation, and in the held-out condition a transfer accuracy."""
    rows = []
    for c, (i, loss), seed in itertools.product(CONDITIONS, enumerate(losses), range(3)):
        separation = 0.3 + 0.05 * i + 0.01 * seed
        rows.append({"condition": c, "loss": loss, "lr": 0.1, "seed": seed, "quantity": comparisons.SEPARATION,
                     "value": separation})
        if "heldout" in c:
            rows.append({"condition": c, "loss": loss, "lr": 0.1, "seed": seed, "quantity": comparisons.TRANSFER,
                         "value": 0.95 - separation / 10})
    return pd.DataFrame(rows)


def every_figure(losses=LOSSES) -> dict[str, Figure]:
    """Every figure of the report from two-epoch frames of the study's six conditions."""
    return {name: build() for name, build in figure_builders(losses).items()}


def drawn_ticklabels(axis) -> list:
    """The tick labels the last draw showed: ticks inside the view, visible, not empty."""
    low, high = sorted(axis.get_view_interval())
    ticks = [*axis.get_major_ticks(), *axis.get_minor_ticks()]
    return [tick.label1 for tick in ticks if tick.get_loc() is not None and low <= tick.get_loc() <= high
            and tick.label1.get_visible() and tick.label1.get_text()]


def overlaps(labels, gap: float = 4.0) -> list[tuple[str, str]]:
    """Pairs of labels closer than ``gap`` pixels (touching labels read as one: '1e-081e-07')."""
    boxes = [(t.get_text(), t.get_window_extent().padded(gap / 2)) for t in labels]
    return [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]


@pytest.mark.parametrize("losses", [LOSSES, ["mse", "softmax_nll"], EVERY],
                         ids=["four losses", "two losses", "every registered loss"])
def test_a_two_epoch_run_gives_readable_figures(losses):
    """Every figure, drawn as it is saved, without a warning (constrained layout's included), with tick labels
    that do not overlap on either axis of any panel and a legend inside the figure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures = every_figure(losses)
        for name, fig in figures.items():
            try:
                fig.canvas.draw()
            except UserWarning as warning:
                pytest.fail(f"{name}: {warning}")
            frame = fig.bbox
            for ax in fig.axes:
                if not ax.get_visible():
                    continue
                for axis in (ax.xaxis, ax.yaxis):
                    clash = overlaps(drawn_ticklabels(axis))
                    assert not clash, f"{name}: overlapping tick labels {clash}"
            legend = fig.legends[0].get_window_extent()
            assert frame.x0 <= legend.x0 and legend.x1 <= frame.x1 and frame.y0 <= legend.y0, f"{name}: legend cut"


def test_every_figure_function_is_drawn_by_these_tests():
    """A new plot_* function must join ``figure_builders`` (and so the readability tests below)."""
    assert sorted(figure_builders()) == PLOTS


@pytest.mark.parametrize("name", PLOTS)
def test_no_text_is_smaller_than_8_px_where_the_page_shows_the_figure(name):
    """Every text of every figure, at the width the HTML page shows it (at most DISPLAY_WIDTH CSS px), is at least
    8 px tall: a figure wider than the page is scaled down, and its text with it. Drawn with every registered loss
    and six conditions, the widest the study makes them."""
    build = figure_builders(EVERY).get(name)
    if build is None:
        pytest.fail(f"{name}: add it to figure_builders")
    fig = build()
    assert figures.min_text_px(fig) >= 8, (name, fig.get_figwidth(), figures.min_text_px(fig))


def test_min_text_px_is_the_smallest_visible_text_scaled_to_the_page():
    fig, ax = plt.subplots(figsize=(20, 4))  # 2,000 px at figures.DPI: shown at half size
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("title", fontsize=20)
    ax.text(0.5, 0.5, "small", fontsize=10)
    ax.text(0.5, 0.2, "", fontsize=2)  # empty: not text a reader sees
    ax.text(0.5, 0.1, "hidden", fontsize=3, visible=False)
    assert figures.min_text_px(fig) == pytest.approx(10 * figures.DPI / 72 * figures.DISPLAY_WIDTH / 2000)
    assert figures.min_text_px(fig, display_width=4000) == pytest.approx(10 * figures.DPI / 72)
    hidden = fig.add_axes((0, 0, 0.1, 0.1))
    hidden.set_title("tiny", fontsize=1)
    hidden.set_visible(False)  # an invisible axes hides its texts
    assert figures.min_text_px(fig) == pytest.approx(10 * figures.DPI / 72 * figures.DISPLAY_WIDTH / 2000)
