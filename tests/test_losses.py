"""The four losses against torch.nn.functional, against closed forms written in numpy (float64), and their logit
gradients against the closed forms of DESIGN.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from study import losses
from study.losses import LOSSES

K = 10
EPS = 0.1
NAMES = ["mse", "sigmoid_bce", "softmax_nll", "smoothed_ce"]


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


def loss(name: str):
    return losses.build(name, {"eps": EPS} if name == "smoothed_ce" else None)


# ---- closed forms, independent of torch -------------------------------------------------------------------------


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


def np_onehot(y: np.ndarray) -> np.ndarray:
    return np.eye(K)[y]


def closed_form(name: str, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    t = np_onehot(y)
    lse = np_logsumexp(z)
    z_y = z[np.arange(len(y)), y]
    if name == "mse":
        return ((np_softmax(z) - t) ** 2).sum(axis=1)
    if name == "sigmoid_bce":
        # -[t log s(z) + (1 - t) log(1 - s(z))] = softplus(z) - t z, summed over classes
        return (np.logaddexp(0.0, z) - t * z).sum(axis=1)
    if name == "softmax_nll":
        return lse - z_y
    if name == "smoothed_ce":
        return (1 - EPS) * (lse - z_y) + EPS * (lse[:, None] - z).mean(axis=1)
    raise AssertionError(name)


def closed_form_grad(name: str, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    t = np_onehot(y)
    p = np_softmax(z)
    if name == "mse":
        # d/dz sum_k (p_k - t_k)^2 = J^T 2(p - t), J = diag(p) - p p^T
        r = 2 * (p - t)
        return p * r - p * (p * r).sum(axis=1, keepdims=True)
    if name == "sigmoid_bce":
        return 0.5 * (1 + np.tanh(z / 2)) - t  # sigmoid, without overflow at -1e4
    if name == "softmax_nll":
        return p - t
    if name == "smoothed_ce":
        return (1 - EPS) * (p - t) + EPS * (p - 1 / K)
    raise AssertionError(name)


def reference(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    targets = F.one_hot(labels, K).to(logits.dtype)
    if name == "mse":
        return F.mse_loss(logits.softmax(dim=1), targets, reduction="none").sum(dim=1)
    if name == "sigmoid_bce":
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)
    if name == "softmax_nll":
        return F.cross_entropy(logits, labels, reduction="none")
    if name == "smoothed_ce":
        return F.cross_entropy(logits, labels, label_smoothing=EPS, reduction="none")
    raise AssertionError(name)


def autograd(name: str, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.clone().requires_grad_(True)
    per_example = loss(name)(logits, labels)
    (grad,) = torch.autograd.grad(per_example.sum(), logits)
    return per_example.detach(), grad


# ---- the registry -------------------------------------------------------------------------------------------------


def test_registry_holds_exactly_the_four_losses():
    assert list(LOSSES) == NAMES
    assert set(losses.CONVENTIONS) == set(NAMES)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        losses.build("cross_entropy")
    message = str(err.value)
    assert "cross_entropy" in message
    for name in NAMES:
        assert name in message


def test_build_binds_eps():
    logits, labels = batch()
    bound = losses.build("smoothed_ce", {"eps": 0.3})
    expected = F.cross_entropy(logits, labels, label_smoothing=0.3, reduction="none")
    torch.testing.assert_close(bound(logits, labels), expected)
    assert not torch.allclose(bound(logits, labels), losses.smoothed_ce(logits, labels))  # the default 0.1 differs
    assert losses.build("mse") is losses.mse  # no options: the function itself


def test_eps_is_keyword_only_with_default_point_one():
    logits, labels = batch()
    with pytest.raises(TypeError):
        losses.smoothed_ce(logits, labels, 0.2)
    expected = F.cross_entropy(logits, labels, label_smoothing=0.1, reduction="none")
    torch.testing.assert_close(losses.smoothed_ce(logits, labels), expected)


# ---- values -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_equals_functional_reference(name, scale):
    logits, labels = batch(scale)
    per_example = loss(name)(logits, labels)
    assert per_example.shape == (len(labels),)
    torch.testing.assert_close(per_example, reference(name, logits, labels), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_equals_numpy_closed_form(name, scale):
    logits, labels = batch(scale)
    per_example = loss(name)(logits.double(), labels).numpy()
    np.testing.assert_allclose(per_example, closed_form(name, logits.double().numpy(), labels.numpy()),
                               rtol=1e-10, atol=1e-12)
    per_example32 = loss(name)(logits, labels).numpy()  # the dtype training uses
    np.testing.assert_allclose(per_example32, closed_form(name, logits.double().numpy(), labels.numpy()),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, value", [("mse", 0.9), ("sigmoid_bce", 10 * math.log(2)),
                                         ("softmax_nll", math.log(10)), ("smoothed_ce", math.log(10))])
def test_step0_value_at_zero_logits(name, value):
    labels = torch.arange(K)
    per_example = loss(name)(torch.zeros(K, K), labels)
    torch.testing.assert_close(per_example, torch.full((K,), value), rtol=1e-6, atol=1e-6)
    assert losses.uniform_value(name, K, eps=EPS) == pytest.approx(value, rel=1e-12)


def test_step0_values_as_written_in_design():
    assert losses.uniform_value("mse") == pytest.approx(0.9)
    assert round(losses.uniform_value("sigmoid_bce"), 3) == 6.931
    assert round(losses.uniform_value("softmax_nll"), 3) == 2.303
    assert round(losses.uniform_value("smoothed_ce"), 3) == 2.303


@pytest.mark.parametrize("name", NAMES)
def test_finite_values_and_gradients_at_extreme_logits(name):
    logits, labels = extreme_batch()
    per_example, grad = autograd(name, logits, labels)
    assert per_example.shape == (len(labels),)
    assert torch.isfinite(per_example).all()
    assert torch.isfinite(grad).all()
    # Log space keeps the values right, not just finite: a confidently wrong softmax_nll costs 2e4.
    np.testing.assert_allclose(per_example.double().numpy(),
                               closed_form(name, logits.double().numpy(), labels.numpy()), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad.double().numpy(), closed_form_grad(name, logits.double().numpy(), labels.numpy()),
                               rtol=1e-5, atol=1e-6)


# ---- gradients ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_logit_gradient_equals_closed_form(name, scale):
    logits, labels = batch(scale)
    _, grad = autograd(name, logits.double(), labels)
    np.testing.assert_allclose(grad.numpy(), closed_form_grad(name, logits.double().numpy(), labels.numpy()),
                               rtol=1e-9, atol=1e-12)


def with_grad(name: str):
    return losses.build_with_grad(name, {"eps": EPS} if name == "smoothed_ce" else None)


def grad_fn(name: str):
    return lambda logits, labels: with_grad(name)(logits, labels)[1]


def test_every_loss_has_its_closed_form_gradient():
    assert list(losses.WITH_GRADIENTS) == NAMES


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_trainer_value_is_the_loss_and_its_gradient_autograds(name, scale):
    """What the trainer steps with: the loss exactly as reported, and its derivative (float64: to 1e-10)."""
    logits, labels = batch(scale)
    value, grad = with_grad(name)(logits, labels)
    assert torch.equal(value, loss(name)(logits, labels))
    _, expected = autograd(name, logits.double(), labels)
    torch.testing.assert_close(grad_fn(name)(logits.double(), labels), expected, rtol=1e-10, atol=1e-12)
    _, expected32 = autograd(name, logits, labels)
    torch.testing.assert_close(grad, expected32, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_trainer_gradient_is_finite_and_right_at_extreme_logits(name):
    logits, labels = extreme_batch()
    value, grad = with_grad(name)(logits, labels)
    assert torch.equal(value, loss(name)(logits, labels))
    assert torch.isfinite(grad).all()
    np.testing.assert_allclose(grad.double().numpy(), closed_form_grad(name, logits.double().numpy(), labels.numpy()),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_class_dimension_is_one_with_trailing_example_dimensions(name):
    """[M, K, B] logits (the trainer's layout: models, classes, batch) give what [M * B, K] rows give."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(3, K, 7, generator=generator) * 4
    labels = torch.randint(0, K, (3, 7), generator=generator)
    rows, row_labels = logits.transpose(1, 2).reshape(-1, K), labels.reshape(-1)
    torch.testing.assert_close(loss(name)(logits, labels), loss(name)(rows, row_labels).view(3, 7))
    torch.testing.assert_close(grad_fn(name)(logits, labels),
                               grad_fn(name)(rows, row_labels).view(3, 7, K).transpose(1, 2))


def test_softmax_gradients_in_torch_terms():
    """The same identities once more with torch alone: softmax - onehot, and its smoothed mixture."""
    logits, labels = batch(5.0)
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(labels, K).float()
    _, grad = autograd("softmax_nll", logits, labels)
    torch.testing.assert_close(grad, probs - onehot)
    _, grad = autograd("smoothed_ce", logits, labels)
    torch.testing.assert_close(grad, (1 - EPS) * (probs - onehot) + EPS * (probs - 1 / K))
    _, grad = autograd("sigmoid_bce", logits, labels)
    torch.testing.assert_close(grad, logits.sigmoid() - onehot)


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
