"""The quantity registry: one declaration per compared quantity, read by analysis instead of its own tables."""

import math

import pytest

from study import analysis, quantities


def test_one_primary_quantity_per_question():
    assert quantities.primary() == {"steps_to_target_1": quantities.QUESTIONS["speed"],
                                    "saturated_share": quantities.QUESTIONS["gradient"],
                                    "ece_ts": quantities.QUESTIONS["confident_wrong"]}
    assert analysis.PRIMARY == quantities.primary()


def test_declarations_are_unique_and_complete():
    names = [q.name for q in quantities.QUANTITIES]
    assert len(names) == len(set(names))
    for q in quantities.QUANTITIES:
        assert q.margin > 0 and q.label and len(q.source) == 2
    steps = quantities.spec(analysis.steps_quantity(1))
    assert steps.log_scale and steps.test_margin == pytest.approx(math.log(1.1)) and not steps.higher_is_better
    assert quantities.spec("final_accuracy").margin == 0.005 and quantities.spec("ece_ts").margin == 0.01
    # A third target is declared like the second, without being primary.
    third = quantities.spec(analysis.steps_quantity(3))
    assert third.target == 3 and not third.primary and quantities.is_steps(third.name)
    assert quantities.get("no_such_quantity") is None
    with pytest.raises(KeyError, match="declared"):
        quantities.spec("no_such_quantity")


def test_a_bad_declaration_is_refused():
    with pytest.raises(ValueError, match="margin"):
        quantities.Quantity("x", "x", ("test", "x"), True, 0.0)
    with pytest.raises(ValueError, match="reading"):
        quantities.Quantity("x", "x", ("test", "x"), True, 0.1, reading="sometimes")
    with pytest.raises(ValueError, match="target"):
        quantities.Quantity("x", "x", ("val", "accuracy"), False, 0.1, reading="steps")


def test_analysis_reads_the_headline_from_the_registry():
    final = analysis.final()
    assert set(final) <= set(quantities.headline())
    assert final["ece_ts"] == ("test", "ece_ts") and final["final_accuracy"] == ("test", "accuracy")
