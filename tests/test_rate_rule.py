"""The learning-rate rule (runner.choose_lrs): the peak of a quadratic fitted to the mean tuning scores over
log2(lr), snapped to a stable grid rate; the best-scoring rate where the fit has no maximum. Histories whose right
answer is known."""

from __future__ import annotations

import math

import pytest

from study import runner, tables
from study.records import Record

GRID = [0.01, 0.02, 0.04, 0.08, 0.16]


def history(values: dict[tuple[str, float, int], float], diverged=()):
    """One validation-accuracy reading per (loss, lr, seed) at the last step (the tuning window), a chance
    reading at step 0; ``diverged``: (loss, lr, seed) that diverged at step 50."""
    records = []
    for (loss, lr, seed), value in values.items():
        records += [Record(loss, lr, seed, 0.0, 0, "val", "accuracy", 0.1),
                    Record(loss, lr, seed, 1.0, 100, "val", "accuracy", value)]
    records += [Record(loss, lr, seed, 0.5, 50, "train", "diverged_step", 50.0) for loss, lr, seed in diverged]
    return tables.history_frame(records, condition="c", dataset="d")


def curve(loss: str, means: dict[float, float], spread: float = 0.0, seeds=(0, 1, 2)):
    """Per-seed scores whose mean over seeds is ``means[lr]`` exactly, spread by +-``spread`` around it."""
    offsets = [spread * (s - (len(seeds) - 1) / 2) for s in range(len(seeds))]
    return {(loss, lr, seed): mean + offset for lr, mean in means.items() for seed, offset in zip(seeds, offsets)}


def parabola(peak: float, top: float = 0.9, width: float = 0.01) -> dict[float, float]:
    return {lr: top - width * math.log2(lr / peak) ** 2 for lr in GRID}


def test_the_rule_picks_the_fitted_peak_snapped_to_the_nearest_rate_in_log_space():
    # The peak at 0.05: log2(0.05) is 0.32 from log2(0.04) and 0.68 from log2(0.08), so 0.04 is nearest.
    means = parabola(0.05)
    means[0.08] += 0.004  # the best single score is now 0.08's, a bump the fit over five rates hardly feels
    choice = runner.choose_lrs(history(curve("mse", means)), ["mse"], GRID, val_size=10_000)
    assert max(means, key=means.get) == 0.08
    assert choice["best_lrs"] == {"mse": 0.08}
    assert choice["peak_lrs"]["mse"] == pytest.approx(0.05, rel=0.05)
    assert choice["lrs"] == {"mse": 0.04}
    assert choice["edge"] == {"mse": None} and choice["grids"] == {"mse": GRID}
    # The peak past the midpoint between 0.04 and 0.08 (2**-4.1 = 0.058): 0.08.
    moved = runner.choose_lrs(history(curve("mse", parabola(0.06))), ["mse"], GRID, val_size=10_000)
    assert moved["peak_lrs"]["mse"] == pytest.approx(0.06, rel=1e-6) and moved["lrs"] == {"mse": 0.08}


def test_the_same_curve_shape_gives_the_same_rate_whatever_the_level_or_the_spread():
    """The tilt case: a flat top, one loss 0.1 lower and ten times noisier over seeds. 'The smallest rate within
    one standard error of the best' lowered the noisy loss's rate and not the other's."""
    flat = {0.01: 0.800, 0.02: 0.810, 0.04: 0.815, 0.08: 0.816, 0.16: 0.810}
    low = {lr: value - 0.1 for lr, value in flat.items()}
    values = curve("softmax_nll", flat, spread=0.002) | curve("mse", low, spread=0.02)
    choice = runner.choose_lrs(history(values), ["softmax_nll", "mse"], GRID, val_size=500)
    assert choice["lrs"]["mse"] == choice["lrs"]["softmax_nll"] == 0.08
    assert choice["peak_lrs"]["mse"] == pytest.approx(choice["peak_lrs"]["softmax_nll"])
    # The noisy loss's standard error spans the whole top: the old rule would have lowered its rate.
    errors = choice["standard_errors"]["mse"]
    assert choice["scores"]["mse"]["0.02"] >= choice["scores"]["mse"]["0.08"] - errors["0.08"]


def test_a_tiny_change_of_the_scores_does_not_flip_the_choice():
    means = parabola(0.05)
    base = runner.choose_lrs(history(curve("mse", means)), ["mse"], GRID, val_size=10_000)
    for lr in GRID:  # one rate's score moved by a thousandth of a point, up or down
        for sign in (1, -1):
            nudged = {**means, lr: means[lr] + sign * 1e-5}
            choice = runner.choose_lrs(history(curve("mse", nudged)), ["mse"], GRID, val_size=10_000)
            assert choice["lrs"] == base["lrs"] == {"mse": 0.04}


def test_without_a_maximum_the_best_scoring_stable_rate_is_chosen():
    rising = {lr: 0.5 + 0.1 * math.log2(lr / 0.01) + 0.01 * math.log2(lr / 0.01) ** 2 for lr in GRID}  # convex
    choice = runner.choose_lrs(history(curve("mse", rising)), ["mse"], GRID, val_size=10_000)
    assert choice["peak_lrs"] == {"mse": None} and choice["lrs"] == choice["best_lrs"] == {"mse": 0.16}
    assert "largest rate of its grid" in choice["edge"]["mse"]
    two = {0.01: 0.80, 0.02: 0.70}  # fewer than three rates: no fit
    choice = runner.choose_lrs(history(curve("mse", two)), ["mse"], [0.01, 0.02], val_size=10_000)
    assert choice["peak_lrs"] == {"mse": None} and choice["lrs"] == {"mse": 0.01}


def test_a_peak_beyond_the_stable_rates_snaps_to_their_edge_and_never_to_an_unstable_rate():
    means = parabola(0.5)  # rising over the whole grid, peak far above it
    means[0.16] = 0.99  # and 0.16 would score best, but one seed diverged there
    values = curve("mse", means)
    choice = runner.choose_lrs(history(values, diverged=[("mse", 0.16, 1)]), ["mse"], GRID, val_size=10_000)
    assert choice["unstable"] == {"mse": [0.16]}
    assert choice["peak_lrs"]["mse"] > 0.16
    assert choice["lrs"] == choice["best_lrs"] == {"mse": 0.08}
    assert choice["edge"]["mse"] == ("the largest stable rate: the next larger rate, 0.16, diverged or collapsed in "
                                     "a tune seed")


def test_an_edge_choice_says_why_it_was_not_extended():
    means = parabola(0.005)  # peak below the grid
    values = history(curve("mse", means))
    assert runner.choose_lrs(values, ["mse"], GRID, val_size=10_000, limit=0)["edge"]["mse"] == (
        "the smallest rate of its grid, which is not extended (lr_extend: 0)")
    reason = runner.choose_lrs(values, ["mse"], GRID, val_size=10_000, limit=2,
                               extended={"mse": {"smallest": 2, "largest": 0}})["edge"]["mse"]
    assert reason == "the smallest rate of its grid after 2 of 2 extensions beyond that edge (lr_extend, the limit)"


def test_leave_one_seed_out_agreement_is_still_reported():
    values = curve("mse", parabola(0.05), spread=0.001)
    choice = runner.choose_lrs(history(values), ["mse"], GRID, val_size=10_000)
    assert choice["agreement"] == {"mse": "3 of 3"}
