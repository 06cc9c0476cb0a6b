"""study.threads: the tune and train stages fix the process's intra-op thread count before any tensor work (the
data included) and give the process its own back after, so the environment's OMP_NUM_THREADS changes no number."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from conftest import SMOKE
from study import config, runner


class _Stop(Exception):
    pass


@pytest.mark.parametrize("stage", ["tune", "train"])
def test_the_stage_reads_its_data_at_the_params_thread_count(stage, monkeypatch, tmp_path):
    cfg = dataclasses.replace(config.load(SMOKE), threads=3)
    cond = cfg.condition("mnist1d_sgd")
    seen = []

    def load(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise _Stop

    monkeypatch.setattr(runner, "_load_tune_data" if stage == "tune" else "_load_data", load)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(_Stop):
            if stage == "tune":
                runner.tune(cfg, cond, data_root=Path("data"), out=tmp_path, tracking=False, progress=False)
            else:
                runner.train_condition(cfg, cond, {}, data_root=Path("data"), out=tmp_path, checkpoint=None,
                                       tracking=False, progress=False)
        assert seen == [3]
        assert torch.get_num_threads() == 1  # the process's own, back
    finally:
        torch.set_num_threads(before)
