"""The classification losses under study. Each maps logits [B, K, *] and labels [B, *] to a per-example loss
[B, *]: the class dimension is dimension 1, as in ``F.cross_entropy`` (trailing dimensions are extra examples).

Every loss is computed in log space from raw logits; the batch mean is the caller's. Each also has its gradient with
respect to the logits in closed form (``WITH_GRADIENTS``), which the trainer steps with and the tests check
against autograd. Imports only torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


def mse(logits: Tensor, labels: Tensor) -> Tensor:
    """Squared error between softmax probabilities and one-hot targets (the Brier score).

    Summed over the K classes, not averaged: averaging would shrink the gradient K-fold and make
    the loss look slow for a reason that has nothing to do with its shape. Bounded by 2.
    """
    return (logits.softmax(dim=1) - one_hot(logits, labels)).pow(2).sum(dim=1)


def sigmoid_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """One sigmoid per class against one-hot targets; binary cross-entropy summed over classes (not averaged)."""
    return _bce(logits, one_hot(logits, labels))


def softmax_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy: -log softmax(z)_y, through log_softmax so that it never takes the log of an underflowed 0."""
    return _nll(logits.log_softmax(dim=1), labels)


def smoothed_ce(logits: Tensor, labels: Tensor, *, eps: float = 0.1) -> Tensor:
    """Label-smoothed cross-entropy, PyTorch's convention: (1 - eps) * nll + eps * mean_k(-log_softmax(z)_k).

    The eps mass is spread as eps/K over all K classes, the labelled one included (as
    ``F.cross_entropy(label_smoothing=eps)`` does), so the loss cannot reach 0: its floor is the
    entropy of the smoothed target.
    """
    return _smoothed(logits.log_softmax(dim=1), labels, eps)


def _bce(logits: Tensor, targets: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)


def _nll(log_probs: Tensor, labels: Tensor) -> Tensor:
    return -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)


def _smoothed(log_probs: Tensor, labels: Tensor, eps: float) -> Tensor:
    return (1.0 - eps) * _nll(log_probs, labels) - eps * log_probs.mean(dim=1)


def one_hot(logits: Tensor, labels: Tensor) -> Tensor:
    """One-hot targets laid out like ``logits`` (class dimension 1), in their dtype."""
    return torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), 1.0)


# ---- the same losses with their gradients, in closed form -----------------------------------------------------------
# p = softmax(z), t = one_hot(y). Each returns the loss (as the function above computes it) and d loss / d z per
# example, laid out like the logits, sharing the softmax between the two: what the trainer steps with.


def mse_with_grad(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The gradient is the softmax Jacobian (diag(p) - p p^T) applied to 2(p - t): 2 p (r - <p, r>), r = p - t.
    It vanishes as p saturates, right or wrong: the squared error's flat spot."""
    probs = logits.softmax(dim=1)
    residual = probs - one_hot(logits, labels)
    grad = 2 * probs * (residual - (probs * residual).sum(dim=1, keepdim=True))
    return residual.pow(2).sum(dim=1), grad


def sigmoid_bce_with_grad(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The gradient is sigmoid(z) - t, each class on its own."""
    targets = one_hot(logits, labels)
    return _bce(logits, targets), logits.sigmoid() - targets


def softmax_nll_with_grad(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The gradient is p - t: as large as the mistake, whatever the confidence."""
    log_probs = logits.log_softmax(dim=1)
    return _nll(log_probs, labels), log_probs.exp() - one_hot(logits, labels)


def smoothed_ce_with_grad(logits: Tensor, labels: Tensor, *, eps: float = 0.1) -> tuple[Tensor, Tensor]:
    """The gradient is p - ((1 - eps) t + eps / K): zero only at the smoothed target, so logits stay finite."""
    log_probs = logits.log_softmax(dim=1)
    k = logits.shape[1]
    targets = torch.full_like(logits, eps / k).scatter_(1, labels.unsqueeze(1), 1.0 - eps + eps / k)
    return _smoothed(log_probs, labels, eps), log_probs.exp() - targets


LOSSES: dict[str, LossFn] = {
    "mse": mse,
    "sigmoid_bce": sigmoid_bce,
    "softmax_nll": softmax_nll,
    "smoothed_ce": smoothed_ce,
}

WITH_GRADIENTS: dict[str, Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "mse": mse_with_grad,
    "sigmoid_bce": sigmoid_bce_with_grad,
    "softmax_nll": softmax_nll_with_grad,
    "smoothed_ce": smoothed_ce_with_grad,
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


def build_with_grad(name: str, options: Mapping[str, float] | None = None) -> Callable[[Tensor, Tensor],
                                                                                     tuple[Tensor, Tensor]]:
    """``build(name, options)`` that also returns its closed-form logit gradient."""
    fn = WITH_GRADIENTS[check_name(name)]
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
