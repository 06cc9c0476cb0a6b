"""Gradient magnitudes of stacked models: global and per-layer parameter-gradient norms, per-example logit
gradients. Imports only torch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

SATURATION = 1e-3  # a wrong example's logit gradient counts as vanished below this L2 norm


def layer_norms(layers: Sequence[Sequence[Tensor]]) -> Tensor:
    """L2 norm of each layer's gradient, per model: [M, L] from L groups of stacked gradients [M, ...] (a layer's
    weight and bias, or every parameter of one module)."""
    squares = []
    for tensors in layers:
        total = tensors[0].flatten(1).pow(2).sum(1)
        for grad in tensors[1:]:
            total = total + grad.flatten(1).pow(2).sum(1)
        squares.append(total)
    return torch.stack(squares, dim=1).sqrt()


def global_norm(layer: Tensor) -> Tensor:
    """The clip_grad_norm_ convention: the L2 norm over all parameters, from per-layer norms [M, L] -> [M]."""
    return layer.pow(2).sum(dim=1).sqrt()


def logit_grads(loss_fn: Callable[[Tensor, Tensor], Tensor], logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example loss [N] and its gradient with respect to the example's own logits [N, K].

    Examples are independent, so the gradient of the summed loss holds each example's own gradient.
    """
    logits = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        per_example = loss_fn(logits, labels)
        (grad,) = torch.autograd.grad(per_example.sum(), logits)
    return per_example.detach(), grad
