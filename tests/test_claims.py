"""The source text's claims (study.claims) and the published anchors (study.published), each wording checked on a
small fabricated frame: the penalty sentence split by label noise, the test-NLL check worded as measured, anchors per
condition, reasons read from the fitted temperatures, a published point set against the study's interval, and the
study's own question counted apart from the source's claims."""

import pandas as pd
import pytest

from study import analysis, claims, comparisons, published, tables, verdicts

REF = analysis.REFERENCE
JITTER = (0.0, 0.002, -0.001, 0.001, -0.002)


def per_seed(rows: dict[tuple[str, str, str], float | list[float]]) -> pd.DataFrame:
    """{(condition, loss, quantity): value (plus a small jitter per seed) or the per-seed values}."""
    out = []
    for (condition, loss, quantity), value in rows.items():
        values = value if isinstance(value, list) else [value + j for j in JITTER]
        out += [(condition, loss, 0.1, seed, quantity, v) for seed, v in enumerate(values)]
    return pd.DataFrame(out, columns=[*analysis.RUN, "quantity", "value"])


def headline(frame: pd.DataFrame) -> analysis.Headline:
    conditions = dict.fromkeys(frame["condition"])
    return analysis.Headline(frame, analysis.summarise(frame), analysis.differences(frame), pd.DataFrame(),
                             pd.DataFrame(columns=[*analysis.RUN, "diverged"]), {c: (0.5,) for c in conditions})


def setup(dataset: str = "fashion_mnist", noise: float = 0.0, kind: str = "mlp") -> dict:
    return {"dataset": dataset, "params": {"label_noise": noise, "optimizer": "sgd", "model": {"kind": kind}}}


def anchor_rows(table: pd.DataFrame, anchor: str) -> pd.DataFrame:
    return table[table["anchor"] == anchor].reset_index(drop=True)


# --- the penalty sentence: clean labels and label noise, each its own verdict ------------------------------------


def test_the_penalty_sentence_is_two_claims_with_their_own_verdicts():
    head = headline(per_seed({("clean", REF, "final_accuracy"): 0.85, ("clean", "mse", "final_accuracy"): 0.80,
                              ("noisy", REF, "final_accuracy"): 0.70, ("noisy", "mse", "final_accuracy"): 0.72}))
    # Under noise the reference loses 10 points after its best, mse 2: the penalty fits the flipped labels.
    drop = comparisons.NOISE_DROP
    noise = {"noisy": per_seed({("noisy", REF, drop): 0.10, ("noisy", "mse", drop): 0.02})}
    clean, noisy = claims.claim_penalty_works(head, noise, bounded=["mse"])
    assert clean["claim_id"] == "penalty_works_clean" and noisy["claim_id"] == "penalty_works_noise"
    assert clean["claim"] == f"{claims.PENALTY_WORKS} (on clean labels)"
    assert noisy["claim"] == f"{claims.PENALTY_WORKS} (under label noise)"
    assert clean["verdict"] == verdicts.HOLDS and "noisy" not in clean["measured"]
    assert noisy["verdict"] == verdicts.FAILS and "clean:" not in noisy["measured"]
    table = claims.measured(head, pd.DataFrame(columns=tables.HISTORY_COLUMNS), noise,
                            pd.DataFrame(columns=[*analysis.RUN, "quantity", "value"]),
                            pd.DataFrame(columns=[*analysis.RUN, "value"]), None)
    assert {"penalty_works_clean", "penalty_works_noise"} <= set(table["claim_id"])
    assert "penalty_works" not in set(table["claim_id"])


def test_no_difference_only_where_equivalence_or_identity_is_shown():
    assert claims._outcome(analysis.EQUIVALENT, True, True) == claims.NO_DIFFERENCE
    assert claims._outcome(analysis.IDENTICAL, False, True) == claims.NO_DIFFERENCE
    assert claims._outcome(analysis.NOT_ESTABLISHED, True, True) == claims.UNCLEAR
    assert claims._outcome(None, True, True) == claims.UNCLEAR
    # Two seeds give no variance ratio: 'not established', never 'no difference'.
    head = headline(per_seed({("c", REF, "final_accuracy"): [0.8, 0.81], ("c", "mse", "final_accuracy"): [0.7, 0.72]}))
    row = claims.claim_reliable(head, others=["mse"])
    assert "spread not testable → not established" in row["measured"]


# --- the test-NLL sentence, worded as measured --------------------------------------------------------------------


def nll_history(rises: list[float], final_nll: list[float]) -> pd.DataFrame:
    """Reference seeds whose NLL is lowest (0.5) at step 10 and ends at ``final_nll``; accuracy 0.60 there, then
    ``rises`` (points) higher at the end."""
    rows = []
    for seed, (rise, end) in enumerate(zip(rises, final_nll, strict=True)):
        readings = [(0, 2.3, 0.1), (10, 0.5, 0.60), (20, (0.5 + end) / 2, 0.60), (30, end, 0.60 + rise / 100)]
        for step, nll, acc in readings:
            rows += [("mnist1d_sgd", "d", REF, 0.1, seed, step / 10, step, "test", "nll", nll),
                     ("mnist1d_sgd", "d", REF, 0.1, seed, step / 10, step, "test", "accuracy", acc)]
    return pd.DataFrame(rows, columns=tables.HISTORY_COLUMNS)


def test_the_nll_check_says_what_was_measured():
    row = claims.claim_nll_misclassification(nll_history([3.6, 5.0, 7.1], [1.0, 0.95, 1.05]))
    assert "mnist1d_sgd: from its lowest test NLL to the last evaluation, test accuracy rose 3.6 to 7.1 points " \
           "while the NLL doubled (1.90–2.10× its lowest)" in row["measured"]
    assert "in 3/3 seeds" in row["measured"] and row["verdict"] == verdicts.FAILS
    row = claims.claim_nll_misclassification(nll_history([-2.0, -4.0, -3.0], [0.75, 0.75, 0.75]))
    assert "test accuracy fell 2.0 to 4.0 points while the NLL rose to 1.50× its lowest" in row["measured"]
    assert row["verdict"] == verdicts.HOLDS  # NLL up, accuracy down: they move together


# --- published anchors -----------------------------------------------------------------------------------------


def test_comparison_anchors_get_a_row_per_condition():
    rows = {}
    for condition, ece_smooth, steps_mse in (("mnist1d_sgd", 0.02, 600.0), ("fashion_heldout", 0.08, 300.0),
                                             ("mnist1d_cnn", 0.09, 310.0)):
        rows |= {(condition, REF, "ece"): 0.05, (condition, "smoothed_ce", "ece"): ece_smooth,
                 (condition, REF, analysis.steps_quantity(1)): [300.0, 310.0, 290.0, 305.0, 295.0],
                 (condition, "mse", analysis.steps_quantity(1)): [steps_mse + 3 * j for j in range(5)]}
    head = headline(per_seed(rows))
    setups = {"mnist1d_sgd": setup("mnist1d"), "fashion_heldout": setup(),
              "mnist1d_cnn": setup("mnist1d", kind="cnn1d")}
    table = published.anchors(head, pd.DataFrame(columns=tables.HISTORY_COLUMNS), setups)
    muller = anchor_rows(table, "label smoothing lowers the calibration error")
    assert len(muller) == 3
    assert "lower (mnist1d_sgd, Holm p=" in muller.loc[0, "here"] and muller.loc[0, "verdict"] == published.REPRODUCED
    for i, condition in ((1, "fashion_heldout"), (2, "mnist1d_cnn")):
        assert f"higher ({condition}, Holm p=" in muller.loc[i, "here"]
        assert muller.loc[i, "verdict"] == published.CONTRADICTED
    golik = anchor_rows(table, "squared error trains worse than cross-entropy from random initialisation")
    # Equivalent within the margin is 'not reproduced'; neither shown is 'not established here', never 'no difference'.
    assert list(golik["verdict"]) == [published.REPRODUCED, published.NOT_REPRODUCED, published.UNSETTLED]
    assert "slower (mnist1d_sgd, Holm p=" in golik.loc[0, "here"]
    assert "equivalent within ±0.1 (fashion_heldout, Holm p=" in golik.loc[1, "here"]
    assert "not established (mnist1d_cnn, Holm p=" in golik.loc[2, "here"]


def test_the_ece_reason_follows_the_fitted_temperatures():
    frame = per_seed({("c", REF, "ece"): 0.05, ("c", "focal", "ece"): 0.08,
                      ("c", REF, comparisons.TEMPERATURE): 1.77, ("c", "focal", comparisons.TEMPERATURE): 0.75})
    table = published.anchors(headline(frame), pd.DataFrame(columns=tables.HISTORY_COLUMNS), {"c": setup()})
    focal = anchor_rows(table, "focal loss lowers the calibration error of cross-entropy").iloc[0]
    assert focal["verdict"] == published.CONTRADICTED
    assert focal["why"] == (f"{REF} overconfident, T = 1.77 > 1; focal underconfident, T = 0.75 < 1: focal "
                            "overshoots into underconfidence")
    calm = per_seed({("c", REF, "ece"): 0.05, ("c", "focal", "ece"): 0.08,
                     ("c", REF, comparisons.TEMPERATURE): 0.98, ("c", "focal", comparisons.TEMPERATURE): 0.70})
    why = published.temperature_reason(headline(calm), "c", "focal")
    assert why.startswith(f"{REF} about calibrated, T = 0.98") and "not overconfident to begin with" in why
    assert published.temperature_reason(headline(per_seed({("c", REF, "ece"): 0.05})), "c", "focal") is None


@pytest.mark.parametrize("values, verdict, says", [
    ([0.66, 0.70, 0.67, 0.69, 0.68], published.REPRODUCED, "the study's 95% interval contains 0.68"),
    ([0.60, 0.61, 0.62, 0.60, 0.61], published.NOT_REPRODUCED, "the study's 95% interval lies below 0.68"),
    ([0.74, 0.75, 0.76, 0.74, 0.75], published.NOT_REPRODUCED, "the study's 95% interval lies above 0.68"),
])
def test_about_068_is_a_point_set_against_the_studys_interval(values, verdict, says):
    head = headline(per_seed({("mnist1d_sgd", REF, "final_accuracy"): values}))
    table = published.anchors(head, pd.DataFrame(columns=tables.HISTORY_COLUMNS), {"mnist1d_sgd": setup("mnist1d")})
    row = anchor_rows(table, "MNIST-1D MLP test accuracy").iloc[0]
    assert row["verdict"] == verdict and row["why"].startswith(says)
    est = analysis.mean_ci(values)
    assert row["here"] == f"{est.mean:.3f} (mnist1d_sgd, {REF}), 95% interval [{est.ci_low:.3f}, {est.ci_high:.3f}]"


def test_a_published_range_is_met_by_the_interval():
    head = headline(per_seed({("fashion_sgd", REF, "final_accuracy"): [0.86, 0.865, 0.862, 0.87, 0.866]}))
    table = published.anchors(head, pd.DataFrame(columns=tables.HISTORY_COLUMNS), {"fashion_sgd": setup()})
    row = anchor_rows(table, "Fashion-MNIST MLP test accuracy").iloc[0]
    assert row["verdict"] == published.NOT_REPRODUCED and "lies below the published range" in row["why"]
    head = headline(per_seed({("fashion_sgd", REF, "final_accuracy"): [0.86, 0.875, 0.862, 0.88, 0.866]}))
    row = anchor_rows(published.anchors(head, pd.DataFrame(columns=tables.HISTORY_COLUMNS), {"fashion_sgd": setup()}),
                      "Fashion-MNIST MLP test accuracy").iloc[0]
    assert row["verdict"] == published.REPRODUCED


def test_the_mukhoti_row_shows_ece_before_and_after_scaling_per_condition():
    rows = [("c", loss, 0.1, seed, q, v) for loss, q, v in
            ((REF, "ece", 0.05), (REF, "ece_ts", 0.012), ("focal", "ece", 0.03), ("focal", "ece_ts", 0.02))
            for seed in range(3)]
    frame = pd.DataFrame(rows, columns=[*analysis.RUN, "quantity", "value"])
    table = pd.DataFrame(published._published_values(published.PUBLISHED_ECE, headline(frame)),
                         columns=published.ANCHOR_COLUMNS)
    assert published.PUBLISHED_ECE in published.PUBLISHED
    here = dict(zip(table["published"], table["here"], strict=True))
    assert here["cross-entropy: 4.35 / 1.35"] == f"{REF}: 5.00 / 1.20 (c)"
    assert here["focal γ = 3: 1.48 / 1.42"] == "focal: 3.00 / 2.00 (c)"
    assert table.set_index("published").loc["Brier: 1.82 / 1.08", "verdict"] == published.NOT_MEASURED


# --- the study's own question, counted apart ---------------------------------------------------------------------


def test_the_row_that_is_not_a_sentence_of_the_source_is_counted_apart():
    gradient = claims.claim_gradient(pd.DataFrame(columns=[*analysis.RUN, "value"]), None, ())
    assert gradient["of_source"] is False and gradient["claim"] == claims.GRADIENT_QUESTION
    probe = pd.DataFrame([{"claim_id": "p", "claim": "A sentence.", "measured": "x", "value": "1",
                           "reference": "r", "verdict": verdicts.HOLDS, "note": "", "figure": ""}])
    own = dict(gradient, verdict=verdicts.FAILS)
    table = claims.combine(probe, pd.DataFrame([own], columns=claims.CLAIM_COLUMNS)).fillna("")
    assert list(table.columns) == claims.CLAIM_COLUMNS and table["of_source"].tolist() == [True, False]
    found = claims.finding(table)
    assert found["counts"][verdicts.HOLDS] == 1 and found["counts"][verdicts.FAILS] == 0
    assert sum(found["counts"].values()) == 1 and found["against"] == []
    assert found["own"] == [{"claim": claims.GRADIENT_QUESTION, "verdict": verdicts.FAILS}]
