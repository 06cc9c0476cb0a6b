"""The report's three answers say the truth of a fabricated results tree (test_report.py's), and change when it
changes: the fastest loss, vanished differences, a vanishing gradient, the conditions an answer holds in."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from study import analysis, answers, document, tables
from test_report import CLEAN, NOISY, _copy, fabricate

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


def plain(text: str) -> str:
    """The answer without its Markdown links: '[faster](#m)' -> 'faster'."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)


def fastest_named(text: str) -> str:
    """The first loss the speed answer names as fastest."""
    found = re.search(r"Fewest steps to the first validation-accuracy target: (\w+)", plain(text))
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
    assert re.search(r"mse slower in 2 of 2 conditions", plain(text)), text


def test_swap_which_loss_is_fastest_and_the_speed_answer_names_the_new_one(tree: Path, tmp_path: Path):
    root = _copy(tree, tmp_path / "results")
    rewrite_accuracy(root, swap("mse", "softmax_nll"))
    text = speed_text(root)
    assert fastest_named(text) == "mse"
    assert "mse faster in 2 of 2 conditions" in plain(text), text
    assert "mse slower" not in plain(text)


def test_when_the_differences_vanish_the_speed_answer_says_so_with_the_verdict_words(tree: Path, tmp_path: Path):
    root = _copy(tree, tmp_path / "results")
    rewrite_accuracy(root, same_as("softmax_nll"))
    text = plain(speed_text(root))
    assert text.startswith("No loss reached the first validation-accuracy target in a different number of steps")
    for loss in ("mse", "sigmoid_bce", "smoothed_ce"):  # the same steps in every seed: identical, no test
        assert f"{loss} {answers.IDENTICAL} in 2 of 2" in text, text
    assert "faster" not in text and "slower" not in text


def test_removing_a_condition_changes_where_the_speed_answer_holds(tree: Path):
    both, one = plain(speed_text(tree)), plain(speed_text(tree, [CLEAN]))
    assert "mse slower in 2 of 2 conditions" in both
    assert "mse slower in 1 of 1 condition" in one and "2 of 2" not in one


def test_a_loss_whose_gradient_vanishes_on_wrong_examples_is_named(tree: Path, tmp_path: Path):
    before = plain(gradient_text(tree))
    named = before.split(":")[0]
    assert "mse" in named and "sigmoid_bce" not in named  # mse's gradient 2p(1-p) vanishes; the sigmoids' does not
    root = _copy(tree, tmp_path / "results")
    for condition in CONDITIONS:
        path = root / "conditions" / condition / tables.EXAMPLES
        examples = tables.read_examples(path)
        wrong = (examples["loss"] == "sigmoid_bce") & (examples["predicted"] != examples["label"])
        examples.loc[wrong, "logit_grad_norm"] = np.float32(1e-6)
        tables.write_parquet(examples, path)
    after = plain(gradient_text(root))
    assert "sigmoid_bce" in after.split(":")[0], after
    assert re.search(r"sigmoid_bce higher in 2 of 2", after), after


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
