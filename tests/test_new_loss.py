"""A loss registered in the test alone runs through the real stages, in process (so that the registration is seen):
validate, data, tune, train, probe and report through ``study.cli.main``, tracking to a temporary SQLite store. It
must appear in the tables, in the MLflow child runs and in the report, without any other module naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from study import cli, losses, runner, tables, train
from study.losses import LossSpec

NEW = "scaled_ce"
CONDITION = "fashion_sgd"


def scaled_ce(logits: torch.Tensor, labels: torch.Tensor, *, scale: float = 0.5) -> torch.Tensor:
    """Cross-entropy times ``scale``: the gradient is scale (p - t), left to autograd (no closed form)."""
    return scale * F.cross_entropy(logits, labels, reduction="none")


SPEC = LossSpec(NEW, scaled_ce, label="½ cross-entropy (test loss)", colour="#949494",
                conventions={"link": "softmax", "targets": "class index", "class_reduction": "none (picks y)"},
                formula="½ · −log softmax(z)_y", options={"scale": 0.5}, family="scaled cross-entropy")


@pytest.fixture
def study(smoke_params, tmp_path: Path, monkeypatch) -> dict[str, Path]:
    def one_condition(params: dict) -> None:
        params["study"]["losses"] = ["softmax_nll", "mse", NEW]
        params["study"]["tune"] = [CONDITION]
        params["conditions"] = {CONDITION: params["conditions"][CONDITION]}
        params["conditions"][CONDITION].pop("losses", None)  # the study's list: the new loss's one params entry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (tmp_path / "store").mkdir()
    return {"params": smoke_params(one_condition), "root": tmp_path}


def run(*argv: str | Path) -> None:
    assert cli.main([str(a) for a in argv]) == 0, argv


def test_a_registered_loss_runs_through_every_stage(study):
    params, root = study["params"], study["root"]
    data, results = root / "data", root / "results"
    out = results / "conditions" / CONDITION
    with losses.registered(SPEC):
        run("validate", "--params", params, "--out", root / "validated.json")
        run("data", "--params", params, "--out", data)
        common = ["--params", params, "--condition", CONDITION, "--data", data, "--no-progress", "--out", out]
        run("tune", *common)
        run("train", *common, "--lrs", out / tables.LRS)
        run("probe", "--params", params, "--out", results / "probe")
        run("report", "--params", params, "--results", results / "conditions", "--probe", results / "probe",
            "--out", results / "report", "--metrics", results / "metrics.json")
    assert NEW not in losses.LOSSES  # the registration ended with the block

    history = tables.read_history(out / tables.HISTORY)
    assert set(history["loss"]) == {"softmax_nll", "mse", NEW}
    assert NEW in set(pd.read_csv(out / tables.SUMMARY)["loss"])
    assert NEW in tables.read_lrs(out / tables.LRS)
    assert NEW in set(pd.read_csv(results / "probe" / "penalty.csv")["loss"])
    assert NEW in json.loads((results / "metrics.json").read_text())[CONDITION]

    # Tuning reads validation accuracy on its own schedule: coarse before the score's window, dense inside it.
    tune = tables.read_history(out / tables.TUNE)
    read = set(tune.loc[(tune["split"] == "val") & (tune["metric"] == "accuracy"), "step"])
    per_epoch = json.loads((out / tables.SETUP).read_text())["steps_per_epoch"]
    total = int(tune["step"].max())
    full = {0, *range(per_epoch, total + 1, per_epoch)}
    assert read - full == train.schedule(total, 0.1, runner.TUNE_SPEED) - full

    report = (results / "report" / "report.md").read_text()
    assert f"| {NEW} |" in report  # a row of the results tables (figures carry the label)
    assert f"{NEW} = {SPEC.formula} with scale = 0.5" in report  # the methods paragraph, from the registry

    from mlflow import MlflowClient

    client = MlflowClient()  # MLFLOW_TRACKING_URI: the temporary store
    experiment = client.get_experiment_by_name("loss-study")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags and r.data.tags.get("loss") == NEW]
    assert {r.data.tags.get("stage") for r in children} == {"tune", "train"}
    train_children = [r for r in children if r.data.tags["stage"] == "train"]
    assert len(train_children) == 2  # the smoke params' two seeds
    assert all(r.info.run_name.startswith(f"{NEW}-lr") for r in train_children)
    logged = {**train_children[0].data.params, **train_children[0].data.tags}
    assert all(logged.get(f"loss.{key}") == value for key, value in SPEC.conventions.items()), logged
