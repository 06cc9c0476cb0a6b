"""Conclusions that do not hinge on the last bits of a float. The params fix the training loop's thread count
(study.threads), so the environment's (OMP_NUM_THREADS) changes no byte of a table; another study.threads (a reliable
way to change the order of floating-point reductions on one machine) chooses the same learning rates and states the
same findings: only numbers may move."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import SMOKE
from smoke_repo import copy_repo
from study import findings, rerun, tables

pytestmark = pytest.mark.slow

TUNED = yaml.safe_load(SMOKE.read_text())["study"]["tune"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def one_thread(smoke_pipeline, tmp_path_factory):
    """The same smoke study trained with one thread (study.threads: 1; the session's smoke pipeline has 2)."""
    smoke = copy_repo(tmp_path_factory.mktemp("one-thread"))
    params = smoke.repo / "experiments" / "study.yaml"
    text, count = re.subn(r"^(  threads:) 2\b", r"\1 1", params.read_text(), flags=re.M)
    assert count == 1, "smoke.yaml sets study.threads: 2"
    params.write_text(text)
    smoke.extra_env = ONE_THREAD
    smoke.dvc("repro")
    return smoke


@pytest.fixture(scope="module")
def one_thread_environment(smoke_pipeline, tmp_path_factory):
    """The same smoke study and params, in a process whose environment asks for one thread."""
    smoke = copy_repo(tmp_path_factory.mktemp("one-thread-env"))
    smoke.extra_env = ONE_THREAD
    for condition in TUNED:  # the tune and train stages: where the thread count reaches the numbers
        smoke.dvc("repro", f"train@{condition}")
    return smoke


def test_the_environments_thread_count_changes_no_byte_of_a_table(smoke_pipeline, one_thread_environment):
    for condition in TUNED:
        for name in ("tune.csv", "lr.json", "history.csv", "summary.csv"):
            default = smoke_pipeline.repo / "results" / "conditions" / condition / name
            other = one_thread_environment.repo / "results" / "conditions" / condition / name
            assert default.read_bytes() == other.read_bytes(), f"{condition}/{name}"


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
