"""Every registered loss against an independent reference (torch.nn.functional or numpy, float64), its closed-form
logit gradient against autograd, finiteness at extreme logits, the [M, K, B] layout, and its value at zero logits.
Tests are parametrised over the registry: a new entry is tested by being added. The hand-written references below
(``np_value``, ``np_grad``) are an extra, independent check, required of every entry of ``losses.BUILTIN`` (README,
"Adding a loss"); a loss registered at run time is tested without them."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from study import losses
from study.losses import LOSSES, LossSpec

K = 10
NAMES = list(losses.names())
CLOSED_FORMS = [s.name for s in losses.specs() if s.with_grad is not None]


def batch(scale: float = 3.0, n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, K, generator=generator) * scale
    labels = torch.randint(0, K, (n,), generator=generator)
    return logits, labels


def extreme_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of +-1e4: confidently right, confidently wrong, and mixed signs."""
    generator = torch.Generator().manual_seed(1)
    signs = torch.randint(0, 2, (32, K), generator=generator).float() * 2 - 1
    logits = signs * 1e4
    labels = torch.randint(0, K, (32,), generator=generator)
    wrong = torch.full((1, K), -1e4)
    wrong[0, 3] = 1e4  # all the mass on class 3, label 0
    right = torch.full((1, K), -1e4)
    right[0, 0] = 1e4
    return torch.cat([logits, wrong, right]), torch.cat([labels, torch.tensor([0, 0])])


def options(name: str) -> dict[str, float]:
    return dict(losses.spec(name).options)


# ---- independent references: numpy in float64, written from the papers' formulas, not from losses.py ----------------


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))


def np_onehot(y: np.ndarray) -> np.ndarray:
    return np.eye(K)[y]


def np_value(name: str, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    o, t = options(name), np_onehot(y)
    log_p = np_log_softmax(z)
    p = np.exp(log_p)
    log_p_y = log_p[np.arange(len(y)), y]
    p_y = np.exp(log_p_y)
    return {
        "mse": lambda: ((p - t) ** 2).sum(axis=1),
        # -[t log s(z) + (1 - t) log(1 - s(z))] = softplus(z) - t z, summed over classes
        "sigmoid_bce": lambda: (np.logaddexp(0.0, z) - t * z).sum(axis=1),
        "softmax_nll": lambda: -log_p_y,
        "smoothed_ce": lambda: (1 - o.get("eps", 0)) * -log_p_y + o.get("eps", 0) * -log_p.mean(axis=1),
        "logit_mse": lambda: ((z - t) ** 2).sum(axis=1),
        "focal": lambda: -((1 - p_y) ** o.get("gamma", 0)) * log_p_y,
        "gce": lambda: (1 - p_y ** o.get("q", 1)) / o.get("q", 1),
        "mae": lambda: np.abs(p - t).sum(axis=1),
        # Hui, Belkin & Wright 2023: CE + the squared logits of the K - 1 wrong classes, averaged over them
        "squentropy": lambda: -log_p_y + ((1 - t) * z**2).sum(axis=1) / (K - 1),
    }[name]()


HAND_WRITTEN = ["mse", "sigmoid_bce", "softmax_nll", "smoothed_ce", "logit_mse", "focal", "gce", "mae", "squentropy"]
"""The losses ``np_value`` and ``np_grad`` hold (a name added there is added here)."""


def np_grad(name: str, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d loss / d z by hand: the chain rule through dp_y/dz = p_y (t - p) and dp/dz = diag(p) - p p^T."""
    o, t = options(name), np_onehot(y)
    log_p = np_log_softmax(z)
    p = np.exp(log_p)
    log_p_y = log_p[np.arange(len(y)), y][:, None]
    p_y = np.exp(log_p_y)
    gamma, q = o.get("gamma", 0), o.get("q", 1)
    return {
        "mse": lambda: p * 2 * (p - t) - p * (p * 2 * (p - t)).sum(axis=1, keepdims=True),
        "sigmoid_bce": lambda: 0.5 * (1 + np.tanh(z / 2)) - t,  # sigmoid, without overflow at -1e4
        "softmax_nll": lambda: p - t,
        "smoothed_ce": lambda: (1 - o.get("eps", 0)) * (p - t) + o.get("eps", 0) * (p - 1 / K),
        "logit_mse": lambda: 2 * (z - t),
        # f(p_y) = -(1 - p_y)^g log p_y; f' p_y (t - p) with f' = g (1 - p_y)^(g-1) log p_y - (1 - p_y)^g / p_y
        "focal": lambda: (gamma * p_y * (1 - p_y) ** (gamma - 1) * log_p_y - (1 - p_y) ** gamma) * (t - p),
        "gce": lambda: p_y**q * (p - t),
        "mae": lambda: 2 * p_y * (p - t),
        "squentropy": lambda: p - t + 2 * (1 - t) * z / (K - 1),
    }[name]()


def torch_reference(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """torch.nn.functional's own loss where one computes the same thing; None where it has none."""
    targets = F.one_hot(labels, K).to(logits.dtype)
    if name == "mse":
        return F.mse_loss(logits.softmax(dim=1), targets, reduction="none").sum(dim=1)
    if name == "sigmoid_bce":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)
    if name == "softmax_nll":
        return F.cross_entropy(logits, labels, reduction="none")
    if name == "smoothed_ce":
        return F.cross_entropy(logits, labels, label_smoothing=options(name)["eps"], reduction="none")
    if name == "logit_mse":
        return F.mse_loss(logits, targets, reduction="none").sum(dim=1)
    if name == "mae":
        return F.l1_loss(logits.softmax(dim=1), targets, reduction="none").sum(dim=1)
    return None


UNIFORM = {  # DESIGN.md's step-0 values at zero logits, K = 10, default options
    "mse": 0.9, "sigmoid_bce": 10 * math.log(2), "softmax_nll": math.log(10), "smoothed_ce": math.log(10),
    "logit_mse": 1.0, "focal": 0.9**3 * math.log(10), "gce": (1 - 10**-0.7) / 0.7, "mae": 1.8,
    "squentropy": math.log(10),
}  # optional for a new loss: its value at zero logits is checked against its own ``uniform`` regardless


def autograd(name: str, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.clone().requires_grad_(True)
    per_example = losses.build(name)(logits, labels)
    (grad,) = torch.autograd.grad(per_example.sum(), logits)
    return per_example.detach(), grad


def check_closed_form_gradient(name: str, *, scales=(0.1, 3.0, 30.0), rtol: float = 1e-10,
                               atol: float = 1e-12) -> None:
    """The spec's closed-form (loss, dlogits) against autograd of its own function, float64: the value exactly, the
    gradient to ``rtol``. Raises AssertionError on a mismatch (the registry's gradient check)."""
    with_grad = losses.spec(name).bind_with_grad()
    for scale in scales:
        logits, labels = batch(scale)
        logits = logits.double()
        value, grad = with_grad(logits, labels)
        expected_value, expected_grad = autograd(name, logits, labels)
        torch.testing.assert_close(value, expected_value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, expected_grad, rtol=rtol, atol=atol)


# ---- the registry -------------------------------------------------------------------------------------------------


def test_registry_holds_the_missions_four_then_the_additions():
    assert NAMES[:4] == ["mse", "sigmoid_bce", "softmax_nll", "smoothed_ce"]
    assert NAMES == [s.name for s in losses.BUILTIN]  # BUILTIN's order is every table's order
    assert list(LOSSES) == list(losses.CONVENTIONS) == NAMES
    assert losses.reference() == "softmax_nll"


def test_every_shipped_loss_has_a_hand_written_reference():
    """A loss in ``losses.BUILTIN`` needs its line in ``np_value`` and ``np_grad`` above (and in ``HAND_WRITTEN``),
    written from the paper's formula, not from losses.py: the only check of the value itself."""
    missing = [s.name for s in losses.BUILTIN if s.name not in HAND_WRITTEN]
    assert not missing, f"add {missing} to np_value, np_grad and HAND_WRITTEN in tests/test_losses.py"


def test_specs_are_complete_and_distinct():
    specs = losses.specs()
    assert len({s.colour for s in specs}) == len({s.label for s in specs}) == len(specs)
    assert sum(s.reference for s in specs) == 1
    for s in specs:
        assert s.colour.startswith("#") and len(s.colour) == 7
        assert set(s.conventions) == {"link", "targets", "class_reduction"}
        assert s.formula and s.family and s.fn.__doc__
        if s.source:  # a loss taken from a paper names it in its docstring
            assert all(author.split()[0] in s.fn.__doc__ for author in s.source.split("; "))
    assert "focal" in {s.name for s in specs if s.with_grad is None}  # at least one runs the autograd path


def test_the_mission_colours_are_unchanged():
    assert {n: losses.spec(n).colour for n in NAMES[:4]} == {
        "mse": "#de8f05", "sigmoid_bce": "#029e73", "softmax_nll": "#0173b2", "smoothed_ce": "#cc78bc"}


def test_every_claim_names_losses_that_exist():
    for claim in losses.CLAIMS:
        assert set(losses.taking_part(claim)) <= set(NAMES)
    assert losses.taking_part("faster_training") == ("mse", "sigmoid_bce")
    with pytest.raises(ValueError, match="unknown claim"):
        losses.taking_part("made_up")
    with pytest.raises(ValueError, match="unknown claims"):
        dataclasses.replace(losses.spec("mse"), name="x", claims={"made_up"})


def scaled_ce(logits: torch.Tensor, labels: torch.Tensor, *, scale: float = 2.0) -> torch.Tensor:
    return scale * F.cross_entropy(logits, labels, reduction="none")


def test_views_follow_registrations_made_at_run_time():
    spec = LossSpec("scaled_ce", scaled_ce, label="2 x cross-entropy", colour="#949494",
                    conventions={"link": "softmax", "targets": "class index", "class_reduction": "none (picks y)"},
                    formula="2 · −log softmax(z)_y", options={"scale": 2.0}, family="cross-entropy")
    with losses.registered(spec):
        assert "scaled_ce" in LOSSES and "scaled_ce" in losses.CONVENTIONS
        assert "scaled_ce" not in losses.WITH_GRADIENTS  # no closed form: autograd supplies it
        assert losses.check_name("scaled_ce") == "scaled_ce"
        logits, labels = batch()
        value, grad = losses.build_with_grad("scaled_ce")(logits, labels)
        torch.testing.assert_close(grad, 2 * (logits.softmax(dim=1) - F.one_hot(labels, K)))
        assert losses.uniform_value("scaled_ce") == pytest.approx(2 * math.log(10))  # evaluated: no closed form
    assert "scaled_ce" not in LOSSES and len(LOSSES) == len(NAMES)
    with pytest.raises(ValueError, match="unknown loss"):
        losses.build("scaled_ce")


def test_registration_refuses_a_second_reference_and_a_duplicate():
    with pytest.raises(ValueError, match="reference"):
        losses.register(dataclasses.replace(losses.spec("softmax_nll"), name="nll_again"))
    with pytest.raises(ValueError, match="registered already"):
        losses.register(losses.spec("mse"))
    assert list(LOSSES) == NAMES


def test_a_variant_is_an_entry_with_other_options():
    variant = losses.variant("smoothed_ce", "smoothed_ce_05", eps=0.05, colour="#949494")
    assert variant.label == "label-smoothed cross-entropy (eps = 0.05)" and not variant.claims
    with losses.registered(variant):
        logits, labels = batch()
        expected = F.cross_entropy(logits, labels, label_smoothing=0.05, reduction="none")
        torch.testing.assert_close(losses.build("smoothed_ce_05")(logits, labels), expected)
        check_closed_form_gradient("smoothed_ce_05")
    assert losses.spec("smoothed_ce").options["eps"] == 0.1


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        losses.build("cross_entropy")
    message = str(err.value)
    assert "cross_entropy" in message
    for name in NAMES:
        assert name in message


def test_build_binds_the_defaults_updated_by_the_options():
    logits, labels = batch()
    bound = losses.build("smoothed_ce", {"eps": 0.3})
    torch.testing.assert_close(bound(logits, labels),
                               F.cross_entropy(logits, labels, label_smoothing=0.3, reduction="none"))
    torch.testing.assert_close(losses.build("smoothed_ce")(logits, labels),
                               F.cross_entropy(logits, labels, label_smoothing=0.1, reduction="none"))
    assert losses.build("mse") is losses.mse  # no options: the function itself
    assert losses.build("mse", {}) is losses.mse
    with pytest.raises(ValueError, match="takes no options"):
        losses.build("mse", {"eps": 0.1})
    with pytest.raises(ValueError, match="takes gamma"):
        losses.build_with_grad("focal", {"eps": 0.1})


def test_knobs_are_keyword_only():
    logits, labels = batch()
    for fn in (losses.smoothed_ce, losses.focal, losses.gce):
        with pytest.raises(TypeError):
            fn(logits, labels, 0.2)


# ---- values -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HAND_WRITTEN)
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_equals_its_independent_reference(name, scale):
    logits, labels = batch(scale)
    per_example = losses.build(name)(logits.double(), labels)
    assert per_example.shape == (len(labels),)
    np.testing.assert_allclose(per_example.numpy(), np_value(name, logits.double().numpy(), labels.numpy()),
                               rtol=1e-10, atol=1e-12)
    per_example32 = losses.build(name)(logits, labels)  # the dtype training uses
    np.testing.assert_allclose(per_example32.numpy(), np_value(name, logits.double().numpy(), labels.numpy()),
                               rtol=1e-5, atol=1e-5)
    functional = torch_reference(name, logits, labels)
    if functional is not None:
        torch.testing.assert_close(per_example32, functional, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_value_at_zero_logits_is_the_uniform_value(name):
    labels = torch.arange(K)
    per_example = losses.build(name)(torch.zeros(K, K, dtype=torch.float64), labels)
    torch.testing.assert_close(per_example, torch.full((K,), losses.uniform_value(name, K), dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    if name in UNIFORM:
        assert losses.uniform_value(name, K) == pytest.approx(UNIFORM[name], rel=1e-12)


def test_step0_values_as_written_in_design():
    assert losses.uniform_value("mse") == pytest.approx(0.9)
    assert round(losses.uniform_value("sigmoid_bce"), 3) == 6.931
    assert round(losses.uniform_value("softmax_nll"), 3) == 2.303
    assert round(losses.uniform_value("smoothed_ce", eps=0.3), 3) == 2.303  # any eps: every class at 1/K


@pytest.mark.parametrize("name", NAMES)
def test_finite_values_and_gradients_at_extreme_logits(name):
    logits, labels = extreme_batch()
    for per_example, grad in (autograd(name, logits, labels), losses.build_with_grad(name)(logits, labels)):
        assert per_example.shape == (len(labels),)
        assert torch.isfinite(per_example).all() and torch.isfinite(grad).all()
        if name not in HAND_WRITTEN:
            continue
        # Log space keeps the values right, not just finite: a confidently wrong softmax_nll costs 2e4.
        np.testing.assert_allclose(per_example.double().numpy(),
                                   np_value(name, logits.double().numpy(), labels.numpy()), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(grad.double().numpy(), np_grad(name, logits.double().numpy(), labels.numpy()),
                                   rtol=1e-5, atol=1e-6)


# ---- gradients ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HAND_WRITTEN)
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_logit_gradient_equals_the_hand_derived_one(name, scale):
    logits, labels = batch(scale)
    _, grad = autograd(name, logits.double(), labels)
    np.testing.assert_allclose(grad.numpy(), np_grad(name, logits.double().numpy(), labels.numpy()),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_closed_form_gradient_equals_autograd(name):
    check_closed_form_gradient(name)


def test_the_gradient_check_catches_a_wrong_closed_form():
    def half_the_gradient(logits, labels):  # the right loss, a gradient off by a factor of 2
        value, grad = losses.softmax_nll_with_grad(logits, labels)
        return value, grad / 2

    wrong = dataclasses.replace(losses.spec("softmax_nll"), name="wrong_grad", with_grad=half_the_gradient,
                                reference=False)
    with losses.registered(wrong):
        with pytest.raises(AssertionError):
            check_closed_form_gradient("wrong_grad")
    check_closed_form_gradient("softmax_nll")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_trainer_value_is_the_loss_and_its_gradient_autograds(name, scale):
    """What the trainer steps with (closed form or autograd): the loss exactly as reported, and its derivative."""
    logits, labels = batch(scale)
    value, grad = losses.build_with_grad(name)(logits, labels)
    assert torch.equal(value, losses.build(name)(logits, labels))
    _, expected32 = autograd(name, logits, labels)
    torch.testing.assert_close(grad, expected32, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_class_dimension_is_one_with_trailing_example_dimensions(name):
    """[M, K, B] logits (the trainer's layout: models, classes, batch) give what [M * B, K] rows give."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(3, K, 7, generator=generator, dtype=torch.float64) * 4
    labels = torch.randint(0, K, (3, 7), generator=generator)
    rows, row_labels = logits.transpose(1, 2).reshape(-1, K), labels.reshape(-1)
    fn, with_grad = losses.build(name), losses.build_with_grad(name)
    torch.testing.assert_close(fn(logits, labels), fn(rows, row_labels).view(3, 7))
    value, grad = with_grad(logits, labels)
    row_value, row_grad = with_grad(rows, row_labels)
    torch.testing.assert_close(value, row_value.view(3, 7))
    torch.testing.assert_close(grad, row_grad.view(3, 7, K).transpose(1, 2))


def test_with_grad_works_under_no_grad():
    """The trainer computes the step inside torch.no_grad(); the autograd path must still differentiate."""
    logits, labels = batch()
    with torch.no_grad():
        value, grad = losses.build_with_grad("focal")(logits, labels)
    _, expected = autograd("focal", logits, labels)
    torch.testing.assert_close(grad, expected)
    assert not value.requires_grad


def test_softmax_nll_gradient_norm_at_most_sqrt2():
    logits, labels = batch(50.0, n=2000)
    extreme, extreme_labels = extreme_batch()
    _, grad = autograd("softmax_nll", torch.cat([logits, extreme]), torch.cat([labels, extreme_labels]))
    norms = grad.norm(dim=1)
    assert norms.max() <= math.sqrt(2) + 1e-6
    assert norms.max() > 1.41  # the cap is reached: confidently wrong examples sit at it
    # one wrong class with logit a, the rest 0: the norm approaches sqrt(2) while the loss grows without bound
    for a in (8.0, 100.0, 1e4):
        z = torch.zeros(1, K)
        z[0, 3] = a
        value, grad = autograd("softmax_nll", z, torch.tensor([0]))
        assert grad.norm() <= math.sqrt(2) + 1e-6
        assert value.item() == pytest.approx(a + math.log1p(9 * math.exp(-a)), rel=1e-5)


def test_bounded_losses_stay_below_their_bound():
    logits, labels = batch(50.0, n=2000)
    bounds = {"mse": 2.0, "gce": 1 / 0.7, "mae": 2.0}  # a new bounded loss adds its bound here
    assert set(bounds) <= {s.name for s in losses.specs() if s.bounded}
    for name, bound in bounds.items():
        assert losses.build(name)(logits.double(), labels).max() <= bound + 1e-12


# ---- squentropy: what sets it apart ---------------------------------------------------------------------------------


def test_squentropy_is_cross_entropy_plus_the_mean_squared_wrong_logit_not_brier():
    """Hand values at K = 10, label 0: one wrong logit z_3 = a, the rest 0, gives ln(9 + e^a) + a^2 / 9."""
    a = 2.0
    z = torch.zeros(1, K, dtype=torch.float64)
    z[0, 3] = a
    value = losses.build("squentropy")(z, torch.tensor([0]))
    cross_entropy = math.log(9 + math.exp(a))  # -log softmax(z)_0 with z_0 = 0
    assert value.item() == pytest.approx(cross_entropy + a**2 / (K - 1), rel=1e-12)  # a^2 / 9, not a^2
    assert value.item() != pytest.approx(cross_entropy + a**2, rel=1e-3)  # not summed over the wrong classes
    # The label's own logit is not squared: raising z_y lowers the loss without a square-term cost.
    right = torch.zeros(1, K, dtype=torch.float64)
    right[0, 0] = a
    assert losses.build("squentropy")(right, torch.tensor([0])).item() == pytest.approx(
        math.log(9 + math.exp(a)) - a, rel=1e-12)
    # Not the Brier score (the study's mse, on probabilities, bounded by 2): squentropy grows without bound.
    logits, labels = batch(3.0)
    squentropy = losses.build("squentropy")(logits.double(), labels)
    brier = losses.build("mse")(logits.double(), labels)
    assert (squentropy - brier).abs().min() > 0.1
    assert squentropy.max() > 2.0 >= brier.max()
