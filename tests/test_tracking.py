"""MLflow tracking against a real SQLite store under tmp_path: runs, params, tags, metrics, statuses, concurrency."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

from study import mlflow_store, tracking
from study.records import Record
from study.run_identity import default_uri, owner_id, redact
from study.tracking import NullTracker, RunSpec, open_tracker

# SQLAlchemy deprecation warnings about MLflow's own ORM mappers, raised when a test builds the first client.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RUNS = [
    RunSpec("softmax_nll", 0.1, 0, True, {"class_reduction": "none"}),
    RunSpec("softmax_nll", 0.1, 1, True, {"class_reduction": "none"}),
    RunSpec("mse", 0.5, 0, False, {"class_reduction": "sum"}),
]


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}")  # creating the schema takes seconds: once per module, copied per test
    return path


@pytest.fixture
def uri(tmp_path: Path, empty_store: Path) -> str:
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def new_uri(tmp_path: Path) -> str:
    """A store that does not exist yet."""
    return f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"


def opened(uri: str, condition: str = "fashion_sgd", **overrides):
    kwargs = dict(
        enabled=True, experiment="loss-study", condition=condition, stage="train", dataset="fashion_mnist",
        params={"condition.epochs": "3", "condition.optimizer": "sgd"}, runs=RUNS, uri=uri,
    )
    return open_tracker(**{**kwargs, **overrides})


def study_runs(uri: str) -> dict[str, Run]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("loss-study")
    runs = client.search_runs([experiment.experiment_id], "", ViewType.ALL, 1000)
    return {run.info.run_id: run for run in runs}


def by_name(uri: str) -> dict[str, Run]:
    runs = study_runs(uri).values()
    names = [run.info.run_name for run in runs]
    assert len(set(names)) == len(names), names
    return {run.info.run_name: run for run in runs}


def records(spec: RunSpec, steps: range, split: str = "train", metric: str = "loss") -> list[Record]:
    return [Record(spec.loss, spec.lr, spec.seed, step / 100, step, split, metric, 1.0 / (step + 1)) for step in steps]


def test_parent_and_children_carry_names_params_tags_and_step_metrics(uri: str, tmp_path: Path) -> None:
    figure = tmp_path / "figures" / "convergence.png"
    figure.parent.mkdir()
    figure.write_bytes(b"png")
    with opened(uri) as tracker:
        tracker.log(records(RUNS[0], range(2500)))  # more than one log_batch holds
        for spec in RUNS:
            tracker.log(records(spec, range(0, 100, 10), "test", "accuracy"))
        tracker.log(Record("mse", 0.5, 0, 0.07, 7, "train", "diverged_step", 7.0))
        tracker.set_summary("mse-lr0.5-s0", {"summary/best_accuracy": 0.75})
        tracker.log_artifacts([figure.parent])

    runs = by_name(uri)
    assert set(runs) == {"fashion_sgd/train", "softmax_nll-lr0.1-s0", "softmax_nll-lr0.1-s1", "mse-lr0.5-s0"}
    parent = runs["fashion_sgd/train"]
    assert parent.data.tags["condition"] == "fashion_sgd"
    assert parent.data.tags["dataset"] == "fashion_mnist"
    assert parent.data.tags["stage"] == "train"
    assert parent.data.params["condition.epochs"] == "3"
    client = MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "figures")] == ["figures/convergence.png"]
    assert (tmp_path / "mlartifacts").is_dir()  # next to the store, not in the working directory

    child = runs["softmax_nll-lr0.1-s0"]
    assert child.info.status == "FINISHED" and parent.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.params == {
        "condition.epochs": "3", "condition.optimizer": "sgd",
        "loss": "softmax_nll", "lr": "0.1", "seed": "0", "loss.class_reduction": "none",
    }
    tags = child.data.tags
    assert (tags["condition"], tags["dataset"], tags["loss"], tags["seed"], tags["lr"]) == (
        "fashion_sgd", "fashion_mnist", "softmax_nll", "0", "0.1"
    )
    assert tags["lr_tuned"] == "true" and runs["mse-lr0.5-s0"].data.tags["lr_tuned"] == "false"
    assert tags["dvc_stage"] == "train@fashion_sgd"
    assert tags["git_commit"]
    assert tags["study.owner"] == owner_id("loss-study", "fashion_sgd", "train") == parent.data.tags["study.owner"]

    history = client.get_metric_history(child.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(step, 1.0 / (step + 1)) for step in range(2500)]
    accuracy = client.get_metric_history(runs["mse-lr0.5-s0"].info.run_id, "test/accuracy")
    assert sorted(m.step for m in accuracy) == list(range(0, 100, 10))

    diverged = runs["mse-lr0.5-s0"]
    assert diverged.data.tags["diverged"] == "true" and diverged.data.tags["diverged_step"] == "7"
    assert diverged.data.metrics["train/diverged_step"] == 7.0
    summary = client.get_metric_history(diverged.info.run_id, "summary/best_accuracy")
    assert [(m.step, m.value) for m in summary] == [(90, 0.75)]  # at the last step seen for the run
    assert "diverged" not in runs["softmax_nll-lr0.1-s1"].data.tags


def test_an_exception_ends_every_run_failed_with_the_error(uri: str) -> None:
    with pytest.raises(ValueError, match="loss is nan"), opened(uri) as tracker:
        tracker.log(records(RUNS[0], range(5)))
        raise ValueError("loss is nan")
    runs = study_runs(uri).values()
    assert len(runs) == 4
    assert {run.info.status for run in runs} == {"FAILED"}
    assert {run.data.tags["error"] for run in runs} == {"ValueError: loss is nan"}
    child = next(run for run in runs if run.info.run_name == "softmax_nll-lr0.1-s0")
    assert len(MlflowClient(uri).get_metric_history(child.info.run_id, "train/loss")) == 5


def test_a_long_error_is_truncated(uri: str) -> None:
    with pytest.raises(RuntimeError), opened(uri):
        raise RuntimeError("x" * 20_000)
    assert {len(run.data.tags["error"]) for run in study_runs(uri).values()} == {5000}


@pytest.mark.parametrize(
    ("stop", "status"),
    [(KeyboardInterrupt(), "KILLED"), (SystemExit(128 + signal.SIGTERM), "KILLED"), (SystemExit(0), "FINISHED")],
)
def test_interrupts_end_every_run_killed(uri: str, stop: BaseException, status: str) -> None:
    with pytest.raises(type(stop)), opened(uri):
        raise stop
    assert {run.info.status for run in study_runs(uri).values()} == {status}


def test_the_next_open_kills_stale_running_runs_of_the_same_owner(uri: str, tmp_path: Path) -> None:
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("loss-study", artifact_location=str(tmp_path / "art"))
    owner = owner_id("loss-study", "fashion_sgd", "train")

    def running(name: str, **tags: str) -> str:
        return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    crashed = running("fashion_sgd/train", **{"study.owner": owner, "study.host": "elsewhere", "study.pid": "1"})
    untagged = running("mse-lr0.5-s0", **{"study.owner": owner})
    other_stage = running("fashion_sgd/tune", **{"study.owner": owner_id("loss-study", "fashion_sgd", "tune")})
    live = running("busy", **{"study.owner": owner, "study.host": os.uname().nodename, "study.pid": str(os.getppid())})

    with opened(uri):
        pass

    after = study_runs(uri)
    for run_id in (crashed, untagged):
        assert after[run_id].info.status == "KILLED"
        assert after[run_id].data.tags["killed_reason"] == "stale"
    assert after[other_stage].info.status == "RUNNING"  # another owner
    assert after[live].info.status == "RUNNING"  # its process is alive on this host
    assert sum(run.info.status == "FINISHED" for run in after.values()) == 4


def test_passwords_never_reach_params_or_tags(uri: str) -> None:
    assert redact("postgresql://study:hunter2@db.example:5432/mlflow") == "postgresql://study:***@db.example:5432/mlflow"
    assert redact("https://user:pa:ss@host/x?token=abc&b=1") == "https://user:***@host/x?token=***&b=1"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert redact("http://host:5000/") == "http://host:5000/"

    params = {"data_uri": "s3://reader:hunter2@bucket/data", "db_password": "hunter2", "epochs": "3", "tokens": "9"}
    with pytest.raises(ConnectionError), opened(uri, params=params):
        raise ConnectionError("cannot reach https://u:hunter2@host/api")
    runs = study_runs(uri).values()
    for run in runs:
        assert run.data.params["data_uri"] == "s3://reader:***@bucket/data"
        assert run.data.params["epochs"] == "3" and run.data.params["tokens"] == "9"
        assert run.data.params["db_password"] == "***"
        values = [*run.data.params.values(), *run.data.tags.values()]
        assert not any("hunter2" in value for value in values), values
    assert {run.data.tags["error"] for run in runs} == {"ConnectionError: cannot reach https://u:***@host/api"}


def test_null_tracker_and_tracking_off(tmp_path: Path, new_uri: str) -> None:
    tracker = NullTracker()
    tracker.log(records(RUNS[0], range(3)))
    tracker.log_artifacts([tmp_path])
    tracker.set_summary("mse-lr0.5-s0", {"x": 1.0})
    with opened(new_uri, enabled=False) as tracker:
        assert isinstance(tracker, NullTracker)
        tracker.log(records(RUNS[0], range(3)))
    assert not (tmp_path / "new").exists()


def test_tracking_off_does_not_import_mlflow() -> None:
    code = (
        "import sys\n"
        "from study.tracking import open_tracker\n"
        "with open_tracker(enabled=False, experiment='e', condition='c', stage='train', dataset='d',"
        " params={}, runs=[]) as tracker:\n"
        "    tracker.log([])\n"
        "assert 'mlflow' not in sys.modules\n"
    )
    src = Path(tracking.__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(src)})


def test_odd_input_is_skipped_without_losing_the_rest(uri: str, caplog: pytest.LogCaptureFixture) -> None:
    with opened(uri) as tracker:
        tracker.log(record for record in records(RUNS[1], range(3)))  # any iterable
        tracker.log(records(RunSpec("focal", 0.1, 0, False), range(3)))  # no such child run
        tracker.set_summary("softmax_nll-lr0.1-s1", {"summary/none": None, "summary/text": "n/a", "summary/ok": 2})
        tracker.log(records(RUNS[1], range(3, 5)))
    assert "focal-lr0.1-s0" in caplog.text
    run = by_name(uri)["softmax_nll-lr0.1-s1"]
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"train/loss": 1.0 / 5, "summary/ok": 2.0}
    assert len(MlflowClient(uri).get_metric_history(run.info.run_id, "train/loss")) == 5
    assert "tracking_error" not in by_name(uri)["fashion_sgd/train"].data.tags


def test_default_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert default_uri(tmp_path).startswith("sqlite:////")  # absolute
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_uri(tmp_path) == "http://127.0.0.1:5000"


def test_database_is_locked_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlflow_store, "_RETRY_FIRST_WAIT_S", 0.001)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert mlflow_store.retry(flaky) == "ok" and len(calls) == 3

    def always_locked() -> str:
        raise RuntimeError("database is locked")

    with pytest.raises(RuntimeError, match="locked"):
        mlflow_store.retry(always_locked)
    with pytest.raises(KeyError):
        mlflow_store.retry(lambda: {}["missing"])


# A child process: pays the mlflow import, waits at a barrier, then opens the same store as its siblings.
CHILD = """
import sys, time
from pathlib import Path
import mlflow
from study.records import Record
from study.tracking import RunSpec, open_tracker

uri, condition, tmp, mode, steps = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], int(sys.argv[5])
(tmp / f"ready-{condition}").touch()
while not (tmp / "go").exists():
    time.sleep(0.005)
runs = [RunSpec(loss, 0.1, seed, False, {}) for loss in ("mse", "softmax_nll") for seed in (0, 1)]
with open_tracker(enabled=True, experiment="loss-study", condition=condition, stage="train", dataset="toy",
                  params={"condition.name": condition}, runs=runs, uri=uri) as tracker:
    for step in range(steps):
        tracker.log([Record(s.loss, s.lr, s.seed, 0.0, step, "train", "loss", float(step)) for s in runs])
    if mode == "hang":
        (tmp / f"open-{condition}").touch()
        time.sleep(120)
"""


def start_children(uri: str, tmp_path: Path, jobs: dict[str, str], steps: int) -> dict[str, subprocess.Popen]:
    src = Path(tracking.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    children = {
        condition: subprocess.Popen(
            [sys.executable, "-c", CHILD, uri, condition, str(tmp_path), mode, str(steps)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for condition, mode in jobs.items()
    }
    wait_for(tmp_path, [f"ready-{condition}" for condition in jobs], children)
    (tmp_path / "go").touch()
    return children


def wait_for(tmp_path: Path, names: list[str], children: dict[str, subprocess.Popen], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not all((tmp_path / name).exists() for name in names):
        for condition, child in children.items():
            if child.poll() is not None:
                pytest.fail(f"{condition} exited early: {child.communicate()}")
        assert time.monotonic() < deadline, f"timed out waiting for {names}"
        time.sleep(0.01)


def test_processes_sharing_a_new_store_lose_nothing(new_uri: str, tmp_path: Path) -> None:
    uri, steps = new_uri, 300
    children = start_children(uri, tmp_path, {"a": "run", "b": "run", "c": "run"}, steps)
    for condition, child in children.items():
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, (condition, err)
        assert out == ""  # quiet on stdout

    client = MlflowClient(uri)
    assert [e.name for e in client.search_experiments()].count("loss-study") == 1
    runs = study_runs(uri).values()
    assert sorted(run.info.run_name for run in runs if "/" in run.info.run_name) == ["a/train", "b/train", "c/train"]
    children_runs = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(children_runs) == 12
    assert {run.info.status for run in runs} == {"FINISHED"}
    for run in children_runs:
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(steps))


def test_sigterm_ends_runs_killed_and_sigkill_leaves_them_for_the_next_open(uri: str, tmp_path: Path) -> None:
    children = start_children(uri, tmp_path, {"termed": "hang", "sigkilled": "hang"}, 20)
    wait_for(tmp_path, ["open-termed", "open-sigkilled"], children)
    children["termed"].send_signal(signal.SIGTERM)
    children["sigkilled"].send_signal(signal.SIGKILL)
    for child in children.values():
        child.communicate(timeout=60)
    assert children["termed"].returncode == 128 + signal.SIGTERM
    assert children["sigkilled"].returncode == -signal.SIGKILL

    def statuses(condition: str) -> set[str]:
        return {run.info.status for run in study_runs(uri).values() if run.data.tags["condition"] == condition}

    assert statuses("termed") == {"KILLED"}
    assert statuses("sigkilled") == {"RUNNING"}
    termed_child = next(r for r in study_runs(uri).values() if r.info.run_name == "mse-lr0.1-s0"
                        and r.data.tags["condition"] == "termed")
    assert len(MlflowClient(uri).get_metric_history(termed_child.info.run_id, "train/loss")) == 20

    with opened(uri, condition="sigkilled", runs=[]):
        pass
    assert statuses("sigkilled") == {"KILLED", "FINISHED"}
    stale = [run for run in study_runs(uri).values() if run.info.status == "KILLED"
             and run.data.tags["condition"] == "sigkilled"]
    assert len(stale) == 5 and all(run.data.tags["killed_reason"] == "stale" for run in stale)


def test_queued_experiments_log_to_the_repository_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`dvc exp run --queue` runs stages in <repo>/.dvc/tmp/exps/...: their runs go to <repo>/mlflow.db."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = tmp_path / ".dvc" / "tmp" / "exps" / "tmp" / "abc123"
    workspace.mkdir(parents=True)
    monkeypatch.chdir(workspace)
    assert default_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    assert default_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def _stored(uri: str) -> dict[str, tuple]:
    """Each child run's metric histories (key, step, timestamp, value, as stored) and latest values."""
    client = MlflowClient(uri)
    out = {}
    for name, run in by_name(uri).items():
        history = sorted((m.key, m.step, m.timestamp, repr(m.value))
                         for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key))
        out[name] = (history, {k: repr(v) for k, v in run.data.metrics.items()})
    return out


def test_bulk_insert_stores_what_log_batch_stores(tmp_path: Path, empty_store: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The SQL store's bulk path against MLflow's own log_batch, same records: NaN and infinities, a duplicate in one
    batch, a key logged twice at one step with different values (the larger wins 'latest' at a tie), a summary."""
    monkeypatch.setattr(tracking, "_now_ms", lambda: 1_000)  # one timestamp: 'latest' is decided by step and value
    logged = [*records(RUNS[0], range(1500)), *records(RUNS[0], range(1500), split="test", metric="accuracy"),
              Record("mse", 0.5, 0, 0.0, 3, "train", "loss", float("nan")),
              Record("mse", 0.5, 0, 0.0, 4, "train", "loss", float("inf")),
              Record("mse", 0.5, 0, 0.0, 4, "train", "loss", float("inf")),  # an exact duplicate
              Record("mse", 0.5, 0, 0.0, 5, "train", "loss", -float("inf")),
              Record("mse", 0.5, 0, 0.0, 5, "train", "grad_norm", 2.0),
              Record("mse", 0.5, 0, 0.0, 5, "train", "grad_norm", 3.0)]
    stores = {}
    for kind in ("bulk", "log_batch"):
        (tmp_path / kind).mkdir()
        shutil.copyfile(empty_store, tmp_path / kind / "mlflow.db")
        stores[kind] = f"sqlite:///{tmp_path / kind / 'mlflow.db'}"
    bulk_calls = []
    real_insert = tracking.insert_metrics
    monkeypatch.setattr(tracking, "insert_metrics", lambda *a: bulk_calls.append(len(a[2])) or real_insert(*a))
    with opened(stores["bulk"]) as tracker:
        tracker.log(logged)
        tracker.set_summary(RUNS[0].run, {"summary/final": 0.5})
    assert bulk_calls and max(bulk_calls) > 1000  # one transaction per run, not MLflow's 1,000-metric batches
    monkeypatch.setattr(tracking, "sql_store", lambda client: None)
    with opened(stores["log_batch"]) as tracker:
        tracker.log(logged)
        tracker.set_summary(RUNS[0].run, {"summary/final": 0.5})
    bulk, reference = _stored(stores["bulk"]), _stored(stores["log_batch"])
    assert bulk == reference
    assert len(bulk[RUNS[0].run][0]) == 3001 and bulk["mse-lr0.5-s0"][1]["train/grad_norm"] == "3.0"


def test_a_metric_already_stored_falls_back_to_log_batch(uri: str, caplog: pytest.LogCaptureFixture) -> None:
    """Bulk insert refuses a row that exists (same key, step, timestamp, value): nothing of that batch is half
    written, log_batch settles the duplicate, and the rest of the batch is stored."""
    with opened(uri) as tracker:
        run_id = tracker.handle().run_ids[RUNS[1].run]
        first = records(RUNS[1], range(3))
        tracker.log(first)
        assert tracker.flush(60)
        stored = MlflowClient(uri).get_metric_history(run_id, "train/loss")
        stamp = stored[0].timestamp
        from mlflow.entities import Metric
        again = [Metric("train/loss", m.value, stamp, m.step) for m in stored] + [Metric("train/loss", 0.01, stamp, 9)]
        with pytest.raises(Exception, match="UNIQUE|IntegrityError|unique"):
            mlflow_store.insert_metrics(tracker._store, run_id, again)  # all or nothing: the new step 9 is not stored
        assert len(MlflowClient(uri).get_metric_history(run_id, "train/loss")) == 3
        tracker._send_run(run_id, again, {})
    history = MlflowClient(uri).get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 9]
    assert "tracking_error" not in by_name(uri)["fashion_sgd/train"].data.tags


def test_runs_of_a_dvc_experiment_carry_its_name_and_baseline(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DVC_EXP_NAME", "longer-fashion")  # what `dvc exp run -n longer-fashion` sets
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0123abc")
    with opened(uri):
        pass
    monkeypatch.delenv("DVC_EXP_NAME")
    with opened(uri, condition="fashion_adam"):
        pass
    for run in study_runs(uri).values():
        experiment = run.data.tags["condition"] == "fashion_sgd"
        assert run.data.tags.get("dvc_exp_name") == ("longer-fashion" if experiment else None)
        assert run.data.tags.get("dvc_exp_baseline") == ("0123abc" if experiment else None)
        if experiment:
            assert run.data.params["condition.epochs"] == "3"  # the params it ran with


def test_dated_runs_list_each_parent_before_its_children(uri: str) -> None:
    dated = 1_700_000_000_000
    with opened(uri, dated_ms=dated):
        pass
    runs = by_name(uri)
    parent = runs.pop("fashion_sgd/train")
    assert parent.info.start_time == parent.info.end_time == dated
    assert sorted(run.info.start_time for run in runs.values()) == [dated - 3, dated - 2, dated - 1]
    assert {run.info.end_time for run in runs.values()} == {dated}
