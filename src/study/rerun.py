"""Do two runs of the study agree? ``study compare`` sets a rerun (another machine, another thread count) beside
the committed results: the learning rates each tuning chose, the report's findings with numbers masked
(``study.findings``), and every paired verdict of the headline comparisons (``analysis.differences``: different,
equivalent within the quantity's margin, identical, or not established). From the first run to the second a
verdict is

- kept: the same statement in both runs ('different' in the same direction, or no difference: equivalent or
  identical in both);
- softened: a stated verdict (different, equivalent, identical) in the first run, 'not established' in the second;
- strengthened: 'not established' in the first run, a stated verdict in the second;
- contradicted: 'different' in one run and equivalent or identical in the other, or 'different' in opposite
  directions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from study import analysis, document, findings, tables

KEY = ["condition", "loss", "quantity"]
KEPT, SOFTENED, STRENGTHENED, CONTRADICTED = "kept", "softened", "strengthened", "contradicted"
CHANGES = (KEPT, SOFTENED, STRENGTHENED, CONTRADICTED)


def verdict_changes(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """The paired comparisons (``analysis.differences`` rows) both runs tested, side by side, with ``change``:
    KEPT, SOFTENED, STRENGTHENED or CONTRADICTED (from ``first`` to ``second``). The verdict is read from the
    ``verdict`` column, or ``evidence`` in a table written before it."""
    columns = [*KEY, "diff", "p_holm", "evidence"]

    def words(table: pd.DataFrame) -> pd.DataFrame:
        out = table.assign(evidence=table["verdict"]) if "verdict" in table.columns else table
        return out[columns]

    both = words(first).merge(words(second), on=KEY, suffixes=("_first", "_second"))
    both = both[both["evidence_first"].notna() & both["evidence_second"].notna()].reset_index(drop=True)
    both["change"] = pd.Series([_change(*row) for row in both[["evidence_first", "diff_first", "evidence_second",
                                                                 "diff_second"]].itertuples(index=False)],
                               index=both.index, dtype=object)
    return both


def _stance(word: str) -> str | None:
    """What a verdict states: 'different', 'same' (equivalent or identical), or None (not established)."""
    if word == analysis.DIFFERENT:
        return "different"
    return "same" if word in (analysis.EQUIVALENT, analysis.IDENTICAL) else None


def _change(first: str, first_diff: float, second: str, second_diff: float) -> str:
    a, b = _stance(first), _stance(second)
    if a is None and b is None:
        return KEPT
    if b is None:
        return SOFTENED
    if a is None:
        return STRENGTHENED
    if a != b:
        return CONTRADICTED
    return CONTRADICTED if a == "different" and np.sign(first_diff) != np.sign(second_diff) else KEPT


@dataclass(frozen=True)
class RunComparison:
    rates: list[tuple[str, str, float, float | None]]  # (condition, loss, first run's lr, second's) of every choice
    wording: findings.Comparison
    verdicts: pd.DataFrame  # verdict_changes

    @property
    def contradicted(self) -> pd.DataFrame:
        return self.verdicts[self.verdicts["change"] == CONTRADICTED]

    def summary(self) -> str:
        agree = sum(a == b for _, _, a, b in self.rates)
        counts = Counter(self.verdicts["change"])
        lines = [f"learning rates: {agree} of {len(self.rates)} choices agree"]
        lines += [f"  {c} {loss}: {a:g} vs {b if b is None else format(b, 'g')}"
                  for c, loss, a, b in self.rates if a != b]
        lines.append(self.wording.summary())
        lines.append(f"paired verdicts: {len(self.verdicts)} tested in both runs; {counts[KEPT]} kept, "
                     f"{counts[SOFTENED]} softened (stated first, 'not established' in the rerun), "
                     f"{counts[STRENGTHENED]} strengthened ('not established' first, stated in the rerun), "
                     f"{counts[CONTRADICTED]} contradicted")
        for row in self.contradicted.itertuples(index=False):
            lines.append(f"  contradicted: {row.condition} {row.loss} {row.quantity}: {row.evidence_first} "
                         f"({row.diff_first:+.4g}, Holm p={row.p_holm_first:.2g}) vs {row.evidence_second} "
                         f"({row.diff_second:+.4g}, Holm p={row.p_holm_second:.2g})")
        return "\n".join(lines)


def differences(results: Path, conditions: list[str]) -> pd.DataFrame:
    """The headline's paired differences of a results tree (``results/``: conditions/, probe/)."""
    inputs = document.load(results / "conditions", results / "probe", conditions)
    saturation = analysis.saturation(inputs.examples)
    return analysis.headline(inputs.history, inputs.targets, saturation=saturation).differences


def compare(first: Path, second: Path, conditions: list[str]) -> RunComparison:
    """Two results trees (each a ``results/`` directory written by the pipeline with the same params)."""
    first, second = Path(first), Path(second)
    rates = []
    for path in sorted((first / "conditions").glob(f"*/{tables.LRS}")):
        mine = tables.read_lrs(path)
        other_path = second / path.relative_to(first)
        other = tables.read_lrs(other_path) if other_path.exists() else {}
        rates += [(path.parent.name, loss, lr, other.get(loss)) for loss, lr in mine.items()]
    report = Path("report") / "report.md"
    wording = findings.compare_files(first / report, second / report)
    return RunComparison(rates, wording, verdict_changes(differences(first, conditions),
                                                         differences(second, conditions)))
