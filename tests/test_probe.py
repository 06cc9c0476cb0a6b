"""The confident-wrong sweep and the claim checks against closed forms computed independently of probe.py."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from study import losses, probe
from study.losses import LOSSES

K = 10
EPS = 0.1
# The source text lives in ../shared beside the repository (on developer machines and in CI alike).
SEED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "seed" / "understanding-cross-entropy.txt"


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return probe.sweep(list(LOSSES), max_margin=12.0, points=25)


def closed_form_probs(margin: float) -> np.ndarray:
    logits = np.zeros(K)
    logits[probe.WRONG_CLASS] = margin
    e = np.exp(logits - logits.max())
    return e / e.sum()


def onehot() -> np.ndarray:
    t = np.zeros(K)
    t[probe.TRUE_CLASS] = 1.0
    return t


def row(table: pd.DataFrame, loss: str, margin: float) -> pd.Series:
    hit = table[(table["loss"] == loss) & np.isclose(table["margin"], margin)]
    assert len(hit) == 1
    return hit.iloc[0]


# --- the sweep --------------------------------------------------------------------------------------------------


def test_sweep_shape_and_columns(table):
    assert tuple(table.columns) == probe.SWEEP_COLUMNS
    assert len(table) == 25 * len(LOSSES)
    assert set(table["loss"]) == set(LOSSES)
    assert table["margin"].min() == -12.0 and table["margin"].max() == 12.0
    assert np.isfinite(table.drop(columns="loss").to_numpy()).all()


def test_p_true_is_the_softmax_of_the_synthetic_logits(table):
    for margin in (-12.0, 0.0, 8.0):
        assert row(table, "mse", margin)["p_true"] == pytest.approx(1 / (math.exp(margin) + K - 1), rel=1e-12)


def test_cross_entropy_gradient_is_softmax_minus_onehot_and_capped_at_sqrt2(table):
    for margin in (-12.0, 0.0, 3.0, 12.0):
        grad = closed_form_probs(margin) - onehot()
        r = row(table, "softmax_nll", margin)
        assert r["logit_grad_norm"] == pytest.approx(np.linalg.norm(grad), rel=1e-12)
        assert r["grad_true"] == pytest.approx(grad[probe.TRUE_CLASS], rel=1e-12)
        assert r["loss_value"] == pytest.approx(-math.log(closed_form_probs(margin)[0]), rel=1e-12)
    nll = table[table["loss"] == "softmax_nll"]
    assert (nll["logit_grad_norm"] <= math.sqrt(2)).all()
    assert nll["logit_grad_norm"].iloc[-1] == pytest.approx(math.sqrt(2), abs=1e-4)  # a = 12: within e^-12 of it


def test_smoothed_gradient_is_softmax_minus_smoothed_target(table):
    target = (1 - EPS) * onehot() + EPS / K
    for margin in (-12.0, 0.0, 12.0):
        grad = closed_form_probs(margin) - target
        assert row(table, "smoothed_ce", margin)["logit_grad_norm"] == pytest.approx(np.linalg.norm(grad), rel=1e-12)
    assert (table[table["loss"] == "smoothed_ce"]["logit_grad_norm"] < math.sqrt(2)).all()


def test_losses_grow_without_bound_while_the_gradient_does_not():
    far = probe.sweep(["softmax_nll", "smoothed_ce"], max_margin=1e3, points=5)
    at_max = far[far["margin"] == 1e3]
    assert (at_max["loss_value"] > 900).all()  # ~ a: unbounded
    assert (at_max["logit_grad_norm"] <= math.sqrt(2)).all()


def test_mse_is_bounded_by_2_and_its_gradient_vanishes_when_confidently_wrong(table):
    def mse_grad(margin: float) -> np.ndarray:
        # d/dz sum_k (p_k - t_k)^2 through the softmax Jacobian diag(p) - p p^T.
        p, t = closed_form_probs(margin), onehot()
        r = p - t
        return 2 * p * (r - (p * r).sum())

    r8 = row(table, "mse", 8.0)
    assert r8["logit_grad_norm"] == pytest.approx(np.linalg.norm(mse_grad(8.0)), rel=1e-12)
    assert float(f"{r8['logit_grad_norm']:.3g}") == pytest.approx(0.00704)  # "about 0.007 at a = 8"
    mse = table[table["loss"] == "mse"]
    assert (mse["loss_value"] <= 2).all()
    for margin in (-12.0, 0.0, 12.0):
        closed_form = ((closed_form_probs(margin) - onehot()) ** 2).sum()
        assert row(table, "mse", margin)["loss_value"] == pytest.approx(closed_form, rel=1e-12)
    assert row(table, "mse", 12.0)["loss_value"] == pytest.approx(2, abs=1e-3)  # 2 - O(e^-12)
    assert row(table, "mse", 0.0)["logit_grad_norm"] > 10 * r8["logit_grad_norm"]


def test_sigmoid_bce_gradient_is_sigmoid_minus_onehot(table):
    for margin in (-12.0, 0.0, 12.0):
        logits = np.zeros(K)
        logits[probe.WRONG_CLASS] = margin
        grad = 1 / (1 + np.exp(-logits)) - onehot()
        assert row(table, "sigmoid_bce", margin)["logit_grad_norm"] == pytest.approx(np.linalg.norm(grad), rel=1e-12)


def test_sweep_is_finite_at_extreme_margins():
    extreme = probe.sweep(list(LOSSES), max_margin=1e4, points=3)
    assert np.isfinite(extreme.drop(columns="loss").to_numpy()).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_sweep_is_the_loss_and_the_gradient_training_steps_with(name, table):
    """The sweep (autograd of the registered loss) against the loss's own (loss, dlogits), closed form or autograd,
    at every margin of the table: the figure shows what the trainer feels."""
    rows = table[table["loss"] == name]
    logits = probe.confident_wrong_logits(torch.tensor(rows["margin"].to_numpy()), K)
    value, grad = losses.build_with_grad(name)(logits, torch.zeros(len(rows), dtype=torch.long))
    np.testing.assert_allclose(rows["loss_value"], value.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rows["logit_grad_norm"], grad.norm(dim=1).numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(rows["grad_true"], grad[:, probe.TRUE_CLASS].numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", list(LOSSES))
def test_sweep_is_finite_for_every_loss_at_extreme_margins(name):
    extreme = probe.sweep([name], max_margin=1e4, points=3)
    assert np.isfinite(extreme.drop(columns="loss").to_numpy()).all()
    if losses.spec(name).bounded:  # far out a bounded loss sits at its supremum, with a vanishing gradient
        assert extreme["loss_value"].iloc[-1] == pytest.approx(probe.anchors(K, [name])[f"{name}_loss_far"])
        assert extreme["logit_grad_norm"].iloc[-1] < 1e-12


def test_sweep_takes_options_over_the_registry_defaults():
    default = probe.sweep(["smoothed_ce"], max_margin=4.0, points=3)
    other = probe.sweep(["smoothed_ce"], max_margin=4.0, points=3, options={"smoothed_ce": {"eps": 0.3}})
    logits = probe.confident_wrong_logits(torch.tensor([-4.0, 0.0, 4.0], dtype=torch.float64), K)
    labels = torch.zeros(3, dtype=torch.long)
    for frame, eps in ((default, 0.1), (other, 0.3)):
        expected = F.cross_entropy(logits, labels, label_smoothing=eps, reduction="none")
        np.testing.assert_allclose(frame["loss_value"], expected.numpy(), rtol=1e-12)


def test_a_registered_loss_is_swept():
    spec = losses.variant("gce", "gce_q05", q=0.5, colour="#949494")
    with losses.registered(spec):
        rows = probe.sweep(["gce_q05"], max_margin=3.0, points=3)
    p_true = rows["p_true"].to_numpy()
    np.testing.assert_allclose(rows["loss_value"], (1 - p_true**0.5) / 0.5, rtol=1e-12)


def test_sweep_rejects_bad_arguments():
    with pytest.raises(ValueError):
        probe.sweep(["softmax_nll"], max_margin=0.0, points=5)
    with pytest.raises(ValueError, match="unknown loss"):
        probe.sweep(["hinge"], max_margin=1.0, points=5)


# --- the anchors ------------------------------------------------------------------------------------------------


def test_smoothed_optimum_matches_its_closed_form():
    gap, floor = probe.optimum("smoothed_ce", K, {"eps": EPS})
    q_true = 1 - EPS + EPS / K  # at the optimum softmax equals the smoothed target: e^d / (e^d + K - 1) = q_true
    assert gap == pytest.approx(math.log(q_true * (K - 1) / (1 - q_true)), abs=1e-9)
    entropy = -(q_true * math.log(q_true) + (K - 1) * (EPS / K) * math.log(EPS / K))
    assert floor == pytest.approx(entropy, abs=1e-12)
    assert round(gap, 2) == 4.51 and round(floor, 3) == 0.500


def test_smoothed_optimum_needs_smoothing():
    with pytest.raises(ValueError, match="no finite optimum"):
        probe.optimum("smoothed_ce", K, {"eps": 0.0})
    with pytest.raises(ValueError, match="no finite optimum"):
        probe.optimum("softmax_nll", K)


def test_anchors_match_design():
    a = probe.anchors(K)
    assert a["grad_norm_cap"] == pytest.approx(math.sqrt(2), rel=1e-12)
    assert a["mse_loss_far"] == pytest.approx(2.0, rel=1e-12)  # mse's supremum
    assert a["mse_grad_norm_at_8"] == pytest.approx(0.00704, abs=5e-6)
    assert a["smoothed_ce_floor"] == pytest.approx(0.500, abs=5e-4)
    assert a["smoothed_ce_optimal_gap"] == pytest.approx(4.51, abs=5e-3)
    assert a["smoothed_ce_grad_norm_far"] < math.sqrt(2)
    assert "softmax_nll_floor" not in a  # cross-entropy falls forever: no finite optimum
    assert a["mae_loss_far"] == pytest.approx(2.0, rel=1e-12) and a["gce_loss_far"] == pytest.approx(1 / 0.7)


@pytest.mark.parametrize("name", list(LOSSES))
def test_anchors_hold_every_losss_step0_value(name):
    a = probe.anchors(K, [name])
    assert a[f"step0_{name}"] == pytest.approx(losses.uniform_value(name, K), rel=1e-12)
    assert a[f"step0_{name}_measured"] == pytest.approx(a[f"step0_{name}"], rel=1e-12)
    assert math.isfinite(a[f"{name}_loss_far"]) and math.isfinite(a[f"{name}_grad_norm_far"])


def test_step0_values_as_written_in_design():
    a = probe.anchors(K)
    for name, value in {"softmax_nll": math.log(10), "smoothed_ce": math.log(10), "mse": 0.9,
                        "sigmoid_bce": 10 * math.log(2)}.items():
        assert a[f"step0_{name}"] == pytest.approx(value, rel=1e-12)


# --- the claims -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def claim_table() -> pd.DataFrame:
    return probe.claims().set_index("claim_id", drop=False)


def test_claims_table_is_complete(claim_table):
    assert tuple(claim_table.columns) == probe.CLAIM_COLUMNS
    assert claim_table["claim_id"].is_unique
    assert set(claim_table["verdict"]) <= set(probe.VERDICTS)
    assert claim_table["value"].map(math.isfinite).all()
    for column in ("claim", "measured", "note"):
        assert (claim_table[column].str.len() > 0).all()
    required = {
        "sigmoid_range",
        "sigmoid_monotone",
        "softmax_sums_to_one",
        "softmax_amplifies",
        "log_underflow",
        "log_small_differences",
        "confident_wrong_penalised",
        "nll_loss_definition",
        "gradient_linear",
        "cross_entropy_bins",
        "shannon_information",
        "mean_of_nll",
        "entropy_randomness",
    }
    assert required <= set(claim_table["claim_id"])


def test_claims_quote_the_source_text(claim_table):
    if not SEED_TEXT.exists():
        pytest.skip(f"{SEED_TEXT} not present")
    source = re.sub(r"\s+", " ", SEED_TEXT.read_text(encoding="utf-8"))
    for claim in claim_table["claim"]:
        for fragment in claim.split(" [...] "):
            assert re.sub(r"\s+", " ", fragment) in source, fragment


def test_expected_verdicts(claim_table):
    verdicts = claim_table["verdict"]
    assert verdicts["nll_loss_definition"] == probe.FAILS
    for nuanced in ("sigmoid_range", "sigmoid_monotone", "confident_wrong_penalised", "gradient_linear"):
        assert verdicts[nuanced] == probe.NUANCE
    for plain in (
        "cross_entropy_bins",
        "shannon_information",
        "mean_of_nll",
        "entropy_randomness",
        "log_small_differences",
        "softmax_sums_to_one",
    ):
        assert verdicts[plain] == probe.HOLDS


def test_claim_values_against_closed_forms(claim_table):
    value = claim_table["value"]
    p, q = np.array([2, 3, 4]) / 9, np.array([4, 4, 1]) / 9
    assert value["cross_entropy_bins"] == pytest.approx(-(p * np.log2(q)).sum(), rel=1e-12)
    assert round(value["cross_entropy_bins"], 3) == 2.059
    assert value["shannon_information"] == pytest.approx(3.0)
    assert value["log_small_differences"] == pytest.approx(math.log(10))
    assert value["entropy_randomness"] == pytest.approx(math.log2(10))
    assert value["sigmoid_monotone"] == pytest.approx(0.25)
    assert value["softmax_amplifies"] == pytest.approx(math.exp(1.5))
    assert value["confident_wrong_penalised"] == pytest.approx(-math.log(1e-6))
    assert value["log_underflow"] == 16  # 0.001^15 = 1e-45 is the last float32 subnormal before 0
    assert 15 < value["sigmoid_range"] < 20 and torch.sigmoid(torch.tensor(20.0)).item() == 1.0
    assert (claim_table["figure"] == probe.PENALTY_FIGURE).sum() >= 2


def test_verdict_helper_flips_with_its_inputs():
    assert probe.verdict(True) == probe.HOLDS
    assert probe.verdict(True, nuance=True) == probe.NUANCE
    assert probe.verdict(False) == probe.FAILS
    assert probe.verdict(False, nuance=True) == probe.FAILS


def test_verdicts_follow_the_measurement():
    assert probe.check_log_underflow(n=100).verdict != probe.FAILS
    assert probe.check_log_underflow(n=5).verdict == probe.FAILS  # 1e-15 is no underflow
    assert probe.check_sigmoid_range(-50.0, 50.0).verdict == probe.NUANCE
    assert probe.check_sigmoid_range(-10.0, 10.0).verdict == probe.HOLDS  # float32 never reaches 1.0 there
    assert probe.check_softmax_amplifies(small_gap=0.1).verdict == probe.NUANCE
    assert probe.check_softmax_amplifies(small_gap=5.0).verdict == probe.HOLDS


def test_nll_loss_verdict_is_measured_not_typed(monkeypatch):
    def as_the_text_says(x, y, reduction="mean"):  # "takes the softmax and then takes the negative"
        return -x.softmax(dim=1).gather(1, y[:, None]).squeeze(1)

    monkeypatch.setattr(F, "nll_loss", as_the_text_says)
    assert probe.check_nll_loss_definition().verdict == probe.HOLDS
