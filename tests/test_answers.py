"""The report's three answers say the truth of a fabricated results tree (test_report.py's), and change when it
changes: the fastest loss, vanished differences, a vanishing gradient, the conditions an answer holds in."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from study import analysis, answers, document, published, tables
from test_report import CLEAN, LOSSES, NOISY, SEEDS, SIX, _copy, fabricate

CONDITIONS = [CLEAN, NOISY]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return fabricate(tmp_path_factory.mktemp("results") / "results")


def computed(root: Path, conditions=CONDITIONS) -> tuple[document.Inputs, document.Computed]:
    inputs = document.load(root / "conditions", root / "probe", list(conditions))
    return inputs, document.compute(inputs)


def speed_text(root: Path, conditions=CONDITIONS) -> str:
    inputs, found = computed(root, conditions)
    return document.render_answer("speed", answers.speed(found.head, inputs.conditions, found.lr_views))


def gradient_text(root: Path, conditions=CONDITIONS) -> str:
    inputs, found = computed(root, conditions)
    return document.render_answer("gradients", answers.gradients(found.head, found.saturation, inputs.penalty,
                                                                 inputs.conditions))


def penalty_text(root: Path, conditions=CONDITIONS) -> tuple[str, document.Computed]:
    inputs, found = computed(root, conditions)
    return document.render_answer("penalty", answers.penalty(found.penalty_seeds, inputs.conditions)), found


def all_texts(root: Path, conditions=CONDITIONS) -> dict[str, str]:
    """The three answers as report.md words them (the speed answer with its learning-rate views)."""
    inputs, found = computed(root, conditions)
    return {"speed": document.render_answer("speed", answers.speed(found.head, inputs.conditions, found.lr_views)),
            "gradients": document.render_answer("gradients", answers.gradients(
                found.head, found.saturation, inputs.penalty, inputs.conditions)),
            "penalty": document.render_answer("penalty", answers.penalty(found.penalty_seeds, inputs.conditions))}


def plain(text: str) -> str:
    """The answer without its Markdown links: '[faster](#m)' -> 'faster'."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)


def sentences(text: str) -> list[str]:
    """The rendered answer's sentences (links dropped): a full stop, then space (numbers such as 2.4× keep theirs)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", plain(text).strip()) if s]


def fastest_named(text: str) -> str:
    """The loss the speed answer's first sentence opens with: the one ahead in the most conditions."""
    found = re.match(r"(\w+) reaches the first validation-accuracy target faster than ", plain(text))
    assert found, text
    return found[1]


def rewrite_accuracy(root: Path, change) -> None:
    """Apply ``change(history) -> history`` to every condition's history.csv."""
    for condition in CONDITIONS:
        path = root / "conditions" / condition / tables.HISTORY
        tables.write_csv(change(tables.read_history(path)), path)


def swap(first: str, second: str):
    """Give ``first`` the accuracy curves of ``second`` and back, seed by seed (validation and test)."""
    def change(history):
        rows = history["metric"].eq("accuracy") & history["split"].isin(["val", "test"])
        a, b = rows & history["loss"].eq(first), rows & history["loss"].eq(second)
        key = ["condition", "seed", "step", "split"]
        values_a = history[a].set_index(key)["value"]
        values_b = history[b].set_index(key)["value"]
        history.loc[a, "value"] = values_b.reindex(history[a].set_index(key).index).to_numpy()
        history.loc[b, "value"] = values_a.reindex(history[b].set_index(key).index).to_numpy()
        return history.dropna(subset=["value"])
    return change


def same_as(reference: str):
    """Every loss's accuracy curves become ``reference``'s, seed by seed: no difference in speed is left."""
    def change(history):
        rows = history["metric"].eq("accuracy") & history["split"].isin(["val", "test"])
        key = ["condition", "seed", "step", "split"]
        ref = history[rows & history["loss"].eq(reference)].set_index(key)["value"]
        others = rows & history["loss"].ne(reference)
        history.loc[others, "value"] = ref.reindex(history[others].set_index(key).index).to_numpy()
        return history.dropna(subset=["value"])
    return change


def test_the_speed_answer_names_the_fastest_loss(tree: Path):
    text = speed_text(tree)
    assert fastest_named(text) == "softmax_nll"
    assert "softmax_nll reaches the first validation-accuracy target faster than mse in 2 of 2 conditions" \
        in sentences(text)[0], text
    assert "faster than softmax_nll" not in plain(text)


def test_swap_which_loss_is_fastest_and_the_speed_answer_names_the_new_one(tree: Path, tmp_path: Path):
    root = _copy(tree, tmp_path / "results")
    rewrite_accuracy(root, swap("mse", "softmax_nll"))
    text = speed_text(root)
    assert fastest_named(text) == "mse"
    assert plain(text).startswith("mse reaches the first validation-accuracy target faster than softmax_nll in 2 of 2 "
                                  "conditions"), text
    assert "faster than mse" not in plain(text)


def test_when_the_differences_vanish_the_speed_answer_says_so_with_the_verdict_words(tree: Path, tmp_path: Path):
    root = _copy(tree, tmp_path / "results")
    rewrite_accuracy(root, same_as("softmax_nll"))
    text = plain(speed_text(root))
    # the same steps in every seed: identical, no test; 3 losses x 2 conditions
    assert text.startswith("None of mse, sigmoid_bce and smoothed_ce reaches the first validation-accuracy target "
                           "in a different number of steps from softmax_nll in any of the 2 conditions: the 6 "
                           f"comparisons are {answers.IDENTICAL}."), text
    assert "faster" not in text and "slower" not in text


def test_removing_a_condition_changes_where_the_speed_answer_holds(tree: Path):
    both, one = plain(speed_text(tree)), plain(speed_text(tree, [CLEAN]))
    assert "faster than mse in 2 of 2 conditions" in both
    assert "faster than mse in 1 of 1 condition " in one and "2 of 2" not in one


def test_a_loss_whose_gradient_vanishes_on_wrong_examples_is_named(tree: Path, tmp_path: Path):
    before = plain(gradient_text(tree))
    named, kept = sentences(before)[0].split(" vanish")[0], sentences(before)[0].split(";")[-1]
    assert named == "mse's logit gradient", before  # mse's gradient 2p(1-p) vanishes; the sigmoids' does not
    assert "softmax_nll's" in kept and "sigmoid_bce's" in kept and kept.endswith("do not.")
    root = _copy(tree, tmp_path / "results")
    for condition in CONDITIONS:
        path = root / "conditions" / condition / tables.EXAMPLES
        examples = tables.read_examples(path)
        wrong = (examples["loss"] == "sigmoid_bce") & (examples["predicted"] != examples["label"])
        examples.loc[wrong, "logit_grad_norm"] = np.float32(1e-6)
        tables.write_parquet(examples, path)
    after = plain(gradient_text(root))
    assert "sigmoid_bce" in sentences(after)[0].split(" vanish")[0], after
    assert "higher than softmax_nll's for sigmoid_bce in 2 of 2 conditions" in sentences(after)[1], after


def test_holm_p_is_printed_on_the_side_of_its_threshold():
    low, high = answers.thresholds(5)[0], answers.thresholds(5)[-1]
    for threshold in answers.thresholds(5):
        below, above = threshold * 0.97, threshold * 1.03
        b, a = answers.fmt_holm(below, 5), answers.fmt_holm(above, 5)
        assert b != a and float(b) < threshold <= float(a), (threshold, b, a)
    assert answers.fmt_holm(0.0115, 5) != answers.fmt_holm(0.0125, 5)
    assert low <= analysis.ALPHA <= max(high, analysis.ALPHA)


def test_speed_ratios_are_steps_over_the_reference(tree: Path):
    inputs, found = computed(tree)
    ratios = answers.speed_ratios(found.head)
    steps = found.head.per_seed[found.head.per_seed["quantity"] == analysis.steps_quantity(1)]
    row = analysis.lookup(ratios, condition=CLEAN, loss="mse")
    mine = steps[(steps["condition"] == CLEAN)]
    a = mine[mine["loss"] == "mse"].set_index("seed")["value"]
    b = mine[mine["loss"] == "softmax_nll"].set_index("seed")["value"]
    both = (a / b).dropna()
    assert row["ratio"] == pytest.approx(float(np.exp(np.log(both).mean())), rel=1e-6)
    assert row["ratio_low"] < row["ratio"] < row["ratio_high"]


def test_main_words_leave_out_the_folds():
    html = ("<html><head><title>a b</title><style>p { x: y }</style></head><body><h1>One two</h1>"
            "<details><summary>Three</summary><p>four five six</p></details><p>seven</p></body></html>")
    assert document.main_words(html) == 4


def test_each_answer_has_at_most_three_sentences(tree: Path, tmp_path: Path):
    assert len(sentences("mse is 2.4× slower. It is [not established](#m) in 1.5 of 2. Done.")) == 3
    six = fabricate(tmp_path / "six" / "results", clean_losses=SIX)  # every clause: losses one condition adds
    vanished = _copy(tree, tmp_path / "same" / "results")
    rewrite_accuracy(vanished, same_as("softmax_nll"))
    for root, conditions in ((tree, CONDITIONS), (tree, [CLEAN]), (six, CONDITIONS), (vanished, CONDITIONS)):
        for kind, text in all_texts(root, conditions).items():
            found = sentences(text)
            assert 1 <= len(found) <= 3, (kind, found)
            assert all(s.endswith(".") for s in found), (kind, found)


def test_the_answers_name_the_studys_losses_and_put_the_added_ones_in_a_clause(tmp_path: Path):
    root = fabricate(tmp_path / "results", clean_losses=SIX)  # logit_mse and focal in cond_a only
    texts = all_texts(root)
    first = sentences(texts["speed"])[0]
    assert "logit_mse" not in first and "focal" not in first and "mse" in first, first
    last = sentences(texts["speed"])[-1]
    assert last.startswith("Among the losses only some conditions train, ") and "logit_mse" in last \
        and "focal" in last, texts["speed"]
    assert "logit_mse" not in sentences(texts["penalty"])[-1]  # calibration: the study's losses only


def test_the_penalty_answer_gives_each_losss_memorised_share(tree: Path):
    text, found = penalty_text(tree)
    noise = [s for s in sentences(text) if s.startswith(f"Under label noise ({NOISY})")]
    assert len(noise) == 1, text
    memorised = found.penalty_seeds[found.penalty_seeds["quantity"] == "memorised"]
    means = memorised.groupby("loss")["value"].mean()
    assert f"memorise {means['softmax_nll']:.1%} of the flipped labels" in noise[0], noise
    listed = {}  # "more than mse (11.0%) and sigmoid_bce (21.0%) and fewer than smoothed_ce (41.0%)"
    for word, items in re.findall(r"\b(more|fewer) than (.*?)(?= and (?:more|fewer) than |;|\.$)", noise[0]):
        for loss, share in re.findall(r"(\w+) \(([\d.]+%)\)", items):
            listed[loss] = (word, share)
    for loss in ("mse", "sigmoid_bce", "smoothed_ce"):  # every difference is decided in the tree
        word = "more" if means["softmax_nll"] > means[loss] else "fewer"
        assert listed.get(loss) == (word, f"{means[loss]:.1%}"), (loss, listed, noise)


def add_features(root: Path, transfer_sign: int = -1) -> dict[tuple[str, int], float]:
    """Give CLEAN's models a class separation that grows with the loss's place in SIX (a little seed noise, never
    enough to reorder the losses) and a transfer accuracy of 1 - separation (``transfer_sign`` -1) or
    separation - 0.2 (+1): Spearman's rho over the models is exactly -1 or +1. Returns the separations."""
    path = root / "conditions" / CLEAN / tables.HISTORY
    history = tables.read_history(path)
    last = history[(history["split"] == "test") & (history["metric"] == "accuracy")]
    last = last[last["step"] == last.groupby(["loss", "seed"])["step"].transform("max")]
    added, separations = [], {}
    for row in last.itertuples(index=False):
        i = SIX.index(row.loss)
        separation = 0.3 + 0.1 * i + 0.01 * row.seed + 0.003 * ((row.seed * 7 + i) % 3)
        separations[(row.loss, row.seed)] = separation
        transfer = 1 - separation if transfer_sign < 0 else separation - 0.2
        for split, metric, value in (("test", "class_separation", separation),
                                     ("transfer", "heldout_accuracy", transfer)):
            added.append({**row._asdict(), "split": split, "metric": metric, "value": value})
    tables.write_csv(pd.concat([history, pd.DataFrame(added)], ignore_index=True), path)
    return separations


def test_the_features_answer_states_the_separation_and_the_transfer_correlation(tree: Path, tmp_path: Path):
    root = _copy(tree, tmp_path / "features" / "results")
    separations = add_features(root)
    inputs, found = computed(root)
    text = plain(document.render_answer("features", answers.penalty(found.penalty_seeds, inputs.conditions)))
    reference = np.mean([v for (loss, _), v in separations.items() if loss == "softmax_nll"])
    # mse diverged in one of CLEAN's three seeds: two pairs leave its comparison not established
    assert text.startswith(f"In the penultimate layer softmax_nll separates the classes by R² {reference:.2f}, "
                           "more than sigmoid_bce and less than smoothed_ce; the other 1 comparison is not "
                           "established."), text
    transfer = np.mean([1 - v for (loss, _), v in separations.items() if loss == "softmax_nll"])
    assert f"({CLEAN}) at {transfer:.1%} accuracy, higher than smoothed_ce's and lower than sigmoid_bce's" in text
    assert "class separation and transfer to the unseen classes correlate at ρ = -1.00 (p < 0.001, 11 models, in " \
           "Kornblith et al.'s direction)" in text, text
    assert 1 <= len(sentences(text)) <= 3, text

    opposite = _copy(tree, tmp_path / "opposite" / "results")
    add_features(opposite, transfer_sign=+1)
    inputs, found = computed(opposite)
    text = plain(document.render_answer("features", answers.penalty(found.penalty_seeds, inputs.conditions)))
    assert "ρ = +1.00" in text and "against Kornblith et al.'s direction" in text, text


def test_the_anchors_set_the_transfer_correlation_beside_kornblith(tree: Path, tmp_path: Path):
    for sign, verdict in ((-1, published.REPRODUCED), (+1, published.CONTRADICTED)):
        root = _copy(tree, tmp_path / f"anchors{sign}" / "results")
        add_features(root, transfer_sign=sign)
        inputs, found = computed(root)
        rows = published.anchors(found.head, inputs.history, inputs.setups)
        row = rows[rows["anchor"] == published.TRANSFER_ANCHOR[0]].iloc[0]
        models = len(LOSSES) * len(SEEDS) - 1  # CLEAN's, each with a probe, but the one that diverged (DIVERGED)
        assert row["verdict"] == verdict and f"ρ = {sign:+.2f} over {models} models" in row["here"], row.to_dict()
    # Kornblith et al.: the other objectives separate more than cross-entropy. Here sigmoid_bce separates less than
    # softmax_nll (its place in SIX is lower), smoothed_ce more.
    separated = rows[rows["here"].str.startswith("Δ R²")]
    verdicts = {loss: separated.loc[separated["here"].str.contains(f"Δ R² {loss} "), "verdict"].item()
                for loss in ("sigmoid_bce", "smoothed_ce")}
    assert verdicts == {"sigmoid_bce": published.CONTRADICTED, "smoothed_ce": published.REPRODUCED}, separated
