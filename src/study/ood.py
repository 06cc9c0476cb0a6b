""""None of the above": how well each model's confidence separates test images of the classes it was trained on
from test images of classes it never saw. Imports only torch.

Two scores per input, both computed for every model so that the comparison is made on the same footing: the
largest softmax probability (Hendrycks & Gimpel 2017's baseline; the natural score of a softmax loss) and the
largest of the per-class sigmoids (the natural score of one sigmoid per class, which can also say "none": every
sigmoid below 0.5, i.e. every logit below 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

SCORES = ("max_softmax", "max_sigmoid")


def scores(logits: Tensor) -> dict[str, Tensor]:
    """Per-input scores of logits [M, N, K]: each [M, N], higher = more confident that the input is in a class."""
    return {"max_softmax": logits.softmax(dim=2).amax(dim=2), "max_sigmoid": logits.sigmoid().amax(dim=2)}


def none_share(logits: Tensor) -> Tensor:
    """Share of inputs whose sigmoids all fall below 0.5 (every logit below 0): the model says "none". [M]."""
    return (logits.amax(dim=2) < 0).float().mean(dim=1)


def auroc(inside: Tensor, outside: Tensor) -> Tensor:
    """Area under the ROC curve of in-distribution [M, I] against held-out [M, O] scores, per model: the
    probability that a random in-distribution input scores above a random held-out one, ties counting half."""
    ordered = outside.sort(dim=1).values.contiguous()
    below = torch.searchsorted(ordered, inside.contiguous(), right=False)  # held-out scores strictly below
    not_above = torch.searchsorted(ordered, inside.contiguous(), right=True)  # ... below or equal
    return (below + not_above).double().sum(dim=1) / (2.0 * inside.shape[1] * outside.shape[1])


def measure(test_logits: Tensor, heldout_logits: Tensor) -> dict[tuple[str, str], Tensor]:
    """(split, metric) -> [M]: AUROC of each score (split "heldout"), and the "none" share on both populations."""
    inside, outside = scores(test_logits), scores(heldout_logits)
    values = {("heldout", f"auroc_{name}"): auroc(inside[name], outside[name]) for name in SCORES}
    values[("heldout", "none_share")] = none_share(heldout_logits)
    values[("test", "none_share")] = none_share(test_logits)
    return values
