"""Equivalence shown, not assumed: two one-sided tests within each quantity's declared margin (analysis.compare,
analysis.decide), identical comparisons kept out of Holm's families, and steps compared as ratios."""

import numpy as np
import pandas as pd
import pytest

from study import analysis, comparisons

SEEDS = 5
REF = analysis.REFERENCE


def frame(quantity: str, values: dict[str, list[float]], condition: str = "c") -> pd.DataFrame:
    rows = [(condition, loss, 0.1, seed, quantity, v) for loss, vs in values.items() for seed, v in enumerate(vs)]
    return pd.DataFrame(rows, columns=[*analysis.RUN, "quantity", "value"])


def row(diffs: pd.DataFrame, loss: str, quantity: str) -> dict:
    return analysis.lookup(diffs, loss=loss, quantity=quantity)


def test_a_tiny_spread_around_zero_is_equivalent_and_a_wide_one_is_not():
    base = [0.80, 0.82, 0.79, 0.81, 0.80]
    tiny = [b + d for b, d in zip(base, [0.0004, -0.0003, 0.0002, -0.0001, 0.0001], strict=True)]
    wide = [b + d for b, d in zip(base, [0.03, -0.04, 0.02, -0.03, 0.025], strict=True)]
    diffs = analysis.differences(frame("final_accuracy", {REF: base, "mse": tiny, "sigmoid_bce": wide}))
    close, far = row(diffs, "mse", "final_accuracy"), row(diffs, "sigmoid_bce", "final_accuracy")
    assert close["margin"] == 0.005 and close["verdict"] == analysis.EQUIVALENT == close["evidence"]
    assert close["p_equiv_holm"] < 0.01
    # The wide spread is neither shown different nor within ±0.005: not established, never 'equivalent'.
    assert far["verdict"] == analysis.NOT_ESTABLISHED and far["p_equiv"] > 0.05


def test_identical_values_are_identical_and_stay_out_of_holm():
    """saturated_share 0 in every seed for the reference and smoothed_ce: IDENTICAL, no p-value, and the two other
    primary comparisons of the condition are corrected as a family of two, not three."""
    zeros = [0.0] * SEEDS
    per_seed = pd.concat([
        frame("saturated_share", {REF: zeros, "smoothed_ce": zeros, "mse": [0.30, 0.35, 0.28, 0.33, 0.31]}),
        frame("ece_ts", {REF: [0.020, 0.022, 0.018, 0.021, 0.019], "mse": [0.025, 0.030, 0.021, 0.029, 0.022]}),
    ], ignore_index=True)
    diffs = analysis.differences(per_seed)
    same = row(diffs, "smoothed_ce", "saturated_share")
    assert same["verdict"] == analysis.IDENTICAL and np.isnan(same["p_value"]) and np.isnan(same["p_holm"])
    assert np.isnan(same["p_equiv"]) and np.isnan(same["p_equiv_holm"])
    tested = diffs[(diffs["family"] == "primary") & (diffs["verdict"] != analysis.IDENTICAL)]
    assert len(tested) == 2
    expected = analysis.holm(tested["p_value"].to_numpy())  # a family of two
    assert tested["p_holm"].to_numpy() == pytest.approx(expected)
    diluted = analysis.holm([*tested["p_value"], 1.0])[:2]  # what a third, degenerate test would have made of it
    assert not np.allclose(diluted, expected)


def test_steps_twenty_percent_slower_on_every_seed_are_different_with_ratio_1_2():
    rng = np.random.default_rng(3)
    reference = np.array([400.0, 520.0, 610.0, 450.0, 380.0])
    slower = reference * 1.2 * np.exp(rng.normal(0.0, 0.01, SEEDS))
    same = reference * np.exp(rng.normal(0.0, 0.005, SEEDS))
    diffs = analysis.differences(frame(analysis.steps_quantity(1), {REF: list(reference), "mse": list(slower),
                                                                    "smoothed_ce": list(same)}))
    d = row(diffs, "mse", analysis.steps_quantity(1))
    assert d["verdict"] == analysis.DIFFERENT and d["ratio"] == pytest.approx(1.2, abs=0.02)
    assert d["ratio_low"] < d["ratio"] < d["ratio_high"] and d["ratio_low"] > 1.1
    assert d["diff"] == pytest.approx(float(np.mean(slower - reference)))  # the difference stays in steps
    # Within ±10% by two one-sided tests on log steps: equivalent.
    e = row(diffs, "smoothed_ce", analysis.steps_quantity(1))
    assert e["verdict"] == analysis.EQUIVALENT and e["margin"] == pytest.approx(0.1)
    assert d["p_value"] == pytest.approx(analysis.paired_difference(
        pd.Series(np.log(slower)), pd.Series(np.log(reference))).p_value)  # tested on log steps


def test_a_quantity_without_a_margin_is_never_equivalent():
    base = [0.80, 0.82, 0.79, 0.81, 0.80]
    diffs = analysis.differences(frame("undeclared", {REF: base, "mse": [b + 1e-5 for b in base]}))
    assert diffs["verdict"].iloc[0] == analysis.DIFFERENT  # the same offset on every seed
    diffs = analysis.differences(frame("undeclared", {REF: base, "mse": [b + (-1) ** i * 1e-4 for i, b in
                                                                          enumerate(base)]}))
    assert np.isnan(diffs["margin"].iloc[0]) and diffs["verdict"].iloc[0] == analysis.NOT_ESTABLISHED


def test_tost_sides():
    low, high = analysis.tost(np.array([0.1, -0.1, 0.05, -0.05, 0.0]), 1.0)
    assert low < 1e-4 and high < 1e-4
    low, high = analysis.tost(np.array([0.9, 1.1, 1.0, 0.95, 1.05]), 0.5)  # far above the upper margin
    assert low < 1e-4 and high > 0.99


def test_speed_views_say_whether_the_ordering_holds_in_all_three():
    """mse is slower than the reference at its tuned rate, and also at its best grid rate and at the shared rate in
    the tuning runs: the ordering is the loss's (agrees). Fabricated: steps are read from val accuracy crossing 0.5."""
    def curve(loss, lr, seed, cross):  # val accuracy 0.1 at step 0, 0.9 from ``cross`` on
        return [("c", "d", loss, lr, seed, 0, step, "val", "accuracy", 0.1 if step < cross else 0.9)
                for step in range(0, 2000, 10)]

    tune_rows = []
    for seed in (100, 101, 102):
        for lr in (0.05, 0.1):
            tune_rows += curve(REF, lr, seed, 300 if lr == 0.1 else 500)
            tune_rows += curve("mse", lr, seed, 400 + 10 * seed % 30 if lr == 0.1 else 700)
            tune_rows += curve("smoothed_ce", lr, seed, 350 if lr == 0.1 else 800)
    tune = pd.DataFrame(tune_rows, columns=["condition", "dataset", *analysis.RUN[1:], "epoch", "step", "split",
                                            "metric", "value"])
    q = analysis.steps_quantity(1)
    per_seed = frame(q, {REF: [300, 310, 290, 305, 295], "mse": [450, 470, 430, 460, 440],
                         "smoothed_ce": [250, 260, 240, 255, 245]})
    head = analysis.Headline(per_seed, analysis.summarise(per_seed), analysis.differences(per_seed),
                             pd.DataFrame(), pd.DataFrame(), {"c": (0.5,)})
    lr_file = {"lrs": {REF: 0.1, "mse": 0.1, "smoothed_ce": 0.05}, "unstable": {}, "best_lrs": {"mse": 0.1}}
    views = comparisons.speed_views(head, {"c": tune}, {"c": lr_file})
    mse = views[views["loss"] == "mse"].set_index("view")
    assert set(mse.index) == set(comparisons.SPEED_VIEWS)
    assert (mse["direction"] == "slower").all() and mse["agrees"].all() and (mse["best_lr"] == 0.1).all()
    assert mse.loc["tuned", "ratio"] == pytest.approx(1.5, abs=0.02)
    assert mse.loc["envelope", "lr"] == 0.1 and mse.loc["shared", "lr"] == 0.1
    # smoothed_ce is faster at its tuned rate only: slower at its best grid rate and at the shared one.
    smooth = views[views["loss"] == "smoothed_ce"].set_index("view")
    assert smooth.loc["tuned", "direction"] == "faster" and smooth.loc["shared", "direction"] == "slower"
    assert not smooth["agrees"].any()
    ratios = comparisons.speed_ratios(head)
    assert list(ratios.columns) == ["condition", "loss", "ratio", "ci_low", "ci_high", "n", "verdict"]
    assert (ratios["verdict"] == analysis.DIFFERENT).all()
