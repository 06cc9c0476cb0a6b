"""`study bench`: its pairing of measurements; its time budgets kept on small data; end to end on the smoke data,
shrunk to seconds: every field is there and finite."""

from __future__ import annotations

import json
import math
import re
import time

import pytest

from conftest import synthetic_dataset
from study import cli
from study.ops import bench

FIELDS = ["fraction_of_peak", "speedup_vs_canonical", "speedup_vs_inmemory", "tracking_overhead",
          "trainer_model_samples_per_s", "inmemory_model_samples_per_s", "canonical_model_samples_per_s",
          "fused_step_ms", "autograd_step_ms", "autograd_vs_fused"]


def test_rounds_alternate_the_order_of_the_variants():
    calls = []
    variants = {name: (lambda name=name: calls.append(name) or len(calls)) for name in "abc"}
    samples = bench.interleaved(variants, 3, label="test")
    assert "".join(calls) == "abccbaabc"
    assert samples == {"a": [1, 6, 7], "b": [2, 5, 8], "c": [3, 4, 9]}


def test_ratios_pair_the_measurements_of_one_round():
    # Rounds 1 and 2 differ threefold in load and agree on the ratio, 2; the ratio of the medians would say 0.8.
    fast, slow = [10.0, 30.0, 12.0], [5.0, 15.0, 20.0]
    assert bench.paired_ratio(fast, slow) == 2.0
    with pytest.raises(ValueError):
        bench.paired_ratio(fast, slow[:2])


def test_each_measurement_keeps_to_its_time_budget(monkeypatch, capsys, tmp_path):
    # Small data in memory (the canonical loop's torchvision loader replaced by tensor batches), so that only the
    # bench's own timing is under test. Before measurements kept their budgets, each trainer measurement ran 800
    # steps whatever the budget: about a minute here for a bench budgeted at 7 s.
    small = synthetic_dataset(n_train=4 * bench.BATCH, n_val=200, n_test=200, dim=40)
    monkeypatch.setattr(bench, "_bench_data", lambda name, root: small)
    monkeypatch.setattr(bench, "_canonical_batches",
                        lambda name, root: bench._tensor_batches(small.x_train, small.y_train, bench.CANONICAL_BATCH))
    monkeypatch.setattr(bench, "ROUNDS", 2)
    seconds = 0.2
    start = time.perf_counter()
    bench.main(data_root=tmp_path, as_json=True, seconds=seconds)
    elapsed = time.perf_counter() - start
    budget = (bench.VARIANTS * (bench.ROUNDS + 1) + 1) * seconds  # 6.8 s
    progress = capsys.readouterr().err
    measured = [float(t) for t in re.findall(r"round \d/2: \w+: ([\d.]+) s", progress)]
    assert len(measured) == bench.VARIANTS * bench.ROUNDS
    # Generous for a loaded 2-core machine: a measurement may overrun by its last step and an evaluation, and the
    # bench pays set-up (imports, the MLflow store, the trainers) once.
    assert max(measured) < seconds + 2.0, progress
    assert elapsed < 3 * budget + 30, progress


@pytest.mark.slow
def test_bench_json_reports_every_ratio(smoke_pipeline, monkeypatch, capsys):
    monkeypatch.setattr(bench, "TRAIN_EXAMPLES", 8 * bench.BATCH)
    monkeypatch.setattr(bench, "ROUNDS", 1)
    assert cli.main(["bench", "--json", "--seconds", "0.3", "--data", str(smoke_pipeline.repo / "data")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["peak_gflops"] > 0 and result["rounds"] == 1
    assert {name: len(values) for name, values in result["per_round"].items()} == {
        "trainer": 1, "trainer_plain": 1, "autograd_plain": 1, "inmemory": 1, "canonical": 1}
    for field in FIELDS:
        assert math.isfinite(result[field]) and result[field] != 0, field
    small = result["mnist1d"]
    assert small["model"] == "MLP 40-100-100-10"
    assert math.isfinite(small["speedup_vs_inmemory"]) and small["speedup_vs_inmemory"] > 0
    assert math.isfinite(small["autograd_vs_fused"]) and small["autograd_vs_fused"] > 0
    cnn = result["mnist1d_cnn"]
    assert cnn["model"] == "CNN1d 25-25-25 k5 s2" and cnn["models"] == 20
    assert math.isfinite(cnn["speedup_vs_loop"]) and cnn["speedup_vs_loop"] > 0
    assert bench.format_table(result).count("\n") >= 10
