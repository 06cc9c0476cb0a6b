"""`study dashboard` as a process: it prints the runs view's URL once the server answers, and SIGTERM ends every
process it started (the mlflow server runs in a session of its own, so a signal to the group would not reach it)."""

from __future__ import annotations

import os
import signal
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


def test_the_dashboard_prints_the_runs_view_when_it_answers_and_sigterm_ends_every_process(tmp_path):
    port = server.free_port()
    log = tmp_path / "dashboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "study", "dashboard", "--port", str(port), "--params", str(SMOKE),
             "--results", str(tmp_path / "no-results")], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'store.db'}"})
    try:
        deadline = time.monotonic() + 90
        while "MLflow dashboard:" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        said = log.read_text()
        assert f"http://127.0.0.1:{port}/#/experiments/" in said and "/runs " in said, said
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
            assert reply.status == 200  # printed only once it answers
        started = descendants(proc.pid)
        assert started, "the server runs as a child process"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while [pid for pid in started if Path(f"/proc/{pid}").exists()] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in started if Path(f"/proc/{pid}").exists()], "processes left after SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
