"""Do two runs of the study state the same findings? The report's findings with every number masked, compared
bullet by bullet: what a rerun on another machine (or with another thread count) must keep, since only its numbers
may move. Imports nothing from the study."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# A number with its sign, exponent and percent sign; "p<0.001" and "p=0.0012" are one wording (the formatter writes
# the bound below 0.001), so a comparator in front of a number is masked with it.
NUMBER = re.compile(r"[<=]?[-+−]?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?%?")


HEADING = re.compile(r"#{1,6} (.*)")
SECTIONS = ("Answers", "Findings")  # the headings (any level) whose bullets are the report's findings


def masked(report_md: str) -> list[str]:
    """The bullets of the report's "Answers" section and of every "Findings" section (the per-question findings
    in the folded detail), in order, with every number replaced by ``#``."""
    bullets, inside, found = [], False, False
    for line in report_md.splitlines():
        heading = HEADING.fullmatch(line)
        if heading:
            inside = heading[1].startswith(SECTIONS)
            found = found or inside
        elif inside and line.startswith("- "):
            bullets.append(NUMBER.sub("#", line))
    if not found:
        raise ValueError("no 'Answers' or 'Findings' section: pass a report.md written by `study report`")
    return bullets


@dataclass(frozen=True)
class Comparison:
    kept: list[str]
    changed: list[tuple[str, str]]  # (first, second), paired by their topic (the text before the first colon)
    only_first: list[str]
    only_second: list[str]

    def summary(self) -> str:
        total = len(self.kept) + len(self.changed) + len(self.only_first)
        return f"{len(self.kept)} of {total} findings kept their wording (numbers masked)"


def _topic(bullet: str) -> str:
    return bullet.split(":", 1)[0]


def compare(first_md: str, second_md: str) -> Comparison:
    first, second = masked(first_md), masked(second_md)
    by_topic = {_topic(b): b for b in second}
    kept, changed, only_first = [], [], []
    for bullet in first:
        other = by_topic.pop(_topic(bullet), None)
        if other is None:
            only_first.append(bullet)
        elif other == bullet:
            kept.append(bullet)
        else:
            changed.append((bullet, other))
    return Comparison(kept, changed, only_first, list(by_topic.values()))


def compare_files(first: Path, second: Path) -> Comparison:
    return compare(Path(first).read_text(), Path(second).read_text())
