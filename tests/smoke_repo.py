"""A temporary copy of the repository running the smoke study through real `dvc repro` (shared by the pipeline,
reliability and browser tests through the `smoke_pipeline` fixture in conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class SmokeRepo:
    repo: Path
    tracking_uri: str
    first_output: str = ""
    second_output: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                "MLFLOW_TRACKING_URI": self.tracking_uri, "PYTHONUNBUFFERED": "1", **self.extra_env}

    def run(self, *argv: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run(argv, cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def dvc(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(str(BIN / "dvc"), *argv, check=check)


def copy_repo(dest: Path) -> SmokeRepo:
    """The committed and untracked-but-not-ignored files of this repo, as a fresh git repo with the smoke params
    copied over experiments/study.yaml."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    shutil.copy2(REPO / "experiments" / "smoke.yaml", dest / "experiments" / "study.yaml")
    # The copy starts without results: the pipeline writes every one of them.
    shutil.rmtree(dest / "results", ignore_errors=True)
    (dest / "dvc.lock").unlink(missing_ok=True)
    smoke = SmokeRepo(dest, f"sqlite:///{dest / 'mlflow-test.db'}")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    smoke.run("git", "init", "-q", "-b", "main")
    smoke.run("git", "add", "-A")
    smoke.run(*git, "commit", "-qm", "smoke copy")
    return smoke


def run_smoke_pipeline(dest: Path) -> SmokeRepo:
    smoke = copy_repo(dest)
    first = smoke.dvc("repro")
    smoke.first_output = first.stdout + first.stderr
    second = smoke.dvc("repro")
    smoke.second_output = second.stdout + second.stderr
    return smoke
