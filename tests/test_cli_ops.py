"""The operations of `study.ops` reached through `study`, wired, not run: each subcommand's arguments arrive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study import cli
from study.ops import cluster_bench, power, server


def test_cluster_bench_passes_its_arguments_to_the_benchmark(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cluster_bench, "bench", lambda *args: calls.append(args) or {"speedup_2_over_1_worker": 2.0})
    argv = ["--params", "p.yaml", "--condition", "mnist1d_sgd", "--data", "d"]
    assert cli.main(["cluster-bench", *argv]) == 0
    assert calls == [(Path("p.yaml"), "mnist1d_sgd", Path("d"))]
    assert json.loads(capsys.readouterr().out) == {"speedup_2_over_1_worker": 2.0}


def test_power_passes_its_arguments(monkeypatch):
    calls = []
    monkeypatch.setattr(power, "main", lambda **kwargs: calls.append(kwargs))
    assert cli.main(["power", "--results", "r", "--draws", "7"]) == 0
    assert calls == [{"results": Path("r"), "probe": Path("results/probe"), "draws": 7}]


def test_tracking_server_status_exits_1_when_none_runs_and_start_passes_its_ports(monkeypatch, tmp_path, capsys):
    assert cli.main(["tracking-server", "status", str(tmp_path)]) == 1
    assert "not running" in capsys.readouterr().err
    started = []
    monkeypatch.setattr(server, "available", lambda: None)
    monkeypatch.setattr(server, "start", lambda root, **kwargs: started.append(kwargs) or server.TrackingServer(
        str(root), kwargs["port"], kwargs["pg_port"], 0, ""))
    monkeypatch.setenv("STUDY_PG_PORT", "6543")
    assert cli.main(["tracking-server", "start", str(tmp_path), "--port", "5999", "--workers", "3"]) == 0
    assert started == [{"port": 5999, "pg_port": 6543, "workers": 3}]
    assert capsys.readouterr().out == "export MLFLOW_TRACKING_URI=http://127.0.0.1:5999\n"


def test_subcommands_refuse_unknown_arguments(tmp_path: Path):
    for argv in (["validate", "--params", "p.yaml", "--out", str(tmp_path / "m.json"), "--load"],
                 ["cluster-bench", "--load"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
