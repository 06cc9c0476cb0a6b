"""`study bench` end to end on the smoke data, shrunk to seconds: every field is there and finite."""

from __future__ import annotations

import json
import math

import pytest

from study import bench, cli

pytestmark = pytest.mark.slow

FIELDS = ["fraction_of_peak", "speedup_vs_canonical", "speedup_vs_inmemory", "tracking_overhead",
          "trainer_model_samples_per_s", "inmemory_model_samples_per_s", "canonical_model_samples_per_s"]


def test_bench_json_reports_every_ratio(smoke_pipeline, monkeypatch, capsys):
    monkeypatch.setattr(bench, "STEPS", 8)
    monkeypatch.setattr(bench, "ROUNDS", 1)
    assert cli.main(["bench", "--json", "--seconds", "0.3", "--data", str(smoke_pipeline.repo / "data")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["peak_gflops"] > 0
    for field in FIELDS:
        assert math.isfinite(result[field]) and result[field] != 0, field
    small = result["mnist1d"]
    assert small["model"] == "MLP 40-100-100-10"
    assert math.isfinite(small["speedup_vs_inmemory"]) and small["speedup_vs_inmemory"] > 0
    assert bench.format_table(result).count("\n") >= 10
