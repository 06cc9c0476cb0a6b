"""The MLflow store rebuilt from results/ (`study import-results`, `study dashboard`) holds what training logged.

Named to run before tests/test_pipeline.py: its `dvc exp run` retrains a condition of the shared smoke repo, after
which the results no longer come from the runs the comparison below pairs them with."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from conftest import SMOKE
from study import config, tables, tracking
from study.config import ConfigError
from study.ops import rebuild

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

# Tags that differ between two loggings of the same runs: who logged them, when, and the run ids they point to.
VOLATILE = {"mlflow.parentRunId", "study.pid", "study.host", "git_commit", "mlflow.source.git.commit"}
IMPORTED = {"imported_from", "imported_commit", "imported_sha256", "clock"}


@pytest.fixture(scope="module")
def imported(smoke_pipeline, tmp_path_factory) -> tuple[str, list[subprocess.CompletedProcess]]:
    """The smoke pipeline's results imported twice by `study import-results` into a new store."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('rebuilt') / 'x.db'}"
    env = {**smoke_pipeline.env, "MLFLOW_TRACKING_URI": uri}
    runs = [subprocess.run([sys.executable, "-m", "study", "import-results"], cwd=smoke_pipeline.repo, env=env,
                           capture_output=True, text=True, timeout=600)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    return uri, runs


def study_runs(uri: str) -> list[Run]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("loss-study")
    return client.search_runs([experiment.experiment_id], "", max_results=10_000)


def finished_parents(uri: str) -> dict[str, Run]:
    """The newest FINISHED parent run of each condition and stage, by name."""
    parents: dict[str, Run] = {}
    for run in sorted(study_runs(uri), key=lambda run: run.info.start_time):
        if "mlflow.parentRunId" not in run.data.tags and run.info.status == "FINISHED":
            parents[run.info.run_name] = run
    return parents


def children(uri: str, parent: Run) -> dict[str, Run]:
    found = {run.info.run_name: run for run in study_runs(uri)
             if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert found
    return found


def metric_values(uri: str) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(run id, key) -> sorted (step, value) of every metric value in the store. Read from the SQLite file in one
    query: the client's one-call-per-key-and-run would take minutes here."""
    with sqlite3.connect(uri.removeprefix("sqlite:///")) as db:
        rows = db.execute("SELECT run_uuid, key, step, value FROM metrics").fetchall()
    values: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for run_id, key, step, value in rows:
        values.setdefault((run_id, key), []).append((step, value))
    return {key: sorted(steps) for key, steps in values.items()}


def test_the_rebuilt_store_holds_the_runs_params_tags_and_histories_training_logged(smoke_pipeline, imported):
    uri, (first, second) = imported
    assert "importing them from results/conditions" in first.stderr
    assert "already holds every finished stage" in second.stderr and "importing" not in second.stderr
    trained, rebuilt = finished_parents(smoke_pipeline.tracking_uri), finished_parents(uri)
    smoke = yaml.safe_load(SMOKE.read_text())
    assert set(rebuilt) == set(trained) == ({f"{c}/train" for c in smoke["conditions"]}
                                            | {f"{c}/tune" for c in smoke["study"]["tune"]})
    assert len(study_runs(uri)) == len(rebuilt) + sum(len(children(uri, p)) for p in rebuilt.values())  # once each
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=smoke_pipeline.repo, capture_output=True, text=True,
                          check=True).stdout.strip()
    trained_values, rebuilt_values = metric_values(smoke_pipeline.tracking_uri), metric_values(uri)
    results = smoke_pipeline.repo / "results" / "conditions"
    for name, parent in rebuilt.items():
        condition, stage = name.split("/")
        assert parent.data.params == trained[name].data.params
        assert {k: v for k, v in parent.data.tags.items() if k not in VOLATILE | IMPORTED} == {
            k: v for k, v in trained[name].data.tags.items() if k not in VOLATILE}
        assert parent.data.tags["imported_from"] == f"results/conditions/{condition}"
        assert parent.data.tags["imported_commit"] == f"{head}-dirty"  # the copy's results are not committed
        history = pd.read_csv(results / condition / ("history.csv" if stage == "train" else "tune.csv"))
        summary = pd.read_csv(results / condition / "summary.csv") if stage == "train" else None
        mine, theirs = children(uri, parent), children(smoke_pipeline.tracking_uri, trained[name])
        assert set(mine) == set(theirs)
        for run_name, child in mine.items():
            other = theirs[run_name]
            assert child.info.status == "FINISHED"
            assert child.data.params == other.data.params
            assert {k: v for k, v in child.data.tags.items() if k not in VOLATILE | IMPORTED} == {
                k: v for k, v in other.data.tags.items() if k not in VOLATILE}
            assert child.data.tags["imported_commit"] == f"{head}-dirty"
            assert child.data.tags["clock"].startswith("not recorded")  # results/ hold no training times
            assert child.info.start_time < parent.info.start_time == child.info.end_time  # parents list first
            rows = history[history["loss"] + "-lr" + history["lr"].map("{:g}".format) + "-s"
                           + history["seed"].astype(str) == run_name]
            keys = set(rows["split"] + "/" + rows["metric"])
            speed = {tracking.SPEED_METRIC} if tracking.SPEED_SOURCE in keys else set()
            assert {k for k in other.data.metrics if "/" in k} == keys | speed
            assert {k for k in child.data.metrics if "/" in k} == keys | speed
            assert set(other.data.metrics) <= set(child.data.metrics)  # the summary metrics too
            if stage == "train":
                row = summary[summary["run"] == run_name].iloc[0]
                assert set(child.data.metrics) - keys - speed == {
                    k for k, v in row.items() if k.startswith(tables.SUMMARY_PREFIXES) and pd.notna(v)}
            assert sum(len(rebuilt_values[child.info.run_id, key]) for key in keys) == len(rows)
            for key in keys | speed:
                steps = rebuilt_values[child.info.run_id, key]
                expected = trained_values[other.info.run_id, key]
                assert [step for step, _ in steps] == [step for step, _ in expected], (run_name, key)
                # history.csv keeps 6 significant digits
                assert [value for _, value in steps] == pytest.approx([v for _, v in expected], rel=1e-5, abs=1e-8)
        if stage == "train":
            artifacts = {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id)}
            assert artifacts == {"summary.csv", "setup.json"}


def test_a_store_training_wrote_is_not_imported_into(smoke_pipeline):
    cfg = config.load(smoke_pipeline.repo / "experiments" / "study.yaml")
    assert rebuild.missing(cfg, smoke_pipeline.repo / "results" / "conditions", smoke_pipeline.tracking_uri) == []


def test_changed_results_are_imported_again(smoke_pipeline, imported, tmp_path, monkeypatch):
    """Imported runs carry a fingerprint of the files they came from; other files are another outcome."""
    uri, _ = imported
    copy = shutil.copytree(smoke_pipeline.repo / "results" / "conditions", tmp_path / "conditions")
    store = tmp_path / "x.db"
    shutil.copyfile(uri.removeprefix("sqlite:///"), store)
    cfg = config.load(smoke_pipeline.repo / "experiments" / "study.yaml")
    assert rebuild.missing(cfg, copy, f"sqlite:///{store}") == []
    history = copy / "fashion_adam" / "history.csv"
    *rows, last = history.read_text().splitlines()
    history.write_text("\n".join([*rows, last.rsplit(",", 1)[0] + ",0.123"]) + "\n")
    monkeypatch.chdir(smoke_pipeline.repo)
    said = []
    imported_again = rebuild.rebuild(cfg, copy, f"sqlite:///{store}", say=said.append)
    assert [stage.parent for stage in imported_again] == ["fashion_adam/train"]
    assert "the store lacks fashion_adam/train" in said[0]


def test_results_of_other_params_are_refused_before_any_run_is_created(smoke_pipeline, tmp_path):
    params = yaml.safe_load((smoke_pipeline.repo / "experiments" / "study.yaml").read_text())
    params["conditions"]["mnist1d_sgd"]["epochs"] = 7
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(ConfigError, match=r"mnist1d_sgd/setup.json was written with other params than .*study.yaml "
                                          r"\(conditions.mnist1d_sgd.epochs\): check out the params"):
        rebuild.rebuild(config.load(path), smoke_pipeline.repo / "results" / "conditions", uri, say=print)
    assert MlflowClient(uri).get_experiment_by_name("loss-study") is None
