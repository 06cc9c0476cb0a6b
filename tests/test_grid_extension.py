"""Grids that contain their optimum (runner.tune, runner.grid_extensions): a loss whose chosen or best-scoring rate
sits on a stable edge of its grid gets a rate a factor of 2 beyond it, trained like the others, up to lr_extend per
side or until the new rate is unstable; only the new models train in an extension round."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from conftest import synthetic_dataset
from study import config, runner, tables
from study.records import Record

SEEDS = (100, 101, 102)


def fake_training(score, unstable=lambda loss, lr: False):
    """A stand-in for runner._run_grid: each member's validation accuracy is ``score(loss, lr)`` over the tuning
    window; an unstable one diverges at step 5. Also records which members each round trained."""
    rounds: list[list[tuple[str, float, int]]] = []

    def run_grid(cfg, cond, data_root, trainer, tracker, *, into, keep_examples, stop=lambda: False, load_data=None):
        rounds.append([(m.loss, m.lr, m.seed) for m in trainer.members])
        for m in trainer.members:
            into.append(Record(m.loss, m.lr, m.seed, 0.0, 0, "val", "accuracy", 0.1))
            if unstable(m.loss, m.lr):
                into.append(Record(m.loss, m.lr, m.seed, 0.5, 5, "train", "diverged_step", 5.0))
                continue
            into.append(Record(m.loss, m.lr, m.seed, 1.0, 10, "val", "accuracy", score(m.loss, m.lr)))

    return run_grid, rounds


@pytest.fixture
def tune(smoke_params, monkeypatch, tmp_path):
    """``tune(score, unstable=..., lr_grid=..., lr_extend=...)``: runner.tune of mnist1d_sgd (the study's four
    losses) over the fake training; returns (lr.json, tune.csv, the rounds' members)."""
    monkeypatch.setattr(runner, "_load_data", lambda cond, root: synthetic_dataset())

    def run(score, *, unstable=lambda loss, lr: False, lr_grid=(0.1, 0.2, 0.4), lr_extend=2):
        cfg = config.load(smoke_params())
        cond = dataclasses.replace(cfg.condition("mnist1d_sgd"), lr_grid=lr_grid, lr_extend=lr_extend,
                                   tune_seeds=SEEDS)
        run_grid, rounds = fake_training(score, unstable)
        monkeypatch.setattr(runner, "_run_grid", run_grid)
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        runner.tune(cfg, cond, data_root=tmp_path, out=out, tracking=False, progress=False)
        return tables.read_json(out / tables.LRS), pd.read_csv(out / tables.TUNE), rounds

    return run


def peaked(peak: float):
    return lambda loss, lr: 0.9 - 0.01 * math.log2(lr / peak) ** 2


def test_an_edge_choice_extends_the_grid_until_the_limit(tune):
    lrs, history, rounds = tune(peaked(3.0), lr_extend=2)  # the optimum lies far above the grid 0.1..0.4
    for loss in ("mse", "sigmoid_bce", "softmax_nll", "smoothed_ce"):
        assert lrs["grids"][loss] == [0.1, 0.2, 0.4, 0.8, 1.6]  # two extensions upward, none downward
        assert lrs["lrs"][loss] == lrs["best_lrs"][loss] == 1.6
        assert lrs["edge"][loss] == ("the largest rate of its grid after 2 of 2 extensions beyond that edge "
                                     "(lr_extend, the limit)")
        assert set(lrs["scores"][loss]) == {"0.1", "0.2", "0.4", "0.8", "1.6"}
    # Extension rounds train the new (loss, rate) models only, with the same tune seeds.
    assert len(rounds) == 3
    assert {lr for _, lr, _ in rounds[1]} == {0.8} and {lr for _, lr, _ in rounds[2]} == {1.6}
    assert sorted({seed for _, _, seed in rounds[1]}) == list(SEEDS) and len(rounds[1]) == 4 * len(SEEDS)
    # The extended rates are in tune.csv, scored like the others.
    assert sorted(history["lr"].unique()) == [0.1, 0.2, 0.4, 0.8, 1.6]


def test_the_extension_stops_at_an_unstable_rate(tune):
    lrs, _, rounds = tune(peaked(3.0), unstable=lambda loss, lr: lr >= 1.6, lr_extend=5)
    assert lrs["grids"]["mse"] == [0.1, 0.2, 0.4, 0.8, 1.6]  # 1.6 was tried, diverged, and ended the extension
    assert lrs["unstable"]["mse"] == [1.6]
    assert lrs["lrs"]["mse"] == 0.8
    assert lrs["edge"]["mse"] == ("the largest stable rate: the next larger rate, 1.6, diverged or collapsed in a "
                                  "tune seed")
    assert len(rounds) == 3


def test_a_loss_whose_choice_is_inside_its_grid_is_not_extended(tune):
    lrs, _, rounds = tune(lambda loss, lr: peaked(0.2 if loss == "mse" else 0.02)(loss, lr), lr_extend=1)
    assert lrs["grids"]["mse"] == [0.1, 0.2, 0.4] and lrs["edge"]["mse"] is None
    assert lrs["grids"]["softmax_nll"] == [0.05, 0.1, 0.2, 0.4]  # one extension down, the limit
    assert all(loss != "mse" for loss, _, _ in rounds[1])


def test_a_best_scoring_rate_on_the_edge_extends_too(tune):
    # A concave fit peaking at 0.22 (chosen: 0.2), but 0.4 scoring best by a hair: its edge is extended.
    score = {0.025: 0.70, 0.05: 0.80, 0.1: 0.86, 0.2: 0.80, 0.4: 0.861}
    lrs, _, _ = tune(lambda loss, lr: score.get(lr, 0.5), lr_grid=tuple(score), lr_extend=1)
    assert lrs["grids"]["mse"] == [0.025, 0.05, 0.1, 0.2, 0.4, 0.8]
    assert lrs["best_lrs"]["mse"] == 0.4


def test_without_lr_extend_the_grid_is_the_given_one(tune):
    lrs, _, rounds = tune(peaked(3.0), lr_extend=0)
    assert lrs["grids"]["mse"] == [0.1, 0.2, 0.4] and len(rounds) == 1
    assert lrs["edge"]["mse"] == "the largest rate of its grid, which is not extended (lr_extend: 0)"


def test_the_same_params_give_the_same_choice(tune):
    first, _, _ = tune(peaked(3.0))
    second, _, _ = tune(peaked(3.0))
    assert first == second
    for key in ("source", "criterion", "grid_rule", "lrs", "best_lrs", "peak_lrs", "scores", "standard_errors",
                "unstable", "agreement", "edge", "grids", "validation_labels"):
        assert key in first


def test_grid_extensions_alone():
    choice = {"lrs": {"a": 0.4, "b": 0.2}, "best_lrs": {"a": 0.4, "b": 0.1}, "unstable": {"a": [], "b": [0.1]}}
    grids = {"a": [0.1, 0.2, 0.4], "b": [0.1, 0.2, 0.4]}
    sides = {"a": {"smallest": 0, "largest": 0}, "b": {"smallest": 0, "largest": 0}}
    assert runner.grid_extensions(choice, grids, sides, 1) == {"a": {"largest": 0.8}}  # b's edge is unstable
    sides["a"]["largest"] = 1
    assert runner.grid_extensions(choice, grids, sides, 1) == {}


def test_a_real_tuning_run_writes_the_extended_grid(smoke_params, monkeypatch, tmp_path):
    """The real trainer: one rate given, so the choice is on both edges; lr_extend 1 adds a rate each side."""
    monkeypatch.setattr(runner, "_load_data", lambda cond, root: synthetic_dataset())
    cfg = config.load(smoke_params())
    cond = dataclasses.replace(cfg.condition("mnist1d_sgd"), lr_grid=(0.1,), lr_extend=1, tune_seeds=(100,),
                               batch_size=16, log_every=2)
    runner.tune(cfg, cond, data_root=tmp_path, out=tmp_path, tracking=False, progress=False)
    lrs = tables.read_json(tmp_path / tables.LRS)
    assert all(grid == [0.05, 0.1, 0.2] for grid in lrs["grids"].values())
    assert sorted(pd.read_csv(tmp_path / tables.TUNE)["lr"].unique()) == [0.05, 0.1, 0.2]
    assert lrs["validation_labels"] == "clean"
