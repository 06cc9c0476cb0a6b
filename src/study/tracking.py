"""Live run logging for browsing: the ``Tracker`` protocol, ``MlflowTracker`` (a parent run per stage, a child run
per model, metrics sent in batches from a thread of its own) and ``NullTracker``; where the store is, runs a killed
stage left open, and the parent runs of finished stages. Opening the store and its bulk insert: ``mlflow_store``.

Imports mlflow lazily (``NullTracker`` users never pay for it); from the study only ``records`` and ``mlflow_store``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from study.mlflow_store import connect, ensure_experiment, insert_metrics, retry, sql_store
from study.records import Record, run_name
from study.run_identity import alive, default_uri, dvc_experiment, git_commit, owner_id, redact, safe_params

if TYPE_CHECKING:
    from mlflow import MlflowClient

_log = logging.getLogger(__name__)

# MLflow's batch limits (mlflow.utils.validation): 1000 metrics, 100 params and 100 tags per log_batch call.
_MAX_METRICS = 1000
_MAX_PARAMS_TAGS = 100
_MAX_ERROR_CHARS = 5000
_OWNER_TAG = "study.owner"


# The speed question in the dashboard, whose step axis is linear: validation accuracy logged a second time with
# 100 * log10(step + 1) as its step (100 = step 9, 200 = step 99, 300 = step 999), so that a chart of it against step
# spreads out the early steps where the losses separate. MLflow only: results/ tables never hold it.
SPEED_SOURCE = "val/accuracy"
SPEED_METRIC = "speed/val_accuracy"
EVENT_METRICS = ("train/diverged_step", "train/collapsed_step")


def speed_step(step: int) -> int:
    """The step ``SPEED_METRIC`` is logged at for a training step."""
    return round(100 * math.log10(step + 1))


def event_tags(key: str, value: float) -> dict[str, str]:
    """The tags a metric value sets on its run: ``diverged``/``diverged_step`` when the loss went non-finite,
    ``collapsed``/``collapsed_step`` when the model collapsed; none for other metrics."""
    if key not in EVENT_METRICS or not math.isfinite(value):
        return {}
    kind = key.split("/")[1].removesuffix("_step")  # diverged | collapsed
    return {kind: "true", f"{kind}_step": str(int(value))}


class Tracker(Protocol):
    def log(self, records: Iterable[Record]) -> None:
        """Queue measurements; returns at once (a single Record is accepted too)."""

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        """Attach files or directories to the parent run."""

    def set_summary(self, run: str, metrics: dict[str, float]) -> None:
        """Final metrics of one child run, logged at the last step seen for it."""

    def handle(self) -> RunHandle | None:
        """Where other processes (Ray workers) log this tracker's child runs; None when nothing is tracked."""

    def observe(self, records: Iterable[Record]) -> None:
        """Records another process already logged: only their steps are noted (``set_summary`` logs at the last)."""

    def restart_runs(self, runs: Iterable[str], reason: str) -> RunHandle | None:
        """End these child runs KILLED (tag ``killed_reason``) and open fresh ones for a retry."""


class NullTracker:
    """Records nothing: tests, smoke runs, tracking off."""

    def log(self, records: Iterable[Record]) -> None:
        pass

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        pass

    def set_summary(self, run: str, metrics: dict[str, float]) -> None:
        pass

    def handle(self) -> RunHandle | None:
        return None

    def observe(self, records: Iterable[Record]) -> None:
        pass

    def restart_runs(self, runs: Iterable[str], reason: str) -> RunHandle | None:
        return None


@dataclass(frozen=True)
class RunHandle:
    """Enough for another process to log to open runs: the store, the parent run and child run ids by name."""

    uri: str
    parent_id: str
    run_ids: dict[str, str]

    def subset(self, runs: Iterable[str]) -> RunHandle:
        return RunHandle(self.uri, self.parent_id, {run: self.run_ids[run] for run in runs})


@dataclass(frozen=True)
class RunSpec:
    """One child run: a (loss, lr, seed) of the grid. ``conventions`` are the loss's reduction choices."""

    loss: str
    lr: float
    seed: int
    tuned: bool  # lr picked per loss by the tuning stage (False: a shared or grid lr)
    conventions: dict[str, str] = field(default_factory=dict)

    @property
    def run(self) -> str:
        return run_name(self.loss, self.lr, self.seed)


@dataclass(frozen=True)
class StageRuns:
    """What a stage logs: in ``experiment``, a parent run ``<condition>/<stage>`` with the condition's ``params``
    and one nested child run per spec; ``tags`` go on every run, beside the ones ``shared_tags`` sets."""

    experiment: str
    condition: str
    stage: str
    dataset: str
    params: dict[str, str]
    runs: Sequence[RunSpec]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def parent(self) -> str:
        return f"{self.condition}/{self.stage}"

    @property
    def owner(self) -> str:
        return owner_id(self.experiment, self.condition, self.stage)

    def shared_tags(self) -> dict[str, str]:
        """The tags of the parent and of every child run."""
        commit = git_commit()
        return {
            "condition": self.condition,
            "dataset": self.dataset,
            "stage": self.stage,
            "dvc_stage": f"{self.stage}@{self.condition}",
            "git_commit": commit,
            "mlflow.source.git.commit": commit,
            _OWNER_TAG: self.owner,
            "study.host": socket.gethostname(),
            "study.pid": str(os.getpid()),
            **dvc_experiment(),
            **self.tags,
        }

    def safe_params(self) -> dict[str, str]:
        """The parent's params: the condition's, fit to record."""
        return safe_params(self.params)


@contextmanager
def open_tracker(*, enabled: bool, uri: str | None = None, dated_ms: int | None = None,
                 **stage: Any) -> Iterator[Tracker]:
    """The runs of ``StageRuns(**stage)`` (its fields, as keywords), open for the block. ``dated_ms`` (an import)
    dates every run then instead of now: the parent starts and every run ends at it, the children 1 ms apart before
    it, so that a runs table sorted by start time lists the parents first and each one's children under it.

    On exit the runs end FINISHED; FAILED with tag ``error`` when the block raises; KILLED on
    KeyboardInterrupt or SystemExit (SIGTERM is turned into SystemExit while the block runs). The
    exception is re-raised. ``uri=None`` means ``default_uri()``.
    """
    if not enabled:
        yield NullTracker()
        return
    layout = StageRuns(**stage)
    names = [spec.run for spec in layout.runs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate runs in {names}")
    tracker = MlflowTracker.start(uri or default_uri(), layout, dated_ms=dated_ms)
    with _sigterm_as_exit():
        try:
            yield tracker
        except (KeyboardInterrupt, SystemExit) as exc:
            finished = isinstance(exc, SystemExit) and exc.code in (0, None)
            tracker.close("FINISHED" if finished else "KILLED", ended_ms=dated_ms)
            raise
        except BaseException as exc:
            tracker.close("FAILED", error=f"{type(exc).__name__}: {exc}", ended_ms=dated_ms)
            raise
        tracker.close("FINISHED", ended_ms=dated_ms)


def finished_parents(uri: str, experiment: str, names: Iterable[str]) -> dict[str, list[dict[str, str]]]:
    """The tags of each FINISHED run named ``<condition>/<stage>`` in ``names`` (a parent run), newest first."""
    client = connect(uri)
    found = retry(client.get_experiment_by_name, experiment)
    held: dict[str, list[dict[str, str]]] = {name: [] for name in names}
    if found is None or found.lifecycle_stage == "deleted":
        return held
    for name in held:
        query = f"attributes.run_name = '{name}' and attributes.status = 'FINISHED'"
        runs = retry(client.search_runs, [found.experiment_id], query, max_results=1000,
                      order_by=["attributes.start_time DESC"])
        held[name] = [run.data.tags for run in runs if "mlflow.parentRunId" not in run.data.tags]
    return held


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so the runs end KILLED, unless someone else already handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def exit_on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class MlflowTracker:
    """Sends records to MLflow from a background thread in batches; ``log`` only enqueues."""

    def __init__(self, client: MlflowClient, parent_id: str, run_ids: dict[str, str], *, interval_s: float = 5.0,
                 uri: str = "", children: Children | None = None):
        self._client = client
        self._uri = uri
        self._children = children  # how to open a child run again (a retried shard); None in a worker
        self._parent_id = parent_id
        self._run_ids = dict(run_ids)  # run name -> child run id
        self._interval_s = interval_s  # how long the sender gathers records into one batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._last_step: dict[str, int] = {}
        self._unknown: set[str] = set()
        self._error: str | None = None  # the last sending problem, tagged on the parent at close
        self._broken = False  # the store failed even after retries: later batches are dropped, not retried
        self._dropped = 0
        self._closed = False
        self._store = sql_store(client)  # a database MLflow reaches directly: metrics go in one bulk insert
        self._thread = threading.Thread(target=self._send_loop, name="mlflow-sender", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, uri: str, layout: StageRuns, dated_ms: int | None = None) -> MlflowTracker:
        """Create the parent and child runs (after ending stale ones) and start the sender."""
        client = connect(uri)
        experiment_id = ensure_experiment(client, uri, layout.experiment)
        end_stale_runs(client, experiment_id, layout.owner)
        shared = layout.shared_tags()
        parent = retry(client.create_run, experiment_id, run_name=layout.parent, tags=shared, start_time=dated_ms)
        parent_id = parent.info.run_id
        children = Children(experiment_id, parent_id, layout, shared)
        run_ids: dict[str, str] = {}
        try:
            _log_params(client, parent_id, layout.safe_params())
            for index, spec in enumerate(layout.runs):
                started = None if dated_ms is None else dated_ms - 1 - index
                run_ids[spec.run] = children.open(client, spec.run, start_time=started)
        except BaseException as exc:
            for run_id in [*run_ids.values(), parent_id]:
                _terminate(client, run_id, "FAILED", f"{type(exc).__name__}: {exc}")
            raise
        return cls(client, parent_id, run_ids, uri=uri, children=children)

    @classmethod
    def attach(cls, handle: RunHandle) -> MlflowTracker:
        """A tracker for child runs another process opened (a Ray worker logging its shard); tags them with this
        host and pid. ``detach`` sends what is queued and leaves the runs open; ``end_runs`` ends them."""
        client = connect(handle.uri)
        worker = [_tag("study.worker_host", socket.gethostname()), _tag("study.worker_pid", str(os.getpid()))]
        for run_id in handle.run_ids.values():
            retry(client.log_batch, run_id, tags=worker, synchronous=True)
        return cls(client, handle.parent_id, handle.run_ids, uri=handle.uri)

    def handle(self) -> RunHandle:
        return RunHandle(self._uri, self._parent_id, dict(self._run_ids))

    def observe(self, records: Iterable[Record]) -> None:
        for record in records:
            self._last_step[record.run] = max(record.step, self._last_step.get(record.run, 0))

    def restart_runs(self, runs: Iterable[str], reason: str) -> RunHandle:
        if self._children is None:
            raise RuntimeError("only the tracker that opened the runs can open them again")
        runs = list(runs)
        self.flush(60)
        for run in runs:
            retry(self._client.set_tag, self._run_ids[run], "killed_reason", reason[:_MAX_ERROR_CHARS])
            _terminate(self._client, self._run_ids[run], "KILLED", None)
            self._run_ids[run] = self._children.open(self._client, run, retry_of=self._run_ids[run])
        return self.handle().subset(runs)

    def end_runs(self, status: str, error: str | None = None) -> None:
        """End this tracker's child runs (not the parent): a worker whose shard raised."""
        self.detach()
        for run_id in self._run_ids.values():
            _terminate(self._client, run_id, status, error)

    def detach(self, timeout_s: float = 600) -> None:
        """Send what is queued and stop the sender; the runs stay open for their owner to end."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(("stop",))
        self._thread.join(timeout=timeout_s)
        if self._dropped or self._error:
            _log.warning("MLflow: %d metrics were not sent: %s", self._dropped, self._error)

    def log(self, records: Iterable[Record]) -> None:
        if self._closed:
            raise RuntimeError("tracker is closed")
        batch = [records] if isinstance(records, Record) else list(records)
        if batch:
            self._queue.put(("records", _now_ms(), batch))

    def set_summary(self, run: str, metrics: dict[str, float]) -> None:
        if self._closed:
            raise RuntimeError("tracker is closed")
        self._queue.put(("summary", _now_ms(), run, dict(metrics)))

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        for path in map(Path, paths):
            if not path.exists():
                raise FileNotFoundError(f"artifact {path} does not exist")
            try:
                if path.is_dir():
                    retry(self._client.log_artifacts, self._parent_id, str(path), artifact_path=path.name)
                else:
                    retry(self._client.log_artifact, self._parent_id, str(path))
            except Exception as exc:  # tracking is for browsing: losing it must not stop the study
                _log.warning("MLflow: could not attach %s: %s", path, redact(str(exc)))

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything logged so far is sent; False on timeout."""
        if self._closed or not self._thread.is_alive():
            return not self._thread.is_alive()
        done = threading.Event()
        self._queue.put(("flush", done))
        return done.wait(timeout_s)

    def close(self, status: str, error: str | None = None, ended_ms: int | None = None) -> None:
        """Send what is queued, then end every run with ``status`` (FINISHED, FAILED or KILLED), at ``ended_ms``
        (default: now)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(("stop",))
        try:
            # An interrupted run should end quickly; a finished one should keep all it measured.
            self._thread.join(timeout=600 if status == "FINISHED" else 30)
        except KeyboardInterrupt:  # a second Ctrl-C: give up on the queue, still end the runs
            pass
        if self._thread.is_alive():
            _log.warning("MLflow: gave up sending queued metrics; the results/ tables hold them all")
        if self._dropped:
            _log.warning("MLflow: %d metrics were not sent: %s", self._dropped, self._error)
        if self._error:
            with contextlib.suppress(Exception):
                retry(self._client.set_tag, self._parent_id, "tracking_error", self._error[:_MAX_ERROR_CHARS])
        for run_id in [*self._run_ids.values(), self._parent_id]:
            _terminate(self._client, run_id, status, error, ended_ms)

    def _send_loop(self) -> None:
        stopping = False
        while not stopping:
            items = [self._queue.get()]
            deadline = time.monotonic() + self._interval_s
            while items[-1][0] != "stop":
                try:
                    items.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            stopping = items[-1][0] == "stop"
            pending = [item for item in items if item[0] in ("records", "summary")]
            if pending:
                try:
                    self._send(pending)
                except Exception as exc:  # keep the sender alive whatever one batch holds
                    self._error = redact(f"{type(exc).__name__}: {exc}")
                    _log.warning("MLflow: could not send a batch: %s", self._error)
            for item in items:
                if item[0] == "flush":
                    item[1].set()

    def _send(self, items: list[tuple]) -> None:
        from mlflow.entities import Metric

        metrics: dict[str, list[Metric]] = {}
        tags: dict[str, dict[str, str]] = {}
        for item in items:
            if item[0] == "records":
                _, timestamp, records = item
                for record in records:
                    run_id = self._run_id(record.run)
                    if run_id is None:
                        continue
                    key, value = f"{record.split}/{record.metric}", self._number(record.value, record.run)
                    if value is None:
                        continue
                    metrics.setdefault(run_id, []).append(Metric(key, value, timestamp, record.step))
                    if key == SPEED_SOURCE:
                        metrics[run_id].append(Metric(SPEED_METRIC, value, timestamp, speed_step(record.step)))
                    self._last_step[record.run] = max(record.step, self._last_step.get(record.run, 0))
                    if event := event_tags(key, value):
                        tags.setdefault(run_id, {}).update(event)
            else:
                _, timestamp, run, values = item
                run_id = self._run_id(run)
                if run_id is not None:
                    step = self._last_step.get(run, 0)
                    numbers = {key: self._number(value, run) for key, value in values.items()}
                    metrics.setdefault(run_id, []).extend(
                        Metric(key, value, timestamp, step) for key, value in numbers.items() if value is not None
                    )
        for run_id in metrics.keys() | tags.keys():
            self._send_run(run_id, metrics.get(run_id, []), tags.get(run_id, {}))

    def _send_run(self, run_id: str, metrics: list, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        if self._broken:  # do not stall every later batch on retries
            self._dropped += len(metrics)
            return
        run_tags = [RunTag(k, v) for k, v in tags.items()]
        if metrics and self._store is not None:
            try:
                retry(insert_metrics, self._store, run_id, metrics)
                metrics = []  # stored in one transaction; the tags (if any) still go through log_batch
            except Exception as exc:  # e.g. a metric already stored: log_batch below settles duplicates itself
                _log.debug("MLflow: bulk insert refused (%s); sending through log_batch", exc)
            if not metrics and not run_tags:
                return
        for start in range(0, max(len(metrics), 1), _MAX_METRICS):
            chunk = metrics[start : start + _MAX_METRICS]
            first = run_tags if start == 0 else []
            try:
                retry(self._client.log_batch, run_id, metrics=chunk, tags=first, synchronous=True)
            except Exception as exc:
                self._error = redact(f"{type(exc).__name__}: {exc}")
                if getattr(exc, "error_code", None) == "INVALID_PARAMETER_VALUE":  # e.g. a bad key: this batch only
                    self._dropped += len(chunk)
                    _log.warning("MLflow: a batch was refused: %s", self._error)
                    continue
                self._broken = True
                self._dropped += len(metrics) - start
                _log.warning("MLflow: logging failed, further metrics are dropped: %s", self._error)
                return

    def _number(self, value: object, run: str) -> float | None:
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            _log.warning("MLflow: %r of run %s is not a number; not sent", value, run)
            return None

    def _run_id(self, run: str) -> str | None:
        run_id = self._run_ids.get(run)
        if run_id is None and run not in self._unknown:
            self._unknown.add(run)
            _log.warning("MLflow: no child run named %s was opened; its records are not sent", run)
        return run_id


def _now_ms() -> int:
    return int(time.time() * 1000)


def end_stale_runs(client: MlflowClient, experiment_id: str, owner: str) -> None:
    """Mark KILLED the RUNNING runs of this owner whose process is gone (e.g. SIGKILLed)."""
    from mlflow.entities import ViewType

    query = f"tags.`{_OWNER_TAG}` = '{owner}' and attributes.status = 'RUNNING'"
    stale = []
    token = None
    while True:
        page = retry(client.search_runs, [experiment_id], query, ViewType.ALL, 1000, page_token=token)
        stale.extend(page)
        token = page.token
        if not token:
            break
    for run in stale:
        tags = run.data.tags
        pid = tags.get("study.pid", "")
        # This process's own earlier runs are over: it is opening them anew.
        if (tags.get("study.host") == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid()
                and alive(int(pid))):
            _log.warning("MLflow: run %s of %s is still being written by pid %s", run.info.run_name, owner, pid)
            continue
        retry(client.set_tag, run.info.run_id, "killed_reason", "stale")
        retry(client.set_terminated, run.info.run_id, "KILLED")


def _log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), _MAX_PARAMS_TAGS):
        chunk = items[start : start + _MAX_PARAMS_TAGS]
        retry(client.log_batch, run_id, params=chunk, synchronous=True)


def _terminate(client: MlflowClient, run_id: str, status: str, error: str | None,
               ended_ms: int | None = None) -> None:
    """End one run; failures are reported, not raised, so every run gets its try."""
    try:
        if error is not None:
            retry(client.set_tag, run_id, "error", redact(error)[:_MAX_ERROR_CHARS])
        retry(client.set_terminated, run_id, status, end_time=ended_ms)
    except Exception as exc:
        _log.warning("MLflow: could not end run %s as %s: %s", run_id, status, redact(str(exc)))


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, value)


@dataclass(frozen=True)
class Children:
    """The child runs of one parent: their tags and params, and opening one (again, for a retried shard)."""

    experiment_id: str
    parent_id: str
    layout: StageRuns
    shared: dict[str, str]  # the layout's shared_tags(), taken once

    @property
    def specs(self) -> dict[str, RunSpec]:
        return {spec.run: spec for spec in self.layout.runs}

    def tags(self, run: str, retry_of: str | None = None) -> dict[str, str]:
        spec = self.specs[run]
        return {
            **self.shared,
            "mlflow.parentRunId": self.parent_id,
            "loss": spec.loss,
            "seed": str(spec.seed),
            "lr": f"{spec.lr:g}",
            "lr_tuned": str(spec.tuned).lower(),
            **({"retry_of": retry_of} if retry_of else {}),
        }

    def params(self, run: str) -> dict[str, str]:
        """The condition's params, the run's own (loss, lr, seed) and its loss's conventions (``loss.*``)."""
        spec = self.specs[run]
        own = {"loss": spec.loss, "lr": f"{spec.lr:g}", "seed": str(spec.seed)}
        conventions = safe_params({f"loss.{k}": str(v) for k, v in spec.conventions.items()})
        return {**self.layout.safe_params(), **own, **conventions}

    def open(self, client: MlflowClient, run: str, *, retry_of: str | None = None,
             start_time: int | None = None) -> str:
        child = retry(client.create_run, self.experiment_id, run_name=run, tags=self.tags(run, retry_of),
                      start_time=start_time)
        _log_params(client, child.info.run_id, self.params(run))
        return child.info.run_id
