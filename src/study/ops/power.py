"""How many seeds would decide the primary comparisons the committed results leave "not established": each one
simulated under the study's own rule (``analysis.compare`` then ``analysis.decide``, Holm over its whole family),
with its per-seed differences drawn from a normal distribution whose mean and spread are the observed ones.

The answer prices the issue's target (at least 80% of the non-degenerate primary comparisons decided) in seeds, and
so in arithmetic: ``study budget`` counts what a seed costs. It is a planning estimate, not a result:
the observed mean and spread are themselves noisy, and a comparison whose spread is large against both its difference
and its margin needs more seeds than any budget (printed as "more than" the largest count tried).

    study power [--results results/conditions] [--probe results/probe] [--draws 200]
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from study import analysis, quantities, reader

SEEDS = (5, 10, 15, 20, 30, 40, 60)  # the counts tried, smallest first
CHANCE = 0.8  # a count decides a comparison when the rule states a verdict in at least this share of draws
DECIDED = (analysis.DIFFERENT, analysis.EQUIVALENT)


def paired(per_seed: pd.DataFrame, condition: str, quantity: str, loss: str,
           reference: str = analysis.REFERENCE) -> np.ndarray:
    """The per-seed paired differences of ``loss`` against ``reference``, as the rule tests them (log values for a
    RELATIVE quantity), on the seeds where both are finite."""
    rows = per_seed[(per_seed["condition"] == condition) & (per_seed["quantity"] == quantity)]
    by_loss = {name: group.set_index("seed")["value"].astype(float) for name, group in rows.groupby("loss")}
    joined = pd.concat({"a": by_loss[loss], "b": by_loss[reference]}, axis=1)
    spec = quantities.get(quantity)
    if spec is not None and spec.log_scale:
        joined = np.log(joined.where(joined > 0))
    joined = joined[np.isfinite(joined["a"]) & np.isfinite(joined["b"])]
    return (joined["a"] - joined["b"]).to_numpy()


def decided_share(family: Sequence[tuple[str, float, float]], n: int, draws: int,
                  rng: np.random.Generator) -> np.ndarray:
    """For a family of comparisons ``(quantity, mean, spread)`` of paired differences, the share of ``draws``
    simulated families of ``n`` seeds in which ``analysis.decide`` states each comparison's verdict."""
    hits = np.zeros(len(family))
    for _ in range(draws):
        rows = []
        for quantity, mean, spread in family:
            spec = quantities.get(quantity)
            drawn = rng.normal(mean, spread, n)
            if spec is not None and spec.log_scale:  # compare() takes steps and their ratio's log
                values, reference = np.exp(drawn), np.ones(n)
            else:
                values, reference = drawn, np.zeros(n)
            rows.append(analysis.compare(pd.Series(values), pd.Series(reference), spec))
        verdicts = analysis.decide(pd.DataFrame(rows))["verdict"]
        hits += verdicts.isin(DECIDED).to_numpy()
    return hits / draws


def seeds_needed(differences: pd.DataFrame, per_seed: pd.DataFrame, *, draws: int = 200, seed: int = 0,
                 counts: Sequence[int] = SEEDS) -> pd.DataFrame:
    """Per primary family (a condition), the smallest count of ``counts`` at which each undecided comparison is
    decided in at least CHANCE of the draws (NaN: not even at the largest). The family's decided and identical
    comparisons are simulated beside it (they share its Holm correction); identical ones take no part."""
    rng = np.random.default_rng(seed)
    primary = differences[differences["family"] == "primary"]
    rows = []
    for condition, family in primary.groupby("condition", sort=False):
        tested = family[family["verdict"] != analysis.IDENTICAL]
        spec = [(r.quantity, *_moments(paired(per_seed, condition, r.quantity, r.loss))) for r in tested.itertuples()]
        open_ = (~tested["verdict"].isin(DECIDED)).to_numpy()
        needed = np.full(len(tested), math.nan)
        for n in counts:
            share = decided_share(spec, n, draws, rng)
            newly = open_ & np.isnan(needed) & (share >= CHANCE)
            needed[newly] = n
            if not np.isnan(needed[open_]).any():
                break
        for (r, (_, mean, spread)), need, undecided in zip(zip(tested.itertuples(), spec), needed, open_):
            if undecided:
                rows.append({"condition": condition, "loss": r.loss, "quantity": r.quantity, "seeds_now": int(r.n),
                             "mean": mean, "spread": spread, "margin": quantities.get(r.quantity).test_margin,
                             "seeds_needed": need})
    return pd.DataFrame(rows, columns=["condition", "loss", "quantity", "seeds_now", "mean", "spread", "margin",
                                       "seeds_needed"])


def _moments(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1))


def main(*, results: Path, probe: Path, draws: int) -> None:
    """``study power``: how many comparisons are decided now, and the seeds each undecided one would need."""
    conditions = sorted(p.name for p in results.iterdir() if p.is_dir())
    inputs = reader.load(results, probe, conditions)
    head = analysis.headline(inputs.history, inputs.targets, saturation=analysis.saturation(inputs.examples))
    table = seeds_needed(head.differences, head.per_seed, draws=draws)
    primary = head.differences[head.differences["family"] == "primary"]
    tested = primary[primary["verdict"] != analysis.IDENTICAL]
    decided = int(tested["verdict"].isin(DECIDED).sum())
    print(f"{decided} of {len(tested)} non-identical primary comparisons decided; the others, with the seeds that "
          f"would decide each in {CHANCE:.0%} of {draws} simulated reruns (largest tried: {max(SEEDS)}):")
    shown = table.assign(seeds_needed=[f"{int(v)}" if math.isfinite(v) else f">{max(SEEDS)}"
                                       for v in table["seeds_needed"]])
    shown.to_markdown(sys.stdout, index=False, floatfmt=".4f")
    print()
    for n in SEEDS:
        more = int((table["seeds_needed"] <= n).sum())
        print(f"at {n} seeds: {decided + more} of {len(tested)} decided ({(decided + more) / len(tested):.0%})")
