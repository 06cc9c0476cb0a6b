"""What a run says of itself, whatever logs it: where the store is (``default_uri``), who owns a run
(``owner_id``), which commit and which ``dvc exp run`` experiment made it, and its params with secrets hidden
(``redact``, ``safe_params``). No mlflow and nothing from the study: the tracker, the dashboard, the import and the
tracking server all read it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path


def repo_root() -> Path:
    """The repository the study lives in: the working directory, except that ``dvc exp run --queue`` runs in a
    temporary copy under ``<repo>/.dvc/tmp/exps/``, whose runs belong to the repository above it."""
    parts = Path.cwd().resolve().parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return Path(*parts)


def default_uri(root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the SQLite store ``mlflow.db`` at the repo root (absolute)."""
    root = repo_root() if root is None else root
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


_USERINFO_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):[^@/?#\s]*@")
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|token|secret|api_key)=)[^&#\s]*", re.IGNORECASE)
_SECRET_KEY = re.compile(r"(^|[._-])(password|passwd|secret|token|api_key)($|[._-])", re.IGNORECASE)


def redact(uri: str) -> str:
    """Hide passwords in a URI, or in any text holding URIs: ``user:pw@host`` -> ``user:***@host``, and
    ``?password=``/``token=``/``secret=`` query values."""
    return _QUERY_SECRET.sub(r"\g<head>***", _USERINFO_PASSWORD.sub(r"\g<head>:***@", uri))


def safe_params(params: dict[str, str]) -> dict[str, str]:
    """Params fit to record: URIs redacted, and the value of a key named like a secret hidden whole."""
    return {k: "***" if _SECRET_KEY.search(k) else redact(str(v)) for k, v in params.items()}


def owner_id(experiment: str, condition: str, stage: str) -> str:
    """The ``study.owner`` tag: which (experiment, condition, stage) a run belongs to, to find stale runs."""
    return f"{experiment}:{condition}/{stage}"


def alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dvc_experiment() -> dict[str, str]:
    """Under ``dvc exp run``: the experiment's name and the commit it started from (DVC sets ``DVC_EXP_NAME`` and
    ``DVC_EXP_BASELINE_REV``), as tags, to find or delete an experiment's runs; outside an experiment, none."""
    name = os.environ.get("DVC_EXP_NAME")
    if not name:
        return {}
    return {"dvc_exp_name": name, "dvc_exp_baseline": os.environ.get("DVC_EXP_BASELINE_REV", "unknown")}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
