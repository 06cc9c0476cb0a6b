"""What DVC shows: `dvc plots show` colours each loss as the report does, on a log-scaled step axis; `dvc metrics
show` reads one flat test-accuracy file per condition (one row each, a column per loss)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from study import document, losses

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / ".dvc" / "plots"


def _plots() -> list[tuple[str, dict]]:
    """dvc.yaml's plots (a foreach stage's from its `do` block): (path, options)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    found = []
    for stage in stages.values():
        for entry in stage.get("do", stage).get("plots", []):
            entry = entry if isinstance(entry, dict) else {entry: {}}  # a bare path, or a path with options
            found += [(path, options or {}) for path, options in entry.items()]
    return found


def test_every_plot_draws_with_the_by_loss_template():
    plots = _plots()
    assert plots, "dvc.yaml declares no plots"
    for path, options in plots:
        assert options.get("template") == "by_loss", f"dvc.yaml plot {path}: set template: by_loss"
    assert (TEMPLATES / "by_loss.json").is_file()


def test_the_plot_template_colours_each_loss_as_the_registry_does():
    """A loss added to study.losses without its colour here would get Vega's next default colour in `dvc plots
    show` and the registry's in the report."""
    color = json.loads((TEMPLATES / "by_loss.json").read_text())["encoding"]["color"]
    assert color["field"] == "loss"
    expected = {"domain": list(losses.names()), "range": [losses.spec(name).colour for name in losses.names()]}
    assert color["scale"] == expected, (
        f".dvc/plots/by_loss.json: set encoding.color.scale to {json.dumps(expected)} (from src/study/losses.py)")


def test_the_plot_template_draws_steps_on_a_log_axis_from_the_first_step():
    """Losses differ most in the first few hundred steps; step 0 (the evaluation before training) has no log."""
    template = json.loads((TEMPLATES / "by_loss.json").read_text())
    assert template["encoding"]["x"]["field"] == "<DVC_METRIC_X>"
    assert template["encoding"]["x"]["scale"] == {"type": "log"}
    assert {"filter": "datum['<DVC_METRIC_X>'] > 0"} in template["transform"]


def test_write_accuracy_writes_one_flat_file_per_condition(tmp_path: Path):
    metrics = {
        "fashion_sgd": {"mse": {"test_accuracy": 0.88, "steps_to_target": 376.0, "ece": 0.04},
                        "softmax_nll": {"test_accuracy": 0.89, "steps_to_target": None, "ece": 0.05}},
        "mnist1d_sgd": {"mse": {"test_accuracy": float("nan"), "steps_to_target": 12.0, "ece": 0.1}},
    }
    out = tmp_path / "test_accuracy"
    out.mkdir()
    (out / "gone.json").write_text("{}")  # a condition no longer in the study: its row must not stay
    document.write_accuracy(metrics, out)
    assert sorted(p.name for p in out.iterdir()) == ["fashion_sgd.json", "mnist1d_sgd.json"]
    assert json.loads((out / "fashion_sgd.json").read_text()) == {"mse": 0.88, "softmax_nll": 0.89}
    assert json.loads((out / "mnist1d_sgd.json").read_text()) == {"mse": None}  # NaN is JSON null
    assert not list(tmp_path.glob(".*"))  # no staging directory left behind
