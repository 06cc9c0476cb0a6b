"""Class separation (Kornblith et al. 2021's R^2) and the linear probe on frozen features: known answers, the closed
form against the definition's pairwise sums, and what the trainer records."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F

from conftest import synthetic_dataset, tiny_condition
from study import features, train
from study.records import Record
from study.train import Member, Settings


def pairwise_r2(x: torch.Tensor, labels: torch.Tensor) -> float:
    """R^2 by the definition's sums over every ordered pair of vectors (Kornblith et al. 2021, section 3.1):
    d_within = sum_k sum_{m,n in k} (1 - sim) / (K N_k^2), d_total = sum_{j,k} sum_{m in j, n in k} (1 - sim) /
    (K^2 N_j N_k)."""
    classes = sorted(set(labels.tolist()))
    unit = F.normalize(x.double(), dim=1)
    distance = 1 - unit @ unit.T
    members = {k: (labels == k).nonzero().flatten() for k in classes}
    within = sum(distance[members[k]][:, members[k]].mean() for k in classes) / len(classes)
    total = sum(distance[members[j]][:, members[k]].mean() for j, k in itertools.product(classes, classes))
    return float(1 - within / (total / len(classes) ** 2))


def test_identical_features_within_each_class_separate_completely():
    labels = torch.arange(10).repeat(7)
    directions = torch.randn(10, 32, generator=torch.Generator().manual_seed(0))
    x = directions[labels] * torch.rand(len(labels), 1) * 5  # the same direction within a class, any length
    assert features.class_separation(x[None], labels, 10).item() == pytest.approx(1.0, abs=1e-6)


def test_features_independent_of_the_class_do_not_separate():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(20_000, 64, generator=generator)
    labels = torch.randint(0, 10, (20_000,), generator=generator)
    assert abs(features.class_separation(x[None], labels, 10).item()) < 0.01


def test_the_closed_form_equals_the_pairwise_definition_with_unequal_classes():
    generator = torch.Generator().manual_seed(2)
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate((3, 9, 5, 14))])
    x = torch.randn(len(labels), 6, generator=generator).relu() + labels[:, None] * 0.3
    x[4] = 0  # a vector with every unit off counts as orthogonal to all
    got = features.class_separation(x[None], labels, 4).item()
    assert got == pytest.approx(pairwise_r2(x, labels), abs=1e-6)


def test_chunks_accumulate_to_the_whole_and_models_stay_apart():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 300, 8, generator=generator)
    x[1] += torch.randn(10, 8, generator=generator)[torch.arange(300) % 10] * 3  # model 1 separates its classes
    labels = torch.arange(300) % 10
    measure = features.ClassSeparation(3, 10)
    for start in range(0, 300, 64):
        measure.add(x[:, start:start + 64], labels[start:start + 64])
    whole = features.class_separation(x, labels, 10)
    assert torch.allclose(measure.value(), whole, atol=1e-6)
    assert [round(v, 6) for v in whole.tolist()] == [round(features.class_separation(x[m:m + 1], labels, 10).item(), 6)
                                                     for m in range(3)]
    assert whole[1] > whole[0] + 0.3 and whole[1] > whole[2] + 0.3


def test_the_probe_reads_linearly_separable_features_and_not_noise():
    generator = torch.Generator().manual_seed(4)
    centres = torch.randn(10, 16, generator=generator) * 4
    y_fit = torch.randint(0, 10, (2000,), generator=generator)
    y_test = torch.randint(0, 10, (500,), generator=generator)
    separable = torch.stack([centres[y_fit] + torch.randn(2000, 16, generator=generator) * 0.5,
                             torch.randn(2000, 16, generator=generator)])  # model 0 separates, model 1 is noise
    test = torch.stack([centres[y_test] + torch.randn(500, 16, generator=generator) * 0.5,
                        torch.randn(500, 16, generator=generator)])
    accuracy = (features.linear_probe(separable, y_fit, test, 10) == y_test).float().mean(dim=1)
    assert accuracy[0] > 0.98
    assert accuracy[1] < 0.2  # chance is 0.1


def test_probes_fitted_together_equal_probes_fitted_alone():
    generator = torch.Generator().manual_seed(5)
    centres = torch.randn(4, 10, generator=generator)
    y = torch.randint(0, 4, (600,), generator=generator)
    x = torch.stack([centres[y] * s + torch.randn(600, 10, generator=generator) for s in (0.5, 1.0, 2.0)])
    together = features.linear_probe(x, y, x, 4)
    alone = torch.cat([features.linear_probe(x[m:m + 1], y, x[m:m + 1], 4) for m in range(3)])
    assert (together == alone).float().mean() > 0.99  # the same optimum, up to L-BFGS's stopping point


def test_the_trainer_records_class_separation_and_with_held_out_classes_the_probe():
    data = synthetic_dataset(n_train=160, n_test=80, classes=8)
    generator = torch.Generator().manual_seed(6)
    heldout = dataclasses.replace(
        data, classes=tuple(range(8)),
        x_heldout=torch.randn(30, 12, generator=generator), y_heldout=torch.randint(8, 10, (30,), generator=generator),
        x_transfer=torch.randn(120, 12, generator=generator),
        y_transfer=torch.randint(0, 10, (120,), generator=generator))
    cond = tiny_condition(seeds=(0,), losses=("softmax_nll",), epochs=1)
    members = [Member("softmax_nll", 0.1, 0)]
    settings = Settings(progress=False)
    records = [r for r in train.Trainer(cond, heldout, members, settings).run() if isinstance(r, Record)]
    found = {(r.step, r.split, r.metric): r.value for r in records}
    last = max(step for step, _, _ in found)
    evaluations = sorted({step for step, split, metric in found if (split, metric) == ("test", "accuracy")})
    for step in evaluations:  # at every full evaluation, on the test set and the watched training subset
        for split in ("test", "train_subset"):
            assert -1 < found[(step, split, "class_separation")] <= 1
    assert {m for s, split, m in found if split == "transfer" and s == last} == {
        "accuracy", "heldout_accuracy", "trained_accuracy"}
    assert not any(split == "transfer" and s != last for s, split, _ in found)
    plain = [r for r in train.Trainer(cond, data, members, settings).run() if isinstance(r, Record)]
    assert not any(r.split == "transfer" for r in plain)  # no held-out classes, no probe
