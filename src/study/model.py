"""The model factory, keyed by a condition's ``model:`` block (``mlp``, ``cnn1d``). Every model maps inputs [B, D]
to raw logits [B, K] (never probabilities), and with ``forward(x, features=True)`` also gives the penultimate
layer's output (the features that the class-separation and transfer measures read). Imports only torch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


class MLP(nn.Module):
    def __init__(self, sizes: Sequence[int]):
        """``sizes`` = (inputs, *hidden, classes), e.g. (784, 256, 256, 10)."""
        super().__init__()
        self.sizes = tuple(sizes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits [B, K] of inputs [B, D]; with ``features`` also the penultimate layer's output (after its ReLU)."""
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        logits = self.layers[-1](x)
        return (x, logits) if features else logits


class CNN1d(nn.Module):
    """Convolutions over the input read as one channel of length D, each followed by ReLU, then one linear layer to
    the classes: the MNIST-1D paper's CNN (Greydanus 2020) at channels (25, 25, 25), kernel 5, stride 2, padding 1."""

    def __init__(self, length: int, channels: Sequence[int], kernel: int, stride: int, padding: int, classes: int):
        super().__init__()
        ins = (1, *channels[:-1])
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel, stride=stride, padding=padding)
                                   for a, b in zip(ins, channels))
        self.head = nn.Linear(channels[-1] * conv_length(length, len(channels), kernel, stride, padding), classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits [B, K] of inputs [B, D]; with ``features`` also what the head reads (the last convolution's
        output after its ReLU, flattened)."""
        x = x.unsqueeze(1)  # [B, 1, D]
        for conv in self.convs:
            x = torch.relu(conv(x))
        x = x.flatten(1)
        logits = self.head(x)
        return (x, logits) if features else logits


def conv_length(length: int, layers: int, kernel: int, stride: int, padding: int) -> int:
    """The signal's length after ``layers`` convolutions (PyTorch's Conv1d arithmetic, dilation 1)."""
    for _ in range(layers):
        length = math.floor((length + 2 * padding - kernel) / stride) + 1
    return length


@dataclass(frozen=True)
class MLPSpec:
    """``{kind: mlp, hidden: [256, 256]}``: ReLU layers of these widths between the data's inputs and classes."""

    kind: str = field(default="mlp", init=False)  # a field, so that asdict() and logged params name it
    hidden: tuple[int, ...]

    def build(self, input_dim: int, classes: int) -> MLP:
        return MLP((input_dim, *self.hidden, classes))

    def describe(self, input_dim: int, classes: int) -> str:
        return describe((input_dim, *self.hidden, classes))

    def check(self, input_dim: int) -> str | None:
        return None


@dataclass(frozen=True)
class CNN1dSpec:
    """``{kind: cnn1d, channels: [25, 25, 25], kernel: 5, stride: 2, padding: 1}``."""

    kind: str = field(default="cnn1d", init=False)
    channels: tuple[int, ...]
    kernel: int
    stride: int
    padding: int = field(metadata={"min": 0})  # the one field that may be 0 (config reads each field's "min")

    def build(self, input_dim: int, classes: int) -> CNN1d:
        return CNN1d(input_dim, self.channels, self.kernel, self.stride, self.padding, classes)

    def describe(self, input_dim: int, classes: int) -> str:
        return f"CNN1d {'-'.join(map(str, self.channels))} k{self.kernel} s{self.stride}"

    def check(self, input_dim: int) -> str | None:
        """Why inputs of length ``input_dim`` cannot pass the convolutions, or None."""
        if conv_length(input_dim, len(self.channels), self.kernel, self.stride, self.padding) < 1:
            return f"an input of length {input_dim} is used up before the last of {len(self.channels)} convolutions"
        return None


ModelSpec = MLPSpec | CNN1dSpec
# A `model:` block's kind -> its spec; the spec's fields are the block's other keys.
KINDS: dict[str, type[MLPSpec] | type[CNN1dSpec]] = {"mlp": MLPSpec, "cnn1d": CNN1dSpec}


def backend_problem(backend: str, spec: ModelSpec) -> str | None:
    """Why ``backend`` cannot step ``spec``, or None: the fused backend's hand-written backward knows MLPs only."""
    if backend == "fused" and not isinstance(spec, MLPSpec):
        return f"the fused backend steps MLPs only, not a {spec.kind} model; set backend: autograd (or auto)"
    return None


def init(spec: ModelSpec, input_dim: int, classes: int, seed: int) -> nn.Module:
    """PyTorch's default initialisation of ``spec``'s layers drawn from ``seed`` alone: the same seed gives
    bit-identical weights whatever loss the network will be trained with. The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build(input_dim, classes)


def init_mlp(sizes: Sequence[int], seed: int) -> MLP:
    """``init`` of the MLP with these sizes (inputs, *hidden, classes)."""
    return init(MLPSpec(tuple(sizes[1:-1])), sizes[0], sizes[-1], seed)


def describe(sizes: Sequence[int]) -> str:
    """An MLP's name from its sizes, e.g. "MLP 784-256-256-10" (any model: ``spec.describe(input_dim, classes)``)."""
    return "MLP " + "-".join(str(s) for s in sizes)
