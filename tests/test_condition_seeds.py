"""A condition's own training seeds: `seeds:` in the condition, or study.seeds where it sets none (absent or null);
the shipped params give the cheap MNIST-1D conditions 20 and validate the list like study.seeds."""

from __future__ import annotations

import pytest

from conftest import STUDY
from study import config
from study.config import ConfigError


def test_the_mnist1d_conditions_train_20_seeds_and_the_others_the_studys():
    cfg = config.load(STUDY)
    for name, cond in cfg.conditions.items():
        expected = tuple(range(20)) if cond.dataset == "mnist1d" else cfg.seeds
        assert cond.seeds == expected, name
    assert len(cfg.seeds) >= 5


@pytest.mark.parametrize("given", ["absent", None])
def test_a_condition_without_seeds_trains_the_studys(smoke_params, given):
    def edit(params: dict) -> None:
        params["study"]["seeds"] = [3, 4]
        params["conditions"]["fashion_sgd"].pop("seeds", None)
        if given is None:
            params["conditions"]["fashion_sgd"]["seeds"] = None
        params["conditions"]["mnist1d_sgd"]["seeds"] = [7, 8, 9]

    cfg = config.load(smoke_params(edit))
    assert cfg.condition("fashion_sgd").seeds == (3, 4)
    assert cfg.condition("mnist1d_sgd").seeds == (7, 8, 9)


@pytest.mark.parametrize("bad", [[], [1, 1], [0.5], "0-19"])
def test_a_bad_seeds_list_names_the_key_and_the_fix(smoke_params, bad):
    path = smoke_params(lambda params: params["conditions"]["mnist1d_cnn"].update(seeds=bad))
    with pytest.raises(ConfigError, match=r"conditions\.mnist1d_cnn\.seeds") as caught:
        config.load(path)
    assert str(path) in str(caught.value)
