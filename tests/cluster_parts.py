"""The real parts the `cluster` tests start and always stop: a PostgreSQL-backed mlflow server in a temporary
directory on free loopback ports, and a local Ray cluster with 2 worker CPUs."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from study.ops import server


def skip_without_parts(*, ray_needed: bool) -> None:
    reason = server.available()
    if reason:
        pytest.skip(f"no PostgreSQL here: {reason}")
    if ray_needed:
        pytest.importorskip("ray", reason="ray is not installed (make test installs it)")


@contextlib.contextmanager
def tracking_server() -> Iterator[server.TrackingServer]:
    # Not under pytest's tmp_path: its parents are private to root, and PostgreSQL runs as an unprivileged user.
    root = Path(tempfile.mkdtemp(prefix="study-tracking-"))
    root.chmod(0o755)
    groups = []
    try:
        started = server.start(root / "srv")
        groups.append(started.mlflow_pid)
        yield started
    finally:
        server.stop(root / "srv")
        shutil.rmtree(root, ignore_errors=True)
    assert not leftover_processes([root.name], groups), "PostgreSQL or mlflow processes left running"


@contextlib.contextmanager
def ray_cluster(cpus: int = 2) -> Iterator[str]:
    """A local Ray instance held by this process; yields its address (for RAY_ADDRESS)."""
    import ray

    info = ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    session = Path(info.address_info["session_dir"]).name
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
    assert not leftover_processes([session]), "Ray processes left running"


def leftover_processes(markers: list[str], groups: list[int] = ()) -> list[str]:
    """Live (not zombie) processes whose command line mentions one of ``markers`` or that belong to one of the
    process ``groups``: what a test started and should have stopped."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z" and (any(m in cmdline for m in markers) or int(fields[2]) in groups):
            found.append(f"{stat.parent.name}: {cmdline[:150]}")
    return found
