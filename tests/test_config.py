"""Params: the shipped files load and agree; every validation rule names the key and the file; the real CLI turns
a bad params file into a message and a non-zero exit before anything is written."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import yaml

from conftest import SMOKE, STUDY
from study import config, losses, model
from study.config import ConfigError
from study.losses import LOSSES
from study.model import CNN1dSpec, MLPSpec

CONDITIONS = ["fashion_sgd", "fashion_adam", "fashion_noise40", "mnist1d_sgd", "fashion_heldout", "mnist1d_cnn"]
MISSION = ("mse", "sigmoid_bce", "softmax_nll", "smoothed_ce")


def key_tree(node) -> object:
    """The nested key structure of a params mapping, values left out."""
    if isinstance(node, dict):
        return {key: key_tree(value) for key, value in node.items()}
    return None


# ---- the shipped params -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [STUDY, SMOKE], ids=["study", "smoke"])
def test_shipped_params_load(path):
    cfg = config.load(path)
    assert list(cfg.conditions) == CONDITIONS
    assert cfg.losses[:4] == MISSION  # a loss added to the study's list follows them
    assert cfg.backend == "auto"
    for name in CONDITIONS:  # the mission's four losses in every condition, in the same order first
        assert cfg.condition(name).name == name and cfg.condition(name).backend == "auto"
        assert cfg.condition(name).losses[:4] == MISSION
    # The literature's losses where they answer a question (a loss added later joins them, and breaks nothing here).
    assert {"logit_mse", "focal"} <= set(cfg.condition("fashion_sgd").losses[4:])
    assert {"gce", "mae"} <= set(cfg.condition("fashion_noise40").losses[4:])
    tuned = cfg.tuned_losses("fashion_sgd")  # its own, then fashion_heldout's (it borrows fashion_sgd's rates)
    assert tuned[:len(cfg.condition("fashion_sgd").losses)] == cfg.condition("fashion_sgd").losses
    assert set(cfg.condition("fashion_heldout").losses) <= set(tuned)
    # Noisy labels are tuned in their own condition, on noisy validation labels (issue 25, item 4).
    assert cfg.condition("fashion_noise40").lr_from == "fashion_noise40" and "fashion_noise40" in cfg.tune
    assert cfg.tuned_losses("fashion_noise40") == cfg.condition("fashion_noise40").losses
    assert all(cfg.condition(name).lr_extend >= 1 for name in cfg.tune)
    assert cfg.condition("fashion_heldout").heldout_classes == (8, 9)
    assert cfg.condition("fashion_heldout").lr_from == "fashion_sgd"
    assert cfg.condition("mnist1d_cnn").model.kind == "cnn1d" and "mnist1d_cnn" in cfg.tune
    assert all(cfg.condition(name).heldout_classes == () for name in CONDITIONS if name != "fashion_heldout")
    assert cfg.condition("fashion_sgd").model == MLPSpec((256, 256))
    assert cfg.condition("mnist1d_sgd").model == MLPSpec((100, 100))
    assert cfg.condition("fashion_noise40").label_noise == pytest.approx(0.4)
    assert cfg.condition("fashion_adam").optimizer == "adam"
    assert cfg.condition("mnist1d_sgd").dataset == "mnist1d"


def test_study_has_at_least_five_seeds():
    assert len(config.load(STUDY).seeds) >= 5


def test_smoke_has_the_same_keys_and_conditions_as_study():
    study = yaml.safe_load(STUDY.read_text())
    smoke = yaml.safe_load(SMOKE.read_text())
    assert key_tree(smoke) == key_tree(study)
    assert list(smoke["conditions"]) == list(study["conditions"]) == CONDITIONS


def test_config_is_frozen_and_overridable(smoke_params):
    path = smoke_params()
    cfg = config.load(path, tracking=False)
    assert cfg.tracking is False
    assert config.load(path).tracking is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seeds = (0,)
    with pytest.raises(ConfigError, match="study.not_a_key"):
        config.load(path, not_a_key=1)


def test_a_condition_may_set_its_own_model_losses_and_backend(smoke_params):
    def edit(params: dict) -> None:
        params["conditions"]["mnist1d_sgd"].update(
            model={"kind": "cnn1d", "channels": [25, 25, 25], "kernel": 5, "stride": 2, "padding": 1},
            losses=["softmax_nll", "mse"], backend="autograd")

    cfg = config.load(smoke_params(edit))
    cond = cfg.condition("mnist1d_sgd")
    assert cond.model == CNN1dSpec(channels=(25, 25, 25), kernel=5, stride=2, padding=1)
    assert cond.model.describe(40, 10) == "CNN1d 25-25-25 k5 s2"
    assert (cond.losses, cond.backend) == (("softmax_nll", "mse"), "autograd")
    other = cfg.condition("fashion_adam")  # sets no losses of its own
    assert (other.losses, other.backend) == (cfg.losses, "auto")  # the study's


@dataclasses.dataclass(frozen=True)
class _WideSpec:
    """A model kind the config has never seen, as README's "Adding a model" says to write one."""

    kind: str = dataclasses.field(default="wide", init=False)
    widths: tuple[int, ...]
    dropout: float = dataclasses.field(metadata={"min": 0.0})
    depth: int = dataclasses.field(metadata={"min": 0})


def test_a_new_model_kind_is_read_by_its_fields_annotations(smoke_params, monkeypatch):
    monkeypatch.setitem(model.KINDS, "wide", _WideSpec)

    def block(**fields):
        return smoke_params(lambda p: p["conditions"]["mnist1d_sgd"].update(model={"kind": "wide", **fields}))

    cond = config.load(block(widths=[8, 4], dropout=0.5, depth=0)).condition("mnist1d_sgd")
    assert cond.model == _WideSpec(widths=(8, 4), dropout=0.5, depth=0)
    for fields, message in (({"widths": [8, 0], "dropout": 0.5, "depth": 0}, "widths must list integers of at least 1"),
                            ({"widths": [8], "dropout": -0.1, "depth": 0}, "dropout"),
                            ({"widths": [8], "dropout": 0.5, "depth": -1}, "an integer >= 0"),
                            ({"widths": [8], "dropout": 0.5}, "missing key conditions.mnist1d_sgd.model.depth")):
        with pytest.raises(ConfigError, match=message):
            config.load(block(**fields))


def test_a_condition_with_losses_null_or_without_the_key_trains_the_study_losses():
    """Every tuned condition sets `losses:` (null where it trains the study's), so that a tune stage can list
    `conditions.${item}.losses` in dvc.yaml; a condition without the key trains the study's too."""
    params = yaml.safe_load(SMOKE.read_text())
    assert params["conditions"]["fashion_adam"]["losses"] is None
    assert "losses" not in params["conditions"]["fashion_heldout"]
    assert all("losses" in params["conditions"][name] for name in params["study"]["tune"])
    cfg = config.load(SMOKE)
    assert cfg.condition("fashion_adam").losses == cfg.condition("fashion_heldout").losses == cfg.losses


def test_loss_names_are_checked_against_the_registry_as_it_is_at_load_time(smoke_params, monkeypatch):
    path = smoke_params(lambda p: p["study"].update(losses=["mse", "late_entry"]))
    with pytest.raises(ConfigError, match="late_entry"):
        config.load(path)
    # A registry that gained an entry after study.config was imported:
    monkeypatch.setattr(losses, "LOSSES", {**losses.LOSSES, "late_entry": losses.LOSSES["mse"]})
    assert config.load(path).losses == ("mse", "late_entry")


# ---- each validation rule -----------------------------------------------------------------------------------------


def set_in(*keys_and_value):
    *keys, value = keys_and_value

    def edit(params: dict) -> None:
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return edit


RULES = {
    # id: (edit, fragments the message must contain besides the file)
    "unknown top-level key": (set_in("stuff", {"a": 1}), ["stuff"]),
    "unknown study key": (set_in("study", "sedes", [0]), ["study.sedes"]),
    "unknown probe key": (set_in("probe", "margin", 3), ["probe.margin"]),
    "unknown condition key": (set_in("conditions", "fashion_sgd", "epoch", 3), ["conditions.fashion_sgd.epoch"]),
    "unknown loss": (set_in("study", "losses", ["mse", "hinge"]), ["study.losses", "hinge", *LOSSES]),
    "lr zero": (set_in("conditions", "fashion_adam", "lr_grid", [0.0, 0.01]), ["conditions.fashion_adam.lr_grid"]),
    "lr negative": (set_in("conditions", "fashion_sgd", "lr_grid", [-0.1]), ["conditions.fashion_sgd.lr_grid"]),
    "lr grid empty": (set_in("conditions", "fashion_sgd", "lr_grid", []), ["conditions.fashion_sgd.lr_grid"]),
    "loss options are the registry's": (set_in("study", "smoothing_eps", 0.1), ["study.smoothing_eps"]),
    "unknown backend": (set_in("study", "backend", "jit"), ["study.backend", "auto, fused, autograd"]),
    "unknown condition backend": (set_in("conditions", "fashion_sgd", "backend", "jit"),
                                  ["conditions.fashion_sgd.backend", "auto, fused, autograd"]),
    "unknown condition loss": (set_in("conditions", "fashion_sgd", "losses", ["mse", "hinge"]),
                               ["conditions.fashion_sgd.losses", "hinge", *LOSSES]),
    "no condition losses": (set_in("conditions", "fashion_sgd", "losses", []), ["conditions.fashion_sgd.losses"]),
    "model not a mapping": (set_in("conditions", "fashion_sgd", "model", [256, 256]),
                            ["conditions.fashion_sgd.model", "kind: mlp"]),
    "missing model": (lambda p: p["conditions"]["fashion_sgd"].pop("model"),
                      ["missing key conditions.fashion_sgd.model"]),
    "hidden is inside model": (set_in("conditions", "fashion_sgd", "hidden", [256]), ["conditions.fashion_sgd.hidden"]),
    "unknown model kind": (set_in("conditions", "fashion_sgd", "model", {"kind": "resnet"}),
                           ["conditions.fashion_sgd.model.kind", "mlp, cnn1d"]),
    "unknown model key": (set_in("conditions", "fashion_sgd", "model", {"kind": "mlp", "hidden": [8], "kernel": 3}),
                          ["unknown key conditions.fashion_sgd.model.kernel", "hidden, kind", "check the spelling"]),
    "zero width": (set_in("conditions", "fashion_sgd", "model", {"kind": "mlp", "hidden": [256, 0]}),
                   ["conditions.fashion_sgd.model.hidden", "must list integers of at least 1"]),
    "no hidden layer": (set_in("conditions", "fashion_sgd", "model", {"kind": "mlp", "hidden": []}),
                        ["conditions.fashion_sgd.model.hidden"]),
    "width not an integer": (set_in("conditions", "mnist1d_sgd", "model",
                                    {"kind": "cnn1d", "channels": [25, 2.5], "kernel": 5, "stride": 2, "padding": 1}),
                             ["conditions.mnist1d_sgd.model.channels", "a list of int"]),
    "stride zero": (set_in("conditions", "mnist1d_sgd", "model",
                           {"kind": "cnn1d", "channels": [25], "kernel": 5, "stride": 0, "padding": 1}),
                    ["conditions.mnist1d_sgd.model.stride", "an integer >= 1"]),
    "cnn missing key": (set_in("conditions", "mnist1d_sgd", "model", {"kind": "cnn1d", "channels": [25]}),
                        ["missing key conditions.mnist1d_sgd.model.kernel"]),
    "fused cnn": (lambda p: (p["study"].update(backend="fused"), p["conditions"]["mnist1d_sgd"].update(
                      model={"kind": "cnn1d", "channels": [25], "kernel": 5, "stride": 2, "padding": 1})),
                  ["conditions.mnist1d_sgd.backend", "fused", "MLPs only", "cnn1d", "backend: autograd"]),
    "noise one": (set_in("conditions", "fashion_noise40", "label_noise", 1.0),
                  ["conditions.fashion_noise40.label_noise"]),
    "noise negative": (set_in("conditions", "fashion_sgd", "label_noise", -0.2),
                       ["conditions.fashion_sgd.label_noise"]),
    "no seeds": (set_in("study", "seeds", []), ["study.seeds"]),
    "epochs zero": (set_in("conditions", "mnist1d_sgd", "epochs", 0), ["conditions.mnist1d_sgd.epochs"]),
    "epochs negative": (set_in("conditions", "fashion_sgd", "epochs", -3), ["conditions.fashion_sgd.epochs"]),
    "epochs not an integer": (set_in("conditions", "fashion_sgd", "epochs", 1.5), ["conditions.fashion_sgd.epochs"]),
    "missing key": (lambda p: p["conditions"]["fashion_sgd"].pop("batch_size"), ["conditions.fashion_sgd.batch_size"]),
    "unknown optimizer": (set_in("conditions", "fashion_sgd", "optimizer", "rmsprop"),
                          ["conditions.fashion_sgd.optimizer", "sgd", "adam"]),
    "lr_from not tuned": (set_in("conditions", "fashion_heldout", "lr_from", "fashion_heldout"),
                          ["conditions.fashion_heldout.lr_from", "study.tune"]),
    "lr_extend negative": (set_in("conditions", "fashion_sgd", "lr_extend", -1),
                           ["conditions.fashion_sgd.lr_extend", "whole number >= 0", "factor of 2", "0 = never"]),
    "lr_extend not an integer": (set_in("conditions", "fashion_sgd", "lr_extend", 1.5),
                                 ["conditions.fashion_sgd.lr_extend", "whole number >= 0"]),
    "lr_extend a flag": (set_in("conditions", "fashion_sgd", "lr_extend", True),
                         ["conditions.fashion_sgd.lr_extend", "whole number >= 0"]),
    "missing lr_extend": (lambda p: p["conditions"]["mnist1d_sgd"].pop("lr_extend"),
                          ["missing key conditions.mnist1d_sgd.lr_extend"]),
    "tune names unknown condition": (set_in("study", "tune", ["fashion_sgd", "cifar"]), ["study.tune", "cifar"]),
    "heldout class out of range": (set_in("conditions", "fashion_heldout", "heldout_classes", [8, 10]),
                                   ["conditions.fashion_heldout.heldout_classes", "0..9", "e.g. [8, 9]"]),
    "heldout class twice": (set_in("conditions", "fashion_heldout", "heldout_classes", [8, 8]),
                            ["conditions.fashion_heldout.heldout_classes", "each once"]),
    "heldout leaves one class": (set_in("conditions", "fashion_sgd", "heldout_classes", list(range(9))),
                                 ["conditions.fashion_sgd.heldout_classes", "at most 8"]),
    "heldout not a list": (set_in("conditions", "fashion_sgd", "heldout_classes", 8),
                           ["conditions.fashion_sgd.heldout_classes", "a list"]),
    "missing heldout": (lambda p: p["conditions"]["fashion_sgd"].pop("heldout_classes"),
                        ["missing key conditions.fashion_sgd.heldout_classes"]),
}


@pytest.mark.parametrize("edit, fragments", list(RULES.values()), ids=list(RULES))
def test_validation_rule_names_key_and_file(smoke_params, edit, fragments):
    path = smoke_params(edit)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_each_rule_edit_alone_is_what_breaks(smoke_params):
    """The unedited copy loads, so each rule test above fails for its own reason."""
    assert config.load(smoke_params()).conditions.keys() == set(CONDITIONS)


def test_unknown_condition(smoke_params):
    path = smoke_params()
    cfg = config.load(path)
    with pytest.raises(ConfigError) as err:
        cfg.condition("nope")
    message = str(err.value)
    assert "nope" in message and str(path) in message
    for name in CONDITIONS:
        assert name in message  # the ones that exist


def test_broken_yaml(smoke_params):
    path = smoke_params(text="study:\n  losses: [mse, softmax_nll\n  seeds: [0]\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        config.load(path)
    assert str(path) in str(err.value)


def test_not_a_mapping(smoke_params):
    path = smoke_params(text="- just\n- a list\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(path) in str(err.value)
    assert "not found" in str(err.value)


# ---- the real CLI: a message, no traceback, nothing written -------------------------------------------------------


CLI_CASES = {
    "unknown loss": (set_in("study", "losses", ["mse", "hinge"]), "fashion_sgd", ["study.losses", "hinge"]),
    "lr zero": (set_in("conditions", "fashion_sgd", "lr_grid", [0.0]), "fashion_sgd",
                ["conditions.fashion_sgd.lr_grid"]),
    "unknown model kind": (set_in("conditions", "fashion_sgd", "model", {"kind": "resnet"}), "fashion_sgd",
                           ["conditions.fashion_sgd.model.kind", "mlp, cnn1d"]),
    "noise one": (set_in("conditions", "fashion_sgd", "label_noise", 1.0), "fashion_sgd",
                  ["conditions.fashion_sgd.label_noise"]),
    "no seeds": (set_in("study", "seeds", []), "fashion_sgd", ["study.seeds"]),
    "epochs zero": (set_in("conditions", "fashion_sgd", "epochs", 0), "fashion_sgd",
                    ["conditions.fashion_sgd.epochs"]),
    "unknown key": (set_in("study", "sedes", [0]), "fashion_sgd", ["study.sedes"]),
    "unknown condition": (None, "nope", ["nope"]),
    "broken yaml": ("study: [unclosed\n", "fashion_sgd", ["not valid YAML"]),
    "missing file": ("<missing>", "fashion_sgd", ["not found"]),
}


@pytest.fixture
def stage(tmp_path, smoke_params):
    """A train stage's arguments for a bad params file, an --out that already holds results, and an MLflow store
    location (env and default) to watch; ``check(stderr)`` asserts that nothing was written."""

    class Stage:
        def __init__(self, bad, condition, name: str = "case"):
            self.base = base = tmp_path / name
            if bad == "<missing>":
                self.params = base / "absent.yaml"
            elif isinstance(bad, str):
                self.params = smoke_params(text=bad, name=f"{name}.yaml")
            else:
                self.params = smoke_params(bad, name=f"{name}.yaml")
            self.out = base / "results" / "fashion_sgd"
            self.out.mkdir(parents=True)
            sentinel = self.out / "history.csv"
            sentinel.write_text("condition,value\nearlier,1\n")
            os.utime(sentinel, (1_000_000_000, 1_000_000_000))
            lrs = self.out / "lr.json"
            lrs.write_text('{"source": "fashion_sgd", "lrs": {"mse": 0.1, "sigmoid_bce": 0.1, "softmax_nll": 0.1, '
                           '"smoothed_ce": 0.1}}\n')
            self.before = self.snapshot()
            self.store = base / "store" / "mlflow.db"
            self.cwd = base / "cwd"
            self.cwd.mkdir()
            self.env = {"MLFLOW_TRACKING_URI": f"sqlite:///{self.store}", "STUDY_DATA_DIR": str(base / "data")}
            self.argv = ["train", "--params", str(self.params), "--condition", condition,
                         "--data", str(base / "data"), "--lrs", str(lrs), "--out", str(self.out),
                         "--checkpoint", str(self.out / "checkpoint.pt"), "--no-progress"]

        def snapshot(self) -> dict:
            return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in self.out.iterdir()}

        def check(self, stderr: str, fragments: list[str]) -> None:
            assert "Traceback" not in stderr, stderr
            assert str(self.params) in stderr
            for fragment in fragments:
                assert fragment in stderr
            assert self.snapshot() == self.before  # the sentinel untouched, nothing new in --out
            assert not self.store.parent.exists()  # no MLflow store where MLFLOW_TRACKING_URI points
            assert list(self.cwd.iterdir()) == []  # nor a default mlflow.db or mlruns/ in the working directory
            assert not list(tmp_path.rglob("*.db"))

    return Stage


@pytest.mark.parametrize("bad, condition, fragments", list(CLI_CASES.values()), ids=list(CLI_CASES))
def test_cli_main_rejects_bad_params_before_writing_anything(stage, monkeypatch, capsys, bad, condition, fragments):
    from study import cli

    s = stage(bad, condition)
    for key, value in s.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(s.cwd)
    code = cli.main(s.argv)  # returns: an error is a message, not an exception
    assert code != 0
    s.check(capsys.readouterr().err, fragments)


@pytest.mark.slow
def test_cli_process_rejects_bad_params_before_writing_anything(stage):
    """Real ``python -m study`` processes (started together: each spends seconds importing torch)."""
    cases = ["unknown loss", "unknown condition"]
    stages = {case: stage(*CLI_CASES[case][:2], name=case.replace(" ", "_")) for case in cases}
    processes = {
        case: subprocess.Popen([sys.executable, "-m", "study", *s.argv], cwd=s.cwd, env={**os.environ, **s.env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for case, s in stages.items()
    }
    for case, process in processes.items():
        _, stderr = process.communicate(timeout=120)
        assert process.returncode != 0, (case, stderr)
        stages[case].check(stderr, CLI_CASES[case][2])
