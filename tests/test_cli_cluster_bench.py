"""`study cluster-bench` is `python -m study.cluster_bench` (the same parser and benchmark), wired, not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study import cli
from study.ops import cluster_bench


def test_cluster_bench_help_is_the_benchmarks_own(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["cluster-bench", "--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: study cluster-bench") and "--load" in usage and "--condition" in usage


def test_cluster_bench_passes_its_arguments_to_the_benchmark(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cluster_bench, "bench", lambda *args: calls.append(args) or {"speedup_2_over_1_worker": 2.0})
    argv = ["--params", "p.yaml", "--condition", "mnist1d_sgd", "--data", "d"]
    assert cli.main(["cluster-bench", *argv]) == 0
    assert calls == [(Path("p.yaml"), "mnist1d_sgd", Path("d"))]
    assert json.loads(capsys.readouterr().out) == {"speedup_2_over_1_worker": 2.0}


def test_other_subcommands_still_refuse_unknown_arguments(tmp_path: Path):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["validate", "--params", "p.yaml", "--out", str(tmp_path / "m.json"), "--load"])
    assert exit_.value.code == 2
