"""`study power` (study.ops.power): the seeds that would decide a comparison, simulated under the study's own rule."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from study import analysis, quantities
from study.ops import power

ECE = next(q for q in quantities.QUANTITIES if q.question == "confident_wrong")  # an ABSOLUTE margin


def test_a_clear_difference_is_decided_at_five_seeds_and_a_noisy_one_only_with_more():
    family = [(ECE.name, 10 * ECE.margin, ECE.margin / 4), (ECE.name, ECE.test_margin / 2, 2 * ECE.margin)]
    five = power.decided_share(family, 5, 60, np.random.default_rng(1))
    assert five[0] > 0.95  # ten margins away with a small spread: different every time
    assert five[1] < 0.2  # half a margin away, spread twice the margin: neither shown from five seeds
    assert power.decided_share(family, 60, 60, np.random.default_rng(2))[1] > five[1]


def test_only_the_undecided_comparisons_are_priced_and_in_more_seeds_than_now():
    seeds = range(5)
    rows = []
    for loss, spread in (("mse", 0.3), ("sigmoid_bce", 4.0), ("smoothed_ce", 0.05)):
        offsets = np.random.default_rng(len(loss)).normal(0, 1, 5)
        offsets = (offsets - offsets.mean()) / offsets.std(ddof=1)
        rows += [{"condition": "c", "loss": loss, "seed": s, "quantity": ECE.name,
                  "value": 0.1 + 2.5 * ECE.margin * (loss != "smoothed_ce") + spread * ECE.margin * o}
                 for s, o in zip(seeds, offsets)]
    rows += [{"condition": "c", "loss": analysis.REFERENCE, "seed": s, "quantity": ECE.name, "value": 0.1}
             for s in seeds]
    per_seed = pd.DataFrame(rows)
    differences = analysis.differences(per_seed)
    table = power.seeds_needed(differences, per_seed, draws=60, counts=(5, 10, 20, 40))
    needed = table.set_index("loss")["seeds_needed"]
    verdicts = differences.set_index("loss")["verdict"]
    assert verdicts.to_dict() == {"mse": analysis.DIFFERENT, "sigmoid_bce": analysis.NOT_ESTABLISHED,
                                  "smoothed_ce": analysis.EQUIVALENT}
    assert list(needed.index) == ["sigmoid_bce"]  # a spread larger than the effect leaves five seeds undecided
    assert needed["sigmoid_bce"] > 5 or math.isnan(needed["sigmoid_bce"])
