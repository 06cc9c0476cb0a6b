"""The Ray executor: shards gathered back into the local trainer's items and order; with the real parts (marker
``cluster``): the smoke condition on a local Ray cluster logging to a PostgreSQL-backed mlflow server, the same
tables and rates as the local executor, and a worker killed mid-shard."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from study import cluster, train
from study.records import ExampleStats, Record

from conftest import synthetic_dataset, tiny_condition


def _items(cond, data, members, settings) -> list:
    return list(train.Trainer(cond, data, members, settings).run())


def _key(item) -> tuple:
    metric = item.metric if isinstance(item, Record) else "examples"
    return item.loss, item.lr, item.seed, item.step, item.split, metric


def assert_same_items(got: list, want: list, *, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Same items in the same order; values equal to the last few digits (a shard's stack is smaller, so its
    products may sum in another order)."""
    assert [_key(i) for i in got] == [_key(i) for i in want]
    for a, b in zip(got, want):
        if isinstance(a, Record):
            assert a.epoch == b.epoch
            np.testing.assert_allclose(a.value, b.value, rtol=rtol, atol=atol, err_msg=str(_key(a)))
        else:
            for name in ("index", "label", "predicted"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            for name in ("p_true", "confidence", "loss_value", "logit_grad_norm"):
                np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=atol)


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_shards_of_one_seed_merge_into_the_full_grids_items_in_its_order(noise):
    """Every measurement of the full lockstep grid, in the order it yields them, from one trainer per seed: the
    training log, evaluations, per-example stats, memorisation under label noise and a divergence mark (lr 80)."""
    data = synthetic_dataset(label_noise=noise)
    cond = tiny_condition()
    members = train.grid(cond.losses, (0, 1, 2), {loss: [0.1, 80.0] for loss in cond.losses})
    settings = train.Settings(progress=False)
    want = _items(cond, data, members, settings)
    parts = cluster.shards(members)
    assert [{m.seed for m in part} for part in parts] == [{0}, {1}, {2}]
    got = cluster.merge([_items(cond, data, part, settings) for part in reversed(parts)], members)
    assert any(isinstance(i, Record) and i.metric == "diverged_step" for i in want)
    assert any(isinstance(i, ExampleStats) for i in want)
    assert_same_items(got, want)


def test_a_shard_starts_from_the_weights_and_batches_of_its_seed_in_the_full_grid():
    cond = dataclasses.replace(tiny_condition(), epochs=1)
    data = synthetic_dataset()
    members = train.grid(cond.losses, (3, 4), {loss: [0.1] for loss in cond.losses})
    full = train.Trainer(cond, data, members, train.Settings(progress=False))
    shard = train.Trainer(cond, data, cluster.shards(members)[1], train.Settings(progress=False))
    for p_full, p_shard in zip(full.stack.params, shard.stack.params):
        assert np.array_equal(p_full[1::2].numpy(), p_shard.numpy())  # seed 4's models (grid: loss, lr, seed)


def test_the_executor_comes_from_the_environment_then_the_params(monkeypatch):
    monkeypatch.delenv("STUDY_EXECUTOR", raising=False)
    assert cluster.executor(None) == "local"
    assert cluster.executor("ray") == "ray"
    monkeypatch.setenv("STUDY_EXECUTOR", "ray")
    assert cluster.executor("local") == "ray"
    monkeypatch.setenv("STUDY_EXECUTOR", "dask")
    with pytest.raises(ValueError, match="local, ray"):
        cluster.executor(None)
