"""The confident-wrong probe: loss and logit gradient against the wrong-class margin on synthetic logits, the
closed-form anchors, and the checks of the seed text's claims. Everything is computed at call time.

Imports torch, pandas and the loss registry only; writes no files (the CLI does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from study.losses import LossFn, build, check_name, names, reference, spec, uniform_value
from study.verdicts import FAILS, HOLDS, NUANCE

SWEEP_COLUMNS = ("loss", "margin", "p_true", "loss_value", "logit_grad_norm", "grad_true")
CLAIM_COLUMNS = ("claim_id", "claim", "measured", "value", "reference", "verdict", "note", "figure")

VERDICTS = (HOLDS, NUANCE, FAILS)  # a closed-form check is exact: never "not established here"

TRUE_CLASS, WRONG_CLASS = 0, 1  # the synthetic example: label 0, one wrong class (1) with logit a, the rest 0
FAR_MARGIN = 50.0  # e^-50 ~ 2e-22 is below float64 resolution next to 1: the a -> infinity limit, as a number
PENALTY_FIGURE = "penalty.png"  # the report figure drawn from the sweep


# ---------------------------------------------------------------------------------------------------------------
# The sweep


Options = Mapping[str, Mapping[str, float]]  # loss -> its options, over the registry's defaults


def _loss_fn(name: str, options: Options | None) -> LossFn:
    return build(name, (options or {}).get(name))


def _cross_entropy() -> str:
    """The seed text's claims are about cross-entropy: the registry's reference loss, which is it."""
    name = reference()
    if spec(name).family != "cross-entropy":
        raise LookupError(f"the reference loss {name!r} is not cross-entropy; the probe's claims are about it")
    return name


def confident_wrong_logits(margins: Tensor, num_classes: int) -> Tensor:
    """Logits [len(margins), K] in float64: true class 0 at logit 0, class 1 at logit ``a``, the rest 0."""
    logits = torch.zeros(len(margins), num_classes, dtype=torch.float64)
    logits[:, WRONG_CLASS] = margins
    return logits


def loss_and_grad(name: str, logits: Tensor, labels: Tensor, *,
                  options: Options | None = None) -> tuple[Tensor, Tensor]:
    """Per-example loss [B] and its gradient with respect to that example's logits [B, K], by autograd."""
    logits = logits.detach().clone().requires_grad_(True)
    per_example = _loss_fn(name, options)(logits, labels)
    # Rows do not interact, so the gradient of the sum is the stack of per-example gradients.
    (grad,) = torch.autograd.grad(per_example.sum(), logits)
    return per_example.detach(), grad


def sweep(losses: Sequence[str], *, max_margin: float, points: int, options: Options | None = None,
          num_classes: int = 10) -> pd.DataFrame:
    """Loss and logit gradient of each loss as the wrong-class logit a runs over linspace(-max_margin, max_margin),
    each loss with its registered options (updated by ``options[loss]``).

    One row per (loss, a), columns SWEEP_COLUMNS: ``p_true`` is the softmax probability of the true class (the
    common yardstick, also for a loss without a softmax), ``logit_grad_norm`` the L2 norm of dL/dlogits and
    ``grad_true`` its true-class entry. float64 throughout.
    """
    if max_margin <= 0 or points < 2 or num_classes < 2:
        raise ValueError(
            f"need max_margin > 0, points >= 2, num_classes >= 2; got {max_margin}, {points}, {num_classes}"
        )
    margins = torch.linspace(-max_margin, max_margin, points, dtype=torch.float64)
    logits = confident_wrong_logits(margins, num_classes)  # [points, K]
    labels = torch.full((points,), TRUE_CLASS, dtype=torch.long)
    p_true = logits.softmax(dim=1)[:, TRUE_CLASS]
    frames = []
    for name in losses:
        per_example, grad = loss_and_grad(check_name(name), logits, labels, options=options)
        frames.append(
            pd.DataFrame(
                {
                    "loss": name,
                    "margin": margins.numpy(),
                    "p_true": p_true.numpy(),
                    "loss_value": per_example.numpy(),
                    "logit_grad_norm": grad.norm(dim=1).numpy(),
                    "grad_true": grad[:, TRUE_CLASS].numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[list(SWEEP_COLUMNS)]


def _at_margin(name: str, margin: float, *, num_classes: int) -> tuple[float, float]:
    """(loss, logit-gradient norm) of one loss on the confident-wrong example with margin a."""
    logits = confident_wrong_logits(torch.tensor([margin], dtype=torch.float64), num_classes)
    per_example, grad = loss_and_grad(name, logits, torch.tensor([TRUE_CLASS]))
    return float(per_example[0]), float(grad.norm())


def optimum(name: str, num_classes: int = 10, options: Mapping[str, float] | None = None) -> tuple[float, float]:
    """(optimal logit gap d, minimum loss) of a loss when the true logit is d and the others 0.

    Found numerically: bisection on the sign of the autograd derivative, for a loss convex in d (label smoothing's
    is). A loss that falls forever (cross-entropy, eps = 0) has no finite optimum: a ValueError.
    """
    label = torch.tensor([TRUE_CLASS])
    loss_fn = build(name, options)
    true_axis = F.one_hot(label, num_classes).to(torch.float64)  # [1, K]

    def loss_at(gap: float) -> Tensor:
        return loss_fn(gap * true_axis, label)[0]

    def slope(gap: float) -> float:
        d = torch.tensor(gap, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(loss_fn(d * true_axis, label)[0], d)
        return float(grad)

    lo, hi = 0.0, 1.0
    while slope(hi) <= 0:  # widen until the loss turns upwards (a slope that underflowed to 0 never does)
        hi *= 2
        if hi > 1e6:
            raise ValueError(f"{name} has no finite optimum gap (options {options}, K={num_classes})")
    if slope(lo) > 0:
        raise ValueError(f"{name} is increasing at gap 0 (options {options}, K={num_classes})")
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    gap = (lo + hi) / 2
    return gap, float(loss_at(gap))


def anchors(num_classes: int = 10, losses: Sequence[str] | None = None) -> dict[str, float]:
    """The closed-form anchors of DESIGN.md, each computed by calling the losses (the registry's, by default).

    ``grad_norm_cap``: the reference loss's logit-gradient norm far out (a = FAR_MARGIN), its supremum sqrt(2).
    Per loss: ``<loss>_loss_far`` and ``<loss>_grad_norm_far`` (a bounded loss's value far out is its supremum),
    ``<loss>_grad_norm_at_8``, ``<loss>_optimal_gap`` / ``<loss>_floor`` where the loss has a finite optimum (label
    smoothing), ``step0_<loss>``: uniform_value (closed form) and ``step0_<loss>_measured``: the loss at zero logits.
    """
    k = num_classes
    values = {"grad_norm_cap": _at_margin(reference(), FAR_MARGIN, num_classes=k)[1]}
    zero_logits = torch.zeros(1, k, dtype=torch.float64)
    for name in names() if losses is None else losses:
        values[f"{name}_loss_far"], values[f"{name}_grad_norm_far"] = _at_margin(name, FAR_MARGIN, num_classes=k)
        values[f"{name}_grad_norm_at_8"] = _at_margin(name, 8.0, num_classes=k)[1]
        try:
            values[f"{name}_optimal_gap"], values[f"{name}_floor"] = optimum(name, k)
        except ValueError:
            pass  # the loss falls (or rises) forever along the gap: no finite optimum to anchor
        values[f"step0_{name}"] = uniform_value(name, k)
        values[f"step0_{name}_measured"] = float(build(name)(zero_logits, torch.tensor([TRUE_CLASS]))[0])
    return values


# ---------------------------------------------------------------------------------------------------------------
# The seed text's claims


@dataclass(frozen=True)
class Claim:
    claim_id: str
    claim: str  # verbatim from understanding-cross-entropy.txt; " [...] " joins non-adjacent fragments
    measured: str
    value: float
    reference: float  # what the claim or the textbook implies; NaN when it implies no number
    verdict: str
    note: str
    figure: str = ""


def verdict(holds: bool, nuance: bool = False) -> str:
    """The verdict from two measured facts: does the claim hold, and does a measurement qualify it."""
    if not holds:
        return FAILS
    return NUANCE if nuance else HOLDS


@dataclass(frozen=True)
class Agreement:
    """A claim of the source that two computations agree, worded once; its check supplies only numbers."""

    claim: str  # the source's sentence
    measured: str  # what the check measured: a str.format template of its numbers, ``deviation`` among them
    note: str  # what the measurement says of the sentence


AGREEMENTS: dict[str, Agreement] = {
    "softmax_sums_to_one": Agreement(
        "What we want is a method which will take all the numbers and squish them between 0 and 1 in a manner "
        "that the prediction across all the classes adds to 1.",
        "max |sum_k softmax(z)_k - 1| over 1000 random logit rows (scale 10): {deviation:.1e} in float32, "
        "{dev64:.1e} in float64; every entry in [0, 1]: {inside}",
        "Softmax divides each exp(z_k) by their sum, so the outputs add to 1 up to rounding.",
    ),
    "nll_loss_definition": Agreement(
        "F.nll_loss takes the softmax and then takes the negative.",
        "on random inputs x: max |F.nll_loss(x, y) - (-softmax(x)[y])| = {deviation:.2f}; max |F.nll_loss(x, y) - "
        "(-x[y])| = {picks:g}; max |F.cross_entropy(x, y) - F.nll_loss(F.log_softmax(x), y)| = {fused:.1e}",
        "F.nll_loss applies neither softmax nor log: it returns -x[y] (averaged), which is a negative log "
        "likelihood only when x already holds log-probabilities, i.e. after log_softmax.",
    ),
    "softmax_plus_nll": Agreement(
        "Softmax + Negative Log = Cross Entropy Loss",
        "float32 random logits: max |F.cross_entropy - (-log softmax(z)[y])| = {deviation:.1e} (losses.{ce}: "
        "{registry:.1e}); at a wrong-class margin of 200, -log(softmax) = {naive_far} but -log_softmax = "
        "{fused_far:g}",
        "Equal as mathematics, but softmax then log underflows to infinity on confidently wrong logits, which is "
        "why the loss is computed with log_softmax in one step.",
    ),
    "gradient_linear": Agreement(
        "The gradient of the Cross entropy loss is linear, that means we won’t see sudden jumps or exponential "
        "increases in gradients, which should lead to smoother training of models.",
        "dL/dz by autograd equals softmax(z) - onehot(y) to {in_probs:.1e}; along a straight line in logit space "
        "it leaves the straight chord by up to {deviation:.3f}; its norm over 1000 logit rows of scale 1e3 "
        "peaks at {largest:.6f} <= sqrt 2",
        "The gradient is softmax(z) - onehot(y): linear in the probabilities, not in the logits, and what "
        "rules out jumps and exponential growth is its bound, norm <= sqrt 2.",
    ),
    "mean_of_nll": Agreement(
        "You take the mean of the NLL to get the Loss value.",
        "|F.cross_entropy(z, y) - mean(-log_softmax(z)[y])| = {deviation:.1e} (default reduction='mean'); with "
        "class weights it is the weighted mean sum w_y l / sum w_y (to {weighted:.1e})",
        "PyTorch's default reduction is the batch mean; with class weights it becomes a weighted mean, and "
        "reduction='none' keeps the per-example values.",
    ),
    "pytorch_cross_entropy": Agreement(
        "In pyTorch, the implementation is log_softmax and then nll_loss(log is taken with the softmax only and "
        "nll_loss only calculates the mean of the negative logs).",
        "|F.cross_entropy(z, y) - F.nll_loss(F.log_softmax(z), y)| = {deviation:.1e}; F.nll_loss(x, y) = "
        "-mean(x[y]) on raw numbers (to {only_mean:.1e}): it takes no log itself",
        "Agrees with the earlier sentence's error: F.nll_loss neither takes a softmax nor a log; it picks the "
        "label's entry, negates it and averages.",
    ),
}


def _agreement(claim_id: str, deviation: float, holds: bool, *, nuance: bool = False, figure: str = "",
               **numbers: object) -> Claim:
    """A claim of AGREEMENTS: ``deviation`` is how far apart the two computations were measured, against 0;
    ``numbers`` fill the rest of its ``measured`` template."""
    agreement = AGREEMENTS[claim_id]
    measured = agreement.measured.format(deviation=deviation, **numbers)
    return Claim(claim_id, agreement.claim, measured, deviation, 0.0, verdict(holds, nuance), agreement.note, figure)


def _gap(a: Tensor, b: Tensor | float) -> float:
    """The largest absolute difference between two computations of the same values."""
    return float((a - b).abs().max())


def _close(a: float, b: float, tol: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def _random_logits(rows: int = 256, classes: int = 10, scale: float = 3.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=gen, dtype=torch.float64) * scale
    labels = torch.randint(classes, (rows,), generator=gen)
    return logits, labels


def _first_index(mask: Tensor, grid: Tensor) -> float:
    """The grid value at the first True of mask, NaN when there is none."""
    hits = mask.nonzero()
    return float(grid[hits[0, 0]]) if len(hits) else math.nan


def check_sigmoid_range(lo: float = -50.0, hi: float = 50.0) -> Claim:
    x = torch.linspace(lo, hi, round((hi - lo) * 100) + 1, dtype=torch.float64)  # step 0.01
    # Exact test in log space: log sigma(x) and log(1 - sigma(x)) = log sigma(-x) finite and < 0 <=> 0 < sigma < 1.
    log_p, log_q = F.logsigmoid(x), F.logsigmoid(-x)
    inside = bool(torch.isfinite(log_p).all() & torch.isfinite(log_q).all() & (log_p < 0).all() & (log_q < 0).all())
    ones32 = torch.sigmoid(x.float()) == 1.0
    ones64 = torch.sigmoid(x) == 1.0
    first32, first64 = _first_index(ones32, x), _first_index(ones64, x)
    twenty = torch.tensor(20.0, requires_grad=True)  # float32
    at20 = torch.sigmoid(twenty)
    (slope20,) = torch.autograd.grad(at20, twenty)
    return Claim(
        "sigmoid_range",
        "The sigmoid function always outputs a number between 0 and 1.",
        f"over x in [{lo:g}, {hi:g}]: log sigma(x) and log(1 - sigma(x)) finite and negative in float64 "
        f"({inside}); sigma(x) rounds to exactly 1.0 from x = {first32:.2f} in float32 "
        f"(sigma(20) = {float(at20.detach())}, autograd slope there {float(slope20)}) "
        f"and from x = {first64:.2f} in float64",
        first32,
        math.nan,
        verdict(inside, bool(ones32.any())),
        "Mathematically sigma never reaches 0 or 1, but stored as a float it saturates to exactly 1.0 "
        f"(float32 from x = {first32:.2f}), where autograd's gradient sigma(1 - sigma) is exactly 0.",
    )


def check_sigmoid_monotone() -> Claim:
    x = (torch.arange(-2000, 2001, dtype=torch.float64) / 100).requires_grad_(True)  # [-20, 20]: unsaturated
    s = torch.sigmoid(x)
    increasing = bool((s.diff() > 0).all())
    (slope,) = torch.autograd.grad(s.sum(), x)
    max_slope, at = float(slope.max()), float(x.detach()[slope.argmax()])
    ten = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    (slope10,) = torch.autograd.grad(torch.sigmoid(ten), ten)
    vanishes = float(slope10) < 0.01 * max_slope
    return Claim(
        "sigmoid_monotone",
        "It’s also a smooth curve that only goes up, which makes it easier for SGD to find meaningful gradients.",
        f"sigma strictly increasing on [-20, 20] ({increasing}); largest slope {max_slope:.4f} at x = {at:g}; "
        f"sigma'(10) = {float(slope10):.2e}",
        max_slope,
        0.25,  # sigma'(0) = sigma(0) * (1 - sigma(0)) = 1/4
        verdict(increasing, vanishes),
        f"It only goes up, but its slope is at most 0.25 and falls to {float(slope10):.1e} at x = 10, so a "
        "saturated sigmoid gives SGD almost no gradient.",
    )


def check_softmax_sums_to_one() -> Claim:
    logits64, _ = _random_logits(rows=1000, scale=10.0)
    dev32 = _gap(logits64.float().softmax(dim=1).sum(dim=1), 1)
    dev64 = _gap(logits64.softmax(dim=1).sum(dim=1), 1)
    inside = bool(((logits64.softmax(dim=1) >= 0) & (logits64.softmax(dim=1) <= 1)).all())
    return _agreement("softmax_sums_to_one", dev32, dev32 < 1e-5 and inside, dev64=dev64, inside=inside)


def check_softmax_amplifies(bump: float = 0.5, small_gap: float = 0.1) -> Claim:
    base = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    bumped = base + torch.tensor([0.0, 0.0, bump], dtype=torch.float64)
    p_base, p_bumped = base.softmax(dim=0), bumped.softmax(dim=0)
    ratio = float(p_bumped[2] / p_bumped[1])
    gap = float(bumped[2] - bumped[1])
    small = torch.zeros(10, dtype=torch.float64)
    small[0] = small_gap
    p_small = float(small.softmax(dim=0)[0])
    amplified = bool(p_bumped[2] > p_base[2]) and _close(ratio, math.exp(gap))
    return Claim(
        "softmax_amplifies",
        "if one of the numbers in our activations x is slightly bigger than the others, the exponential will "
        "amplify this (since it grows, well… exponentially), which means that in the softmax, that number will "
        "be closer to 1.",
        f"logits [1, 2, 3] -> p_max {float(p_base[2]):.3f}; [1, 2, {3 + bump:g}] -> p_max {float(p_bumped[2]):.3f}, "
        f"p_max / p_second = {ratio:.3f} = e^{gap:g}; one of 10 logits {small_gap:g} above the rest -> {p_small:.3f}",
        ratio,
        math.exp(gap),
        verdict(amplified, p_small < 0.5),
        "Probability ratios are e^(logit gap), exponential in the gap but not in the logits' size, so an "
        f"activation only {small_gap:g} above nine others gets p = {p_small:.3f}, nowhere near 1.",
    )


def check_log_underflow(n: int = 100, p: float = 1e-3) -> Claim:
    longest = max(n, 2000)
    counts = torch.arange(1, longest + 1)
    prod32 = torch.cumprod(torch.full((longest,), p, dtype=torch.float32), dim=0)
    prod64 = torch.cumprod(torch.full((longest,), p, dtype=torch.float64), dim=0)
    first32, first64 = _first_index(prod32 == 0, counts), _first_index(prod64 == 0, counts)
    log_sum = float(torch.log(torch.full((n,), p, dtype=torch.float32)).sum())
    underflows = bool(prod32[n - 1] == 0) and math.isfinite(log_sum)
    negatives = float(torch.prod(torch.full((n,), -p, dtype=torch.float32)))
    # The text blames "negative numbers"; the measured cause is small magnitude: positive probabilities underflow.
    positive_underflow = bool(prod32[n - 1] == 0)
    return Claim(
        "log_underflow",
        "Multiplying lots of negative numbers together can cause problems like numerical underflow in computers.",
        f"float32 product of N probabilities of {p:g}: {float(prod32[n - 1]):g} at N = {n}, exactly 0 from "
        f"N = {first32:g} (float64: N = {first64:g}); the sum of their logs at N = {n} is {log_sum:.1f}; "
        f"N copies of -{p:g} give {negatives:g} too",
        first32,
        math.nan,
        verdict(underflows, positive_underflow),
        "The product underflows and the sum of logs does not, but the cause is small magnitude, not sign: "
        "probabilities are positive, and the text's 'negative numbers' should read 'small numbers'.",
    )


def check_log_small_differences() -> Claim:
    p = torch.tensor([0.01, 0.001, 0.9, 0.09], dtype=torch.float64)
    nll = -torch.log(p)
    diff, diff_high = float(nll[1] - nll[0]), float(nll[3] - nll[2])
    return Claim(
        "log_small_differences",
        "the probabilities of .01 and .001, these numbers are very close together—but in another sense, 0.01 is "
        "10 times more confident than 0.001. By taking the log of our probabilities, we prevent these important "
        "differences from being ignored.",
        f"-log(0.001) - (-log(0.01)) = {diff:.4f} while 0.01 - 0.001 = 0.009; -log(0.09) - (-log(0.9)) = "
        f"{diff_high:.4f}",
        diff,
        math.log(10),
        verdict(_close(diff, math.log(10)) and _close(diff_high, math.log(10))),
        "The log turns a factor of 10 into a fixed loss difference of ln 10 = 2.303 wherever it happens, so "
        "the 0.009 gap between 0.01 and 0.001 counts as much as the one between 0.9 and 0.09.",
    )


def check_confident_wrong_penalised() -> Claim:
    p = torch.tensor(1e-6, dtype=torch.float64)
    nll = float(-torch.log(p))
    ce = _cross_entropy()
    far = sweep([ce], max_margin=FAR_MARGIN, points=201)
    far = far[far["margin"] >= 0]
    grows = bool(far["loss_value"].is_monotonic_increasing) and float(far["loss_value"].iloc[-1]) >= FAR_MARGIN - 1e-9
    max_grad = float(far["logit_grad_norm"].max())
    capped = max_grad <= math.sqrt(2) + 1e-12
    return Claim(
        "confident_wrong_penalised",
        "One benefit of using the log to calculate the loss is that our loss function penalizes predictions that "
        "are both confident and wrong.",
        f"-log p = {nll:.2f} at p = 1e-6; {ce} rises with the wrong-class margin a to "
        f"{float(far['loss_value'].iloc[-1]):.2f} at a = {FAR_MARGIN:g}, while its logit-gradient norm "
        f"peaks at {max_grad:.6f} (sqrt 2 = {math.sqrt(2):.6f})",
        nll,
        6 * math.log(10),
        verdict(grows, capped),
        "The loss value grows without bound as p -> 0, but the gradient that training feels is "
        "softmax - onehot, capped at sqrt 2: the penalty is in the value, not in the push.",
        PENALTY_FIGURE,
    )


def check_nll_loss_definition() -> Claim:
    logits, labels = _random_logits()
    nll = F.nll_loss(logits, labels, reduction="none")
    picked = -logits.gather(1, labels[:, None]).squeeze(1)
    as_claimed = -logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
    value = _gap(nll, as_claimed)
    fused = _gap(F.cross_entropy(logits, labels, reduction="none"),
                 F.nll_loss(F.log_softmax(logits, dim=1), labels, reduction="none"))
    return _agreement("nll_loss_definition", value, value < 1e-6, picks=_gap(nll, picked), fused=fused)


def check_softmax_plus_nll() -> Claim:
    logits, labels = _random_logits()
    logits32 = logits.float()
    naive = -torch.log(logits32.softmax(dim=1)).gather(1, labels[:, None]).squeeze(1)
    value = _gap(F.cross_entropy(logits32, labels, reduction="none"), naive)
    ce = _cross_entropy()
    wrong = torch.zeros(1, 10)
    wrong[0, WRONG_CLASS] = 200.0
    naive_far = float(-torch.log(wrong.softmax(dim=1))[0, TRUE_CLASS])
    fused_far = float(build(ce)(wrong, torch.tensor([TRUE_CLASS]))[0])
    return _agreement("softmax_plus_nll", value, value < 1e-5, nuance=not math.isfinite(naive_far), ce=ce,
                      registry=_gap(build(ce)(logits32, labels), naive), naive_far=naive_far, fused_far=fused_far)


def check_log_domain() -> Claim:
    at_neg, at_zero = float(torch.log(torch.tensor(-1.0))), float(torch.log(torch.tensor(0.0)))
    tiny = torch.tensor(torch.finfo(torch.float32).smallest_normal, dtype=torch.float32) * 2.0**-23
    largest_nll = float(-torch.log(tiny))  # the smallest positive float32 (a subnormal)
    return Claim(
        "log_domain",
        "It is not defined for numbers less than 0",
        f"log(-1) = {at_neg}, log(0) = {at_zero}; -log of the smallest positive float32 = {largest_nll:.2f}",
        largest_nll,
        math.nan,
        verdict(math.isnan(at_neg), not math.isfinite(at_zero)),
        "Log is undefined at 0 too (log 0 = -inf), and a probability held in float32 gives at most "
        f"-log p = {largest_nll:.1f}, so a loss computed from stored probabilities is capped or infinite.",
    )


def check_gradient_linear() -> Claim:
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(10, generator=gen, dtype=torch.float64) * 4.0
    steps = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    line = steps[:, None] * direction  # [T, K]: logits along a straight line
    labels = torch.zeros(len(steps), dtype=torch.long)
    _, grad = loss_and_grad(_cross_entropy(), line, labels)
    chord = grad[0] + steps[:, None] * (grad[-1] - grad[0])  # what a linear (affine) gradient would be
    deviation = _gap(grad, chord)
    in_probs = _gap(grad, line.softmax(dim=1) - F.one_hot(labels, 10))
    wild, wild_labels = _random_logits(rows=1000, scale=1e3)
    _, wild_grad = loss_and_grad(_cross_entropy(), wild, wild_labels)
    largest = float(wild_grad.norm(dim=1).max())
    bounded = largest <= math.sqrt(2) + 1e-12
    return _agreement("gradient_linear", deviation, bounded and in_probs < 1e-12, nuance=deviation > 1e-3,
                      figure=PENALTY_FIGURE, in_probs=in_probs, largest=largest)


def check_cross_entropy_bins() -> Claim:
    p = torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64) / 9  # red, green, blue
    q = torch.tensor([4.0, 4.0, 1.0], dtype=torch.float64) / 9
    cross = float(-(p * torch.log2(q)).sum())
    entropy = float(-(p * torch.log2(p)).sum())
    kl = float((p * torch.log2(p / q)).sum())
    as_written = -((2 / 9) * math.log2(4 / 9) + (3 / 9) * math.log2(4 / 9) + (4 / 9) * math.log2(1 / 9))
    return Claim(
        "cross_entropy_bins",
        "H(P, Q) = -[(2/9)*log₂(4/9) + (3/9)*log₂(4/9) + (4/9)*log₂(1/9)]",
        f"H(P, Q) = -sum p log2 q = {cross:.4f} bits for P = (2, 3, 4)/9, Q = (4, 4, 1)/9; H(P) = {entropy:.4f} "
        f"bits; KL(P || Q) = {kl:.4f} bits",
        cross,
        as_written,
        verdict(_close(cross, as_written) and _close(cross, entropy + kl)),
        f"The text's formula pairs each of P's weights with Q's probability of the same colour, which is the "
        f"correct -sum p log2 q: {cross:.3f} bits, H(P) plus the KL divergence {kl:.3f}.",
    )


def check_shannon_information() -> Claim:
    probs = torch.tensor([1 / 8, 1 / 4, 1 / 2, 1.0], dtype=torch.float64)
    info = -torch.log2(probs) + 0.0  # + 0.0 turns the -0.0 at P = 1 into 0.0
    decreasing = bool((info.diff() < 0).all())
    return Claim(
        "shannon_information",
        "I(x) = -log₂P(x) ..where P(x) is probability of occurrence of x [...] "
        "lower the possibility of something happening, higher the information",
        f"I = -log2 P: {float(info[0]):g} bits at P = 1/8, {float(info[1]):g} at 1/4, {float(info[2]):g} at 1/2, "
        f"{float(info[3]):g} at 1",
        float(info[0]),
        3.0,  # 1/8 = 2^-3
        verdict(_close(float(info[0]), 3.0) and decreasing),
        "Information in bits is the number of halvings of probability: 1/8 carries 3 bits, and it falls as P rises.",
    )


def check_mean_of_nll() -> Claim:
    logits, labels = _random_logits()
    per_example = build(_cross_entropy())(logits, labels)
    value = _gap(F.cross_entropy(logits, labels), per_example.mean())
    weights = torch.linspace(0.5, 2.0, 10, dtype=torch.float64)
    weighted = F.cross_entropy(logits, labels, weight=weights)
    w = weights[labels]
    return _agreement("mean_of_nll", value, value < 1e-12, weighted=_gap(weighted, (w * per_example).sum() / w.sum()))


def check_pytorch_cross_entropy() -> Claim:
    logits, labels = _random_logits()
    composed = F.nll_loss(F.log_softmax(logits, dim=1), labels)
    value = _gap(F.cross_entropy(logits, labels), composed)
    picked = F.nll_loss(logits, labels)  # on raw numbers: no log, no softmax, only pick, negate and average
    only_mean = _gap(picked, -logits.gather(1, labels[:, None]).mean())
    return _agreement("pytorch_cross_entropy", value, value < 1e-12 and only_mean < 1e-12, only_mean=only_mean)


def check_entropy_randomness() -> Claim:
    uniform = torch.full((10,), 0.1, dtype=torch.float64)
    peaked = torch.full((10,), 0.01, dtype=torch.float64)
    peaked[0] = 0.91

    def bits(dist: Tensor) -> Tensor:
        return -(dist * torch.log2(dist)).sum(dim=-1)

    others, _ = _random_logits(rows=1000, scale=2.0)
    others = others.softmax(dim=1)  # 1000 random distributions over 10 classes
    h_uniform, h_peaked, h_max_other = float(bits(uniform)), float(bits(peaked)), float(bits(others).max())
    return Claim(
        "entropy_randomness",
        "Entropy is from thermodynamics which means higher the randomness, higher is the entropy.",
        f"entropy of the uniform distribution over 10 classes {h_uniform:.4f} bits; of (0.91, 0.01 x 9) "
        f"{h_peaked:.4f} bits; largest over 1000 random distributions {h_max_other:.4f} bits",
        h_uniform,
        math.log2(10),
        verdict(_close(h_uniform, math.log2(10)) and h_peaked < h_uniform and h_max_other <= h_uniform + 1e-12),
        "The uniform distribution, the most random, has the largest entropy, log2 10 = 3.32 bits, and every "
        "more peaked one has less.",
    )


CHECKS: tuple[Callable[[], Claim], ...] = (
    check_sigmoid_range,
    check_sigmoid_monotone,
    check_softmax_sums_to_one,
    check_softmax_amplifies,
    check_log_underflow,
    check_log_small_differences,
    check_log_domain,
    check_confident_wrong_penalised,
    check_nll_loss_definition,
    check_softmax_plus_nll,
    check_gradient_linear,
    check_cross_entropy_bins,
    check_shannon_information,
    check_mean_of_nll,
    check_pytorch_cross_entropy,
    check_entropy_randomness,
)


def claims() -> pd.DataFrame:
    """One row per checked claim of the seed text, columns CLAIM_COLUMNS, every value computed now.

    Claims that need training results (e.g. "faster and more reliable training") are the report's.
    """
    return pd.DataFrame([asdict(check()) for check in CHECKS], columns=list(CLAIM_COLUMNS))
