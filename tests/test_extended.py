"""The extended study (experiments/extended.yaml, extended/pipeline.py): its params validate and ask for what issue 16
lists, its pipeline is the default one with every path under extended/, and a smoke-sized copy of it runs through
`dvc repro extended/dvc.yaml` into extended/results/ without touching the default study's results/."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from smoke_repo import copy_repo
from study import cli, config, losses
from test_dvc import modules_run_by, subcommand

REPO = Path(__file__).resolve().parents[1]
EXTENDED = REPO / "experiments" / "extended.yaml"
spec = importlib.util.spec_from_file_location("extended_pipeline", REPO / "extended" / "pipeline.py")
pipeline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pipeline)


def test_the_extended_params_validate_and_ask_for_the_issues_sweeps(tmp_path: Path):
    assert cli.main(["validate", "--params", str(EXTENDED), "--out", str(tmp_path / "marker.json")]) == 0
    cfg = config.load(EXTENDED)
    missing = sorted(set(losses.names()) - set(cfg.losses))  # every registered loss: README "Adding a loss"
    assert not missing, f"add {missing} to study.losses in experiments/extended.yaml"
    assert set(cfg.losses) == set(losses.names()) and len(cfg.seeds) >= 10 and cfg.executor == "ray"
    conditions = cfg.conditions.values()
    assert all(set(cond.losses) == set(losses.names()) for cond in conditions)
    assert {c.label_noise for c in conditions} >= {0.2, 0.4, 0.6}
    assert all(c.epochs >= 60 for c in conditions if c.label_noise > 0)
    assert any(c.model.kind == "cnn1d" and c.dataset == "mnist1d" for c in conditions)


def _generated(repo: Path = REPO) -> dict:
    root = yaml.safe_load((repo / "dvc.yaml").read_text())
    return pipeline.generate(root, "experiments/extended.yaml",
                             yaml.safe_load((repo / "experiments" / "study.yaml").read_text()),
                             yaml.safe_load(EXTENDED.read_text()))


def _paths(stage: dict) -> list[str]:
    entries = [*stage.get("deps", []), *stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def test_the_extended_pipeline_is_the_default_one_with_every_path_under_extended():
    root = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    generated = _generated()
    assert generated["vars"] == ["../experiments/extended.yaml"]
    conditions = list(yaml.safe_load(EXTENDED.read_text())["conditions"])
    assert list(generated["stages"]) == list(root)
    for name, stage in generated["stages"].items():
        stage, default = stage.get("do", stage), root[name].get("do", root[name])
        assert stage["wdir"] == ".."
        # deps on the code: the modules the stage's subcommand imports (what tests/test_dvc.py holds dvc.yaml to)
        # (and the report's templates, a directory)
        code = {d for d in stage["deps"] if d.startswith("src/study/")}
        assert code == {d for d in default["deps"] if d.startswith("src/study/")}
        assert ({d.removeprefix("src/study/").removesuffix(".py") for d in code if d.endswith(".py")}
                == modules_run_by(subcommand(stage)))
        for path in _paths(stage):
            assert path.startswith(("src/study/", "extended/")) or path == "experiments/extended.yaml", (name, path)
        tokens = stage["cmd"].split()
        arguments = [t for before, t in zip(tokens, tokens[1:]) if before.startswith("--")]
        for path in (a for a in arguments if "/" in a or a == "data"):
            assert path.startswith(("extended/", ".checkpoints/extended/")) or path == "experiments/extended.yaml", (
                name, path)
        listed = [key for entry in stage.get("params", []) for key in entry["experiments/extended.yaml"]]
        if name == "data":  # a key per condition, for the extended conditions
            assert [k for k in listed if k.startswith("conditions.")] == [f"conditions.{c}.dataset" for c in conditions]
        if name == "tune":
            assert {f"conditions.{c}.lr_from" for c in conditions} <= set(listed)


def _smoke_sized(params: dict) -> dict:
    """experiments/extended.yaml at the smoke params' scale: the same conditions and losses, 3 seeds, 1 epoch, a
    few hundred examples, two rates; the local executor and no MLflow (each costs seconds per stage). Three seeds,
    not two: with two, a 95% t-interval (t = 12.7) of a test NLL can reach below zero, which the report's log axis
    (question_figures.plot_headline) fails to draw."""
    params["study"].update(seeds=[0, 1, 2], executor="local", tracking=False)
    params["probe"]["points"] = 25
    for cond in params["conditions"].values():
        grid = cond["lr_grid"]
        cond.update(epochs=1, tune_epochs=1, train_size=200, val_size=100, test_size=100, batch_size=32,
                    lr_grid=[grid[2], grid[4]], tune_seeds=[100], log_every=4, probe_size=32)
    return params


def _digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        sha.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return sha.hexdigest()


@pytest.mark.slow
def test_the_smoke_sized_extended_study_runs_through_dvc_into_extended_results(tmp_path: Path):
    smoke = copy_repo(tmp_path / "repo")
    repo = smoke.repo
    shutil.copytree(REPO / "results", repo / "results")  # the default study's committed results, to stay untouched
    before = _digest(repo / "results")
    params = _smoke_sized(yaml.safe_load(EXTENDED.read_text()))
    (repo / "experiments" / "extended.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    smoke.run(sys.executable, "extended/pipeline.py")
    smoke.dvc("repro", "extended/dvc.yaml")

    out = repo / "extended" / "results"
    conditions, names = list(params["conditions"]), params["study"]["losses"]
    for cond in conditions:
        summary = (out / "conditions" / cond / "summary.csv").read_text()
        assert all(loss in summary for loss in names), cond
    report = (out / "report" / "report.md").read_text()
    assert all(cond in report for cond in conditions)
    assert all(cond in (out / "metrics.json").read_text() for cond in conditions)
    assert (out / "report" / "index.html").is_file()
    assert _digest(repo / "results") == before
    assert not (repo / "dvc.lock").exists()  # the default pipeline never ran
    assert "up to date" in smoke.dvc("status", "extended/dvc.yaml").stdout
