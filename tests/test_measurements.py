"""Measurements that must hold up: interpolated steps-to-target with their resolution, collapse detection, the
threshold-free speed measure, validation-selected accuracy, and the train stage's fallback from a failed rate."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from study import analysis, comparisons, measures, runner, tables, tracking
from study.records import Record


def history_of(curves: dict[tuple[str, float, int], list[tuple[int, float]]], *, split: str = "val",
               metric: str = "accuracy") -> pd.DataFrame:
    """A history table from ``{(loss, lr, seed): [(step, value), ...]}`` (epochs = step / 100)."""
    records = [Record(loss, lr, seed, step / 100, step, split, metric, value)
               for (loss, lr, seed), points in curves.items() for step, value in points]
    return tables.history_frame(records, condition="c", dataset="d")


def test_steps_to_target_interpolates_between_the_readings_around_the_crossing():
    history = history_of({("mse", 0.1, 0): [(0, 0.1), (100, 0.6), (110, 0.8), (200, 0.9)],
                          ("mse", 0.1, 1): [(0, 0.1), (100, 0.2)]})
    table = analysis.steps_to_target(history, 0.7).set_index("seed")
    assert table.loc[0, "step"] == pytest.approx(105.0)  # half-way from 0.6 to 0.8
    assert (table.loc[0, "bracket_low"], table.loc[0, "bracket_high"]) == (100, 110)
    assert table.loc[0, "resolution"] == pytest.approx(10 / 105)
    assert not table.loc[1, "reached"] and math.isnan(table.loc[1, "step"]) and table.loc[1, "censored_at"] == 100


def test_steps_to_target_at_step_zero_is_exact():
    table = analysis.steps_to_target(history_of({("mse", 0.1, 0): [(0, 0.9), (10, 0.95)]}), 0.5)
    assert table["step"].tolist() == [0.0] and table["resolution"].tolist() == [0.0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_reading_equal_to_the_target_reached_it_in_float32_and_float64(dtype):
    # 0.88 in float32 is 0.87999999523...: below 0.88 in float64, yet the same reading as 0.88 in history.csv.
    assert float(np.float32(0.88)) < 0.88
    assert measures.reached(np.array([0.87, 0.88, 0.9], dtype=dtype), 0.88).tolist() == [False, True, True]
    assert not measures.reached(np.array([0.88 - 1 / 2000], dtype=dtype), 0.88).any()  # one example short
    readings = [(0, 0.1), (100, 0.5), (200, float(dtype(0.88))), (300, float(dtype(0.9)))]
    table = measures.steps_to_target(history_of({("mse", 0.1, 0): readings}), 0.88)
    assert table["reached"].tolist() == [True] and table["step"].tolist() == [200.0]


def test_summary_from_memory_agrees_with_the_history_written_and_read_back(tmp_path):
    rng = np.random.default_rng(0)
    curves = {}
    for seed in range(6):
        # float32 accuracies out of 500 validation examples, rising, several exactly at a target (0.88 = 440/500)
        correct = np.sort(np.concatenate([rng.integers(50, 500, 40), [300, 440, 440, 450]]))
        values = (correct / 500).astype(np.float32).astype(float)
        steps = np.cumsum(rng.integers(1, 60, len(values))) - 1
        curves[("mse", 0.1, seed)] = list(zip(steps.tolist(), values.tolist()))
    history = history_of(curves)
    assert (history["value"] < 0.88).sum() > (history["value"] < np.float32(0.88)).sum()  # the float32 trap is there
    path = tmp_path / tables.HISTORY
    tables.write_csv(history, path)
    back = tables.read_history(path)
    targets = [0.6, 0.88, 0.9]
    in_memory = measures.run_summary(history, targets).set_index("seed")
    for target in targets:
        table = measures.steps_to_target(back, target).set_index("seed")
        assert table["reached"].all()
        np.testing.assert_allclose(in_memory[f"steps_to_{target:g}"], table["step"], atol=1e-6)


def test_val_auc_weighs_log_steps_equally():
    # 0.2 from step 1 to 10, 0.8 from 10 to 100: on a log axis each decade counts the same -> mean 0.5.
    history = history_of({("mse", 0.1, 0): [(0, 0.1), (1, 0.2), (10, 0.2), (10.0001, 0.8), (100, 0.8)]})
    assert analysis.val_auc(history)["value"].item() == pytest.approx(0.5, abs=1e-4)


def test_a_loss_that_climbs_back_and_stays_up_collapsed_at_the_start_of_the_climb():
    steps = list(range(20, 420, 20))
    learned = [2.3, 1.0, 0.5, 0.3, 0.25, 0.2, 0.2, 0.2]
    climbs = [0.5, 1.5, 2.0, 2.2, 2.25, 2.3, 2.3, 2.3, 2.3, 2.3, 2.3, 2.3]
    noisy = [2.3, 1.0, 0.5, 0.3, 2.0, 0.25, 0.2, 0.2] + [0.2] * 12  # one spike that recovers: not a collapse
    history = history_of({("mse", 0.3, 0): list(zip(steps, learned + climbs)),
                          ("mse", 0.3, 1): list(zip(steps, noisy))}, split="train", metric="loss")
    found = measures.collapses(history, chance=0.1)
    assert found[["seed", "collapsed_step", "reason"]].values.tolist() == [[0, 200, "training loss climbed back"]]


def test_a_model_that_never_learned_did_not_collapse():
    history = history_of({("mse", 0.01, 0): [(s, 2.3 - s * 1e-4) for s in range(20, 420, 20)]}, split="train",
                         metric="loss")
    assert measures.collapses(history, chance=0.1).empty


def test_validation_accuracy_back_at_chance_after_learning_is_a_collapse_and_overfitting_is_not():
    collapsed = [(0, 0.1), (100, 0.6), (200, 0.7), (300, 0.12), (400, 0.11), (500, 0.14)]
    overfits = [(0, 0.1), (100, 0.6), (200, 0.7), (300, 0.66), (400, 0.64), (500, 0.62)]
    history = history_of({("mse", 0.3, 0): collapsed, ("mse", 0.1, 0): overfits})
    found = measures.collapses(history, chance=0.1)
    assert found[["lr", "collapsed_step"]].values.tolist() == [[0.3, 300]]


def test_run_summary_reports_validation_selected_test_accuracy_and_the_resolution():
    records = []
    for step, val, test in [(0, 0.1, 0.1), (100, 0.8, 0.79), (200, 0.7, 0.72)]:
        records += [Record("mse", 0.1, 0, step / 100, step, "val", "accuracy", val),
                    Record("mse", 0.1, 0, step / 100, step, "test", "accuracy", test)]
    records.append(Record("mse", 0.1, 0, 0.5, 50, "val", "accuracy", 0.45))  # a dense speed reading, no test
    history = tables.history_frame(records, condition="c", dataset="d")
    row = measures.run_summary(history, [0.5]).iloc[0]
    assert row["test_accuracy_at_best_val"] == pytest.approx(0.79) and row["best_val_step"] == 100
    assert row["final_test_accuracy"] == pytest.approx(0.72)
    assert row["steps_to_0.5"] == pytest.approx(50 + 50 * 0.05 / 0.35)
    assert row["steps_to_0.5_resolution"] == pytest.approx(50 / row["steps_to_0.5"])
    assert math.isnan(row["collapsed_step"]) and math.isnan(row["diverged_step"])


def test_train_stage_falls_back_to_the_next_stable_rate_when_a_rate_collapses(monkeypatch, tmp_path):
    """The fallback loop: a pass whose mse collapses at 0.3 is followed by one at 0.1 (0.2 was unstable in
    tuning); the written results are those of the last pass, and setup.json says what happened."""
    from conftest import synthetic_dataset, tiny_condition

    passes = []

    def fake_pass(cfg, cond, dataset, lrs, *, finish, **_):
        passes.append(dict(lrs))
        curves = {("mse", lrs["mse"], 0): [(s, 0.5) for s in (0, 10, 20)],
                  ("softmax_nll", lrs["softmax_nll"], 0): [(s, 0.5) for s in (0, 10, 20)]}
        history = history_of(curves)
        if lrs["mse"] == 0.3:
            mark = history.head(1).assign(split="train", metric="collapsed_step", value=10.0, step=10)
            history = pd.concat([history, mark], ignore_index=True)
        trainer = type("T", (), {"steps_per_epoch": 10, "total_steps": 20, "device": "cpu", "backend": "fused"})()
        return finish(trainer, [], history, measures.run_summary(history, ()), tracking.NullTracker())

    monkeypatch.setattr(runner, "_train_pass", fake_pass)
    monkeypatch.setattr(runner, "_load_data", lambda cond, root: synthetic_dataset())
    cfg = type("C", (), {"losses": ("mse", "softmax_nll"), "seeds": (0,), "confident": 0.9, "ece_bins": 15,
                         "threads": None})()
    cond = tiny_condition(lr_grid=(0.05, 0.1, 0.2, 0.3), losses=("mse", "softmax_nll"))
    runner.train_condition(cfg, cond, {"mse": 0.3, "softmax_nll": 0.1}, data_root=tmp_path, out=tmp_path,
                           checkpoint=None, tracking=False, progress=False, unstable={"mse": [0.2]})
    assert passes == [{"mse": 0.3, "softmax_nll": 0.1}, {"mse": 0.1, "softmax_nll": 0.1}]
    setup = tables.read_json(tmp_path / tables.SETUP)
    assert setup["lrs"] == {"mse": 0.1, "softmax_nll": 0.1}
    assert setup["lr_fallbacks"] == {"mse": [{"lr": 0.3, "diverged": {}, "collapsed": {"0": 10}, "next_lr": 0.1}]}
    assert set(tables.read_history(tmp_path / tables.HISTORY)["lr"]) == {0.1}
    assert np.isfinite(pd.read_csv(tmp_path / tables.SUMMARY)["final_val_accuracy"]).all()


def test_a_fallback_trains_only_the_failed_loss_and_writes_the_tables_of_one_pass(monkeypatch, tmp_path):
    """softmax_nll at lr 1e3 diverges; the next pass trains softmax_nll's models alone at a smaller rate and keeps
    the other losses' models, and every table comes out as from one pass of every loss at the final rates."""
    import dataclasses

    from conftest import STUDY, synthetic_dataset, tiny_condition
    from study import config, train

    built = []

    class Spy(train.Trainer):
        def __init__(self, cond, data, members, settings):
            built.append([(m.loss, m.lr) for m in members])
            super().__init__(cond, data, members, settings)

    monkeypatch.setattr(train, "Trainer", Spy)
    monkeypatch.setattr(runner, "_load_data", lambda cond, root: synthetic_dataset())
    cond = tiny_condition(lr_grid=(0.1, 0.2, 1e3))
    cfg = dataclasses.replace(config.load(STUDY), seeds=(0, 1), executor="local", conditions={cond.name: cond})
    names = cond.losses

    def train_into(out, lrs):
        out.mkdir()
        runner.train_condition(cfg, cond, lrs, data_root=tmp_path, out=out, checkpoint=None, tracking=False,
                               progress=False, unstable={})
        return tables.read_json(out / tables.SETUP)

    setup = train_into(tmp_path / "fallback", {**dict.fromkeys(names, 0.1), "softmax_nll": 1e3})
    final = setup["lrs"]
    assert list(setup["lr_fallbacks"]) == ["softmax_nll"] and final["softmax_nll"] in (0.1, 0.2)
    assert len(built[0]) == 2 * len(names) and all(loss == "softmax_nll" for run in built[1:] for loss, _ in run)
    assert built[-1] == [("softmax_nll", final["softmax_nll"])] * 2
    built.clear()
    assert train_into(tmp_path / "direct", final)["lr_fallbacks"] == {} and len(built) == 1
    for name in (tables.HISTORY, tables.SUMMARY, tables.CURVES):
        assert (tmp_path / "fallback" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "fallback" / tables.EXAMPLES),
                                  pd.read_parquet(tmp_path / "direct" / tables.EXAMPLES))


def test_test_set_gradient_populations_agree_with_the_per_example_outputs(tiny_data):
    """The trainer's test-set quartiles and saturated share, recomputed from the per-example test outputs of the
    last evaluation."""
    from conftest import tiny_condition
    from study import grads, train

    members = train.grid(["mse", "softmax_nll"], [0], {"mse": [0.5], "softmax_nll": [0.5]})
    trainer = train.Trainer(tiny_condition(), tiny_data, members, train.Settings(progress=False))
    items = list(trainer.run())
    records = {(r.loss, r.step, r.split, r.metric): r.value for r in items if isinstance(r, Record)}
    for stats in (i for i in items if not isinstance(i, Record) and i.split == "test"):
        norms = stats.logit_grad_norm.astype(float)
        wrong = stats.predicted != stats.label
        at = (stats.loss, stats.step, "test")
        assert records[(*at, "logit_grad_median")] == pytest.approx(np.quantile(norms, 0.5), rel=1e-5)
        assert records[(*at, "logit_grad_q25")] == pytest.approx(np.quantile(norms, 0.25), rel=1e-5)
        assert records[(*at, "wrong_count")] == wrong.sum()
        expected = (wrong & (norms < grads.SATURATION)).sum() / max(wrong.sum(), 1)
        assert records[(*at, "saturated_wrong_share")] == pytest.approx(expected)
    assert analysis.SATURATION == grads.SATURATION


def test_corrections_pool_the_confidently_wrong_cases_over_evaluations():
    records = []
    for step, before, share in [(0, 0, 0.0), (10, 40, 0.5), (20, 10, 0.0)]:  # 20 of 40, then 0 of 10: 20/50
        records += [Record("mse", 0.1, 0, step / 10, step, "train_subset", "confident_wrong_before", before),
                    Record("mse", 0.1, 0, step / 10, step, "train_subset", "confident_wrong_corrected", share)]
    out = comparisons.corrections(tables.history_frame(records, condition="c", dataset="d")).set_index("quantity")
    assert out.loc["confident_wrong_corrected", "value"] == pytest.approx(0.4)
    assert out.loc["confident_wrong_seen", "value"] == 50
