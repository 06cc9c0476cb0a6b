"""The words of every paired verdict (analysis.evidence, analysis.decide): 'different', 'equivalent' (within a declared
margin), 'not established', 'identical', chosen by the probability that a rerun repeats the test's outcome. Checked
against simulated reruns."""

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
    different, equivalent = analysis.evidence_bounds(SEEDS)
    assert 0.005 < different < 0.02 and 0.005 < equivalent < 0.02  # five seeds: about 0.012 and 0.011
    assert analysis.replication(different, SEEDS) == pytest.approx(analysis.REPLICATION, abs=1e-4)
    assert analysis.replication(equivalent, SEEDS, sides=1) == pytest.approx(analysis.REPLICATION, abs=1e-4)
    assert analysis.evidence(0.99 * different, SEEDS) == analysis.DIFFERENT
    assert analysis.evidence(1.01 * different, SEEDS) == analysis.NOT_ESTABLISHED
    # A large p is not evidence of no difference: without the two one-sided tests it stays 'not established'.
    assert analysis.evidence(0.0, SEEDS) == analysis.DIFFERENT
    assert analysis.evidence(1.0, SEEDS) == analysis.NOT_ESTABLISHED
    assert analysis.evidence(math.nan, SEEDS) is None and analysis.evidence(0.01, 1) is None
    # The bound depends on how many seeds a test pairs (the t distributions' degrees of freedom).
    assert analysis.evidence_bounds(3)[0] > different > analysis.evidence_bounds(10)[0]
    # Both sets of a family stay below ALPHA together from three seeds on (analysis.decide's argument).
    assert all(sum(analysis.evidence_bounds(n)) < analysis.ALPHA for n in (3, 5, 20))


def _word(sample: np.ndarray, margin: float) -> str | None:
    """The verdict on one comparison with a difference of ``sample`` per seed, alone in its family."""
    spec = analysis.quantities.Quantity("q", "q", ("test", "q"), True, margin)
    row = analysis.compare(pd.Series(sample), pd.Series(np.zeros(len(sample))), spec)
    return analysis.decide(pd.DataFrame([row]))["verdict"].iloc[0]


def test_a_stated_verdict_is_rarely_contradicted_by_a_rerun():
    """Two independent five-seed runs of 400 comparisons with true effects from 0 to 3 standard deviations and a
    margin of 1.5 standard deviations: the p < 0.05 rule gives different verdicts in a large share of them; the stated
    words almost never say 'different' in one run and 'equivalent' in the other."""
    rng = np.random.default_rng(0)
    effects = rng.uniform(0.0, 3.0, 400)[:, None]
    first, second = (rng.normal(effects, 1.0, (400, SEEDS)) for _ in range(2))
    words = [(_word(a, 1.5), _word(b, 1.5)) for a, b in zip(first, second, strict=True)]
    contradicted = sum({a, b} == {analysis.DIFFERENT, analysis.EQUIVALENT} for a, b in words)
    p_first, p_second = (stats.ttest_1samp(x, 0.0, axis=1).pvalue for x in (first, second))
    flipped = int(np.sum((p_first < analysis.ALPHA) != (p_second < analysis.ALPHA)))
    assert sum(analysis.EQUIVALENT in pair for pair in words) > 5  # the test sees equivalences at all
    assert contradicted < 0.01 * len(words)
    assert flipped > 10 * max(contradicted, 1)


def test_leaders_keep_a_loss_shown_equivalent_to_the_best():
    """A loss about 0.002 below the best on every seed, Holm p < 0.05, is 'worse' by the p < 0.05 rule, but within
    the accuracy margin (0.005) by two one-sided tests: it leads with the best. A loss 0.05 below does not."""
    best = np.array([0.900, 0.905, 0.898, 0.902, 0.901])
    close = best - np.array([0.002, 0.003, 0.002, 0.004, 0.0005])
    far = best - 0.05 + np.array([0.001, -0.001, 0.0, 0.002, -0.002])
    by_loss = {name: pd.Series(values, index=range(SEEDS)) for name, values in
               (("softmax_nll", best), ("mse", close), ("sigmoid_bce", far))}
    p_close = analysis.holm([analysis.paired_difference(by_loss[x], by_loss["softmax_nll"]).p_value
                             for x in ("mse", "sigmoid_bce")])[0]
    assert p_close < analysis.ALPHA and analysis.evidence(p_close, SEEDS) == analysis.NOT_ESTABLISHED
    lead = analysis.leaders(by_loss, quantity="final_accuracy")
    assert lead.best == "softmax_nll" and lead.tied == ("mse", "softmax_nll") and not lead.alone
    assert lead.verdicts == {"mse": analysis.EQUIVALENT, "sigmoid_bce": analysis.DIFFERENT}
    # With a margin ten times smaller, the same loss is neither shown equivalent nor different: not a leader.
    assert analysis.leaders(by_loss, True, margin=0.0005).tied == ("softmax_nll",)


def test_an_untested_comparison_has_no_word():
    """One seed to pair: no test, no word (None survives the table), and the report says there is no interval."""
    from study import document

    rows = [("c", loss, 0.1, seed, "final_accuracy", value) for loss, seed, value in
            (("softmax_nll", 0, 0.8), ("softmax_nll", 1, 0.81), ("mse", 0, 0.7), ("mse", 1, 0.72), ("focal", 0, 0.9))]
    diffs = analysis.differences(pd.DataFrame(rows, columns=[*analysis.RUN, "quantity", "value"])).set_index("loss")
    assert diffs.loc["focal", "evidence"] is None and diffs.loc["mse", "evidence"] in analysis.EVIDENCE
    assert document.fmt_difference(diffs.loc["focal"].to_dict(), 3).endswith("(1 pair, no interval)")
