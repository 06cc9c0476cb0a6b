"""The tuning score and the agreement of leave-one-seed-out choices (runner.choose_lrs), on histories whose
right answer is known."""

from __future__ import annotations

import pytest

from study import runner, tables
from study.records import Record


def history(curves: dict[tuple[str, float, int], dict[int, float]]):
    """Validation-accuracy readings {step: value} per (loss, lr, seed)."""
    records = [Record(loss, lr, seed, step / 100, step, "val", "accuracy", value)
               for (loss, lr, seed), readings in curves.items() for step, value in readings.items()]
    return tables.history_frame(records, condition="c", dataset="d")


def test_the_score_averages_the_readings_of_the_last_fifth_of_the_steps():
    # Readings at steps 0, 50, 80, 90, 100: the window [80, 100] holds three of them.
    frame = history({("mse", 0.1, 0): {0: 0.1, 50: 0.99, 80: 0.6, 90: 0.7, 100: 0.8}})
    scores = runner.tuning_scores(frame)
    assert scores["value"].tolist() == [pytest.approx(0.7)]
    assert runner.TUNE_WINDOW == 0.2


def test_one_lucky_last_reading_does_not_decide():
    # lr 0.1 ends on a high last reading but is worse over the window; lr 0.2 is better throughout the window.
    lucky = {0: 0.1, 80: 0.70, 90: 0.70, 100: 0.90}
    steady = {0: 0.1, 80: 0.84, 90: 0.84, 100: 0.84}
    curves = {("mse", 0.1, s): lucky for s in range(3)} | {("mse", 0.2, s): steady for s in range(3)}
    choice = runner.choose_lrs(history(curves), ["mse"], [0.1, 0.2], val_size=100_000)
    assert choice["lrs"] == {"mse": 0.2}
    assert choice["scores"]["mse"] == {"0.1": pytest.approx(0.7667, abs=1e-4), "0.2": pytest.approx(0.84)}


def test_agreement_is_full_when_every_seed_ranks_the_rates_alike():
    curves = {}
    for seed, (a, b) in enumerate([(0.80, 0.60), (0.81, 0.62), (0.79, 0.61)]):
        curves[("softmax_nll", 0.1, seed)] = {0: 0.1, 100: a}
        curves[("softmax_nll", 0.2, seed)] = {0: 0.1, 100: b}
    choice = runner.choose_lrs(history(curves), ["softmax_nll"], [0.1, 0.2], val_size=100_000)
    assert choice["lrs"] == {"softmax_nll": 0.1}
    assert choice["agreement"] == {"softmax_nll": "3 of 3"}


def test_agreement_reports_a_fragile_choice():
    # Without seed 2, lr 0.1 is far ahead; with it, lr 0.2 wins beyond one standard error.
    curves = {}
    for seed, (a, b) in enumerate([(0.80, 0.82), (0.80, 0.82), (0.20, 0.82)]):
        curves[("mse", 0.1, seed)] = {0: 0.1, 100: a}
        curves[("mse", 0.2, seed)] = {0: 0.1, 100: b}
    choice = runner.choose_lrs(history(curves), ["mse"], [0.1, 0.2], val_size=100_000)
    # All seeds: 0.60 vs 0.82 (SE of the best ~0.001): 0.2. Without seed 2: 0.80 vs 0.82 beyond the binomial SE: 0.2.
    # Without seed 0 or 1: 0.50 vs 0.82: 0.2. So 3 of 3 here; flip it by making lr 0.1 win without seed 2.
    assert choice["agreement"] == {"mse": "3 of 3"}
    for seed in (0, 1):
        curves[("mse", 0.1, seed)] = {0: 0.1, 100: 0.95}
    choice = runner.choose_lrs(history(curves), ["mse"], [0.1, 0.2], val_size=100_000)
    # All seeds: 0.70 vs 0.82: 0.2. Without seed 2: 0.95 vs 0.82: 0.1 (disagrees). Without seed 0 or 1: 0.575 vs
    # 0.82: 0.2 (agree).
    assert choice["lrs"] == {"mse": 0.2}
    assert choice["agreement"] == {"mse": "2 of 3"}
