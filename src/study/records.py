"""The measurement types training yields and everything downstream consumes. Imports nothing from the study."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def run_name(loss: str, lr: float, seed: int) -> str:
    """The one spelling of a run id, e.g. ``softmax_nll-lr0.1-s3`` (MLflow run name, table key)."""
    return f"{loss}-lr{lr:g}-s{seed}"


@dataclass(frozen=True)
class Record:
    """One scalar measurement of one model at one optimizer step."""

    loss: str
    lr: float
    seed: int
    epoch: float  # completed epochs at this step: step / steps_per_epoch
    step: int
    split: str  # train | val | test | train_flipped | train_clean
    metric: str
    value: float

    @property
    def run(self) -> str:
        return run_name(self.loss, self.lr, self.seed)


@dataclass(frozen=True)
class ExampleStats:
    """Per-example measurements of one model at one evaluation, on a fixed set of examples.

    Every array has shape [N]; ``index`` is the example's position in its split.
    """

    loss: str
    lr: float
    seed: int
    epoch: float
    step: int
    split: str  # probe (fixed test subset, every evaluation) | test (whole test set, last evaluation)
    index: np.ndarray
    label: np.ndarray
    predicted: np.ndarray
    p_true: np.ndarray  # softmax probability of the labelled class
    confidence: np.ndarray  # max softmax probability
    loss_value: np.ndarray  # the model's own training loss on the example
    logit_grad_norm: np.ndarray  # L2 norm of d loss_value / d logits

    @property
    def run(self) -> str:
        return run_name(self.loss, self.lr, self.seed)
