"""The study's arithmetic: FLOPs per example from PyTorch's counter against the MLP's hand count, and the step and
evaluation counts of a condition against the trainer's own schedule."""

from __future__ import annotations

import pytest

from conftest import SMOKE, tiny_condition
from study import cli, model, train
from study.ops import budget


def test_mlp_flops_per_example_are_two_per_multiply_add():
    forward, step = budget.per_example_flops(model.MLPSpec((256, 256)), 784, 10)
    macs = 784 * 256 + 256 * 256 + 256 * 10
    assert forward == 2 * macs
    # backward: every weight gradient (2 x MACs) and every input gradient but the first layer's (nothing upstream)
    assert step == 2 * macs + 2 * macs + 2 * (macs - 784 * 256)


def test_a_condition_counts_the_steps_and_evaluations_the_trainer_runs(tiny_data):
    cond = tiny_condition(epochs=2, evals_per_epoch=2, speed_resolution=0.5, losses=("mse", "softmax_nll"),
                          seeds=(0, 1, 2))
    cfg = type("Cfg", (), {"losses": ("mse",), "seeds": (0, 1, 2), "tune": (), "conditions": {}})()
    sizes = tiny_data.sizes()
    (row,) = budget.arithmetic(cfg, cond, sizes, tiny_data.input_dim, tiny_data.num_classes)
    forward, step = budget.per_example_flops(budget.model_spec(cond), tiny_data.input_dim, tiny_data.num_classes)
    trainer = train.Trainer(cond, tiny_data, train.grid(["mse", "softmax_nll"], [0, 1, 2],
                                                        {"mse": [0.1], "softmax_nll": [0.1]}),
                            train.Settings(progress=False))
    assert row.models == 6 and row.steps == trainer.total_steps
    assert row.train_flops == pytest.approx(6 * trainer.total_steps * cond.batch_size * step)
    full = len(trainer.eval_steps) + 1  # and step 0
    per_full = sizes["val"] + sizes["test"] + min(train.MEMO_SIZE, sizes["train"])
    assert row.eval_flops == pytest.approx(6 * forward * (full * per_full + len(trainer.speed_steps) * sizes["val"]))


@pytest.mark.parametrize("tflop, warned", [(100.0, True), (1.0, False)])
def test_the_expected_time_warns_over_the_budget(tflop, warned, monkeypatch, capsys):
    # At 100 GFLOP/s and the assumed ratio of 0.5, 100 TFLOP is 33 min (over the 30-minute budget), 1 TFLOP 20 s.
    rows = [budget.Arithmetic("c", "train", models=20, steps=1000, train_flops=tflop * 1e12, eval_flops=0.0)]
    monkeypatch.setattr(budget, "study_arithmetic", lambda cfg, root: rows)
    assert cli.main(["budget", "--params", str(SMOKE), "--peak-gflops", "100"]) == 0
    out = capsys.readouterr().out
    assert ("WARNING" in out) == warned
    expected = f"{tflop:.1f} TFLOP / (100 GFLOP/s matmul peak x 0.5 assumed arithmetic ratio, 0.45-0.6 measured) = "
    assert expected + f"{tflop * 1e12 / (100e9 * 0.5) / 60:.1f} min" in out
