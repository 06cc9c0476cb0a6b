"""A shared MLflow tracking server on PostgreSQL: start and stop it in a directory (``.tracking/`` for the team,
a temporary one for tests), listening on loopback only. Imports nothing from the study but ``run_identity.alive``.

``study tracking-server start|stop|status DIR`` (``make tracking-server``) prints the ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

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

from study.run_identity import alive

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
        wait_healthy(server.uri, proc, timeout_s, root / "mlflow.log")
    except BaseException:
        stop(root)
        raise
    return server


def stop(root: Path) -> None:
    """Stop the mlflow server (its whole process group) and PostgreSQL; the data stay for the next start."""
    root = Path(root).resolve()
    server = read_state(root)
    if server is not None and alive(server.mlflow_pid) and _is_mlflow(server.mlflow_pid):
        stop_group(server.mlflow_pid)
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
            conf.write(f"\n# study.ops.server\nlisten_addresses = '{HOST}'\nunix_socket_directories = ''\n"
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


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    """Returns once the mlflow server (or ``mlflow ui``) at ``url`` answers /health; raises when ``proc`` exits first
    or ``timeout_s`` passes, with the tail of its ``log``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
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


def stop_group(pid: int, grace_s: float = 15.0) -> None:
    """SIGTERM the process group led by ``pid``, SIGKILL what is left after ``grace_s``; returns when none is left."""
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


# ---- command line -------------------------------------------------------------------------------------------


def main(action: str, root: Path, *, port: int | None = None, pg_port: int | None = None, workers: int = 2) -> int:
    """``study tracking-server start|stop|status DIR``; ports default to ``STUDY_TRACKING_PORT`` and
    ``STUDY_PG_PORT``, else 5001 and 5433. Returns the exit status (status: 1 when not running)."""
    if action == "stop":
        stop(root)
        print(f"tracking server in {root} stopped", file=sys.stderr)
        return 0
    if action == "status":
        server = read_state(root)
        if server is None or not alive(server.mlflow_pid):
            print("not running", file=sys.stderr)
            return 1
        print(f"export MLFLOW_TRACKING_URI={server.uri}")
        return 0
    reason = available()
    if reason:
        print(f"tracking server: {reason}", file=sys.stderr)
        return 2
    port = port or int(os.environ.get("STUDY_TRACKING_PORT", DEFAULT_PORT))
    pg_port = pg_port or int(os.environ.get("STUDY_PG_PORT", DEFAULT_PG_PORT))
    server = start(root, port=port, pg_port=pg_port, workers=workers)
    print(f"tracking server: PostgreSQL on {HOST}:{server.pg_port} (data in {root}/pg), mlflow server on "
          f"{server.uri} (logs in {root}); stop it with `make tracking-server-stop`", file=sys.stderr)
    print(f"export MLFLOW_TRACKING_URI={server.uri}")
    return 0
