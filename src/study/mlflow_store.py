"""The MLflow store the trackers write to: opening it (schema and experiment creation serialised across processes,
SQLite's "database is locked" retried) and writing a run's metrics into its SQL tables in bulk, the one place that
reaches past MLflow's public API (``_Internals`` says why). Imports mlflow lazily and nothing from the study.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mlflow import MlflowClient

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# On top of the 20 s SQLite busy timeout MLflow sets: 0.2, 0.4, ... 3.2 s between six attempts.
_RETRY_ATTEMPTS = 6
_RETRY_FIRST_WAIT_S = 0.2


def retry(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Call, retrying SQLite's "database is locked" (another process is writing) with exponential backoff."""
    for attempt in range(_RETRY_ATTEMPTS):
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if "database is locked" not in str(exc) or attempt == _RETRY_ATTEMPTS - 1:
                raise
            time.sleep(_RETRY_FIRST_WAIT_S * 2**attempt)
    raise AssertionError("unreachable")


def _quiet_mlflow() -> None:
    """Before the first mlflow import: no telemetry, no async logging, warnings only, nothing on stdout."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # Against a tracking server, every ended run would print two "View run" lines on stdout.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # Async logging would queue a second time and lose metrics on a crash; we batch on our own thread.
    os.environ["MLFLOW_ENABLE_ASYNC_LOGGING"] = "false"
    # MLflow logs each "database is locked" with a traceback; retry handles it and warns if retries run out.
    store_log = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _DropLockedErrors) for f in store_log.filters):
        store_log.addFilter(_DropLockedErrors())


class _DropLockedErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "database is locked" not in record.getMessage()


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None  # a server or another database: it creates its schema and serialises writes itself
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise schema creation and experiment creation across processes sharing one SQLite file."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def connect(uri: str) -> MlflowClient:
    _quiet_mlflow()
    from mlflow import MlflowClient

    with store_lock(uri), warnings.catch_warnings():  # building the client creates or migrates a new store's schema
        warnings.simplefilter("ignore", DeprecationWarning)  # SQLAlchemy's, about MLflow's own mappers
        return retry(MlflowClient, tracking_uri=uri)


def ensure_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """Get or create the study's experiment; a concurrent creator winning the race is fine."""
    from mlflow.exceptions import MlflowException

    with store_lock(uri):
        found = retry(client.get_experiment_by_name, name)
        if found is None:
            path = sqlite_path(uri)
            # Artifacts next to the database (as `mlflow server` does), not in ./mlruns of whatever directory runs.
            location = str((path.parent / "mlartifacts").resolve()) if path else None
            try:
                return retry(client.create_experiment, name, artifact_location=location)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = retry(client.get_experiment_by_name, name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            _log.warning("MLflow: experiment %s was deleted; restoring it", name)
            retry(client.restore_experiment, found.experiment_id)
        return found.experiment_id


class _Internals:
    """MLflow's private API, used nowhere else in the study, and why: MLflow has no public call that writes many
    metrics of a run in one statement. ``log_batch`` builds one ORM object per metric, the slow part of importing a
    study's hundreds of thousands of values, so ``insert_metrics`` writes the SQL store's metric tables itself and
    needs three things ``log_batch`` uses there that no public API hands out: the client's store, the store's check
    that a run is active, and MLflow's metric validation. tests/test_tracking.py holds the rows written this way
    equal to log_batch's, so an MLflow upgrade that moves these breaks a test, not the store."""

    @staticmethod
    def store(client: MlflowClient) -> Any:
        return client._tracking_client.store

    @staticmethod
    def check_active(store: Any, run_id: str, session: Any) -> None:
        store._check_run_is_active(store._get_run(run_uuid=run_id, session=session))

    @staticmethod
    def validate_metric(key: str, value: float, timestamp: int, step: int) -> None:
        from mlflow.utils.validation import _validate_metric

        _validate_metric(key, value, timestamp, step)


def sql_store(client: MlflowClient) -> Any:
    """The client's store when it is MLflow's SQL store (SQLite, PostgreSQL reached directly), else None (a tracking
    server: its REST API takes log_batch only)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = _Internals.store(client)
    return store if isinstance(store, SqlAlchemyStore) else None


def insert_metrics(store: Any, run_id: str, metrics: Sequence[Any]) -> None:
    """What ``log_batch`` stores for ``metrics`` of one active run (the metric rows, each key's latest value), in one
    transaction of two bulk statements, a thousand metrics per call, instead of one MLflow ORM object per row (the
    slow part of importing a study's hundreds of thousands of values). Same rules: NaN stored as 0 with ``is_nan``,
    infinities clipped to the largest float, exact duplicates in the batch dropped, "latest" the largest (step,
    timestamp, value).
    Raises (and stores nothing) when a row exists already; ``log_batch`` then settles it."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
    from sqlalchemy import insert

    rows: dict[tuple, dict[str, Any]] = {}
    for metric in metrics:
        is_nan, value = store.sanitize_metric_value(metric.value)
        row = {"run_uuid": run_id, "key": metric.key, "value": value, "timestamp": metric.timestamp,
               "step": metric.step, "is_nan": is_nan}
        rows.setdefault((metric.key, metric.timestamp, metric.step, value, is_nan), row)
    latest: dict[str, dict[str, Any]] = {}
    for row in rows.values():
        held = latest.get(row["key"])
        if held is None or _recency(row) > _recency(held):
            latest[row["key"]] = row
    for row in latest.values():  # one check per key, as log_batch checks each metric
        _Internals.validate_metric(row["key"], row["value"], row["timestamp"], row["step"])
    with store.ManagedSessionMaker() as session:
        _Internals.check_active(store, run_id, session)
        session.execute(insert(SqlMetric), list(rows.values()))
        stored = session.query(SqlLatestMetric).filter(SqlLatestMetric.run_uuid == run_id,
                                                       SqlLatestMetric.key.in_(list(latest))).all()
        stored = {row.key: row for row in stored}
        for key, row in latest.items():
            old = stored.get(key)
            if old is None:
                session.add(SqlLatestMetric(**row))
            elif _recency(row) > (old.step, old.timestamp, old.value):
                old.value, old.timestamp, old.step, old.is_nan = row["value"], row["timestamp"], row["step"], \
                    row["is_nan"]


def _recency(row: dict[str, Any]) -> tuple:
    return row["step"], row["timestamp"], row["value"]
