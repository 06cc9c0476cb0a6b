"""Adding a quantity is one entry in the quantity registry (plus its reading in train.py where the metric is new):
a quantity registered in the test alone, on a fabricated results tree, shows in the report where its fields ask
(the headline table, its paired differences and figure, the calibration table, the methods' margins) and nowhere
its fields do not."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from study import analysis, quantities, question_figures, tables
from study.quantities import Column, Quantity
from test_report import CLEAN, NOISY, SEEDS, build, fabricate

# A metric no module of the package knows: the mean predictive entropy, lower for every other loss than for the
# reference, so that the sign of its paired differences is known.
NEW = Quantity("predictive_entropy", "mean predictive entropy", ("test", "predictive_entropy"), None, 0.05,
               headline=True, columns=(Column("headline", 5, "mean entropy"),
                                       Column("headline_figure", 4, "mean entropy (fraction of log K)"),
                                       Column("calibration", 9, "entropy")))
SHOWN_NOWHERE = Quantity("entropy_spread", "spread of the predictive entropy", ("test", "entropy_spread"), None,
                         0.05, group="calibration")


def entropy(loss: str, seed: int) -> float:
    return (0.4 if loss == analysis.REFERENCE else 0.3) + 0.002 * seed


def add_metrics(root: Path) -> None:
    """Each model's last test evaluation gains NEW's and SHOWN_NOWHERE's metric, as train.py would write them."""
    for condition in (CLEAN, NOISY):
        path = root / "conditions" / condition / tables.HISTORY
        history = tables.read_history(path)
        last = history[history["split"].eq("test") & history["metric"].eq("accuracy")]
        last = last[last["step"] == last.groupby(["loss", "seed"])["step"].transform("max")]
        new = last.assign(metric=NEW.source[1],
                          value=[entropy(loss, seed) for loss, seed in zip(last["loss"], last["seed"], strict=True)])
        spread = last.assign(metric=SHOWN_NOWHERE.source[1], value=0.5)
        tables.write_csv(pd.concat([history, new, spread], ignore_index=True)[tables.HISTORY_COLUMNS], path)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[str, Path]:
    root = fabricate(tmp_path_factory.mktemp("results") / "results")
    add_metrics(root)
    with quantities.registered(NEW, SHOWN_NOWHERE):
        build(root)
    return (root / "report" / "report.md").read_text(encoding="utf-8"), root


def _table_after(md: str, heading: str) -> list[str]:
    """The lines of the first markdown table after ``heading``."""
    rest = md[md.index(heading):].splitlines()
    start = next(i for i, line in enumerate(rest) if line.startswith("|"))
    end = next((i for i in range(start, len(rest)) if not rest[i].startswith("|")), len(rest))
    return rest[start:end]


def _column(table: list[str], header: str) -> list[str]:
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    at = cells[0].index(header)
    return [row[at] for row in cells[2:]]


def test_the_headline_table_shows_a_new_headline_quantity(report):
    md, _ = report
    table = _table_after(md, f"#### Headline table, {CLEAN}")
    values = dict(zip(_column(table, "loss"), _column(table, "mean entropy"), strict=True))
    assert len(values) == 4 and all(v.startswith("0.40" if loss == analysis.REFERENCE else "0.30")
                                    for loss, v in values.items()), values
    differences = _table_after(md, "Paired difference to")
    assert all(v.startswith("-0.100 ") for v in _column(differences, "Δ mean entropy")), differences


def test_the_new_quantity_is_compared_and_its_margin_stated(report):
    md, root = report
    with quantities.registered(NEW, SHOWN_NOWHERE):
        history = pd.concat([tables.read_history(root / "conditions" / c / tables.HISTORY) for c in (CLEAN, NOISY)])
        head = analysis.headline(history, {})
    compared = head.differences[head.differences["quantity"] == NEW.name]
    assert set(compared["condition"]) == {CLEAN, NOISY} and (compared["diff"] < 0).all()
    assert (compared["n"] >= len(SEEDS) - 1).all()  # one fabricated model diverged
    assert "mean predictive entropy ±0.05" in md
    assert "spread of the predictive entropy ±0.05" in md  # compared (the default), though in no table
    assert SHOWN_NOWHERE.name not in set(head.differences["quantity"])  # not a headline quantity


def test_the_calibration_table_shows_it_and_nothing_else_does(report):
    md, _ = report
    calibration = _table_after(md, "equal-width confidence bins")
    headers = [c.strip() for c in calibration[0].strip("|").split("|")]
    assert headers == ["condition", "loss", *(c.header for _, c in quantities.table("calibration")), "entropy"]
    assert all(v.startswith(("0.40", "0.30")) for v in _column(calibration, "entropy"))
    assert SHOWN_NOWHERE.name not in md and NEW.name not in md  # a table names a quantity by its header


def test_the_headline_figure_gains_a_panel(report):
    _, root = report
    history = pd.concat([tables.read_history(root / "conditions" / c / tables.HISTORY) for c in (CLEAN, NOISY)])
    with quantities.registered(NEW):
        fig = question_figures.plot_headline(history)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    plt.close(fig)
    assert labels[-1] == "mean entropy (fraction of log K)" and len(labels) == 4, labels


def test_the_registry_is_restored_and_refuses_a_bad_registration():
    shipped = quantities.QUANTITIES
    assert quantities.get(NEW.name) is None and NEW not in shipped
    with pytest.raises(ValueError, match="question"):
        with quantities.registered(Quantity("x", "x", ("test", "x"), True, 0.1, question="speed")):
            pass
    with pytest.raises(ValueError, match="twice"), quantities.registered(shipped[-1]):
        pass
    assert quantities.QUANTITIES == shipped and quantities.get("x") is None
    with pytest.raises(ValueError, match="headline"):
        Quantity("x", "x", ("test", "x"), True, 0.1, columns=(Column("headline", 1, "x"),))
    with pytest.raises(ValueError, match="table"):
        Column("appendix", 1, "x")
