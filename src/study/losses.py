"""The loss registry: one ``LossSpec`` per loss, the only place a loss's name is spelled. Each loss maps logits
[B, K, *] and labels [B, *] to a per-example loss [B, *]: the class dimension is dimension 1, as in
``F.cross_entropy`` (trailing dimensions are extra examples: the trainer passes [M, K, B] slices).

Every loss is computed in log space from raw logits and summed over classes where it has a class sum; the batch mean
is the caller's. A spec may carry its logit gradient in closed form (what the trainer steps with, checked against
autograd by the tests); without one, ``build_with_grad`` derives it by autograd. Imports only torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]
GradFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

# The study's claims and published anchors a loss can take part in (``LossSpec.claims``); ``study.analysis`` picks
# each claim's compared losses by these ids, so that no claim spells a loss's name.
CLAIMS = (
    "sigmoid_multiclass",  # one sigmoid per class against softmax: does it work for multiclass? (seed text)
    "penalty_works",  # the unbounded confident-wrong penalty against bounded losses (seed text)
    "faster_training",  # cross-entropy trains faster than ... (seed text)
    "reliable_training",  # ... and more reliably (seed text)
    "gradient_meaningful",  # its gradient stays meaningful where these saturate (the study's own question)
    "smoothing_calibrates",  # Müller et al. 2019: label smoothing lowers ECE
    "squared_error_slower",  # Golik et al. 2013: squared error on probabilities trains slower than cross-entropy
    "square_loss_competitive",  # Hui & Belkin 2021: square loss on logits within about 1% of cross-entropy
    "focal_calibrates",  # Mukhoti et al. 2020: focal loss lowers ECE
    "bounded_resists_noise",  # Zhang & Sabuncu 2018, Ghosh et al. 2017: bounded losses resist label noise
    "separates_more",  # Kornblith et al. 2021: these objectives separate classes more than cross-entropy (higher R²)
)

# What probabilities a loss is trained to output (``LossSpec.probabilities``): its own terms for calibration. "softmax":
# one distribution over the K classes; "sigmoid": one independent probability per class (they need not sum to 1);
# "none": the loss models no probability (``LossSpec.no_probabilities`` says why), so it has no calibration of its own.
PROBABILITIES = ("softmax", "sigmoid", "none")


@dataclass(frozen=True)
class LossSpec:
    """One loss of the study and everything the pipeline needs to know about it.

    ``fn(logits, labels, **options)`` and ``with_grad(logits, labels, **options) -> (loss, dlogits)`` take the
    keyword options of ``options`` (their defaults). ``uniform(num_classes, **options)`` is the closed-form value at
    zero logits (None: evaluated). ``family`` says what the loss is made of, for readers and for the claims that
    contrast families; ``reference`` marks the loss every paired difference is taken against (exactly one);
    ``bounded`` says the loss has a finite supremum over all logits; ``claims`` lists ids of ``CLAIMS``.
    ``probabilities`` (one of ``PROBABILITIES``) is what the loss is trained to output, the probabilities its own
    calibration is measured on; with "none", ``no_probabilities`` gives the reason in words (the report shows it).
    """

    name: str
    fn: Callable[..., Tensor]
    label: str  # how figures and tables name it
    colour: str  # one fixed colour in every figure
    conventions: Mapping[str, str]  # logged as params next to the loss name
    formula: str  # per example, from logits z and label y: the report's methods paragraph
    options: Mapping[str, float] = field(default_factory=dict)
    with_grad: Callable[..., tuple[Tensor, Tensor]] | None = None
    uniform: Callable[..., float] | None = None
    family: str = ""
    reference: bool = False
    bounded: bool = False
    claims: frozenset[str] = frozenset()
    source: str = ""  # the publication the loss is taken from, when it is not a textbook loss
    probabilities: str = "softmax"  # one of PROBABILITIES
    no_probabilities: str = ""  # why the loss models no probability (only with probabilities="none")

    def __post_init__(self) -> None:
        # Read-only copies: a spec is shared by every caller and must not change under them.
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "conventions", MappingProxyType(dict(self.conventions)))
        object.__setattr__(self, "claims", frozenset(self.claims))
        unknown = self.claims - set(CLAIMS)
        if unknown:
            raise ValueError(f"loss {self.name!r}: unknown claims {sorted(unknown)}; known: {', '.join(CLAIMS)}")
        if self.probabilities not in PROBABILITIES:
            raise ValueError(f"loss {self.name!r}: probabilities {self.probabilities!r} is not one of "
                             f"{', '.join(PROBABILITIES)}")
        if (self.probabilities == "none") != bool(self.no_probabilities):
            raise ValueError(f"loss {self.name!r}: no_probabilities gives the reason when, and only when, "
                             f"probabilities is 'none'")

    def own_probabilities(self, logits: Tensor, dim: int = 1) -> Tensor | None:
        """The probabilities the loss is trained to output, laid out like ``logits`` (classes along ``dim``): the
        softmax, one sigmoid per class, or None for a loss that models none."""
        if self.probabilities == "softmax":
            return logits.softmax(dim=dim)
        if self.probabilities == "sigmoid":
            return logits.sigmoid()
        return None

    def bound_options(self, options: Mapping[str, float] | None = None) -> dict[str, float]:
        """The spec's default options updated by ``options``; a key the loss does not take is an error."""
        given = dict(options or {})
        unknown = set(given) - set(self.options)
        if unknown:
            takes = ", ".join(self.options) or "no options"
            raise ValueError(f"loss {self.name!r} takes {takes}; got {', '.join(sorted(unknown))}")
        return {**self.options, **given}

    def bind(self, options: Mapping[str, float] | None = None) -> LossFn:
        bound = self.bound_options(options)
        return partial(self.fn, **bound) if bound else self.fn

    def bind_with_grad(self, options: Mapping[str, float] | None = None) -> GradFn:
        if self.with_grad is None:
            return autograd_with_grad(self.bind(options))
        bound = self.bound_options(options)
        return partial(self.with_grad, **bound) if bound else self.with_grad


def autograd_with_grad(fn: LossFn) -> GradFn:
    """(loss, dloss/dlogits) of ``fn`` by autograd, for the whole batch at once, any layout with class dimension 1.

    Examples do not interact, so the gradient of the summed loss holds each example's own gradient."""

    def with_grad(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            leaf = logits.detach().requires_grad_(True)
            per_example = fn(leaf, labels)
            (grad,) = torch.autograd.grad(per_example.sum(), leaf)
        return per_example.detach(), grad

    return with_grad


# ---- the losses ------------------------------------------------------------------------------------------------------
# p = softmax(z), t = one_hot(y). Each ``*_with_grad`` returns the loss (as the function computes it) and d loss / d z
# per example, laid out like the logits, sharing the softmax between the two.


def mse(logits: Tensor, labels: Tensor) -> Tensor:
    """Squared error between softmax probabilities and one-hot targets (the Brier score).

    Summed over the K classes, not averaged: averaging would shrink the gradient K-fold and make
    the loss look slow for a reason that has nothing to do with its shape. Bounded by 2.
    """
    return (logits.softmax(dim=1) - one_hot(logits, labels)).pow(2).sum(dim=1)


def mse_with_grad(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The gradient is the softmax Jacobian (diag(p) - p p^T) applied to 2(p - t): 2 p (r - <p, r>), r = p - t.
    It vanishes as p saturates, right or wrong: the squared error's flat spot."""
    probs = logits.softmax(dim=1)
    residual = probs - one_hot(logits, labels)
    grad = 2 * probs * (residual - (probs * residual).sum(dim=1, keepdim=True))
    return residual.pow(2).sum(dim=1), grad


def sigmoid_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """One sigmoid per class against one-hot targets; binary cross-entropy summed over classes (not averaged)."""
    return _bce(logits, one_hot(logits, labels))


def sigmoid_bce_with_grad(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The gradient is sigmoid(z) - t, each class on its own."""
    targets = one_hot(logits, labels)
    return _bce(logits, targets), logits.sigmoid() - targets


def softmax_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy: -log softmax(z)_y, through log_softmax so that it never takes the log of an underflowed 0."""
    return _nll(logits.log_softmax(dim=1), labels)


def softmax_nll_with_grad(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The gradient is p - t: as large as the mistake, whatever the confidence."""
    log_probs = logits.log_softmax(dim=1)
    return _nll(log_probs, labels), log_probs.exp() - one_hot(logits, labels)


def smoothed_ce(logits: Tensor, labels: Tensor, *, eps: float = 0.1) -> Tensor:
    """Label-smoothed cross-entropy, PyTorch's convention: (1 - eps) * nll + eps * mean_k(-log_softmax(z)_k).

    The eps mass is spread as eps/K over all K classes, the labelled one included (as
    ``F.cross_entropy(label_smoothing=eps)`` does), so the loss cannot reach 0: its floor is the
    entropy of the smoothed target.
    """
    return _smoothed(logits.log_softmax(dim=1), labels, eps)


def smoothed_ce_with_grad(logits: Tensor, labels: Tensor, *, eps: float = 0.1) -> tuple[Tensor, Tensor]:
    """The gradient is p - ((1 - eps) t + eps / K): zero only at the smoothed target, so logits stay finite."""
    log_probs = logits.log_softmax(dim=1)
    k = logits.shape[1]
    targets = torch.full_like(logits, eps / k).scatter_(1, labels.unsqueeze(1), 1.0 - eps + eps / k)
    return _smoothed(log_probs, labels, eps), log_probs.exp() - targets


def logit_mse(logits: Tensor, labels: Tensor) -> Tensor:
    """Squared error of the raw logits against one-hot targets, no softmax: sum_k (z_k - t_k)^2.

    The square loss of Hui & Belkin 2021 ("Evaluation of neural architectures trained with square loss vs
    cross-entropy in classification tasks", ICLR), with their k = M = 1 (no rescaling, what they use for 10
    classes). Summed over classes where they average over them: the study's convention for every loss; the K-fold
    gradient difference is absorbed by the tuned learning rate. Unbounded; not the study's ``mse``, which is on
    probabilities.
    """
    return (logits - one_hot(logits, labels)).pow(2).sum(dim=1)


def logit_mse_with_grad(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The gradient is 2 (z - t): linear in the logits, and it pushes right answers back towards logit 1 too."""
    residual = logits - one_hot(logits, labels)
    return residual.pow(2).sum(dim=1), 2 * residual


def focal(logits: Tensor, labels: Tensor, *, gamma: float = 3.0) -> Tensor:
    """Focal loss, -(1 - p_y)^gamma log p_y (Lin et al. 2017, "Focal loss for dense object detection", in its
    softmax form), gamma = 3 as in Mukhoti et al. 2020 ("Calibrating deep neural networks using focal loss").

    Cross-entropy down-weighted on examples that are already right; gamma = 0 is cross-entropy. 1 - p_y is
    -expm1(log p_y), exact where p_y is close to 1. Its logit gradient is left to autograd (no closed form here).
    """
    log_p = _picked(logits.log_softmax(dim=1), labels)
    return -(-torch.expm1(log_p)).pow(gamma) * log_p


def gce(logits: Tensor, labels: Tensor, *, q: float = 0.7) -> Tensor:
    """Generalized cross-entropy, (1 - p_y^q) / q (Zhang & Sabuncu 2018, "Generalized cross entropy loss for
    training deep neural networks with noisy labels"), q = 0.7 as there.

    q -> 0 gives cross-entropy, q = 1 gives 1 - p_y (half of ``mae``). Bounded by 1/q. p_y^q = exp(q log p_y).
    """
    return -torch.expm1(q * _picked(logits.log_softmax(dim=1), labels)) / q


def gce_with_grad(logits: Tensor, labels: Tensor, *, q: float = 0.7) -> tuple[Tensor, Tensor]:
    """The gradient is p_y^q (p - t): cross-entropy's, weighted by p_y^q, so confidently wrong examples (p_y -> 0)
    barely pull."""
    log_probs = logits.log_softmax(dim=1)
    scaled = q * _picked(log_probs, labels)
    weight = scaled.exp().unsqueeze(1)
    return -torch.expm1(scaled) / q, weight * (log_probs.exp() - one_hot(logits, labels))


def mae(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean absolute error on softmax probabilities, sum_k |p_k - t_k| = 2 (1 - p_y) (Ghosh et al. 2017, "Robust
    loss functions under label noise for deep neural networks"). Summed over classes, as the paper's L1 norm is.

    Bounded by 2 and symmetric (its sum over all labels is constant), the property that makes it noise-tolerant.
    Computed as -2 expm1(log p_y), from log_softmax.
    """
    return -2 * torch.expm1(_picked(logits.log_softmax(dim=1), labels))


def mae_with_grad(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The gradient is 2 p_y (p - t): cross-entropy's, weighted by p_y, which vanishes on confidently wrong
    examples (the MAE's slow start)."""
    log_probs = logits.log_softmax(dim=1)
    log_p = _picked(log_probs, labels)
    return -2 * torch.expm1(log_p), 2 * log_p.exp().unsqueeze(1) * (log_probs.exp() - one_hot(logits, labels))


def squentropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Squentropy (Hui, Belkin & Wright 2023, "Cut your losses with squentropy", ICML): cross-entropy plus the mean
    squared raw logit of the K - 1 wrong classes, -log softmax(z)_y + sum_{j != y} z_j^2 / (K - 1). No knob.

    Not the Brier score: the square term is on raw logits (no softmax), and only on the wrong classes, averaged over
    them (the paper's 1/(K - 1)), so it holds their logits near 0 while cross-entropy pulls z_y up. Unbounded.
    """
    return _squentropy(logits.log_softmax(dim=1), logits, labels)


def squentropy_with_grad(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The gradient is p - t + 2 (1 - t) z / (K - 1): cross-entropy's, plus a pull of each wrong logit towards 0."""
    log_probs = logits.log_softmax(dim=1)
    targets = one_hot(logits, labels)
    grad = log_probs.exp() - targets + 2 * (1 - targets) * logits / (logits.shape[1] - 1)
    return _squentropy(log_probs, logits, labels), grad


def _bce(logits: Tensor, targets: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)


def _picked(log_probs: Tensor, labels: Tensor) -> Tensor:
    """log p_y: the labelled class's entry of each example."""
    return log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)


def _nll(log_probs: Tensor, labels: Tensor) -> Tensor:
    return -_picked(log_probs, labels)


def _smoothed(log_probs: Tensor, labels: Tensor, eps: float) -> Tensor:
    return (1.0 - eps) * _nll(log_probs, labels) - eps * log_probs.mean(dim=1)


def _squentropy(log_probs: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
    wrong = 1 - one_hot(logits, labels)  # [B, K]: 1 on the K - 1 wrong classes
    return _nll(log_probs, labels) + (wrong * logits.pow(2)).sum(dim=1) / (logits.shape[1] - 1)


def one_hot(logits: Tensor, labels: Tensor) -> Tensor:
    """One-hot targets laid out like ``logits`` (class dimension 1), in their dtype."""
    return torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), 1.0)


# ---- the registry ----------------------------------------------------------------------------------------------------
# Colours: seaborn's "colorblind" palette, one entry per loss.

_SOFTMAX_ONE_HOT_SUM = {"link": "softmax", "targets": "one-hot", "class_reduction": "sum"}
_COMPARED = frozenset({"faster_training", "reliable_training", "gradient_meaningful"})

BUILTIN = (
    LossSpec(
        "mse", mse, label="MSE on softmax (Brier)", colour="#de8f05", conventions=_SOFTMAX_ONE_HOT_SUM,
        formula="Σ_k (softmax(z)_k − onehot(y)_k)² (summed over classes)", with_grad=mse_with_grad,
        uniform=lambda k: (1 - 1 / k) ** 2 + (k - 1) / k**2,  # = 1 - 1/K
        family="softmax probabilities, bounded", bounded=True,
        claims=_COMPARED | {"penalty_works", "squared_error_slower"},
    ),
    LossSpec(
        "sigmoid_bce", sigmoid_bce, label="sigmoid + BCE (per class)", colour="#029e73",
        conventions={"link": "sigmoid per class", "targets": "one-hot", "class_reduction": "sum"},
        formula="Σ_k BCE(sigmoid(z_k), onehot(y)_k)", with_grad=sigmoid_bce_with_grad,
        uniform=lambda k: k * math.log(2), family="sigmoid per class",
        claims=_COMPARED | {"sigmoid_multiclass", "separates_more"}, probabilities="sigmoid",
    ),
    LossSpec(
        "softmax_nll", softmax_nll, label="softmax + NLL (cross-entropy)", colour="#0173b2",
        conventions={"link": "softmax", "targets": "class index", "class_reduction": "none (picks y)"},
        formula="−log softmax(z)_y", with_grad=softmax_nll_with_grad, uniform=lambda k: math.log(k),
        family="cross-entropy", reference=True,
    ),
    LossSpec(
        "smoothed_ce", smoothed_ce, label="label-smoothed cross-entropy", colour="#cc78bc",
        conventions={"link": "softmax", "targets": "one-hot smoothed by eps/K", "class_reduction": "sum"},
        formula="(1−ε)·nll + ε·mean_k(−log softmax(z)_k)", options={"eps": 0.1}, with_grad=smoothed_ce_with_grad,
        uniform=lambda k, eps: math.log(k),  # every class at 1/K: both terms equal ln K
        family="smoothed cross-entropy", claims={"smoothing_calibrates", "separates_more"},
    ),
    LossSpec(
        "logit_mse", logit_mse, label="square loss on logits", colour="#d55e00",
        conventions={"link": "none (raw logits)", "targets": "one-hot", "class_reduction": "sum"},
        formula="Σ_k (z_k − onehot(y)_k)² on raw logits", with_grad=logit_mse_with_grad, uniform=lambda k: 1.0,
        family="squared error on logits", claims={"square_loss_competitive", "separates_more"},
        source="Hui & Belkin 2021",
        probabilities="none", no_probabilities="raw logits regressed onto one-hot targets: no probability is modelled",
    ),
    LossSpec(
        "focal", focal, label="focal loss", colour="#ca9161",
        conventions={"link": "softmax", "targets": "class index", "class_reduction": "none (picks y)"},
        formula="−(1 − p_y)^γ log p_y, p = softmax(z)", options={"gamma": 3.0},
        uniform=lambda k, gamma: (1 - 1 / k) ** gamma * math.log(k),
        family="reweighted cross-entropy", claims={"focal_calibrates"}, source="Lin et al. 2017; Mukhoti et al. 2020",
    ),
    LossSpec(
        "gce", gce, label="generalized cross-entropy", colour="#56b4e9",
        conventions={"link": "softmax", "targets": "class index", "class_reduction": "none (picks y)"},
        formula="(1 − p_y^q) / q, p = softmax(z)", options={"q": 0.7}, with_grad=gce_with_grad,
        uniform=lambda k, q: (1 - k ** -q) / q, family="softmax probabilities, bounded", bounded=True,
        claims={"penalty_works", "bounded_resists_noise"}, source="Zhang & Sabuncu 2018",
    ),
    LossSpec(
        "mae", mae, label="MAE on softmax", colour="#fbafe4", conventions=_SOFTMAX_ONE_HOT_SUM,
        formula="Σ_k |softmax(z)_k − onehot(y)_k| = 2(1 − p_y)", with_grad=mae_with_grad,
        uniform=lambda k: 2 * (1 - 1 / k), family="softmax probabilities, bounded", bounded=True,
        claims={"penalty_works", "bounded_resists_noise"}, source="Ghosh et al. 2017",
    ),
    LossSpec(
        "squentropy", squentropy, label="squentropy (CE + wrong logits²)", colour="#ece133",
        conventions={"link": "softmax (CE term); raw logits (square term)", "targets": "class index",
                     "class_reduction": "squares of the K−1 wrong logits, averaged"},
        formula="−log softmax(z)_y + Σ_{j≠y} z_j² / (K − 1)", with_grad=squentropy_with_grad,
        uniform=lambda k: math.log(k), family="cross-entropy plus squared logits",
        source="Hui, Belkin & Wright 2023",
    ),
)

_REGISTRY: dict[str, LossSpec] = {}


def register(spec: LossSpec, *, replace: bool = False) -> LossSpec:
    """Add ``spec`` at the end of the registry (or in its old place with ``replace``). Every derived mapping below
    is a view over the registry, so it shows the new entry at once. A variant is an entry too: the same function
    with other options under another name."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"loss {spec.name!r} is registered already; pass replace=True to swap it")
    others = [s.name for s in _REGISTRY.values() if s.reference and s.name != spec.name]
    if spec.reference and others:
        raise ValueError(f"loss {spec.name!r} cannot be the reference: {others[0]} is")
    if not spec.name.isidentifier():
        raise ValueError(f"loss name {spec.name!r} must be a Python identifier (it names runs, columns, params)")
    _REGISTRY[spec.name] = spec
    return spec


@contextmanager
def registered(*specs: LossSpec) -> Iterator[tuple[LossSpec, ...]]:
    """Register ``specs`` for the duration of a ``with`` block (tests), then remove them again."""
    added = []
    try:
        for spec in specs:
            added.append(register(spec))
        yield specs
    finally:
        for spec in reversed(added):
            _REGISTRY.pop(spec.name, None)


for _spec in BUILTIN:
    register(_spec)


def spec(name: str) -> LossSpec:
    return _REGISTRY[check_name(name)]


def specs() -> tuple[LossSpec, ...]:
    """Every registered loss, in registration order (the order of every table and figure)."""
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def reference() -> str:
    """The loss every paired difference is taken against (the spec with ``reference=True``)."""
    found = [s.name for s in _REGISTRY.values() if s.reference]
    if len(found) != 1:
        raise LookupError(f"exactly one loss must be the reference; found {found or 'none'}")
    return found[0]


def taking_part(claim: str) -> tuple[str, ...]:
    """The losses that take part in ``claim`` (an id of ``CLAIMS``), in registry order."""
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}; known: {', '.join(CLAIMS)}")
    return tuple(s.name for s in _REGISTRY.values() if claim in s.claims)


def check_name(name: str) -> str:
    """Return ``name`` if it is a registered loss; otherwise raise a ValueError that lists the valid names."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; valid losses: {', '.join(_REGISTRY)}")
    return name


def build(name: str, options: Mapping[str, float] | None = None) -> LossFn:
    """Bind a loss's keyword-only knobs once (its defaults updated by ``options``), so the loop sees one signature."""
    return spec(name).bind(options)


def build_with_grad(name: str, options: Mapping[str, float] | None = None) -> GradFn:
    """``build(name, options)`` that also returns the logit gradient: the closed form where the spec has one,
    autograd otherwise (for the whole batch at once, any layout with class dimension 1)."""
    return spec(name).bind_with_grad(options)


def uniform_value(name: str, num_classes: int = 10, **options: float) -> float:
    """The loss at zero logits (uniform softmax): the value every loss starts near at step 0. The spec's closed form
    where it has one, else the loss evaluated in float64."""
    s = spec(name)
    bound = s.bound_options(options)
    if s.uniform is not None:
        return float(s.uniform(num_classes, **bound))
    zero = torch.zeros(1, num_classes, dtype=torch.float64)
    return float(s.bind(bound)(zero, torch.zeros(1, dtype=torch.long))[0])


class _View(Mapping):
    """A read-only mapping over the live registry: name -> ``derive(spec)``, for the specs ``keep`` accepts."""

    def __init__(self, derive: Callable[[LossSpec], object], keep: Callable[[LossSpec], bool] = lambda s: True):
        self._derive, self._keep = derive, keep

    def _names(self) -> list[str]:
        return [n for n, s in _REGISTRY.items() if self._keep(s)]

    def __getitem__(self, name: str):
        s = _REGISTRY.get(name)
        if s is None or not self._keep(s):
            raise KeyError(name)
        return self._derive(s)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"


# Views kept for the modules that import these names: each reflects registrations made at run time.
LOSSES: Mapping[str, LossFn] = _View(lambda s: s.bind())  # name -> the loss with its default options bound
WITH_GRADIENTS: Mapping[str, GradFn] = _View(lambda s: s.bind_with_grad(), keep=lambda s: s.with_grad is not None)
CONVENTIONS: Mapping[str, dict[str, str]] = _View(lambda s: dict(s.conventions))  # logged as params per run
COLOURS: Mapping[str, str] = _View(lambda s: s.colour)  # what every figure colours the loss with
LABELS: Mapping[str, str] = _View(lambda s: s.label)  # what every figure and table names it


def variant(of: str, name: str, *, colour: str, label: str | None = None, **options: float) -> LossSpec:
    """An unregistered spec for ``of``'s function with other options under another name (register it to use it),
    e.g. ``variant("smoothed_ce", "smoothed_ce_05", eps=0.05, colour=...)``. It takes part in no claim and is never
    the reference: a variant is compared, not compared against."""
    base = spec(of)
    bound = base.bound_options(options)
    shown = ", ".join(f"{key} = {value:g}" for key, value in bound.items())
    return dataclasses.replace(base, name=name, colour=colour, options=bound, reference=False, claims=frozenset(),
                               label=label or f"{base.label} ({shown})")
