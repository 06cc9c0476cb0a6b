"""Conclusions that do not hinge on the last bits of a float: the smoke study rerun with another thread count (a
reliable way to change the order of floating-point reductions on one machine) chooses the same learning rates and
states the same findings; only numbers may move."""

from __future__ import annotations

import pytest
import yaml

from conftest import SMOKE
from smoke_repo import copy_repo
from study import findings, rerun, tables

pytestmark = pytest.mark.slow

TUNED = yaml.safe_load(SMOKE.read_text())["study"]["tune"]


@pytest.fixture(scope="module")
def one_thread(smoke_pipeline, tmp_path_factory):
    """The same smoke study, run with one thread (the session's smoke pipeline runs with the machine's default)."""
    smoke = copy_repo(tmp_path_factory.mktemp("one-thread"))
    smoke.extra_env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    smoke.dvc("repro")
    return smoke


def test_another_thread_count_chooses_the_same_learning_rates(smoke_pipeline, one_thread):
    for condition in TUNED:
        default = tables.read_lrs(smoke_pipeline.repo / "results" / "conditions" / condition / tables.LRS)
        single = tables.read_lrs(one_thread.repo / "results" / "conditions" / condition / tables.LRS)
        assert single == default, condition


def test_another_thread_count_states_the_same_findings(smoke_pipeline, one_thread):
    """Findings name groups (the best mean with every loss not distinguishable from it, each loss's Holm-corrected
    verdict against the reference), not rankings within noise, so the reordering that another thread count can
    cause changes no sentence; only the masked numbers may differ."""
    report = ("results", "report", "report.md")
    result = findings.compare_files(smoke_pipeline.repo.joinpath(*report), one_thread.repo.joinpath(*report))
    assert result.kept  # the report has findings to compare
    assert not result.changed and not result.only_first and not result.only_second, result.changed


def test_another_thread_count_contradicts_no_verdict(smoke_pipeline, one_thread):
    """Every paired verdict of the headline comparisons in both runs: none says 'different' in one and 'not
    distinguishable' (or 'different' the other way) in the other."""
    conditions = list(yaml.safe_load(SMOKE.read_text())["conditions"])
    result = rerun.compare(smoke_pipeline.repo / "results", one_thread.repo / "results", conditions)
    assert len(result.verdicts) > 0 and result.contradicted.empty, result.summary()
    assert all(a == b for _, _, a, b in result.rates)
