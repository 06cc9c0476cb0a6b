"""``study dashboard``: ``mlflow ui`` on the study's store, started before the committed ``results/`` are imported so
that the runs appear while the page is open. The URL is printed once the server answers, and points at the
experiment's runs table (MLflow 3 otherwise opens on its GenAI overview). Ctrl-C or SIGTERM stops the server's whole
process group, at any moment (the import is rolled back to whole stages, the runs it did not load end KILLED);
MLflow's job workers (GenAI jobs, unused here) are not started at all. The import runs at a lower priority than the
server, so that on a busy machine the page answers first.

Serves ``cli``; the import is ``rebuild``'s, the process handling ``server``'s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from study import run_identity
from study.config import ConfigError, StudyConfig
from study.mlflow_store import connect, ensure_experiment
from study.ops import rebuild, server

LOOPBACK = ("127.0.0.1", "localhost", "::1")
START_TIMEOUT_S = 120.0
IMPORT_NICENESS = 10


def runs_url(host: str, port: int, experiment_id: str) -> str:
    """The experiment's runs table, where the parent runs list their children."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs"


def server_command(uri: str, host: str, port: int) -> list[str]:
    """``mlflow ui`` on the store ``uri``, bound to ``host`` only."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
            "--workers", "1"]


def serve(cfg: StudyConfig, results: Path, *, host: str, port: int, say: Callable[[str], None]) -> int:
    """Serve the store, import what it lacks of ``results`` meanwhile, and wait until the server exits or a signal
    arrives; returns the exit status."""
    uri = run_identity.default_uri()
    # The schema and the experiment first: the server must not race the importer to create them.
    experiment_id = ensure_experiment(connect(uri), uri, cfg.experiment)
    if host not in LOOPBACK:
        say(f"warning: binding to {host} exposes every run to the network")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    started: list[int] = []  # the server's pid, once it runs
    # Before the server starts, so that it is never left behind. The handler stops the server first, then the import
    # cleans up (rolls back the stage being loaded, ends the runs not loaded KILLED) as its exception unwinds.
    previous = {sig: signal.signal(sig, _stop_server_first(started)) for sig in (signal.SIGTERM, signal.SIGINT)}
    proc = None
    try:
        proc = subprocess.Popen(server_command(uri, host, port), env=env, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # a group of its own: stopped as one
        started.append(proc.pid)
        os.nice(IMPORT_NICENESS)  # this process only, the server started: on two busy cores the page answers first
        url = runs_url(host, port, experiment_id)
        ready = threading.Thread(target=_announce, args=(url, proc, uri, say), daemon=True)
        ready.start()
        try:
            rebuild.rebuild(cfg, results, uri, say=say)
        except ConfigError as err:  # the dashboard still serves what the store holds
            say(f"warning: results not imported: {err}")
        return proc.wait()
    finally:
        if proc is not None:
            server.stop_group(proc.pid)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _announce(url: str, proc: subprocess.Popen, uri: str, say: Callable[[str], None]) -> None:
    try:
        server.wait_healthy(url.split("/#")[0], proc, START_TIMEOUT_S, Path(os.devnull))
    except (RuntimeError, TimeoutError) as err:
        say(f"error: the MLflow server did not start: {err}")
        return
    say(f"MLflow dashboard: {url} (store: {run_identity.redact(uri)}; Ctrl-C stops it)")


def _stop_server_first(started: list[int]) -> Callable[[int, object], None]:
    """A handler for SIGTERM and SIGINT: stop the server's group, then leave as the signal asks."""

    def handler(signum: int, frame: object) -> None:
        for pid in started:
            server.stop_group(pid)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    return handler
