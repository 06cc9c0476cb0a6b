"""Do two runs of the study agree? ``study compare`` sets a rerun (another machine, another thread count) beside
the committed results: the learning rates each tuning chose, the report's findings with numbers masked
(``study.findings``), and every paired verdict of the headline comparisons, which either run states as
'different', 'not established' or 'not distinguishable' (``analysis.evidence``). A verdict is

- kept: the same word (and, for 'different', the same direction) in both runs;
- softened: 'not established' in one run and a stated verdict in the other, the move the rule allows for;
- contradicted: 'different' in one run and 'not distinguishable' in the other, or 'different' in opposite directions.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from study import analysis, document, findings, tables

KEY = ["condition", "loss", "quantity"]
KEPT, SOFTENED, CONTRADICTED = "kept", "softened", "contradicted"


def verdict_changes(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """The paired comparisons (``analysis.differences`` rows) both runs tested, side by side, with ``change``:
    KEPT, SOFTENED or CONTRADICTED."""
    columns = [*KEY, "diff", "p_holm", "evidence"]
    both = first[columns].merge(second[columns], on=KEY, suffixes=("_first", "_second"))
    both = both[both["evidence_first"].notna() & both["evidence_second"].notna()].reset_index(drop=True)
    both["change"] = [_change(*row) for row in both[["evidence_first", "diff_first", "evidence_second",
                                                     "diff_second"]].itertuples(index=False)]
    return both


def _change(first: str, first_diff: float, second: str, second_diff: float) -> str:
    if first == second:
        opposite = first == analysis.DIFFERENT and np.sign(first_diff) != np.sign(second_diff)
        return CONTRADICTED if opposite else KEPT
    return SOFTENED if analysis.NOT_ESTABLISHED in (first, second) else CONTRADICTED


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
                     f"{counts[SOFTENED]} softened ('not established' in one run), {counts[CONTRADICTED]} contradicted")
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
