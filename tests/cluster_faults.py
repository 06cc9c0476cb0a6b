"""Faults for the Ray executor's tests, through its one seam (``STUDY_SHARD_HOOK`` in study.ops.cluster): a worker
that SIGKILLs itself mid-shard, once its first step's records are in the store. The driver imports this module as
``tests.cluster_faults`` from the repository root, and so do the workers (Ray puts that directory on their path)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

from study.records import Record


def kill_shard_1_once(index: int, attempt: int) -> Callable | None:
    """Shard 1's first attempt dies; its retry completes."""
    return _kill_mid_shard if (index, attempt) == (1, 1) else None


def kill_shard_0_always(index: int, attempt: int) -> Callable | None:
    """Shard 0 dies on every attempt: the stage fails."""
    return _kill_mid_shard if index == 0 else None


def _kill_mid_shard(stream: Iterator, tracker) -> Iterator:
    """Take the shard's items up to the first one after a training step, log their records and wait until the
    store holds them, then SIGKILL this worker: its runs have metrics, and the shard never finishes."""
    held = []
    for item in stream:
        held.append(item)
        if item.step > 0:
            break
    tracker.log([item for item in held if isinstance(item, Record)])
    flush = getattr(tracker, "flush", None)  # the NullTracker (tracking off) holds nothing
    if flush:
        flush(60)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: this process was sent SIGKILL")
