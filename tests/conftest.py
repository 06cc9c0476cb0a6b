"""Shared fixtures: a tiny synthetic dataset and condition for training tests, and smoke params with overrides."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from study.config import Condition
from study.data import Dataset
from study.model import MLPSpec

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "smoke.yaml"
STUDY = REPO / "experiments" / "study.yaml"


def synthetic_dataset(*, n_train: int = 96, n_val: int = 48, n_test: int = 64, dim: int = 12, classes: int = 10,
                      label_noise: float = 0.0, seed: int = 0) -> Dataset:
    """Random Gaussian inputs labelled by a random linear teacher (learnable), with optional symmetric noise."""
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(dim, classes, generator=generator)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, dim, generator=generator)
        return x, (x @ teacher).argmax(dim=1)

    x_train, y_clean = split(n_train)
    x_val, y_val = split(n_val)
    x_test, y_test = split(n_test)
    flipped = torch.rand(n_train, generator=generator) < label_noise
    shift = torch.randint(1, classes, (n_train,), generator=generator)
    y_train = torch.where(flipped, (y_clean + shift) % classes, y_clean)
    return Dataset("synthetic", x_train, y_train, y_clean, flipped, x_val, y_val, x_test, y_test, classes)


def tiny_condition(**overrides) -> Condition:
    """A complete condition for the synthetic dataset: a small MLP, a few steps, every measurement switched on."""
    base = Condition(
        name="tiny", dataset="mnist1d", model=MLPSpec((16, 16)), backend="auto",
        losses=("mse", "sigmoid_bce", "softmax_nll", "smoothed_ce"), optimizer="sgd", momentum=0.9, batch_size=16,
        epochs=2, label_noise=0.0, noise_seed=0, val_size=48, split_seed=0, train_size=0, test_size=0, lr_grid=(0.1,),
        lr_from="tiny", tune_epochs=1, tune_seeds=(100,), evals_per_epoch=2, speed_resolution=0.5, log_every=2,
        probe_size=16, targets=(0.3, 0.5), seeds=(0, 1),
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="session")
def tiny_data() -> Dataset:
    return synthetic_dataset()


@pytest.fixture
def smoke_params(tmp_path: Path) -> Callable[..., Path]:
    """``write(edit=None, text=None, name=...)``: a copy of experiments/smoke.yaml in tmp_path.

    ``edit(params_dict)`` mutates the loaded params before they are written back; ``text`` replaces the file's
    content outright (for broken YAML)."""

    def write(edit: Callable[[dict], None] | None = None, *, text: str | None = None,
              name: str = "params.yaml") -> Path:
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
            return path
        params = copy.deepcopy(yaml.safe_load(SMOKE.read_text()))
        if edit is not None:
            edit(params)
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def smoke_pipeline(tmp_path_factory):
    """A temporary copy of this repo with the smoke params, after two real `dvc repro` runs (see smoke_repo.py).
    Its MLflow store is ``smoke_pipeline.tracking_uri``."""
    from smoke_repo import run_smoke_pipeline

    return run_smoke_pipeline(tmp_path_factory.mktemp("smoke-repo"))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: runs on a CUDA device; skipped where there is none")
