"""`study dashboard` as a process: it prints the runs view's URL once the server answers, and SIGTERM ends every
process it started (the mlflow server runs in a session of its own, so a signal to the group would not reach it)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import SMOKE
from study.ops import server

REPO = Path(__file__).resolve().parents[1]


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def start(tmp_path: Path, params: Path, results: Path) -> tuple[subprocess.Popen, Path, int]:
    """`study dashboard` on a new store in ``tmp_path``; its output goes to the returned log."""
    port = server.free_port()
    log = tmp_path / "dashboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "study", "dashboard", "--port", str(port), "--params", str(params),
             "--results", str(results)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'store.db'}"})
    return proc, log, port


def wait_for(text: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> str:
    deadline = time.monotonic() + timeout_s
    while text not in (said := log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, said
        time.sleep(0.1)
    return said


def stop_and_check(proc: subprocess.Popen, within_s: float) -> None:
    """SIGTERM ends the dashboard within ``within_s`` and leaves none of the processes it started."""
    started = descendants(proc.pid)
    assert started, "the server runs as a child process"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert time.monotonic() - sent < within_s, f"SIGTERM took {time.monotonic() - sent:.1f} s"
    deadline = time.monotonic() + 5  # an exited child is gone once its new parent (init) has reaped it
    while [pid for pid in started if Path(f"/proc/{pid}").exists()] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in started if Path(f"/proc/{pid}").exists()], "processes left after SIGTERM"


def test_the_dashboard_prints_the_runs_view_when_it_answers_and_sigterm_ends_every_process(tmp_path):
    proc, log, port = start(tmp_path, SMOKE, tmp_path / "no-results")
    try:
        said = wait_for("MLflow dashboard:", proc, log)
        assert f"http://127.0.0.1:{port}/#/experiments/" in said and "/runs " in said, said
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
            assert reply.status == 200  # printed only once it answers
        stop_and_check(proc, within_s=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_during_the_import_ends_everything_within_seconds_and_no_run_is_left_running(tmp_path):
    """The committed results (about 880,000 metric values): SIGTERM once the runs exist, while their histories load."""
    proc, log, _ = start(tmp_path, REPO / "experiments" / "study.yaml", REPO / "results" / "conditions")
    try:
        wait_for("now their metric histories", proc, log)
        stop_and_check(proc, within_s=8)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = log.read_text()
    assert " metric values in " not in said, said  # it stopped mid-import
    with sqlite3.connect(tmp_path / "store.db") as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    assert statuses.get("KILLED") and not statuses.get("RUNNING"), statuses  # the runs not loaded end KILLED
