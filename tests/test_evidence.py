"""The words of every paired verdict (analysis.evidence): 'different', 'not established', 'not distinguishable',
chosen by the probability that a rerun repeats the test's outcome. Checked against simulated reruns."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from study import analysis

SEEDS = 5


def _reruns(p_value: float, n: int, rng: np.random.Generator, count: int = 40_000) -> float:
    """How often a paired t-test on n fresh seeds reaches p < ALPHA in the observed direction, when the true mean
    difference and spread are the observed ones (spread 1, mean t * 1 / sqrt(n))."""
    mean = stats.t.isf(p_value / 2, n - 1) / math.sqrt(n)
    test = stats.ttest_1samp(rng.normal(mean, 1.0, size=(count, n)), 0.0, axis=1)
    return float(np.mean((test.pvalue < analysis.ALPHA) & (test.statistic > 0)))


@pytest.mark.parametrize("p_value", [0.001, 0.01, 0.05, 0.2, 0.6])
@pytest.mark.parametrize("n", [3, SEEDS])
def test_the_replication_probability_is_what_reruns_show(p_value: float, n: int):
    rng = np.random.default_rng(int(p_value * 1e4) + n)
    assert analysis.replication(p_value, n) == pytest.approx(_reruns(p_value, n, rng), abs=0.01)


def test_the_words_change_at_the_stated_bounds():
    different, alike = analysis.evidence_bounds(SEEDS)
    assert 0.005 < different < 0.02 and 0.3 < alike < 0.6  # five seeds: about 0.012 and 0.44
    assert analysis.replication(different, SEEDS) == pytest.approx(analysis.REPLICATION, abs=1e-4)
    assert analysis.evidence(0.99 * different, SEEDS) == analysis.DIFFERENT
    assert analysis.evidence(1.01 * different, SEEDS) == analysis.NOT_ESTABLISHED
    assert analysis.evidence(0.99 * alike, SEEDS) == analysis.NOT_ESTABLISHED
    assert analysis.evidence(1.01 * alike, SEEDS) == analysis.ALIKE
    # Identical differences on every seed (p = 0), the Holm cap (p = 1), and no test at all.
    assert analysis.evidence(0.0, SEEDS) == analysis.DIFFERENT and analysis.evidence(1.0, SEEDS) == analysis.ALIKE
    assert analysis.evidence(math.nan, SEEDS) is None and analysis.evidence(0.01, 1) is None
    # The bound depends on how many seeds a test pairs (the t distributions' degrees of freedom).
    assert analysis.evidence_bounds(3)[0] > different > analysis.evidence_bounds(10)[0]


def test_a_stated_verdict_is_rarely_contradicted_by_a_rerun():
    """Two independent five-seed runs of 3,000 comparisons with true effects from 0 to 3 standard deviations: the
    p < 0.05 rule gives different verdicts in about a fifth of them; the stated words almost never say
    'different' in one run and 'not distinguishable' in the other."""
    rng = np.random.default_rng(0)
    effects = rng.uniform(0.0, 3.0, 3000)[:, None]
    first, second = (stats.ttest_1samp(rng.normal(effects, 1.0, (3000, SEEDS)), 0.0, axis=1).pvalue
                     for _ in range(2))
    words = [(analysis.evidence(a, SEEDS), analysis.evidence(b, SEEDS)) for a, b in zip(first, second)]
    contradicted = sum({a, b} == {analysis.DIFFERENT, analysis.ALIKE} for a, b in words)
    flipped = int(np.sum((first < analysis.ALPHA) != (second < analysis.ALPHA)))
    assert contradicted < 0.02 * len(words)
    assert flipped > 10 * contradicted


def test_leaders_keep_a_loss_not_established_as_worse():
    """A loss about 0.002 below the best on every seed, Holm p between 0.012 and 0.05, is 'worse' by the p < 0.05
    rule but not established as worse: it leads with the best."""
    best = np.array([0.900, 0.905, 0.898, 0.902, 0.901])
    close = best - np.array([0.002, 0.003, 0.002, 0.004, 0.0005])
    far = best - 0.05 + np.array([0.001, -0.001, 0.0, 0.002, -0.002])
    by_loss = {name: pd.Series(values, index=range(SEEDS)) for name, values in
               (("softmax_nll", best), ("mse", close), ("sigmoid_bce", far))}
    p_close = analysis.holm([analysis.paired_difference(by_loss[x], by_loss["softmax_nll"]).p_value
                             for x in ("mse", "sigmoid_bce")])[0]
    assert p_close < analysis.ALPHA and analysis.evidence(p_close, SEEDS) == analysis.NOT_ESTABLISHED
    lead = analysis.leaders(by_loss, higher_is_better=True)
    assert lead.best == "softmax_nll" and set(lead.tied) == {"softmax_nll", "mse"} and not lead.alone


def test_an_untested_comparison_has_no_word():
    """One seed to pair: no test, no word (None survives the table), and the report says there is no interval."""
    from study import document

    rows = [("c", loss, 0.1, seed, "final_accuracy", value) for loss, seed, value in
            (("softmax_nll", 0, 0.8), ("softmax_nll", 1, 0.81), ("mse", 0, 0.7), ("mse", 1, 0.72), ("focal", 0, 0.9))]
    diffs = analysis.differences(pd.DataFrame(rows, columns=[*analysis.RUN, "quantity", "value"])).set_index("loss")
    assert diffs.loc["focal", "evidence"] is None and diffs.loc["mse", "evidence"] in analysis.EVIDENCE
    assert document.fmt_difference(diffs.loc["focal"].to_dict(), 3).endswith("(1 pair, no interval)")
