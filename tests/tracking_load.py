"""The tracking server's load generator (tests/test_tracking_server.py): ``processes`` writer processes at once, each
this file run as a script, against any MLflow tracking URI; the values stored are counted in the database itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def load_test(uri: str, store_uri: str, *, processes: int = 8, runs: int = 2, batches: int = 5, batch: int = 1000,
              timeout_s: float = 300) -> dict:
    """``processes`` writer processes at once, each opening ``runs`` runs and sending each ``batches`` log_batch
    calls of ``batch`` metric values (no retries: an error is counted, its values lost). The clock starts when every
    writer has imported mlflow and connected. ``store_uri`` (SQLAlchemy) is read back to count what was stored."""
    experiment = client(uri).create_experiment(f"load-{time.time_ns()}")
    workers = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), uri, experiment, str(runs),
                                 str(batches), str(batch)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
                                     "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"})
               for _ in range(processes)]
    try:
        for proc in workers:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a load writer failed to start")
        start = time.perf_counter()
        for proc in workers:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = [json.loads(proc.communicate(timeout=timeout_s)[0].splitlines()[-1]) for proc in workers]
        seconds = time.perf_counter() - start
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stored = count_metric_values(store_uri, experiment)
    sent = processes * runs * batches * batch
    kinds = sorted({kind for report in reports for kind in report["kinds"]})
    return {"processes": processes, "runs": processes * runs, "values": sent, "stored": stored,
            "errors": sum(r["errors"] for r in reports), "error_kinds": kinds,
            "seconds": round(seconds, 2), "values_per_s": round(stored / seconds)}


def count_metric_values(store_uri: str, experiment_id: str) -> int:
    """Metric values stored for an experiment's runs, read from the database itself (not through MLflow)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(store_uri)
    try:
        with engine.connect() as conn:
            query = sqlalchemy.text("SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                                    "WHERE r.experiment_id = :e")
            return int(conn.execute(query, {"e": int(experiment_id)}).scalar())
    finally:
        engine.dispose()


def client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _write(uri: str, experiment: str, runs: int, batches: int, batch: int) -> None:
    """One writer: says "ready" once connected, starts on a line from stdin, prints its report as one JSON line."""
    from mlflow.entities import Metric

    writer = client(uri)
    print("ready", flush=True)
    sys.stdin.readline()
    errors, kinds, started = 0, set(), time.perf_counter()
    keys = 50  # each batch: 50 keys x (batch / 50) steps
    for _ in range(runs):
        try:
            run_id = writer.create_run(experiment).info.run_id
        except Exception as exc:
            errors, kinds = errors + batches, kinds | {type(exc).__name__}
            continue
        for b in range(batches):
            now = int(time.time() * 1000)
            metrics = [Metric(f"m{i % keys}", float(i), now, b * batch + i // keys) for i in range(batch)]
            try:
                writer.log_batch(run_id, metrics=metrics, synchronous=True)
            except Exception as exc:
                errors, kinds = errors + 1, kinds | {f"{type(exc).__name__}: {str(exc)[:80]}"}
        try:
            writer.set_terminated(run_id)
        except Exception as exc:
            kinds.add(type(exc).__name__)
    print(json.dumps({"errors": errors, "kinds": sorted(kinds), "seconds": time.perf_counter() - started}))


if __name__ == "__main__":  # a writer process of load_test
    uri, experiment, runs, batches, batch = sys.argv[1:]
    _write(uri, experiment, int(runs), int(batches), int(batch))
