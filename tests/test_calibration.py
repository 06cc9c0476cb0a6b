"""Calibration in each loss's own terms: the registry's kind of probabilities, ECE on a loss's own probabilities
(``ece_own``), the classwise ECE of the softmax (``classwise_ece``), and what the trainer records at the last
evaluation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from conftest import tiny_condition
from study import calibration, losses, train
from study.records import Record
from study.train import Settings

BINS = 15
NO_PROBABILITIES = "raw logits regressed onto one-hot targets: no probability is modelled"


def numpy_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    """Guo et al. (2017), bin by bin, with (lower, upper] membership."""
    total = 0.0
    for b in range(bins):
        inside = (confidence > b / bins) & (confidence <= (b + 1) / bins)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def numpy_classwise_ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Kull et al. (2019): one ECE per class on (p_k, 1[y = k]) over all examples, averaged over classes."""
    k = probs.shape[1]
    per_class = []
    for c in range(k):
        p, hit = probs[:, c], (labels == c).astype(float)
        total = 0.0
        for b in range(bins):
            inside = (p > b / bins) & (p <= (b + 1) / bins) if b else (p <= (b + 1) / bins)  # 0 in the first bin
            if inside.any():
                total += inside.mean() * abs(hit[inside].mean() - p[inside].mean())
        per_class.append(total)
    return float(np.mean(per_class))


# ---- the registry -------------------------------------------------------------------------------------------------


def test_each_loss_declares_the_probabilities_it_outputs():
    kinds = {s.name: s.probabilities for s in losses.specs()}
    assert set(kinds.values()) <= set(losses.PROBABILITIES)
    assert kinds["sigmoid_bce"] == "sigmoid"
    assert kinds["logit_mse"] == "none"
    assert losses.spec("logit_mse").no_probabilities == NO_PROBABILITIES
    assert {name for name, kind in kinds.items() if kind == "softmax"} == set(kinds) - {"sigmoid_bce", "logit_mse"}
    assert all(not s.no_probabilities for s in losses.specs() if s.probabilities != "none")


def test_a_kind_of_probabilities_is_checked_and_none_needs_its_reason():
    base = losses.spec("softmax_nll")
    with pytest.raises(ValueError, match="probabilities"):
        dataclasses.replace(base, name="x", reference=False, probabilities="softmaxx")
    with pytest.raises(ValueError, match="no_probabilities"):
        dataclasses.replace(base, name="x", reference=False, probabilities="none")
    with pytest.raises(ValueError, match="no_probabilities"):
        dataclasses.replace(base, name="x", reference=False, no_probabilities="a reason for a softmax loss")
    variant = losses.variant("sigmoid_bce", "sigmoid_bce_copy", colour="#000000")
    assert variant.probabilities == "sigmoid"  # a variant outputs what its loss outputs


def test_own_probabilities_follow_the_kind():
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(losses.spec("softmax_nll").own_probabilities(logits), logits.softmax(dim=1))
    torch.testing.assert_close(losses.spec("sigmoid_bce").own_probabilities(logits), logits.sigmoid())
    assert losses.spec("logit_mse").own_probabilities(logits) is None


# ---- ece_own ------------------------------------------------------------------------------------------------------


def test_ece_own_of_a_softmax_loss_is_the_softmax_ece():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 400, 10, generator=generator) * 4
    labels = torch.randint(0, 10, (400,), generator=generator)
    confidence, predicted = logits.log_softmax(dim=2).exp().max(dim=2)
    want = calibration.expected_calibration_error(confidence, predicted == labels, BINS).tolist()
    assert calibration.own_calibration_error(logits, labels, ["softmax"] * 3, BINS) == want  # to the bit


def test_ece_own_of_sigmoids_hand_computed():
    """Five examples, three classes; confidence is the largest sigmoid, not the softmax's:
    - two at sigmoid 0.5, bin (7/15, 8/15], one right, one wrong: acc 0.5, conf 0.5 -> 0
    - two at sigmoid 0.9, bin (13/15, 14/15], one right, one wrong: acc 0.5, conf 0.9 -> 2 x 0.4
    - one at sigmoid 0.25, bin (3/15, 4/15], right: acc 1, conf 0.25 -> 0.75
    ECE = (0.8 + 0.75) / 5 = 0.31. (The softmax of the same logits is far more confident on the first two.)"""
    nine, quarter = math.log(9), math.log(1 / 3)
    logits = torch.tensor([[[0.0, -5.0, -5.0],  # sigmoid 0.5, predicts 0, label 0: right
                            [-5.0, 0.0, -5.0],  # 0.5, predicts 1, label 2: wrong
                            [nine, 0.0, 0.0],  # 0.9, predicts 0, label 0: right
                            [nine, 0.0, -1.0],  # 0.9, predicts 0, label 1: wrong
                            [quarter, -3.0, -3.0]]], dtype=torch.float64)  # 0.25, predicts 0, label 0: right
    labels = torch.tensor([0, 2, 0, 1, 0])
    (got,) = calibration.own_calibration_error(logits, labels, ["sigmoid"], BINS)
    assert got == pytest.approx(0.31, abs=1e-12)
    (softmax,) = calibration.own_calibration_error(logits, labels, ["softmax"], BINS)
    assert abs(softmax - 0.31) > 0.05


def test_ece_own_is_none_for_a_loss_without_probabilities_and_per_model_otherwise():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 300, 10, generator=generator) * 3
    labels = torch.randint(0, 10, (300,), generator=generator)
    got = calibration.own_calibration_error(logits, labels, ["sigmoid", "none", "softmax"], BINS)
    assert got[1] is None
    predicted = logits.argmax(dim=2)
    assert got[0] == pytest.approx(numpy_ece(logits[0].sigmoid().max(dim=1).values.double().numpy(),
                                             (predicted[0] == labels).numpy()), abs=1e-6)
    assert got[2] == pytest.approx(numpy_ece(logits[2].softmax(dim=1).max(dim=1).values.double().numpy(),
                                             (predicted[2] == labels).numpy()), abs=1e-6)
    with pytest.raises(ValueError, match="kinds"):
        calibration.own_calibration_error(logits, labels, ["softmax"], BINS)


# ---- classwise ECE --------------------------------------------------------------------------------------------------


def test_classwise_ece_of_calibrated_probabilities_is_about_zero():
    # Exactly calibrated: every example at 1/2, half of them in each class.
    exact = torch.full((1, 4, 2), 0.5)
    assert calibration.classwise_calibration_error(exact, torch.tensor([0, 1, 0, 1]), BINS).item() == 0.0
    # Labels drawn from the probabilities themselves: calibrated up to sampling noise (about 0.003 here).
    generator = torch.Generator().manual_seed(3)
    probs = (torch.randn(100_000, 10, generator=generator, dtype=torch.float64) * 1.5).softmax(dim=1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    calibrated = calibration.classwise_calibration_error(probs[None], labels, BINS).item()
    sharpened = calibration.classwise_calibration_error((probs.log() * 3).softmax(dim=1)[None], labels, BINS).item()
    assert calibrated < 0.01
    assert sharpened > 0.03


def test_classwise_ece_hand_computed():
    """Four examples, three classes (no probability on a bin edge):
    class 0: 0.62, 0.62 (labels 0, 1) -> |0.5 - 0.62| / 2; 0.25, 0.25 (labels 2, 0) -> |0.5 - 0.25| / 2: 0.185
    class 1: 0.28, 0.28 (labels 0, 1) -> |0.5 - 0.28| / 2; 0.10, 0.10 (labels 2, 0) -> |0 - 0.1| / 2:   0.16
    class 2: 0.10, 0.10 (labels 0, 1) -> |0 - 0.1| / 2;    0.65, 0.65 (labels 2, 0) -> |0.5 - 0.65| / 2: 0.125
    mean 0.47 / 3. Classes 1 and 2 both have 0.10 in the bin (1/15, 2/15]: pooled, the answer would differ."""
    probs = torch.tensor([[0.62, 0.28, 0.10], [0.62, 0.28, 0.10], [0.25, 0.10, 0.65], [0.25, 0.10, 0.65]],
                         dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0])
    uniform = torch.full((4, 3), 1 / 3, dtype=torch.float64)  # a second model: classes at 2/4, 1/4, 1/4 vs 1/3
    got = calibration.classwise_calibration_error(torch.stack([probs, uniform]), labels, BINS)
    assert got.shape == (2,)
    assert got[0].item() == pytest.approx(0.47 / 3, abs=1e-12)
    assert got[1].item() == pytest.approx((1 / 6 + 1 / 12 + 1 / 12) / 3, abs=1e-12)


def test_classwise_ece_matches_a_bin_by_bin_reference():
    generator = torch.Generator().manual_seed(4)
    probs = (torch.randn(3, 500, 10, generator=generator, dtype=torch.float64) * 3).softmax(dim=2)
    probs[0, 0] = torch.tensor([1.0] + [0.0] * 9, dtype=torch.float64)  # an underflowed 0 sits in the first bin
    labels = torch.randint(0, 10, (500,), generator=generator)
    got = calibration.classwise_calibration_error(probs, labels, BINS)
    for m in range(3):
        assert got[m].item() == pytest.approx(numpy_classwise_ece(probs[m].numpy(), labels.numpy()), abs=1e-9)


# ---- what the trainer records -------------------------------------------------------------------------------------


def test_the_trainer_records_ece_own_and_classwise_ece_at_the_last_evaluation(tiny_data):
    names = ["sigmoid_bce", "softmax_nll", "logit_mse"]
    members = train.grid(names, [0], {name: [0.1] for name in names})
    cond = tiny_condition()
    trainer = train.Trainer(cond, tiny_data, members, Settings(progress=False))
    records = [item for item in trainer.run() if isinstance(item, Record)]
    last = trainer.total_steps
    assert {r.step for r in records if r.metric in ("ece_own", "classwise_ece")} == {last}
    for m, member in enumerate(members):
        mine = {(r.step, r.split, r.metric): r.value for r in records if r.loss == member.loss}
        with torch.no_grad():
            logits = trainer.stack.member(m)(tiny_data.x_test).double()
        labels = tiny_data.y_test.numpy()
        probs = logits.softmax(dim=1).numpy()
        correct = logits.argmax(dim=1).numpy() == labels
        assert mine[last, "test", "classwise_ece"] == pytest.approx(numpy_classwise_ece(probs, labels), abs=1e-5)
        assert (last, "test", "ece_ts") in mine and (last, "val", "temperature") in mine
        if member.loss == "logit_mse":
            assert not any(metric == "ece_own" for _, _, metric in mine)
        elif member.loss == "sigmoid_bce":
            want = numpy_ece(logits.sigmoid().max(dim=1).values.numpy(), correct)
            assert mine[last, "test", "ece_own"] == pytest.approx(want, abs=1e-5)
        else:
            assert mine[last, "test", "ece_own"] == mine[last, "test", "ece"]


def test_temperature_scaled_readings_are_the_metrics_of_the_scaled_logits(tiny_data):
    """nll_ts and ece_ts, computed on their own now, are what ``_metrics`` gives on logits / T."""
    members = train.grid(["softmax_nll", "mse"], [0, 1], {"softmax_nll": [0.1], "mse": [0.1]})
    trainer = train.Trainer(tiny_condition(), tiny_data, members, Settings(progress=False))
    list(trainer.run())
    with torch.no_grad():
        val, test = trainer._logits(trainer.splits["val"].x), trainer._logits(trainer.splits["test"].x)
        got = trainer._calibration(val, test)
        temperature = torch.tensor(got[("val", "temperature")])
        want = trainer._metrics(test / temperature[:, None, None], trainer.splits["test"].y)
    assert got[("test", "nll_ts")] == want["nll"]
    assert got[("test", "ece_ts")] == want["ece"]
