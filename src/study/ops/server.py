"""A shared MLflow tracking server on PostgreSQL: start and stop it in a directory (``.tracking/`` for the team,
a temporary one for tests), listening on loopback only. Imports nothing from the study but ``tracking.alive``.

``python -m study.server start|stop|status DIR`` (``make tracking-server``) prints the ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from study.tracking import alive

HOST = "127.0.0.1"  # loopback only: a team reaches it through an SSH tunnel or a proxy with its own auth
DB_USER = "mlflow"
DB_NAME = "mlflow"
STATE = "server.json"
DEFAULT_PORT = 5001  # the dashboard of `make dashboard` keeps 5000
DEFAULT_PG_PORT = 5433  # beside a system PostgreSQL's 5432


@dataclass(frozen=True)
class TrackingServer:
    """A running server: its directory, ports and the mlflow process (a session leader: its workers follow)."""

    root: str
    port: int
    pg_port: int
    mlflow_pid: int
    pg_user: str  # the account PostgreSQL runs as ("" = this process's own)

    @property
    def uri(self) -> str:
        """What clients export as MLFLOW_TRACKING_URI."""
        return f"http://{HOST}:{self.port}"

    @property
    def backend_uri(self) -> str:
        """The store URI for direct database access (tests count rows with it); holds the password."""
        return _backend_uri(Path(self.root), self.pg_port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(root: Path, *, port: int | None = None, pg_port: int | None = None, workers: int = 2,
          timeout_s: float = 180.0) -> TrackingServer:
    """PostgreSQL (created on first use in ``root/pg``) and ``mlflow server`` on it, artifacts in ``root/artifacts``.

    Ports default to free loopback ports. Returns once the server answers /health. Run as root, PostgreSQL (which
    refuses root) runs as ``STUDY_PG_USER`` (default ``nobody``), owning ``root/pg``."""
    root = Path(root).resolve()
    running = read_state(root)
    if running is not None and alive(running.mlflow_pid):
        return running
    root.mkdir(parents=True, exist_ok=True)
    pg_user = os.environ.get("STUDY_PG_USER", "nobody") if os.geteuid() == 0 else ""
    pg_port = pg_port or free_port()
    _start_postgres(root, pg_port, pg_user)
    try:
        _create_database(root, pg_port)
        port = port or free_port()
        (root / "artifacts").mkdir(exist_ok=True)
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": _backend_uri(root, pg_port),  # not on the command line
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        with open(root / "mlflow.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port),
                 "--workers", str(workers), "--artifacts-destination", str(root / "artifacts")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        server = TrackingServer(str(root), port, pg_port, proc.pid, pg_user)
        _write_state(root, server)
        _wait_healthy(server, proc, timeout_s)
    except BaseException:
        stop(root)
        raise
    return server


def stop(root: Path) -> None:
    """Stop the mlflow server (its whole process group) and PostgreSQL; the data stay for the next start."""
    root = Path(root).resolve()
    server = read_state(root)
    if server is not None and alive(server.mlflow_pid) and _is_mlflow(server.mlflow_pid):
        _stop_group(server.mlflow_pid)
    pg = root / "pg"
    if (pg / "postmaster.pid").exists():
        user = server.pg_user if server else (os.environ.get("STUDY_PG_USER", "nobody") if os.geteuid() == 0 else "")
        _as(user, [_pg_bin("pg_ctl"), "stop", "-D", str(pg), "-m", "fast", "-w", "-t", "60"], check=False)
    (root / STATE).unlink(missing_ok=True)


def read_state(root: Path) -> TrackingServer | None:
    path = Path(root) / STATE
    if not path.is_file():
        return None
    return TrackingServer(**json.loads(path.read_text()))


def available() -> str | None:
    """Why a server cannot start here (None: it can)."""
    try:
        _pg_bin("initdb")
    except FileNotFoundError as err:
        return str(err)
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root needs runuser (util-linux) to start PostgreSQL as an unprivileged user"
    return None


# ---- PostgreSQL ---------------------------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    """PostgreSQL's programs: on the PATH, else Debian's /usr/lib/postgresql/<version>/bin (not on the PATH)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    if versions:
        return versions[-1]
    raise FileNotFoundError(f"PostgreSQL's {name} not found: install Debian's postgresql package "
                            "(make tracking-server does, as root)")


def _as(user: str, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    command = ["runuser", "-u", user, "--", *argv] if user else argv
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _password(root: Path) -> str:
    path = root / "db-password"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


def _backend_uri(root: Path, pg_port: int) -> str:
    # The psycopg (3) driver name: SQLAlchemy's bare postgresql:// means psycopg2, which is not installed.
    return f"postgresql+psycopg://{DB_USER}:{_password(root)}@{HOST}:{pg_port}/{DB_NAME}"


def _start_postgres(root: Path, pg_port: int, user: str) -> None:
    pg = root / "pg"
    log = root / "postgres.log"
    if not (pg / "PG_VERSION").exists():
        if pg.exists():
            shutil.rmtree(pg)  # a half-made data directory from an interrupted initdb
        pg.mkdir(mode=0o700)
        log.touch()
        if user:
            shutil.chown(pg, user)
            shutil.chown(log, user)
            _check_reachable(pg, user)
        pwfile = root / ".initdb-password"  # initdb reads the superuser's password from a file it can open
        pwfile.touch(mode=0o600)
        pwfile.write_text(_password(root) + "\n")
        try:
            if user:
                shutil.chown(pwfile, user)
            # Password authentication over TCP; no Unix socket at all (only loopback TCP, below).
            _as(user, [_pg_bin("initdb"), "-D", str(pg), "-U", DB_USER, f"--pwfile={pwfile}",
                       "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-instructions"])
        finally:
            pwfile.unlink(missing_ok=True)
        with open(pg / "postgresql.conf", "a") as conf:
            conf.write(f"\n# study.server\nlisten_addresses = '{HOST}'\nunix_socket_directories = ''\n"
                       "max_connections = 200\n")
    _as(user, [_pg_bin("pg_ctl"), "start", "-D", str(pg), "-l", str(log), "-w", "-t", "60", "-o", f"-p {pg_port}"])


def _check_reachable(path: Path, user: str) -> None:
    probe = _as(user, ["test", "-w", str(path)], check=False)
    if probe.returncode != 0:
        raise PermissionError(f"{path}: user {user} cannot reach it (a parent directory is not traversable); "
                              "choose a directory others can traverse, or set STUDY_PG_USER")


def _create_database(root: Path, pg_port: int) -> None:
    import psycopg

    with psycopg.connect(host=HOST, port=pg_port, user=DB_USER, password=_password(root), dbname="postgres",
                         autocommit=True, connect_timeout=30) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone() is None:
            conn.execute(f"CREATE DATABASE {DB_NAME}")


# ---- mlflow server ------------------------------------------------------------------------------------------


def _wait_healthy(server: TrackingServer, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    log = Path(server.root) / "mlflow.log"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{server.uri}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server did not answer within {timeout_s:.0f} s:\n{_tail(log)}")


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _write_state(root: Path, server: TrackingServer) -> None:
    (root / STATE).write_text(json.dumps(asdict(server), indent=2) + "\n")


def _is_mlflow(pid: int) -> bool:
    """Guard against a recycled pid: only a process running mlflow is ours to stop."""
    try:
        return b"mlflow" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _stop_group(pid: int, grace_s: float = 15.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not _group_alive(pid):
                _reap(pid)
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    _reap(pgid)
    # A zombie leader still counts for killpg; look for members that are not zombies.
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# ---- load: many writers at once ---------------------------------------------------------------------------


def load_test(uri: str, store_uri: str, *, processes: int = 8, runs: int = 2, batches: int = 5, batch: int = 1000,
              timeout_s: float = 300) -> dict:
    """``processes`` writer processes at once, each opening ``runs`` runs and sending each ``batches`` log_batch
    calls of ``batch`` metric values (no retries: an error is counted, its values lost). The clock starts when every
    writer has imported mlflow and connected. ``store_uri`` (SQLAlchemy) is read back to count what was stored."""
    client = _client(uri)
    experiment = client.create_experiment(f"load-{time.time_ns()}")
    workers = [subprocess.Popen([sys.executable, "-m", "study.server", "load-worker", uri, experiment, str(runs),
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


def _client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _load_worker(uri: str, experiment: str, runs: int, batches: int, batch: int) -> None:
    from mlflow.entities import Metric

    client = _client(uri)
    print("ready", flush=True)
    sys.stdin.readline()
    errors, kinds, started = 0, set(), time.perf_counter()
    keys = 50  # each batch: 50 keys x (batch / 50) steps
    for _ in range(runs):
        try:
            run_id = client.create_run(experiment).info.run_id
        except Exception as exc:
            errors, kinds = errors + batches, kinds | {type(exc).__name__}
            continue
        for b in range(batches):
            now = int(time.time() * 1000)
            metrics = [Metric(f"m{i % keys}", float(i), now, b * batch + i // keys) for i in range(batch)]
            try:
                client.log_batch(run_id, metrics=metrics, synchronous=True)
            except Exception as exc:
                errors, kinds = errors + 1, kinds | {f"{type(exc).__name__}: {str(exc)[:80]}"}
        try:
            client.set_terminated(run_id)
        except Exception as exc:
            kinds.add(type(exc).__name__)
    print(json.dumps({"errors": errors, "kinds": sorted(kinds), "seconds": time.perf_counter() - started}))


# ---- command line -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["load-worker"]:
        uri, experiment, runs, batches, batch = argv[1:]
        _load_worker(uri, experiment, int(runs), int(batches), int(batch))
        return 0
    parser = argparse.ArgumentParser(prog="python -m study.server", description=__doc__)
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("root", type=Path, help="directory of the server's data, logs and artifacts")
    parser.add_argument("--port", type=int, default=int(os.environ.get("STUDY_TRACKING_PORT", DEFAULT_PORT)))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("STUDY_PG_PORT", DEFAULT_PG_PORT)))
    parser.add_argument("--workers", type=int, default=2, help="mlflow server worker processes")
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop(args.root)
        print(f"tracking server in {args.root} stopped", file=sys.stderr)
        return 0
    if args.action == "status":
        server = read_state(args.root)
        if server is None or not alive(server.mlflow_pid):
            print("not running", file=sys.stderr)
            return 1
        print(f"export MLFLOW_TRACKING_URI={server.uri}")
        return 0
    reason = available()
    if reason:
        print(f"tracking server: {reason}", file=sys.stderr)
        return 2
    server = start(args.root, port=args.port, pg_port=args.pg_port, workers=args.workers)
    print(f"tracking server: PostgreSQL on {HOST}:{server.pg_port} (data in {args.root}/pg), mlflow server on "
          f"{server.uri} (logs in {args.root}); stop it with `make tracking-server-stop`", file=sys.stderr)
    print(f"export MLFLOW_TRACKING_URI={server.uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
