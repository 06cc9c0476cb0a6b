"""The Ray executor: a condition's grid split into shards (one seed's models each, still trained in lockstep), run
as Ray tasks that log their child runs to the tracking server, gathered back in the order the local trainer yields.

Imports the trainer and the tracker; ``ray`` only inside functions (the local executor never loads it).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from study import tracking, train
from study.config import EXECUTORS, Condition
from study.data import Dataset
from study.records import ExampleStats, Record, run_name

RETRIES = 1  # a shard whose worker died runs once more; a second death fails the stage
SHARD_CPUS = 1  # declared per task, so that a 1-CPU worker takes shards; the trainer still runs Settings.threads
# Ray's defaults size the object store at 30% of memory; shard results are a few MB (records, per-example arrays).
OBJECT_STORE_BYTES = 512 * 2**20
# The one seam for tests: "module:function" names ``hook(shard_index, attempt)``, which the driver calls for each
# shard it submits; it returns None or ``wrap(stream, tracker)``, run on the worker around the shard's item stream
# (tests/cluster_faults.py kills a worker mid-shard with it). ``wrap`` travels with the task, so a running cluster
# needs no environment; its module must be importable there (Ray puts the driver's working directory on the path).
SHARD_HOOK_ENV = "STUDY_SHARD_HOOK"


class ShardFailed(RuntimeError):
    """A shard's worker died on every attempt; the stage writes nothing."""


def executor(configured: str | None) -> str:
    """``STUDY_EXECUTOR`` when set, else the params' ``executor``, else local."""
    name = os.environ.get("STUDY_EXECUTOR") or configured or "local"
    if name not in EXECUTORS:
        raise ValueError(f"executor {name!r}: one of {', '.join(EXECUTORS)}")
    return name


def shards(members: Sequence[train.Member]) -> list[list[train.Member]]:
    """One shard per seed, each in the grid's order (by loss, then lr): a seed's models share their batches, so
    a shard is still one lockstep stack, and its initial weights and batch order are those of the full grid."""
    by_seed: dict[int, list[train.Member]] = {}
    for member in members:
        by_seed.setdefault(member.seed, []).append(member)
    return list(by_seed.values())


@contextmanager
def session(num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the block: the cluster at ``RAY_ADDRESS`` when set (disconnected after), else a local instance with
    ``num_cpus`` (default ``STUDY_RAY_CPUS``, else every core) that is shut down after. Reuses a connection the
    caller already holds."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        cpus = num_cpus or int(os.environ.get("STUDY_RAY_CPUS", 0)) or os.cpu_count() or 1
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=OBJECT_STORE_BYTES)
    try:
        yield
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class Outcome:
    items: list  # Records and ExampleStats, in the local trainer's order
    evaluation_seconds: float  # summed over shards
    attempts: dict[int, int]  # shard index -> attempts it took


def run_grid(cond: Condition, load_data: Callable[[], Dataset], members: Sequence[train.Member],
             settings: train.Settings, tracker, *, keep_examples: bool,
             stop: Callable[[], bool] = lambda: False) -> Outcome:
    """Train ``members`` as one Ray task per shard and gather what the local trainer would have yielded.

    ``load_data`` runs on the worker (a picklable callable: the data directory must be reachable there). Child runs
    are logged by the workers (``tracker.handle()``); a shard whose worker dies has its runs ended KILLED and runs
    again into fresh child runs, once; any other error fails the stage after cancelling the other shards (the
    tracker then ends every open run). ``stop()`` turning true (a signal) cancels the shards: KeyboardInterrupt."""
    import ray
    from ray.exceptions import NodeDiedError, ObjectLostError, RayTaskError, WorkerCrashedError

    died = (WorkerCrashedError, NodeDiedError, ObjectLostError)
    parts = shards(members)
    handle = tracker.handle()
    hook = _shard_hook()
    gpus = _gpus_per_task(settings.device)
    task = ray.remote(_train_shard)

    def submit(index: int, attempt: int, run_handle) -> None:
        wrap = hook(index, attempt) if hook else None
        ref = task.options(num_cpus=SHARD_CPUS, num_gpus=gpus, max_retries=0,  # retries are ours: fresh runs
                           name=f"{cond.name}-shard{index}-attempt{attempt}").remote(
            cond, load_data, parts[index], settings, run_handle, keep_examples, wrap)
        pending[ref] = (index, attempt)

    pending: dict = {}
    for index, part in enumerate(parts):
        submit(index, 1, handle.subset(run_name(m.loss, m.lr, m.seed) for m in part) if handle else None)
    results: dict[int, tuple[list, float]] = {}
    attempts: dict[int, int] = {}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if stop():
                raise KeyboardInterrupt
            if not ready:
                continue
            ref = ready[0]
            index, attempt = pending.pop(ref)
            try:
                results[index] = ray.get(ref)
                attempts[index] = attempt
            except died as exc:
                runs = [run_name(m.loss, m.lr, m.seed) for m in parts[index]]
                reason = f"worker died running shard {index} (attempt {attempt}): {type(exc).__name__}"
                if attempt > RETRIES:
                    raise ShardFailed(f"{cond.name}: {reason}; no retries left") from None
                print(f"study: {cond.name}: {reason}; running it again", file=sys.stderr)
                submit(index, attempt + 1, tracker.restart_runs(runs, reason))
            except RayTaskError as exc:
                raise exc.as_instanceof_cause() from None
    finally:
        for ref in pending:  # an error or Ctrl-C: stop the other shards (their runs end with the tracker)
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
    items = merge([results[i][0] for i in range(len(parts))], members)
    tracker.observe(item for item in items if isinstance(item, Record))
    return Outcome(items, sum(seconds for _, seconds in results.values()), attempts)


def _train_shard(cond: Condition, load_data: Callable[[], Dataset], members: list[train.Member],
                 settings: train.Settings, handle: tracking.RunHandle | None, keep_examples: bool,
                 wrap: Callable | None) -> tuple[list, float]:
    """One Ray task: a lockstep trainer over one shard, its records logged to the shard's child runs. Returns the
    shard's items (records; example stats when kept) and its evaluation seconds. ``wrap``: see ``SHARD_HOOK_ENV``."""
    from study import runner  # here, not at the top: runner imports this module

    with runner.fixed_threads(settings.threads):  # before the data: see fixed_threads
        return _train_shard_here(cond, load_data, members, settings, handle, keep_examples, wrap)


def _train_shard_here(cond: Condition, load_data: Callable[[], Dataset], members: list[train.Member],
                      settings: train.Settings, handle: tracking.RunHandle | None, keep_examples: bool,
                      wrap: Callable | None) -> tuple[list, float]:
    from study import runner

    trainer = train.Trainer(cond, load_data(), members, settings)
    tracker = tracking.MlflowTracker.attach(handle) if handle else tracking.NullTracker()
    stream = trainer.run()
    items: list = []
    try:
        runner.collect(wrap(stream, tracker) if wrap else stream, tracker, into=items, keep_examples=keep_examples)
    except BaseException as exc:
        if handle:
            tracker.end_runs("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED",
                             f"{type(exc).__name__}: {exc}")
        raise
    if handle:
        tracker.detach()
    return items, trainer.evaluation_seconds


def _shard_hook() -> Callable | None:
    spec = os.environ.get(SHARD_HOOK_ENV, "")
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"{SHARD_HOOK_ENV}={spec!r}: expected module:function")
    return getattr(importlib.import_module(module), name)


def _gpus_per_task(device: str) -> float:
    """One GPU per shard where the cluster has GPUs and the params allow CUDA; none otherwise."""
    import ray

    if device == "cpu":
        return 0
    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0


# ---- gathering ----------------------------------------------------------------------------------------------

_LOG, _EVAL, _EXAMPLES = 1, 2, 3  # the phases of a step, in the order the trainer yields them


def merge(shard_items: Sequence[Sequence[Record | ExampleStats]],
          members: Sequence[train.Member]) -> list[Record | ExampleStats]:
    """The shards' items in the order one trainer over all ``members`` yields them, so that tables come out the same.

    The trainer yields, per step: the training log (per model: its metrics), then an evaluation (per metric: every
    model), then per-example stats (per split: every model); a model's divergence mark comes before the phase it
    was found in. Each shard's stream is that order restricted to its models; sorting every item by (step, phase,
    position in the phase, model) interleaves them back."""
    position = {(m.loss, m.lr, m.seed): i for i, m in enumerate(members)}
    keyed = []
    for items in shard_items:
        keyed.extend(zip(_order_keys(items, position), items))
    keyed.sort(key=lambda pair: pair[0])
    return [item for _, item in keyed]


def _order_keys(items: Sequence[Record | ExampleStats], position: dict) -> list[tuple]:
    keys: list[tuple] = [()] * len(items)
    columns: dict[tuple, int] = {}  # (step, phase, split, metric) -> its rank within the phase
    seen: dict[tuple, int] = {}  # (step, phase) -> columns ranked so far
    per_model: dict[tuple, int] = {}  # (step, model) -> training-log metrics seen
    following: tuple = (math.inf, _LOG)
    for i in reversed(range(len(items))):  # a divergence mark belongs to the phase after it
        item = items[i]
        model = position[(item.loss, item.lr, item.seed)]
        if isinstance(item, Record) and item.metric == "diverged_step":
            keys[i] = (*following, -1, model)
            continue
        following = (item.step, _phase(item))
    for i, item in enumerate(items):
        if keys[i]:
            continue
        model = position[(item.loss, item.lr, item.seed)]
        phase = _phase(item)
        if phase == _LOG:
            rank = per_model.get((item.step, model), 0)
            per_model[(item.step, model)] = rank + 1
            keys[i] = (item.step, phase, model, rank)
        else:
            column = (item.step, phase, item.split, getattr(item, "metric", ""))
            if column not in columns:
                columns[column] = seen.get(column[:2], 0)
                seen[column[:2]] = columns[column] + 1
            rank = columns[column]
            keys[i] = (item.step, phase, rank, model)
    return keys


def _phase(item: Record | ExampleStats) -> int:
    if isinstance(item, ExampleStats):
        return _EXAMPLES
    return _LOG if item.split == "train" else _EVAL

