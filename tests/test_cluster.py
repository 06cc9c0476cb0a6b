"""The Ray executor: shards gathered back into the local trainer's items and order; with the real parts (marker
``cluster``): the smoke condition on a local Ray cluster logging to a PostgreSQL-backed mlflow server, the same
tables and rates as the local executor, and a worker killed mid-shard."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import synthetic_dataset, tiny_condition
from study import train
from study.ops import cluster
from study.records import ExampleStats, Record


def _items(cond, data, members, settings) -> list:
    return list(train.Trainer(cond, data, members, settings).run())


def _key(item) -> tuple:
    metric = item.metric if isinstance(item, Record) else "examples"
    return item.loss, item.lr, item.seed, item.step, item.split, metric


def assert_same_items(got: list, want: list, *, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Same items in the same order; values equal to the last few digits (a shard's stack is smaller, so its
    products may sum in another order)."""
    assert [_key(i) for i in got] == [_key(i) for i in want]
    for a, b in zip(got, want):
        if isinstance(a, Record):
            assert a.epoch == b.epoch
            np.testing.assert_allclose(a.value, b.value, rtol=rtol, atol=atol, err_msg=str(_key(a)))
        else:
            for name in ("index", "label", "predicted"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            for name in ("p_true", "confidence", "loss_value", "logit_grad_norm"):
                np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=atol)


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_shards_of_one_seed_merge_into_the_full_grids_items_in_its_order(noise):
    """Every measurement of the full lockstep grid, in the order it yields them, from one trainer per seed: the
    training log, evaluations, per-example stats, memorisation under label noise and a divergence mark (lr 80)."""
    data = synthetic_dataset(label_noise=noise)
    cond = tiny_condition()
    members = train.grid(cond.losses, (0, 1, 2), {loss: [0.1, 80.0] for loss in cond.losses})
    settings = train.Settings(progress=False)
    want = _items(cond, data, members, settings)
    parts = cluster.shards(members)
    assert [{m.seed for m in part} for part in parts] == [{0}, {1}, {2}]
    got = cluster.merge([_items(cond, data, part, settings) for part in reversed(parts)], members)
    assert any(isinstance(i, Record) and i.metric == "diverged_step" for i in want)
    assert any(isinstance(i, ExampleStats) for i in want)
    assert_same_items(got, want)


def test_a_shard_starts_from_the_weights_and_batches_of_its_seed_in_the_full_grid():
    cond = dataclasses.replace(tiny_condition(), epochs=1)
    data = synthetic_dataset()
    members = train.grid(cond.losses, (3, 4), {loss: [0.1] for loss in cond.losses})
    full = train.Trainer(cond, data, members, train.Settings(progress=False))
    shard = train.Trainer(cond, data, cluster.shards(members)[1], train.Settings(progress=False))
    for p_full, p_shard in zip(full.stack.params, shard.stack.params):
        assert np.array_equal(p_full[1::2].numpy(), p_shard.numpy())  # seed 4's models (grid: loss, lr, seed)


def test_the_executor_comes_from_the_environment_then_the_params(monkeypatch):
    monkeypatch.delenv("STUDY_EXECUTOR", raising=False)
    assert cluster.executor(None) == "local"
    assert cluster.executor("ray") == "ray"
    monkeypatch.setenv("STUDY_EXECUTOR", "ray")
    assert cluster.executor("local") == "ray"
    monkeypatch.setenv("STUDY_EXECUTOR", "dask")
    with pytest.raises(ValueError, match="local, ray"):
        cluster.executor(None)


# ---- the real parts -------------------------------------------------------------------------------------------

CONDITION = "fashion_sgd"


@dataclasses.dataclass
class RayRun:
    smoke: object  # smoke_repo.SmokeRepo: a copy of the repo with the smoke params, data prepared
    server: object  # study.ops.server.TrackingServer
    address: str  # RAY_ADDRESS of the local cluster

    def study(self, stage: str, out: str, *, executor: str, tracking: bool = True, lrs: str | None = None,
              fault: str = "", check: bool = True):
        """``fault``: a hook of tests/cluster_faults.py (``kill_shard_1_once``), passed as STUDY_SHARD_HOOK."""
        argv = [sys.executable, "-m", "study", stage, "--params", "experiments/study.yaml", "--condition", CONDITION,
                "--data", "data", "--out", out, "--no-progress"]
        argv += ["--lrs", lrs] if lrs else []
        argv += [] if tracking else ["--no-tracking"]
        self.smoke.extra_env.update({"STUDY_EXECUTOR": executor, "RAY_ADDRESS": self.address,
                                     "STUDY_SHARD_HOOK": f"tests.cluster_faults:{fault}" if fault else "",
                                     "MLFLOW_TRACKING_URI": self.server.uri})
        return self.smoke.run(*argv, check=check)

    def runs(self, stage: str) -> list[dict]:
        """Every run of the stage in the store, newest parent's children first: name, status, tags, metric count
        (the dashboard's speed metric counted apart)."""
        import sqlalchemy

        from study import tracking

        engine = sqlalchemy.create_engine(self.server.backend_uri)
        query = sqlalchemy.text("""
            SELECT r.run_uuid, r.name, r.status, r.start_time,
                   (SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId') AS parent,
                   (SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'killed_reason') AS killed,
                   (SELECT count(*) FROM metrics m WHERE m.run_uuid = r.run_uuid AND m.key != :speed) AS metrics,
                   (SELECT count(*) FROM metrics m WHERE m.run_uuid = r.run_uuid AND m.key = :speed) AS speed
            FROM runs r JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = 'stage' AND s.value = :stage
            ORDER BY r.start_time""")
        values = {"stage": stage, "speed": tracking.SPEED_METRIC}
        try:
            with engine.connect() as conn:
                return [dict(row._mapping) for row in conn.execute(query, values)]
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory):
    from cluster_parts import ray_cluster, skip_without_parts, tracking_server
    from smoke_repo import copy_repo

    skip_without_parts(ray_needed=True)
    smoke = copy_repo(tmp_path_factory.mktemp("cluster-repo"))
    smoke.run(sys.executable, "-m", "study", "data", "--params", "experiments/study.yaml", "--out", "data")
    with tracking_server() as srv, ray_cluster(cpus=2) as address:
        yield RayRun(smoke, srv, address)


def _tables(out) -> dict:
    names = ("tune.csv", "history.csv", "summary.csv")
    return {name: pd.read_csv(out / name) for name in names if (out / name).exists()}


def assert_same_frames(got: pd.DataFrame, want: pd.DataFrame, name: str = "") -> None:
    """Same rows in the same order; numbers equal to the last few digits. A Ray task runs one thread (Ray sets
    OMP_NUM_THREADS to its num_cpus) where the local trainer runs two, so sums are ordered differently: the trained
    weights agree to about 1e-6, and statistics that bin or fit on them (ECE, temperature) move a little more."""
    assert list(got.columns) == list(want.columns) and len(got) == len(want)
    # ECE bins the test examples by confidence: one example crossing a bin edge moves it by up to 2/n (n = 300
    # smoke test examples), and after temperature scaling the fitted temperature moves the edges too.
    binned = (want["metric"].isin(["ece", "ece_ts", "ece_own", "classwise_ece"]).to_numpy() if "metric" in want
              else np.zeros(len(want), bool))
    for column in want.columns:
        if pd.api.types.is_numeric_dtype(want[column]):
            a, b = got[column].to_numpy(dtype=float), want[column].to_numpy(dtype=float)
            print(f"{name} {column}: max |ray - local| = {np.nanmax(np.abs(a - b), initial=0):.2g}")
            rows = np.ones(len(want), bool) if "ece" in column else binned  # summary.csv: ece columns
            np.testing.assert_allclose(a[~rows], b[~rows], rtol=1e-3, atol=1e-3, err_msg=column)
            np.testing.assert_allclose(a[rows], b[rows], rtol=0, atol=2 / 300, err_msg=f"{column} (ECE)")
        else:
            assert got[column].tolist() == want[column].tolist(), column


def _speed_values(table: pd.DataFrame) -> tuple[int, int]:
    """The bounds on the dashboard's speed metric values the tracker logs for a history table: one per validation
    accuracy reading, less the exact duplicates the store drops (two readings at steps one speed step apart, with one
    value, logged in one batch: the same timestamp)."""
    from study import tracking

    val = table[(table["split"] + "/" + table["metric"]) == tracking.SPEED_SOURCE]
    steps = val["step"].map(tracking.speed_step)
    distinct = val.assign(step=steps).drop_duplicates(["loss", "lr", "seed", "step", "value"])
    return len(distinct), len(val)


def _summary_values(summary: pd.DataFrame) -> int:
    from study import tables

    columns = [c for c in summary.columns if c.startswith(tables.SUMMARY_PREFIXES)]
    return int(np.isfinite(summary[columns].to_numpy(dtype=float)).sum())


@pytest.mark.cluster
def test_the_smoke_condition_on_ray_matches_the_local_executor_and_logs_every_run_finished(ray_run):
    """Tune and train on a 2-CPU Ray cluster, logging to mlflow server on PostgreSQL, then the same locally: the
    same chosen rates, the same tables; every run FINISHED; the store holds exactly the tables' values."""
    repo = ray_run.smoke.repo
    ray_out, local_out = f"results/ray/{CONDITION}", f"results/local/{CONDITION}"
    ray_run.study("tune", ray_out, executor="ray")
    ray_run.study("train", ray_out, executor="ray", lrs=f"{ray_out}/lr.json")
    ray_run.study("tune", local_out, executor="local", tracking=False)
    ray_run.study("train", local_out, executor="local", tracking=False, lrs=f"{local_out}/lr.json")

    ray_lrs, local_lrs = (json.loads((repo / out / "lr.json").read_text()) for out in (ray_out, local_out))
    assert ray_lrs["lrs"] == local_lrs["lrs"]
    got, want = _tables(repo / ray_out), _tables(repo / local_out)
    assert set(got) == set(want) == {"tune.csv", "history.csv", "summary.csv"}
    for name in want:
        assert_same_frames(got[name], want[name], name)
    assert_same_frames(pd.read_parquet(repo / ray_out / "examples.parquet"),
                       pd.read_parquet(repo / local_out / "examples.parquet"), "examples.parquet")

    for stage, table in (("tune", "tune.csv"), ("train", "history.csv")):
        runs = ray_run.runs(stage)
        parents = [r for r in runs if r["parent"] is None]
        children = [r for r in runs if r["parent"] is not None]
        assert len(parents) == 1 and {r["status"] for r in runs} == {"FINISHED"}
        assert {r["parent"] for r in children} == {parents[0]["run_uuid"]}
        expected = len(got[table]) + (_summary_values(got["summary.csv"]) if stage == "train" else 0)
        assert sum(r["metrics"] for r in children) == expected
        low, high = _speed_values(got[table])
        assert 0 < low <= sum(r["speed"] for r in children) <= high
    assert len(ray_run.runs("train")) - 1 == len(got["summary.csv"])  # one child run per trained model


@pytest.mark.cluster
def test_a_worker_killed_mid_shard_is_retried_into_fresh_runs_or_the_stage_fails_with_nothing_written(ray_run):
    repo = ray_run.smoke.repo
    lrs = f"results/ray/{CONDITION}/lr.json"
    if not (repo / lrs).exists():
        ray_run.study("tune", f"results/ray/{CONDITION}", executor="ray", tracking=False)
    before = {r["run_uuid"] for r in ray_run.runs("train")}

    # Shard 1's worker SIGKILLs itself after its first step's metrics reached the store: retried once, completes.
    retried = f"results/retried/{CONDITION}"
    result = ray_run.study("train", retried, executor="ray", lrs=lrs, fault="kill_shard_1_once")
    assert "worker died running shard 1" in result.stderr
    runs = [r for r in ray_run.runs("train") if r["run_uuid"] not in before]
    killed = [r for r in runs if r["status"] == "KILLED"]
    finished = [r for r in runs if r["status"] == "FINISHED"]
    history = pd.read_csv(repo / retried / "history.csv")
    summary = pd.read_csv(repo / retried / "summary.csv")
    assert len(killed) == len(summary) // 2 and all(r["killed"] for r in killed)  # one seed's models of two
    assert sum(r["metrics"] for r in killed) > 0  # killed mid-shard, after logging
    assert len(finished) == len(summary) + 1 and len(runs) == len(killed) + len(finished)
    assert sum(r["metrics"] for r in finished) == len(history) + _summary_values(summary)
    if (repo / f"results/ray/{CONDITION}/history.csv").exists():
        assert_same_frames(history, pd.read_csv(repo / f"results/ray/{CONDITION}/history.csv"))

    # Dying on every attempt: the stage fails, writes nothing, and leaves no run RUNNING.
    before = {r["run_uuid"] for r in ray_run.runs("train")}
    failed = f"results/failed/{CONDITION}"
    result = ray_run.study("train", failed, executor="ray", lrs=lrs, fault="kill_shard_0_always", check=False)
    assert result.returncode != 0 and "no retries left" in result.stderr
    assert not (repo / failed).exists() or not any((repo / failed).iterdir())
    runs = [r for r in ray_run.runs("train") if r["run_uuid"] not in before]
    assert runs and all(r["status"] in ("FAILED", "KILLED") for r in runs)
