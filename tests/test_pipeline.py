"""The real pipeline: a temporary copy of the repo with the smoke params, `dvc repro` with real dvc, git and MLflow."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest
import yaml

from conftest import SMOKE
from study import tables

pytestmark = pytest.mark.slow

CONDITIONS = list(yaml.safe_load(SMOKE.read_text())["conditions"])
TUNED = list(yaml.safe_load(SMOKE.read_text())["study"]["tune"])
LOSSES = ["mse", "sigmoid_bce", "softmax_nll", "smoothed_ce"]  # the study's: in every condition
OWN = {name: spec.get("losses") or LOSSES for name, spec in yaml.safe_load(SMOKE.read_text())["conditions"].items()}
BORROWED = {name: spec["lr_from"] for name, spec in yaml.safe_load(SMOKE.read_text())["conditions"].items()
            if spec["lr_from"] != name}  # conditions that train with another condition's tuned rates
SEEDS = {name: spec.get("seeds") or yaml.safe_load(SMOKE.read_text())["study"]["seeds"]
         for name, spec in yaml.safe_load(SMOKE.read_text())["conditions"].items()}


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_every_stage_runs_and_writes_its_outputs(smoke_pipeline):
    ran = stages_run(smoke_pipeline.first_output)
    expected = {"validate", "data", "probe", "report"} | {f"tune@{c}" for c in TUNED}
    expected |= {f"train@{c}" for c in CONDITIONS}
    assert ran == expected
    repo = smoke_pipeline.repo
    for condition in CONDITIONS:
        folder = repo / "results" / "conditions" / condition
        history = tables.read_history(folder / tables.HISTORY)
        assert list(history.columns) == tables.HISTORY_COLUMNS
        assert set(history["loss"]) == set(OWN[condition]) >= set(LOSSES)
        assert history["value"].notna().all()
        assert (history["split"] == "heldout").any() == (condition == "fashion_heldout")
        examples = tables.read_examples(folder / tables.EXAMPLES)
        assert list(examples.columns) == tables.EXAMPLE_COLUMNS
        assert set(examples["split"]) == {"probe", "test"}
        summary = pd.read_csv(folder / tables.SUMMARY)
        assert len(summary) == len(OWN[condition]) * len(SEEDS[condition])
        setup = json.loads((folder / tables.SETUP).read_text())
        assert setup["lr_source"] == BORROWED.get(condition, condition)
    for condition in TUNED:  # the condition's own losses and those of the conditions borrowing its rates
        lrs = tables.read_lrs(repo / "results" / "conditions" / condition / tables.LRS)
        borrowers = [c for c, source in BORROWED.items() if source == condition]
        assert set(lrs) == set().union(OWN[condition], *(OWN[c] for c in borrowers))
    assert (repo / "results" / "probe" / "penalty.csv").is_file()
    assert (repo / "results" / "report" / "index.html").is_file()
    metrics = json.loads((repo / "results" / "metrics.json").read_text())
    for condition in CONDITIONS:
        for loss in OWN[condition]:
            extra = {"heldout_auroc"} if condition == "fashion_heldout" else set()
            assert set(metrics[condition][loss]) == {"test_accuracy", "steps_to_target", "ece"} | extra
    report = (repo / "results" / "report" / "report.md").read_text()
    assert "## None of the above" in report and "fashion_heldout (held out: classes 8, 9)" in report


def test_noise_condition_trains_with_the_rates_tuned_on_its_own_noisy_validation_labels(smoke_pipeline):
    conditions = smoke_pipeline.repo / "results" / "conditions"
    tuned = json.loads((conditions / "fashion_noise40" / tables.LRS).read_text())
    assert tuned["validation_labels"] == "noisy"
    noisy = json.loads((conditions / "fashion_noise40" / tables.SETUP).read_text())["lrs"]
    assert noisy == {loss: tuned["lrs"][loss] for loss in OWN["fashion_noise40"]}


def test_second_repro_does_nothing(smoke_pipeline):
    assert stages_run(smoke_pipeline.second_output) == set()
    status = smoke_pipeline.dvc("status")
    assert "up to date" in status.stdout


def test_a_params_change_reruns_only_what_depends_on_it(smoke_pipeline, tmp_path):
    # In a copy: `dvc exp run` leaves its results in the workspace, and other tests (test_robustness) compare the
    # session's smoke study, run with the smoke params, against reruns of those params.
    repo = tmp_path / "repo"
    shutil.copytree(smoke_pipeline.repo, repo, symlinks=True)
    smoke = type(smoke_pipeline)(repo, smoke_pipeline.tracking_uri)
    result = smoke.dvc("exp", "run", "-S", "experiments/study.yaml:conditions.mnist1d_sgd.epochs=2")
    ran = stages_run(result.stdout + result.stderr)
    assert {"validate", "train@mnist1d_sgd", "report"} <= ran  # validate's marker comes out the same
    assert not any(stage.endswith(tuple(c for c in CONDITIONS if c != "mnist1d_sgd")) for stage in ran)
    assert not {"data", "tune@mnist1d_sgd", "probe"} & ran  # they read no epochs
    diff = smoke.dvc("params", "diff")
    assert "conditions.mnist1d_sgd.epochs" in diff.stdout
    assert yaml.safe_load((smoke_pipeline.repo / "experiments" / "study.yaml").read_text()) == yaml.safe_load(
        SMOKE.read_text())  # the session's smoke study is left as it was


def test_mlflow_holds_every_run_ended_with_metric_histories(smoke_pipeline):
    from mlflow import MlflowClient

    client = MlflowClient(smoke_pipeline.tracking_uri)
    experiment = client.get_experiment_by_name("loss-study")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert runs and all(run.info.status == "FINISHED" for run in runs)
    parents = {run.info.run_name for run in runs if "mlflow.parentRunId" not in run.data.tags}
    assert {f"{c}/train" for c in CONDITIONS} | {f"{c}/tune" for c in TUNED} <= parents
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    train_children = [r for r in children if r.data.tags.get("stage") == "train"]
    assert len(train_children) >= len(CONDITIONS) * len(LOSSES) * 2
    child = next(r for r in train_children if r.info.run_name.startswith("softmax_nll-"))
    assert re.fullmatch(r"softmax_nll-lr[0-9.e-]+-s\d", child.info.run_name)
    for tag in ("condition", "dataset", "loss", "seed", "lr", "lr_tuned", "git_commit", "dvc_stage"):
        assert tag in child.data.tags, tag
    history = client.get_metric_history(child.info.run_id, "val/accuracy")
    assert len(history) >= 2  # step 0 and the end of the epoch
    assert len(client.get_metric_history(child.info.run_id, "train/loss")) >= 2
