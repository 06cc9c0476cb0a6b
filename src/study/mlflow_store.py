"""The MLflow store the trackers write to: opening it (schema and experiment creation serialised across processes,
SQLite's "database is locked" retried) and writing a run's metrics into its SQL tables in bulk, the one place that
reaches past MLflow's public API (``_Internals`` says why). The import of results/ goes further (``insert_runs``,
``finish_runs``): whole runs, tags, params and metrics straight into MLflow's tables (its SQLAlchemy models name
them), because creating 640 runs through the client took half a minute; tests/test_imported_store.py holds what
they write equal to what training logs. Imports mlflow lazily and nothing from the study.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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


# ---- the import's bulk load: whole runs in a few statements -------------------------------------------------------

_BULK_ROWS = 20_000  # rows per statement: a signal waits for one statement at most (a fraction of a second)
_HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back until the block ends, then handled as they would have been. Their handlers'
    exception raised inside a statement makes SQLAlchemy invalidate the connection mid-transaction, and SQLite then
    keeps the store locked from the connection that ends the interrupted runs (for its whole busy timeout); raised
    between statements, the transaction rolls back cleanly. Handlers, not the signal mask: another thread would take
    a masked signal and the interpreter would still run the handler in the main thread, mid-statement."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum)) for sig in _HELD}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])  # the handler it was meant for runs now


@dataclass(frozen=True)
class NewRun:
    """A run as ``create_run`` and ``log_batch`` of its params store it."""

    run_id: str
    name: str
    start_ms: int
    tags: dict[str, str]
    params: dict[str, str]


@contextmanager
def bulk_transaction(store: Any) -> Iterator[Any]:
    """One transaction on a connection of its own, committed at the end, rolled back on any exception (a signal's
    SystemExit included). On SQLite, with ``synchronous=OFF``: the commit does not wait for the disk, so a power cut
    during a load may corrupt the store; that is what the import writes, and a lost store is rebuilt from results/."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    sqlite = store.engine.dialect.name == "sqlite"
    engine = create_engine(store.engine.url, poolclass=NullPool,
                           connect_args={"timeout": 20} if sqlite else {})  # MLflow's busy timeout
    try:
        with engine.connect() as conn:
            if sqlite:  # and a page cache of 256 MiB, for the indexes of the metrics table
                conn.exec_driver_sql("PRAGMA synchronous=OFF")
                conn.exec_driver_sql("PRAGMA cache_size=-262144")
                conn.commit()  # ends the transaction the statement began; the setting stays with the connection
            transaction = conn.begin()
            try:
                yield conn
            except BaseException:
                with _signals_held():
                    transaction.rollback()
                raise
            with _signals_held():
                transaction.commit()
    finally:
        engine.dispose()


def _insert(conn: Any, table: Any, rows: Any) -> None:
    """``rows`` (dicts of one set of keys, or a DataFrame) into ``table`` through the driver's executemany:
    SQLAlchemy's own handling of each row's parameters took longer than the database's insert."""
    if not len(rows):
        return
    if isinstance(rows, list):
        columns = list(rows[0])
        values = [tuple(row[c] for c in columns) for row in rows]
    else:  # plain Python values: the drivers take no numpy scalars
        columns = list(rows.columns)
        values = list(rows.astype(object).itertuples(index=False, name=None))
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"  # sqlite3; psycopg2 and the like
    sql = (f"INSERT INTO {table.name} ({', '.join(conn.dialect.identifier_preparer.quote(c) for c in columns)}) "
           f"VALUES ({', '.join([mark] * len(columns))})")
    for start in range(0, len(values), _BULK_ROWS):
        with _signals_held():
            conn.exec_driver_sql(sql, values[start:start + _BULK_ROWS])


def insert_runs(store: Any, experiment_id: str, runs: Sequence[NewRun]) -> None:
    """What ``create_run`` (status RUNNING, tag ``mlflow.runName``, user "unknown", artifacts under the experiment's
    location) and ``log_batch`` of the params store for every run, in one transaction."""
    from mlflow.entities import LifecycleStage, RunStatus, SourceType
    from mlflow.store.tracking.dbmodels.models import SqlParam, SqlRun, SqlTag
    from mlflow.utils.uri import append_to_uri_path

    location = store.get_experiment(experiment_id).artifact_location
    rows = [{"run_uuid": run.run_id, "name": run.name, "experiment_id": int(experiment_id),
             "artifact_uri": append_to_uri_path(location, run.run_id, store.ARTIFACTS_FOLDER_NAME),
             "source_type": SourceType.to_string(SourceType.UNKNOWN), "source_name": "", "entry_point_name": "",
             "user_id": "unknown", "status": RunStatus.to_string(RunStatus.RUNNING), "start_time": run.start_ms,
             "end_time": None, "deleted_time": None, "source_version": "", "lifecycle_stage": LifecycleStage.ACTIVE}
            for run in runs]
    tags = [{"run_uuid": run.run_id, "key": key, "value": value}
            for run in runs for key, value in {**run.tags, "mlflow.runName": run.name}.items()]
    params = [{"run_uuid": run.run_id, "key": key, "value": value} for run in runs for key, value in run.params.items()]
    with bulk_transaction(store) as conn:
        _insert(conn, SqlRun.__table__, rows)
        _insert(conn, SqlTag.__table__, tags)
        _insert(conn, SqlParam.__table__, params)


def finish_runs(store: Any, run_ids: Sequence[str], status: str, end_ms: int, metrics: Any = None,
                tags: dict[str, dict[str, str]] | None = None) -> None:
    """End runs ``insert_runs`` wrote, with their metrics and tags, in one transaction. ``metrics``: a DataFrame of
    ``run_uuid, key, value, timestamp, step``, stored by ``insert_metrics``'s rules (NaN as 0 with ``is_nan``,
    infinities clipped, exact duplicates dropped, latest the largest (step, timestamp, value))."""
    import numpy as np
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlRun, SqlTag
    from sqlalchemy import update

    with bulk_transaction(store) as conn:
        if metrics is not None and len(metrics):
            rows = metrics[["run_uuid", "key", "value", "timestamp", "step"]].copy()
            values = rows["value"].to_numpy(dtype=float)
            rows["is_nan"] = np.isnan(values)
            rows["value"] = np.where(rows["is_nan"], 0.0, np.clip(values, -_FLOAT_MAX, _FLOAT_MAX))
            rows = rows.drop_duplicates()
            latest = rows.sort_values(["run_uuid", "key", "step", "timestamp", "value"]).drop_duplicates(
                ["run_uuid", "key"], keep="last")
            for row in latest.drop_duplicates("key").itertuples():  # one check per key, as insert_metrics
                _Internals.validate_metric(row.key, row.value, row.timestamp, row.step)
            _insert(conn, SqlMetric.__table__, rows)
            _insert(conn, SqlLatestMetric.__table__, latest)
        _insert(conn, SqlTag.__table__, [{"run_uuid": run_id, "key": key, "value": value}
                                         for run_id, pairs in (tags or {}).items() for key, value in pairs.items()])
        conn.execute(update(SqlRun.__table__).where(SqlRun.__table__.c.run_uuid.in_(list(run_ids)))
                     .values(status=status, end_time=end_ms))


_FLOAT_MAX = 1.7976931348623157e308  # what MLflow stores for an infinity
