"""Calibration of stacked models' outputs: ECE, each loss's own ECE, classwise ECE, and the temperature that
minimises validation NLL. Measurements on tensors [M, N, K]: no records, no files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from study import losses


def expected_calibration_error(confidence: Tensor, correct: Tensor, bins: int) -> Tensor:
    """ECE over equal-width bins of max probability, (lower, upper] membership: sum_b n_b/n |acc_b - conf_b|.

    [M, N] confidences and correctness -> [M]."""
    m, n = confidence.shape
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1  # (lower, upper]; confidence > 0 always
    gap = torch.zeros(m, bins, dtype=confidence.dtype, device=confidence.device)
    # On CUDA, scatter_add_ of floats adds a bin's terms in no fixed order (atomics): ECE may differ in its last
    # bits between runs there. Declared rather than avoided: it is a reading, never fed back into training.
    gap.scatter_add_(1, which, correct.to(confidence.dtype) - confidence)  # sum over bin of (acc - conf)
    return gap.abs().sum(dim=1) / n


def own_calibration_error(logits: Tensor, labels: Tensor, kinds: Sequence[str], bins: int, *,
                          probs: Tensor | None = None) -> list[float | None]:
    """Each model's ECE on the probabilities its loss outputs (``kinds[m]``, one of ``losses.PROBABILITIES``), in the
    bins of ``expected_calibration_error``: [M, N, K] logits, [N] labels -> M values, None where the loss models no
    probability. "softmax": the max softmax probability; "sigmoid": the largest of the per-class sigmoids, the
    prediction its argmax. ``probs``: the softmax of ``logits`` when the caller has it already."""
    if len(kinds) != logits.shape[0]:
        raise ValueError(f"{len(kinds)} kinds of probabilities for {logits.shape[0]} models")
    unknown = set(kinds) - set(losses.PROBABILITIES)
    if unknown:
        raise ValueError(f"unknown kinds of probabilities {sorted(unknown)}; known: {losses.PROBABILITIES}")
    probs = logits.log_softmax(dim=2).exp() if probs is None else probs
    confidence, predicted = probs.max(dim=2)  # [M, N]
    sigmoid = torch.tensor([kind == "sigmoid" for kind in kinds], device=logits.device)
    # The largest sigmoid is the sigmoid of the largest logit (it is monotone), and its class is the softmax's.
    own = torch.where(sigmoid[:, None], logits.amax(dim=2).sigmoid(), confidence)
    values = expected_calibration_error(own, predicted == labels, bins).tolist()
    return [None if kind == "none" else value for kind, value in zip(kinds, values)]


def classwise_calibration_error(probs: Tensor, labels: Tensor, bins: int) -> Tensor:
    """Classwise ECE (Kull et al. 2019; "static calibration error", Nixon et al. 2019): for each class k, p_k of every
    example in equal-width (lower, upper] bins, sum_b n_b/n |mean_b 1[y = k] - mean_b p_k|; the mean over classes.

    [M, N, K] probabilities and [N] labels -> [M]. All classes and models in one scatter."""
    m, n, k = probs.shape
    which = (probs * bins).ceil().long().clamp(1, bins) - 1  # [M, N, K]; an underflowed 0 goes to the first bin
    which = which + torch.arange(k, device=probs.device) * bins  # class k's bins are k * bins ... (k + 1) * bins - 1
    hits = torch.nn.functional.one_hot(labels, k).to(probs.dtype)  # [N, K]
    gap = torch.zeros(m, k * bins, dtype=probs.dtype, device=probs.device)
    gap.scatter_add_(1, which.reshape(m, n * k), (hits - probs).reshape(m, n * k))  # as in expected_calibration_error
    return gap.abs().sum(dim=1) / (n * k)


def fit_temperature(logits: Tensor, labels: Tensor, *, low: float = 0.05, high: float = 20.0,
                    iterations: int = 48) -> Tensor:
    """Per-model temperature T in [low, high] minimising the NLL of softmax(logits / T): [M, N, K] -> [M].

    The NLL of softmax(b * z) is convex in the inverse temperature b, so a golden-section search on b brackets
    the optimum for every model at once (48 steps shrink the bracket below 1e-8 of its width)."""
    m, n, _ = logits.shape
    index = labels.expand(m, n)[..., None]

    def nll(inverse: Tensor) -> Tensor:  # [M] -> [M]
        scaled = logits * inverse[:, None, None]
        return -scaled.log_softmax(dim=2).gather(2, index).squeeze(2).mean(dim=1)

    ratio = (math.sqrt(5) - 1) / 2
    lo = torch.full((m,), 1 / high, device=logits.device)
    hi = torch.full((m,), 1 / low, device=logits.device)
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)  # lo < a < b < hi
    nll_a, nll_b = nll(a), nll(b)
    for _ in range(iterations):
        left = nll_a < nll_b  # the minimum lies in [lo, b], else in [a, hi]
        hi, lo = torch.where(left, b, hi), torch.where(left, lo, a)
        fresh = torch.where(left, hi - ratio * (hi - lo), lo + ratio * (hi - lo))
        nll_fresh = nll(fresh)  # one new evaluation per step; the other point is reused
        a, b, nll_a, nll_b = (torch.where(left, fresh, b), torch.where(left, a, fresh),
                              torch.where(left, nll_fresh, nll_b), torch.where(left, nll_a, nll_fresh))
    return 1 / ((lo + hi) / 2)
