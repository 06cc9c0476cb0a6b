"""``study cluster-bench``: Ray's start and per-task overhead, and one condition's seed shards on 1 worker against 2
(beside the local executor), side by side in one run. (The tracking server's write rate is measured by
tests/test_tracking_server.py.)

Imports the executor and the trainer; nothing but the CLI imports this module.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from study import config, data, train
from study.config import Condition
from study.data import Dataset
from study.ops.cluster import OBJECT_STORE_BYTES, SHARD_CPUS, shards

BENCH_SIZES = {"train_size": 8000, "val_size": 1000, "test_size": 1000}  # one short epoch, two small evaluations
BENCH_ROUNDS = 3


def bench(params, condition: str, data_root, *, rounds: int = BENCH_ROUNDS, tasks: int = 200) -> dict:
    """Ray's cost and gain on this machine, in one run on one local 2-CPU Ray instance: its start, its per-task
    overhead (``tasks`` empty tasks), and one condition's two seed shards trained one at a time (1 worker) against
    both at once (2 workers), beside the local executor (both seeds in one lockstep stack, every thread). Rounds
    alternate the order (ABC, CBA, ...); times are medians over rounds."""
    import ray

    cfg = config.load(params)
    cond = dataclasses.replace(cfg.condition(condition), epochs=1, evals_per_epoch=1, **BENCH_SIZES)
    root = Path(data_root).resolve()
    load = functools.partial(data.load, cond.dataset, root, val_size=cond.val_size, split_seed=cond.split_seed,
                             train_size=cond.train_size, test_size=cond.test_size, label_noise=0.0, noise_seed=0)
    losses = getattr(cond, "losses", cfg.losses)
    members = train.grid(losses, (0, 1), {loss: [cond.lr_grid[0]] for loss in losses})
    settings = train.Settings(device="cpu", progress=False)
    parts = shards(members)
    steps = train.Trainer(cond, load(), parts[0], settings).total_steps
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=OBJECT_STORE_BYTES)
    result: dict = {"ray_start_s": round(time.perf_counter() - started, 2)}
    try:
        noop = ray.remote(_noop).options(num_cpus=SHARD_CPUS)
        ray.get([noop.remote() for _ in range(20)])  # warm the worker pool
        started = time.perf_counter()
        ray.get([noop.remote() for _ in range(tasks)])
        result["task_overhead_ms"] = round(1000 * (time.perf_counter() - started) / tasks, 2)
        started = time.perf_counter()
        for _ in range(20):
            ray.get(noop.remote())
        result["task_round_trip_ms"] = round(1000 * (time.perf_counter() - started) / 20, 2)
        shard = ray.remote(_bench_shard).options(num_cpus=SHARD_CPUS)

        variants = {
            "ray_1_worker": lambda: [ray.get(shard.remote(cond, load, part, settings)) for part in parts],
            "ray_2_workers": lambda: ray.get([shard.remote(cond, load, part, settings) for part in parts]),
            "local": lambda: _bench_shard(cond, load, members, settings),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(rounds):
            for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
                started = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - started)
    finally:
        ray.shutdown()
    medians = {name: statistics.median(values) for name, values in times.items()}
    model_steps = len(members) * steps
    result.update({
        "condition": cond.name, "models": len(members), "shards": len(parts), "steps": steps,
        "seconds": {name: round(value, 2) for name, value in medians.items()},
        "speedup_2_over_1_worker": round(medians["ray_1_worker"] / medians["ray_2_workers"], 2),
        "ray_2_workers_over_local": round(medians["local"] / medians["ray_2_workers"], 2),
        "model_steps_per_s_per_worker": round(model_steps / medians["ray_1_worker"], 1),
        "model_steps_per_s_local": round(model_steps / medians["local"], 1),
    })
    return result


def _noop() -> None:
    return None


def _bench_shard(cond: Condition, load_data: Callable[[], Dataset], members, settings) -> tuple[int, float]:
    """A shard as the executor runs it (data loaded, trained, records drained); the count of items and seconds."""

    started = time.perf_counter()
    count = sum(1 for _ in train.Trainer(cond, load_data(), members, settings).run())
    return count, time.perf_counter() - started


def main(*, params: Path, condition: str, data_root: Path) -> None:
    """``study cluster-bench``: the measurements as one JSON object on stdout."""
    print(json.dumps(bench(params, condition, data_root), indent=2))
