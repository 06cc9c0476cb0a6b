"""Interruption, resumption and stale runs, tried with real processes and signals on the smoke data."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from study import losses, tables

pytestmark = pytest.mark.slow

LOSSES = list(losses.names())  # lr.json gives every registered loss a rate; fashion_sgd trains six of them


@pytest.fixture(scope="module")
def long_run(smoke_pipeline, tmp_path_factory):
    """Smoke params with fashion_sgd stretched to a few hundred steps (long enough to interrupt), a hand-written
    lr.json, and an uninterrupted reference run's outputs."""
    root = tmp_path_factory.mktemp("reliability")
    params = yaml.safe_load((smoke_pipeline.repo / "experiments" / "study.yaml").read_text())
    params["conditions"]["fashion_sgd"]["epochs"] = 25
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "lr.json").write_text(json.dumps({"source": "fashion_sgd", "lrs": dict.fromkeys(LOSSES, 0.03)}))
    run = Runner(root, smoke_pipeline.repo / "data")
    reference = run.train(root / "reference", tracking=False)
    assert reference.returncode == 0, reference.stderr
    return run


class Runner:
    def __init__(self, root: Path, data: Path):
        self.root, self.data = root, data
        self.uri = f"sqlite:///{root / 'mlflow.db'}"

    def argv(self, out: Path, *, tracking: bool, checkpoint: Path | None = None) -> list[str]:
        argv = [sys.executable, "-m", "study", "train", "--params", str(self.root / "params.yaml"),
                "--condition", "fashion_sgd", "--data", str(self.data), "--lrs", str(self.root / "lr.json"),
                "--out", str(out)]
        if checkpoint:
            argv += ["--checkpoint", str(checkpoint)]
        return argv + ([] if tracking else ["--no-tracking"])

    def env(self) -> dict[str, str]:
        import os

        return {**os.environ, "MLFLOW_TRACKING_URI": self.uri, "PYTHONUNBUFFERED": "1"}

    def train(self, out: Path, *, tracking: bool, checkpoint: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(out, tracking=tracking, checkpoint=checkpoint), env=self.env(),
                              capture_output=True, text=True, timeout=300)

    def start(self, out: Path, *, tracking: bool, checkpoint: Path | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.argv(out, tracking=tracking, checkpoint=checkpoint), env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def runs(self, stage_dir: str | None = None):
        from mlflow import MlflowClient

        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name("loss-study")
        return client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []


def wait_for_step(process: subprocess.Popen, *, timeout: float = 120) -> None:
    """Let training get going: wait until the progress bar reports its second epoch."""
    deadline = time.time() + timeout
    seen = ""
    while time.time() < deadline:
        chunk = process.stderr.read(1) if process.stderr else ""
        seen += chunk
        if "epoch 2/" in seen:
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before it could be interrupted:\n{seen}")
    raise AssertionError("training did not reach its second epoch in time")


def same_outputs(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(tables.read_history(a / tables.HISTORY), tables.read_history(b / tables.HISTORY))
    pd.testing.assert_frame_equal(tables.read_examples(a / tables.EXAMPLES), tables.read_examples(b / tables.EXAMPLES))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_and_a_rerun_resumes_to_identical_results(long_run, sig):
    out, checkpoint = long_run.root / f"out-{sig.name}", long_run.root / f"{sig.name}.pt"
    process = long_run.start(out, tracking=True, checkpoint=checkpoint)
    wait_for_step(process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert checkpoint.is_file()
    assert not any((out / name).exists() for name in (tables.HISTORY, tables.SUMMARY, tables.EXAMPLES))
    killed = [r for r in long_run.runs() if r.data.tags.get("study.pid") == str(process.pid)]
    assert killed and all(r.info.status == "KILLED" for r in killed)

    resumed = long_run.train(out, tracking=True, checkpoint=checkpoint)
    assert resumed.returncode == 0, resumed.stderr
    same_outputs(out, long_run.root / "reference")
    assert not checkpoint.exists()


def test_a_truncated_checkpoint_restarts_cleanly_with_a_warning(long_run):
    out, checkpoint = long_run.root / "out-truncated", long_run.root / "truncated.pt"
    checkpoint.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    result = long_run.train(out, tracking=False, checkpoint=checkpoint)
    assert result.returncode == 0, result.stderr
    assert "unreadable" in result.stderr and "from scratch" in result.stderr
    same_outputs(out, long_run.root / "reference")


def test_after_sigkill_the_next_run_marks_the_stale_runs_killed(long_run):
    out = long_run.root / "out-sigkill"
    process = long_run.start(out, tracking=True)
    wait_for_step(process)
    process.kill()
    process.wait(timeout=30)
    stale = [r for r in long_run.runs() if r.data.tags.get("study.pid") == str(process.pid)]
    assert stale and all(r.info.status == "RUNNING" for r in stale)

    again = long_run.train(out, tracking=True)
    assert again.returncode == 0, again.stderr
    after = {r.info.run_id: r.info.status for r in long_run.runs()}
    assert all(after[r.info.run_id] == "KILLED" for r in stale)
    assert not any(status == "RUNNING" for status in after.values())


def test_a_diverging_learning_rate_is_a_result_not_a_crash(smoke_pipeline, tmp_path):
    """lr = 1e3 blows up some losses: those models are marked diverged (tables, MLflow tags, report), the others
    finish, the stage exits 0 and no NaN reaches a table."""
    repo = smoke_pipeline.repo
    # Every rate of the grid marked unstable in tuning: no fallback is left, so the diverged runs are the results.
    (tmp_path / "lr.json").write_text(json.dumps({"source": "test", "lrs": dict.fromkeys(LOSSES, 1e3),
                                                  "unstable": dict.fromkeys(LOSSES, [0.03, 0.3])}))
    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "study", "train", "--params", str(repo / "experiments" / "study.yaml"),
         "--condition", "fashion_sgd", "--data", str(repo / "data"), "--lrs", str(tmp_path / "lr.json"),
         "--out", str(out)],
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    history = tables.read_history(out / tables.HISTORY)
    diverged = history[history["metric"] == "diverged_step"]
    assert len(diverged) > 0
    assert history["value"].map(float).apply(lambda v: v == v and abs(v) != float("inf")).all()
    summary = pd.read_csv(out / tables.SUMMARY)
    assert summary["diverged_step"].notna().sum() == diverged[["loss", "seed"]].drop_duplicates().shape[0]
    fallbacks = tables.read_json(out / tables.SETUP)["lr_fallbacks"]
    assert set(fallbacks) == set(diverged["loss"]) and all(a[0]["next_lr"] is None for a in fallbacks.values())

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("loss-study").experiment_id])
    tagged = {r.info.run_name for r in runs if r.data.tags.get("diverged") == "true"}
    expected = {f"{row.loss}-lr1000-s{row.seed}" for row in diverged.itertuples()}
    assert tagged == expected
    assert all(r.info.status == "FINISHED" for r in runs)


def test_a_rate_that_fails_in_training_falls_back_to_the_next_smaller_stable_rate(smoke_pipeline, tmp_path):
    """lr = 1e3 diverges; with the grid's rates stable in tuning, the stage trains the failed losses again at the
    largest smaller rate of the grid (and smaller still if that fails too), and setup.json says what happened."""
    repo = smoke_pipeline.repo
    (tmp_path / "lr.json").write_text(json.dumps({"source": "test", "lrs": dict.fromkeys(LOSSES, 1e3),
                                                  "unstable": {}}))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "study", "train", "--params", str(repo / "experiments" / "study.yaml"),
         "--condition", "fashion_sgd", "--data", str(repo / "data"), "--lrs", str(tmp_path / "lr.json"),
         "--out", str(out), "--no-tracking"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    setup = tables.read_json(out / tables.SETUP)
    history = tables.read_history(out / tables.HISTORY)
    assert setup["lr_fallbacks"] and all(a[0]["lr"] == 1e3 for a in setup["lr_fallbacks"].values())
    for loss in setup["lr_fallbacks"]:
        assert setup["lrs"][loss] in (0.03, 0.3) and set(history.loc[history["loss"] == loss, "lr"]) == {
            setup["lrs"][loss]}
        assert "-> 0.3" in result.stderr


def test_checkpoints_never_unpickle_code(tmp_path, recwarn):
    """A swapped checkpoint holding a pickled object is refused (weights_only), never executed."""
    import pickle

    import torch

    from study.runner import Checkpoint

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (marker.write_text, ("pwned",))

    path = tmp_path / "swapped.pt"
    torch.save({"fingerprint": "x", "trainer": Payload()}, path, pickle_module=pickle)
    assert Checkpoint(path, "x").load() is None
    assert not marker.exists()
    assert any("unreadable" in str(w.message) for w in recwarn)


def test_the_dashboard_binds_to_loopback_unless_asked(monkeypatch):
    from study import cli
    from study.ops import dashboard

    calls = []
    monkeypatch.setattr(dashboard, "serve", lambda cfg, results, *, host, port, say: calls.append((host, port)) or 0)
    cli.main(["dashboard"])
    cli.main(["dashboard", "--host", "0.0.0.0", "--port", "5123"])
    assert calls == [("127.0.0.1", 5000), ("0.0.0.0", 5123)]
    argv = dashboard.server_command("sqlite:///x.db", "127.0.0.1", 5000)
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "5000"
