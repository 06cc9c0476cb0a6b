"""Comparing two reports' findings: numbers may move, wording may not."""

from __future__ import annotations

import pytest

from study import findings

REPORT = """# Report

## Findings

- Speed, a: x has the lowest median steps, 234 (5/5 seeds), ±10%, p=0.028.
- Accuracy, a: highest final test accuracy 0.895 with y.
- Calibration, a: lowest ECE x (0.050 [0.046, 0.054]).

## Setup
- not a finding: 12
"""


def test_numbers_may_move_but_words_may_not():
    # "p<0.001" is the formatter's bound: the same wording as "p=0.028"
    moved = REPORT.replace("234", "251").replace("0.895", "0.893").replace("p=0.028", "p<0.001")
    result = findings.compare(REPORT, moved)
    assert len(result.kept) == 3 and not result.changed
    assert result.summary() == "3 of 3 findings kept their wording (numbers masked)"

    flipped = REPORT.replace("with y", "with z").replace("lowest ECE x", "lowest ECE w")
    result = findings.compare(REPORT, flipped)
    assert [first for first, _ in result.changed] == [findings.masked(REPORT)[1], findings.masked(REPORT)[2]]
    assert result.summary() == "1 of 3 findings kept their wording (numbers masked)"


def test_missing_and_new_topics_are_reported():
    fewer = REPORT.replace("- Calibration, a: lowest ECE x (0.050 [0.046, 0.054]).\n", "- Gradients: 3%.\n")
    result = findings.compare(REPORT, fewer)
    assert [b.split(":")[0] for b in result.only_first] == ["- Calibration, a"]
    assert [b.split(":")[0] for b in result.only_second] == ["- Gradients"]


def test_a_report_without_findings_is_refused():
    with pytest.raises(ValueError, match="Findings"):
        findings.masked("# nothing here")
