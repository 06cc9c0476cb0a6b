"""The classification losses under study. Each maps logits [B, K] and labels [B] to a per-example loss [B].

Every loss is computed in log space from raw logits; the batch mean is the caller's. Imports only torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial

import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


def mse(logits: Tensor, labels: Tensor) -> Tensor:
    """Squared error between softmax probabilities and one-hot targets (the Brier score).

    Summed over the K classes, not averaged: averaging would shrink the gradient K-fold and make
    the loss look slow for a reason that has nothing to do with its shape. Bounded by 2.
    """
    probs = logits.softmax(dim=1)  # [B, K]
    targets = F.one_hot(labels, logits.shape[1]).to(probs.dtype)
    return (probs - targets).pow(2).sum(dim=1)


def sigmoid_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """One sigmoid per class against one-hot targets; binary cross-entropy summed over classes (not averaged)."""
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)


def softmax_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy: -log softmax(z)_y, through log_softmax so that it never takes the log of an underflowed 0."""
    return -logits.log_softmax(dim=1).gather(1, labels[:, None]).squeeze(1)


def smoothed_ce(logits: Tensor, labels: Tensor, *, eps: float = 0.1) -> Tensor:
    """Label-smoothed cross-entropy, PyTorch's convention: (1 - eps) * nll + eps * mean_k(-log_softmax(z)_k).

    The eps mass is spread as eps/K over all K classes, the labelled one included (as
    ``F.cross_entropy(label_smoothing=eps)`` does), so the loss cannot reach 0: its floor is the
    entropy of the smoothed target.
    """
    log_probs = logits.log_softmax(dim=1)  # [B, K]
    nll = -log_probs.gather(1, labels[:, None]).squeeze(1)
    return (1.0 - eps) * nll - eps * log_probs.mean(dim=1)


LOSSES: dict[str, LossFn] = {
    "mse": mse,
    "sigmoid_bce": sigmoid_bce,
    "softmax_nll": softmax_nll,
    "smoothed_ce": smoothed_ce,
}

# What each loss assumes, logged as params next to the loss name.
CONVENTIONS: dict[str, dict[str, str]] = {
    "mse": {"link": "softmax", "targets": "one-hot", "class_reduction": "sum"},
    "sigmoid_bce": {"link": "sigmoid per class", "targets": "one-hot", "class_reduction": "sum"},
    "softmax_nll": {"link": "softmax", "targets": "class index", "class_reduction": "none (picks y)"},
    "smoothed_ce": {"link": "softmax", "targets": "one-hot smoothed by eps/K", "class_reduction": "sum"},
}


def check_name(name: str) -> str:
    """Return ``name`` if it is a known loss; otherwise raise a ValueError that lists the valid names."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return name


def build(name: str, options: Mapping[str, float] | None = None) -> LossFn:
    """Bind a loss's keyword-only knobs once (e.g. ``eps`` for smoothed_ce), so the loop sees one signature."""
    fn = LOSSES[check_name(name)]
    return partial(fn, **options) if options else fn


def uniform_value(name: str, num_classes: int = 10, *, eps: float = 0.1) -> float:
    """The closed-form loss at zero logits (uniform softmax): the value every loss starts near at step 0."""
    k = num_classes
    values = {
        "mse": (1 - 1 / k) ** 2 + (k - 1) / k**2,  # = 1 - 1/K
        "sigmoid_bce": k * math.log(2),
        "softmax_nll": math.log(k),
        "smoothed_ce": math.log(k),  # every class at 1/K: both terms equal ln K
    }
    return values[check_name(name)]
