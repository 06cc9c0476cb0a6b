"""The one network: an MLP with ReLU that returns raw logits (never probabilities). Imports only torch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    def __init__(self, sizes: Sequence[int]):
        """``sizes`` = (inputs, *hidden, classes), e.g. (784, 256, 256, 10)."""
        super().__init__()
        self.sizes = tuple(sizes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor) -> Tensor:  # [B, D] -> logits [B, K]
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


def init_mlp(sizes: Sequence[int], seed: int) -> MLP:
    """PyTorch's default Linear initialisation drawn from ``seed`` alone: the same seed gives bit-identical
    weights whatever loss the network will be trained with. The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP(sizes)


def describe(sizes: Sequence[int]) -> str:
    return "MLP " + "-".join(str(s) for s in sizes)
