"""What a loss leaves in the penultimate layer: class separation (Kornblith, Chen, Lee & Norouzi 2021) and transfer
through a linear probe fitted on frozen features. Measurements on tensors of M stacked models; imports only torch.

Class separation is Kornblith et al.'s R^2 = 1 - d_within / d_total, d the cosine distance 1 - cos(a, b) between
feature vectors, averaged over every ordered pair (a vector paired with itself included, as in their sums):
d_within over the pairs of one class, averaged over the classes; d_total over the pairs of two classes, averaged
over all K^2 class pairs. With u the unit-length features and mu_k the mean of u over class k, both are closed forms
of the class means: d_within = 1 - mean_k |mu_k|^2 and d_total = 1 - |mean_k mu_k|^2, so the measure needs one pass
over the features and no N x N matrix. A zero feature vector (every ReLU off) has no direction: it counts as
orthogonal to everything (its unit vector is taken as 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PROBE_L2 = 1e-3  # the linear probe's weight decay, on standardised features (mean over examples of the loss + this)
PROBE_ITERATIONS = 200  # L-BFGS iterations of the probe's fit (the objective is convex; 200 reach its optimum)


class ClassSeparation:
    """Accumulates the per-class sums of unit feature vectors of M models over chunks of examples; ``value()`` is
    each model's R^2 [M]."""

    def __init__(self, models: int, classes: int, device: torch.device | str = "cpu"):
        self.sums: Tensor | None = None
        self.counts = torch.zeros(classes, device=device)
        self.models, self.classes = models, classes

    def add(self, features: Tensor, labels: Tensor) -> None:
        """``features`` [M, B, H] of examples whose classes are ``labels`` [B]."""
        unit = F.normalize(features.to(torch.float64), dim=2)  # a zero vector stays 0 (normalize's eps)
        one_hot = F.one_hot(labels, self.classes).to(unit.dtype)  # [B, K]
        part = torch.einsum("bk,mbh->mkh", one_hot, unit)
        self.sums = part if self.sums is None else self.sums + part
        self.counts += one_hot.sum(dim=0).to(self.counts.dtype)

    def value(self) -> Tensor:
        """R^2 of every model [M] over the classes seen (a class without examples takes no part)."""
        if self.sums is None:
            raise ValueError("no features were added")
        seen = self.counts > 0
        means = self.sums[:, seen] / self.counts[seen].to(self.sums.dtype)[None, :, None]  # [M, K', H]
        d_within = 1 - means.pow(2).sum(dim=2).mean(dim=1)
        d_total = 1 - means.mean(dim=1).pow(2).sum(dim=1)
        return (1 - d_within / d_total).float()


def class_separation(features: Tensor, labels: Tensor, classes: int) -> Tensor:
    """R^2 [M] of ``features`` [M, N, H] with classes ``labels`` [N] (one chunk: ``ClassSeparation`` for more)."""
    measure = ClassSeparation(features.shape[0], classes, features.device)
    measure.add(features, labels)
    return measure.value()


def linear_probe(train_features: Tensor, train_labels: Tensor, test_features: Tensor, classes: int) -> Tensor:
    """Predicted classes [M, N_test] of a multinomial logistic regression fitted per model on frozen features.

    Each model's features are standardised with the training examples' mean and standard deviation (per feature;
    a constant feature is left at 0), then the classifier minimises the mean cross-entropy plus PROBE_L2 times the
    squared weights (not the biases) by full-batch L-BFGS. The M fits are independent: their objectives are summed
    into one, whose minimum is every model's own (each term depends on its own weights alone)."""
    m, _, h = train_features.shape
    mean = train_features.mean(dim=1, keepdim=True)
    std = train_features.std(dim=1, correction=0, keepdim=True)
    scale = torch.where(std > 0, std, torch.ones_like(std))

    def standardise(x: Tensor) -> Tensor:
        return (x - mean) / scale

    x = standardise(train_features)
    weight = torch.zeros(m, h, classes, dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(m, 1, classes, dtype=x.dtype, device=x.device, requires_grad=True)
    targets = train_labels.expand(m, -1).reshape(-1)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=PROBE_ITERATIONS, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        optimizer.zero_grad()
        logits = torch.baddbmm(bias, x, weight)  # [M, N, K]
        fit = F.cross_entropy(logits.reshape(-1, classes), targets, reduction="none").view(m, -1).mean(dim=1)
        loss = (fit + PROBE_L2 * weight.pow(2).sum(dim=(1, 2))).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    with torch.no_grad():
        return torch.baddbmm(bias, standardise(test_features), weight).argmax(dim=2)
