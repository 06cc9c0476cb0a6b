"""Noisy-label rates tuned on noisy labels: the validation split's noisy labels (data.load's ``y_val_noisy``) carry
the training labels' flip rate, drawn deterministically from their own seed; the tune stage scores on them, the train
stage reads the clean ones (an oracle under label noise)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import synthetic_dataset, tiny_condition
from study import config, data, runner

N_TRAIN, N_TEST, VAL = 20_000, 100, 8_000


@pytest.fixture
def fake_idx(monkeypatch):
    """data.load reads this synthetic Fashion-MNIST (balanced labels) instead of the IDX files."""
    generator = torch.Generator().manual_seed(7)
    x_all, x_test = torch.rand(N_TRAIN, 784, generator=generator), torch.rand(N_TEST, 784, generator=generator)
    y_all, y_test = torch.arange(N_TRAIN) % 10, torch.arange(N_TEST) % 10
    monkeypatch.setattr(data, "_read_idx", lambda dataset, root: (x_all, y_all, x_test, y_test))
    return y_all


def load(root, **changes):
    args = dict(val_size=VAL, split_seed=0, train_size=0, test_size=0, label_noise=0.4, noise_seed=0) | changes
    return data.load("fashion_mnist", root, **args)


def test_noisy_validation_labels_flip_at_the_training_rate(fake_idx, tmp_path):
    for rate in (0.2, 0.4):
        ds = load(tmp_path, label_noise=rate)
        share = (ds.y_val_noisy != ds.y_val).double().mean().item()
        assert share == pytest.approx(rate, abs=4 * math.sqrt(rate * (1 - rate) / VAL))  # within 4 standard errors
        assert share == pytest.approx(ds.flipped.double().mean().item(), abs=0.03)  # as in training
        assert ds.y_val_noisy.min() >= 0 and ds.y_val_noisy.max() < ds.num_classes


def test_noisy_validation_labels_are_deterministic_and_drawn_apart_from_the_training_flips(fake_idx, tmp_path):
    first, again = load(tmp_path), load(tmp_path)
    assert torch.equal(first.y_val_noisy, again.y_val_noisy)
    other = load(tmp_path, noise_seed=1)
    assert not torch.equal(first.y_val_noisy, other.y_val_noisy)  # the flips follow noise_seed
    # Not the training flips' draw: the first VAL training flips would be the same mask.
    val_flips = first.y_val_noisy != first.y_val
    assert not torch.equal(val_flips, first.flipped[:VAL])
    assert data.val_noise_seed(0) != 0


def test_clean_validation_labels_stay_clean(fake_idx, tmp_path):
    noisy, clean = load(tmp_path, label_noise=0.4), load(tmp_path, label_noise=0.0)
    assert torch.equal(noisy.y_val, clean.y_val)  # the noise never touches y_val
    order = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy.y_val, fake_idx[order[:VAL]])
    assert torch.equal(clean.y_val_noisy, clean.y_val)  # no noise: the tune stage sees the clean labels
    assert torch.equal(noisy.with_noisy_validation().y_val, noisy.y_val_noisy)
    built = synthetic_dataset()  # built positionally, without noisy labels: tuning reads the clean ones
    assert built.with_noisy_validation() is built


@pytest.fixture
def noisy_dataset(monkeypatch):
    """runner's data loads give this dataset, whose noisy validation labels differ from the clean ones."""
    base = synthetic_dataset(n_val=200)
    noisy, _ = data._flip_labels(base.y_val, 0.4, 3, base.num_classes)
    ds = dataclasses.replace(base, y_val_noisy=noisy)
    monkeypatch.setattr(data, "load", lambda *args, **kwargs: ds)
    assert not torch.equal(ds.y_val, ds.y_val_noisy)
    return ds


def test_the_tune_stage_scores_on_noisy_labels(noisy_dataset, smoke_params, monkeypatch, tmp_path):
    seen = []

    def run_grid(cfg, cond, data_root, trainer, tracker, *, into, keep_examples, stop=lambda: False, load_data=None):
        seen.append((trainer.splits["val"].y.cpu(), load_data(cond, data_root).y_val))
        collect = runner.collect
        collect(trainer.run(), tracker, into=into)

    monkeypatch.setattr(runner, "_run_grid", run_grid)
    cfg = config.load(smoke_params())
    cond = dataclasses.replace(cfg.condition("fashion_noise40"), lr_grid=(0.1,), lr_extend=0, tune_seeds=(100,),
                               batch_size=16)
    runner.tune(cfg, cond, data_root=tmp_path, out=tmp_path, tracking=False, progress=False)
    for trained_on, ray_workers_load in seen:  # here and on a Ray worker alike
        assert torch.equal(trained_on, noisy_dataset.y_val_noisy)
        assert torch.equal(ray_workers_load, noisy_dataset.y_val_noisy)


def test_the_train_stage_reads_the_clean_validation_labels(noisy_dataset, monkeypatch, tmp_path):
    seen = []

    def train_pass(cfg, cond, dataset, lrs, **kwargs):
        seen.append(dataset.y_val)
        return True

    monkeypatch.setattr(runner, "_train_pass", train_pass)
    cond = tiny_condition(label_noise=0.4)
    cfg = type("C", (), {"threads": None})()  # the stage reads only the thread count before the data
    runner.train_condition(cfg, cond, {loss: 0.1 for loss in cond.losses}, data_root=tmp_path, out=tmp_path,
                           checkpoint=None, tracking=False, progress=False)
    assert len(seen) == 1 and torch.equal(seen[0], noisy_dataset.y_val)
