"""The study's parameters as frozen dataclasses, validated before any work starts. The only YAML reader.

Imports from the study only the loss registry (names looked up when a file is loaded), the model factory and the
data module's dataset names and its rule for held-out classes.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from study import losses as loss_registry
from study import model
from study.data import DATASETS, heldout_problem

OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")
# How a condition's grid is stepped: autograd (any model), fused (the hand-written MLP backward, bit-identical to
# the study's published results), auto (fused for an MLP, autograd otherwise).
BACKENDS = ("auto", "fused", "autograd")


class ConfigError(ValueError):
    """A params problem, worded for the user: which key, which file, how to fix it."""


@dataclass(frozen=True)
class Condition:
    """Everything but the loss: what two runs of one condition and seed share."""

    name: str
    dataset: str
    model: model.ModelSpec
    backend: str  # the condition's own `backend:`, else the study's
    losses: tuple[str, ...]  # the condition's own `losses:`, else (absent or null) the study's
    optimizer: str
    momentum: float
    batch_size: int
    epochs: int
    label_noise: float
    noise_seed: int
    val_size: int
    split_seed: int
    train_size: int  # 0 = every training example left after the validation split
    test_size: int  # 0 = the whole test set
    lr_grid: tuple[float, ...]
    lr_from: str
    tune_epochs: int
    tune_seeds: tuple[int, ...]
    evals_per_epoch: int
    speed_resolution: float  # validation accuracy alone is also evaluated at steps at most this factor apart
    log_every: int
    probe_size: int
    targets: tuple[float, ...]
    heldout_classes: tuple[int, ...] = ()  # classes left out of training, scored as "none of the above"; () = none
    # Grid extensions per side: a loss whose chosen or best-scoring rate sits on a stable grid edge has its grid
    # extended by a factor of 2 beyond it, at most this many times per side. The params file always states it.
    lr_extend: int = 0
    # Training seeds of this condition: its own `seeds:` list, or study.seeds where it sets none (absent or null).
    # Cheap conditions take more (the MNIST-1D ones: 20), so their comparisons can be decided.
    seeds: tuple[int, ...] = ()


@dataclass(frozen=True)
class Probe:
    max_margin: float
    points: int


@dataclass(frozen=True)
class StudyConfig:
    path: Path
    experiment: str
    losses: tuple[str, ...]
    seeds: tuple[int, ...]
    device: str
    backend: str
    data_dir: str | None
    confident: float
    ece_bins: int
    tracking: bool
    tune: tuple[str, ...]  # conditions whose learning rates are tuned; the others borrow them (lr_from)
    threads: int  # intra-op threads of every training loop, whatever the machine or OMP_NUM_THREADS
    executor: str  # local | ray: where a condition's grid trains (study.ops.cluster); results equal to the last digits
    probe: Probe
    conditions: dict[str, Condition]

    def condition(self, name: str) -> Condition:
        if name not in self.conditions:
            raise ConfigError(
                f"{self.path}: unknown condition {name!r}; conditions in this file: {', '.join(self.conditions)}"
            )
        return self.conditions[name]

    def tuned_losses(self, name: str) -> tuple[str, ...]:
        """The losses whose rates condition ``name``'s tuning chooses: its own, then those of the conditions that
        borrow its rates (lr_from), each once."""
        borrowers = [loss for cond in self.conditions.values() if cond.lr_from == name for loss in cond.losses]
        return tuple(dict.fromkeys([*self.condition(name).losses, *borrowers]))


_STUDY_KEYS = {
    "experiment", "losses", "seeds", "device", "backend", "data_dir", "confident", "ece_bins", "tracking", "tune",
    "threads", "executor",
}
EXECUTORS = ("local", "ray")
_TOP_KEYS = {"study", "probe", "conditions"}


def load(path: str | Path, **overrides: Any) -> StudyConfig:
    """Read and validate a params file. ``overrides`` replace keys of ``study:`` (e.g. ``tracking=False``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} not found; pass an existing file, e.g. --params experiments/study.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err}); fix the syntax at the line shown") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {sorted(_TOP_KEYS)}")
    _known(raw, _TOP_KEYS, path, "")
    for key in _TOP_KEYS:
        if not isinstance(raw.get(key), dict):
            raise ConfigError(f"{path}: `{key}` is missing or not a mapping; copy it from experiments/study.yaml")
    study = {**raw["study"], **overrides}
    _known(study, _STUDY_KEYS, path, "study.")
    _known(raw["probe"], {f.name for f in fields(Probe)}, path, "probe.")
    get = _Getter(path)

    losses = _loss_names(study, "study.losses", get, path)
    seeds = tuple(get.items(study, "study.seeds", int))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: study.seeds must list at least one seed, each once (e.g. [0, 1, 2, 3, 4])")
    device = get.choice(study, "study.device", DEVICES)
    backend = get.choice(study, "study.backend", BACKENDS)
    data_dir = study.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise ConfigError(f"{path}: study.data_dir must be a directory path or null")

    probe = Probe(
        max_margin=get.number(raw["probe"], "probe.max_margin", lo=0.0, lo_open=True),
        points=get.integer(raw["probe"], "probe.points", lo=3),
    )
    conditions = {name: _condition(name, spec, get, path, losses=losses, backend=backend, seeds=seeds)
                  for name, spec in raw["conditions"].items()}
    if not conditions:
        raise ConfigError(f"{path}: `conditions` is empty; define at least one condition")
    tune = tuple(get.items(study, "study.tune", str))
    for name in tune:
        if name not in conditions:
            raise ConfigError(f"{path}: study.tune: unknown condition {name!r}; conditions: {', '.join(conditions)}")
    for cond in conditions.values():
        if cond.lr_from not in tune:
            raise ConfigError(
                f"{path}: conditions.{cond.name}.lr_from = {cond.lr_from!r}, but learning rates are tuned only "
                f"for study.tune = {list(tune)}; name one of those, or add the condition to study.tune"
            )
        if cond.name in tune and cond.lr_from != cond.name:
            raise ConfigError(
                f"{path}: conditions.{cond.name}.lr_from = {cond.lr_from!r}, but {cond.name} is tuned "
                f"(in study.tune); set lr_from: {cond.name}, or remove it from study.tune"
            )
    return StudyConfig(
        path=path,
        experiment=get.text(study, "study.experiment"),
        losses=losses,
        seeds=seeds,
        device=device,
        backend=backend,
        data_dir=data_dir,
        confident=get.number(study, "study.confident", lo=0.0, hi=1.0, lo_open=True, hi_open=True),
        ece_bins=get.integer(study, "study.ece_bins", lo=1),
        tracking=get.flag(study, "study.tracking"),
        tune=tune,
        threads=get.integer(study, "study.threads", lo=1),
        executor=get.choice(study, "study.executor", EXECUTORS),
        probe=probe,
        conditions=conditions,
    )


def _loss_names(mapping: dict, dotted: str, get: _Getter, path: Path) -> tuple[str, ...]:
    names = tuple(get.items(mapping, dotted, str))
    registered = loss_registry.LOSSES  # looked up now: the registry as it is when the file is loaded
    for loss in names:
        if loss not in registered:
            raise ConfigError(f"{path}: {dotted}: unknown loss {loss!r}; valid losses: {', '.join(registered)}")
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"{path}: {dotted} must list at least one loss, each once")
    return names


def _model(spec: Any, dotted: str, get: _Getter, path: Path) -> model.ModelSpec:
    """A `model:` block: `kind` names the factory's entry, the other keys are that entry's fields, read by their
    annotations: ``int`` an integer, ``float`` a number, ``tuple[int, ...]`` a non-empty list of integers; each at
    least the field's ``metadata["min"]`` (1 where it sets none: widths, kernels and strides are positive)."""
    example = ("{kind: mlp, hidden: [256, 256]} or "
               "{kind: cnn1d, channels: [25, 25, 25], kernel: 5, stride: 2, padding: 1}")
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: {dotted} must be a mapping such as {example}")
    kind = get.choice(spec, f"{dotted}.kind", tuple(model.KINDS))
    cls = model.KINDS[kind]
    _known(spec, {f.name for f in fields(cls)}, path, dotted + ".")
    types = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):
        if not f.init:  # kind
            continue
        key, lo, kind_of = f"{dotted}.{f.name}", f.metadata.get("min", 1), types[f.name]
        if kind_of == tuple[int, ...]:
            items = tuple(get.items(spec, key, int))
            if not items or min(items) < lo:
                raise ConfigError(f"{path}: {key} must list integers of at least {lo}, e.g. [256, 256]")
            values[f.name] = items
        elif kind_of is int:
            values[f.name] = get.integer(spec, key, lo=lo)
        elif kind_of is float:
            values[f.name] = get.number(spec, key, lo=lo)
        else:
            raise TypeError(f"model.{cls.__name__}.{f.name}: config reads int, float and tuple[int, ...] fields, "
                            f"not {kind_of}; add a case to config._model")
    return cls(**values)


def _condition(name: str, spec: Any, get: _Getter, path: Path, *, losses: tuple[str, ...],
               backend: str, seeds: tuple[int, ...]) -> Condition:
    """One condition; ``losses``, ``backend`` and ``seeds`` (the study's) stand where it sets none of its own."""
    where = f"conditions.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: {where} must be a mapping of condition params")
    _known(spec, {f.name for f in fields(Condition)} - {"name"}, path, where + ".")
    key = lambda k: f"{where}.{k}"  # noqa: E731
    sub = {k: spec.get(k) for k in spec}
    lr_grid = tuple(get.items(sub, key("lr_grid"), float))
    for lr in lr_grid:
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError(f"{path}: {key('lr_grid')}: learning rate {lr} must be > 0 (e.g. 0.1)")
    if not lr_grid:
        raise ConfigError(f"{path}: {key('lr_grid')} must list at least one learning rate > 0")
    tune_seeds = tuple(get.items(sub, key("tune_seeds"), int))
    if not tune_seeds:
        raise ConfigError(f"{path}: {key('tune_seeds')} must list at least one seed")
    targets = tuple(get.items(sub, key("targets"), float))
    if not targets or not all(0 < t < 1 for t in targets):
        raise ConfigError(f"{path}: {key('targets')} must list accuracies strictly between 0 and 1")
    network = _model(get.value(sub, key("model")), key("model"), get, path)
    heldout = _heldout_classes(sub, key("heldout_classes"), get, path)
    if "backend" in sub:
        backend = get.choice(sub, key("backend"), BACKENDS)
    problem = model.backend_problem(backend, network)
    if problem:
        raise ConfigError(f"{path}: {key('backend')} (set here or in study.backend): {problem} for this condition")
    return Condition(
        name=name,
        dataset=get.choice(sub, key("dataset"), DATASETS),
        model=network,
        backend=backend,
        losses=_loss_names(sub, key("losses"), get, path) if sub.get("losses") is not None else losses,
        optimizer=get.choice(sub, key("optimizer"), OPTIMIZERS),
        momentum=get.number(sub, key("momentum"), lo=0.0, hi=1.0, hi_open=True),
        batch_size=get.integer(sub, key("batch_size"), lo=1),
        epochs=get.integer(sub, key("epochs"), lo=1),
        label_noise=get.number(sub, key("label_noise"), lo=0.0, hi=1.0, hi_open=True),
        noise_seed=get.integer(sub, key("noise_seed")),
        val_size=get.integer(sub, key("val_size"), lo=1),
        split_seed=get.integer(sub, key("split_seed")),
        train_size=get.integer(sub, key("train_size"), lo=0),
        test_size=get.integer(sub, key("test_size"), lo=0),
        lr_grid=lr_grid,
        lr_from=get.text(sub, key("lr_from")),
        tune_epochs=get.integer(sub, key("tune_epochs"), lo=1),
        tune_seeds=tune_seeds,
        evals_per_epoch=get.integer(sub, key("evals_per_epoch"), lo=1),
        speed_resolution=get.number(sub, key("speed_resolution"), lo=0.0, hi=1.0, lo_open=True, hi_open=True),
        log_every=get.integer(sub, key("log_every"), lo=1),
        probe_size=get.integer(sub, key("probe_size"), lo=1),
        targets=targets,
        heldout_classes=heldout,
        lr_extend=_lr_extend(sub, key("lr_extend"), get, path),
        seeds=_seeds(sub, key("seeds"), get, path) if sub.get("seeds") is not None else seeds,
    )


def _seeds(mapping: dict, dotted: str, get: _Getter, path: Path) -> tuple[int, ...]:
    seeds = tuple(get.items(mapping, dotted, int))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: {dotted} must list at least one training seed, each once (e.g. [0, 1, ..., 19]), "
                          "or be null to train with study.seeds")
    return seeds


def _lr_extend(mapping: dict, dotted: str, get: _Getter, path: Path) -> int:
    value = get.value(mapping, dotted)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{path}: {dotted} = {value!r}, but it must be a whole number >= 0: how many times tuning "
                          "may extend a loss's lr grid by a factor of 2 beyond each edge (e.g. 2; 0 = never)")
    return value


def _heldout_classes(mapping: dict, dotted: str, get: _Getter, path: Path) -> tuple[int, ...]:
    """The classes left out of training, checked by the data module's rule; empty: every class is trained on."""
    classes = tuple(get.items(mapping, dotted, int))
    problem = heldout_problem(classes)
    if problem:
        raise ConfigError(f"{path}: {dotted} = {list(classes)}, but {problem} (e.g. [8, 9]); [] trains on every class")
    return classes


def _known(mapping: dict, allowed: set[str], path: Path, prefix: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {prefix}{unknown[0]}; allowed keys here: {', '.join(sorted(allowed))} "
            "(check the spelling against experiments/study.yaml)"
        )


class _Getter:
    """Typed look-ups whose errors name the key and the file."""

    def __init__(self, path: Path):
        self.path = path

    def value(self, mapping: dict, dotted: str) -> Any:
        leaf = dotted.rsplit(".", 1)[-1]
        if leaf not in mapping or mapping[leaf] is None:
            raise ConfigError(f"{self.path}: missing key {dotted}; add it (see experiments/study.yaml)")
        return mapping[leaf]

    def _fail(self, dotted: str, value: Any, wanted: str) -> ConfigError:
        return ConfigError(f"{self.path}: {dotted} = {value!r}, but it must be {wanted}")

    def number(self, mapping, dotted, *, lo=None, hi=None, lo_open=False, hi_open=False) -> float:
        value = self.value(mapping, dotted)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._fail(dotted, value, "a number")
        below = lo is not None and (value <= lo if lo_open else value < lo)
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if below or above:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            raise self._fail(dotted, value, f"in {left}{lo_s}, {hi_s}{right}")
        return float(value)

    def integer(self, mapping, dotted, *, lo=None) -> int:
        value = self.value(mapping, dotted)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(dotted, value, "an integer")
        if lo is not None and value < lo:
            raise self._fail(dotted, value, f"an integer >= {lo}")
        return value

    def text(self, mapping, dotted) -> str:
        value = self.value(mapping, dotted)
        if not isinstance(value, str) or not value:
            raise self._fail(dotted, value, "a non-empty string")
        return value

    def flag(self, mapping, dotted) -> bool:
        value = self.value(mapping, dotted)
        if not isinstance(value, bool):
            raise self._fail(dotted, value, "true or false")
        return value

    def choice(self, mapping, dotted, options) -> str:
        value = self.value(mapping, dotted)
        if value not in options:
            raise self._fail(dotted, value, f"one of {', '.join(options)}")
        return value

    def items(self, mapping, dotted, kind) -> list:
        value = self.value(mapping, dotted)
        if not isinstance(value, list):
            raise self._fail(dotted, value, "a list, e.g. [0, 1, 2]")
        out = []
        for item in value:
            ok = isinstance(item, (int, float)) and not isinstance(item, bool) if kind is float else (
                isinstance(item, kind) and not isinstance(item, bool)
            )
            if not ok:
                raise self._fail(dotted, value, f"a list of {kind.__name__}")
            out.append(kind(item))
        return out


def flatten(cfg: StudyConfig, condition: str) -> dict[str, str]:
    """The params one condition's runs depend on, as flat ``key: text`` pairs (MLflow params)."""
    cond = dataclasses.asdict(cfg.condition(condition))
    shared = {
        "experiment": cfg.experiment, "device": cfg.device,
        "confident": cfg.confident, "ece_bins": cfg.ece_bins, "seeds": list(cfg.seeds),
        "losses": list(cfg.losses), "backend": cfg.backend,
    }
    return {k: str(v) for k, v in {**shared, **{f"condition.{k}": v for k, v in cond.items()}}.items()}
