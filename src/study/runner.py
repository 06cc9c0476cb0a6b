"""Runs the tune and train stages: data, trainer, tracker, executor (here, or Ray through ``cluster``), checkpoint
and tables wired together, and the tuning rule that picks each loss's rate.

Serves ``cli``; it and ``cluster`` (whose shards log their own runs) alone know both the trainer and the tracker.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from study import data, losses, measures, tables, tracking, train
from study.config import Condition, StudyConfig, flatten
from study.losses import CONVENTIONS
from study.ops import cluster
from study.records import ExampleStats, Record
from study.tracking import NullTracker

TRAIN_OUTPUTS = (tables.HISTORY, tables.EXAMPLES, tables.SUMMARY, tables.SETUP, tables.CURVES)
TUNE_WINDOW = 0.2  # the tuning score averages validation accuracy over the last fifth of the tuning steps
# Before that window tuning reads validation accuracy at most 25% apart (not the condition's 10%): the readings
# there only place the tuning figure's steps-to-target, and at 10% they cost more than the tuning's training.
TUNE_SPEED = (0.25, 1 - TUNE_WINDOW)
TUNE_CRITERION = (
    "validation accuracy averaged over the readings of the last fifth of the tuning steps (not the last reading "
    "alone: averaging several readings damps the step-to-step jitter that a change of machine or thread count "
    "perturbs), mean over the tune seeds; under label noise the validation labels carry the same noise as the "
    "training labels. A rate at which any tune seed diverged or collapsed is unstable and never chosen. The chosen "
    "rate is the peak of a quadratic fitted by least squares (every rate weighted equally) to the stable rates' mean "
    "scores against log2(lr), snapped to the nearest stable rate in log space (the nearest end of the stable range "
    "when the peak lies beyond it); where the fit is not concave or fewer than three rates are stable, the "
    "best-scoring stable rate. Two losses whose score curves have the same shape get the same rate, whatever their "
    "level or their spread over seeds, and a small change of the scores moves the peak a little: the choice changes "
    "only near the midpoint between two rates. Agreement: how many of the choices made with one tune seed left out "
    "pick the same rate")
GRID_RULE = ("a loss whose chosen or best-scoring rate is the smallest or largest of its grid, and stable, has its "
             "grid extended by a factor of 2 beyond that edge and the new rate tuned like the others, at most "
             "lr_extend times per side; an unstable new rate ends the extension on its side")
FALLBACK_RULE = ("a loss whose rate diverged or collapsed in any training seed is trained again at the next "
                 "smaller rate of the grid that was stable in tuning")
SIDES = ("smallest", "largest")


@contextmanager
def fixed_threads(count: int | None) -> Iterator[None]:
    """The process's intra-op thread count fixed at ``count`` (study.threads; None: left as it is), restored after.
    Entered before any tensor work: set only around the training loop, the same count did not give the same bits
    (mnist1d_sgd's tuning under OMP_NUM_THREADS=1, measured), set first it does."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tune(cfg: StudyConfig, cond: Condition, *, data_root: Path, out: Path, tracking: bool, progress: bool) -> None:
    """Every loss over its lr grid on the validation split (test data is never looked at; under label noise the
    validation labels are noisy too), the grids extended beyond an edge where the choice sits there (GRID_RULE);
    writes the chosen lr per loss with its evidence. Runs at study.threads threads."""
    with fixed_threads(cfg.threads):
        _tune(cfg, cond, data_root=data_root, out=out, tracking=tracking, progress=progress)


def _tune(cfg: StudyConfig, cond: Condition, *, data_root: Path, out: Path, tracking: bool, progress: bool) -> None:
    dataset = _load_tune_data(cond, data_root)
    short = dataclasses.replace(cond, epochs=cond.tune_epochs)
    names = cfg.tuned_losses(cond.name)
    settings = dataclasses.replace(_settings(cfg, splits=("val",), instrument=False, progress=progress),
                                   coarse_speed=TUNE_SPEED)
    grids = {loss: sorted(cond.lr_grid) for loss in names}
    extended = {loss: dict.fromkeys(SIDES, 0) for loss in names}
    records: list[Record] = []
    pending = dict(grids)
    while pending:
        # Only the new (loss, rate) models train: a model's numbers do not depend on the models stacked beside it.
        members = train.grid(list(pending), cond.tune_seeds, pending)
        found: list[Record] = []
        _run_grid(cfg, short, data_root, train.Trainer(short, dataset, members, settings), NullTracker(),
                  into=found, keep_examples=False, load_data=_load_tune_data)
        _with_collapses(tables.history_frame(found, condition=cond.name, dataset=cond.dataset), found,
                        NullTracker(), cond, chance=1 / dataset.num_classes)
        records.extend(found)
        history = tables.history_frame(records, condition=cond.name, dataset=cond.dataset)
        choice = choose_lrs(history, names, grids, val_size=len(dataset.y_val), extended=extended,
                            limit=cond.lr_extend)
        new = grid_extensions(choice, grids, extended, cond.lr_extend)
        pending = {loss: sorted(sides.values()) for loss, sides in new.items()}
        for loss, sides in new.items():
            grids[loss] = sorted([*grids[loss], *sides.values()])
            for side in sides:
                extended[loss][side] += 1
    tables.write_csv(history, out / tables.TUNE)
    tables.write_json({"source": cond.name, "criterion": TUNE_CRITERION, "grid_rule": GRID_RULE,
                       "validation_labels": "noisy" if cond.label_noise > 0 else "clean", **choice}, out / tables.LRS)
    # The runs are logged once the grids are known (the tracker opens its runs up front); the tables hold the same.
    members = train.grid(names, cond.tune_seeds, grids)
    with _tracker(cfg, cond, "tune", members, tuned=False, enabled=tracking) as tracker:
        tracker.log(records)
        tracker.log_artifacts([out / tables.LRS])


def grid_extensions(choice: dict, grids: dict[str, list[float]], extended: dict[str, dict[str, int]],
                    limit: int) -> dict[str, dict[str, float]]:
    """GRID_RULE: per loss and side (smallest, largest), the new rate a factor of 2 beyond an edge of its grid
    where its chosen or best-scoring rate sits, while that edge is stable and its side has had fewer than ``limit``
    extensions."""
    new: dict[str, dict[str, float]] = {}
    for loss, grid in grids.items():
        picks = {choice["lrs"][loss], choice["best_lrs"][loss]}
        for side, edge, beyond in (("smallest", min(grid), min(grid) / 2), ("largest", max(grid), max(grid) * 2)):
            if edge in picks and edge not in choice["unstable"][loss] and extended[loss][side] < limit:
                new.setdefault(loss, {})[side] = beyond
    return new


def choose_lrs(history: pd.DataFrame, loss_names, grid, *, val_size: int,
               extended: dict[str, dict[str, int]] | None = None, limit: int | None = None) -> dict:
    """Per loss, the rate chosen by TUNE_CRITERION, with the evidence: ``{"lrs": {loss: lr}, "best_lrs": {loss:
    best-scoring stable lr}, "peak_lrs": {loss: fitted peak, unsnapped, or None}, "scores": {loss: {lr: mean}},
    "standard_errors": {loss: {lr: se}}, "unstable": {loss: [lr, ...]}, "agreement": {loss: "k of n"}, "edge":
    {loss: why the choice sits at an end of its stable range, or None}, "grids": {loss: [lr, ...]}}``. ``grid``: the
    rates, shared or per loss; ``extended`` (per loss, extensions per side) and ``limit`` (lr_extend) word the edge
    reasons. A seed that diverged (or stopped early) scores zero in the mean."""
    models = measures.runs(history)
    unstable_models = models[models["diverged"] | models["collapsed"]]
    scores = tuning_scores(history)
    keys = ("lrs", "best_lrs", "peak_lrs", "scores", "standard_errors", "unstable", "agreement", "edge", "grids")
    out: dict[str, dict] = {key: {} for key in keys}
    for loss in loss_names:
        rates = sorted(grid[loss] if isinstance(grid, dict) else grid)
        per_seed, unstable = {}, []
        for lr in rates:
            mine = models[(models["loss"] == loss) & np.isclose(models["lr"], lr)]
            rows = scores[(scores["loss"] == loss) & np.isclose(scores["lr"], lr)]
            per_seed[lr] = rows.set_index("seed")["value"].reindex(mine["seed"], fill_value=0.0)
            if ((unstable_models["loss"] == loss) & np.isclose(unstable_models["lr"], lr)).any():
                unstable.append(lr)
        picked = _choose(per_seed, rates, unstable, val_size)
        seeds = sorted({seed for values in per_seed.values() for seed in values.index})
        left_out = [_choose({lr: values.drop(seed, errors="ignore") for lr, values in per_seed.items()}, rates,
                            unstable, val_size).lr for seed in seeds] if len(seeds) > 2 else []
        out["lrs"][loss] = picked.lr
        out["best_lrs"][loss] = picked.best
        out["peak_lrs"][loss] = picked.peak
        out["scores"][loss] = {f"{lr:g}": picked.means[lr] for lr in rates}
        out["standard_errors"][loss] = {f"{lr:g}": picked.errors[lr] for lr in rates}
        out["unstable"][loss] = [float(lr) for lr in unstable]
        out["agreement"][loss] = f"{sum(lr == picked.lr for lr in left_out)} of {len(left_out)}" if left_out else "n/a"
        out["edge"][loss] = _edge_reason(picked.lr, rates, unstable, (extended or {}).get(loss), limit)
        out["grids"][loss] = [float(lr) for lr in rates]
    return out


def tuning_scores(history: pd.DataFrame) -> pd.DataFrame:
    """Each tuning model's score: its mean validation accuracy over the readings in the last TUNE_WINDOW of the
    tuning steps (columns ``loss, lr, seed, value``). A model that stopped before the window has no score."""
    val = measures.select(history, "val", "accuracy")
    if val.empty:
        return pd.DataFrame(columns=["loss", "lr", "seed", "value"])
    last = history["step"].max()
    window = val[val["step"] >= (1 - TUNE_WINDOW) * last]
    return window.groupby(["loss", "lr", "seed"])["value"].mean().reset_index()


@dataclasses.dataclass(frozen=True)
class _Choice:
    lr: float  # chosen: the fitted peak snapped to a stable rate, else the best-scoring stable rate
    best: float  # the best-scoring stable rate
    peak: float | None  # the fitted peak (unsnapped); None where the fit is not concave or has under 3 rates
    means: dict[float, float]
    errors: dict[float, float]


def _choose(per_seed: dict[float, pd.Series], grid, unstable: list[float], val_size: int) -> _Choice:
    """The TUNE_CRITERION choice from per-seed scores per rate, with each rate's mean and standard error (the
    standard error over seeds, at least the binomial one of the validation split: evidence, not part of the rule)."""
    means, errors = {}, {}
    for lr in grid:
        values = per_seed[lr].to_numpy(dtype=float)
        means[lr] = float(values.mean()) if len(values) else 0.0
        spread = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
        binomial = math.sqrt(max(means[lr] * (1 - means[lr]), 0.0) / (val_size * max(len(values), 1)))
        errors[lr] = max(spread, binomial)
    stable = [lr for lr in grid if lr not in unstable] or list(grid)  # all unstable: the least bad still
    best = max(stable, key=lambda lr: (means[lr], -lr))
    peak = fitted_peak(stable, [means[lr] for lr in stable])
    if peak is None:
        return _Choice(best, best, None, means, errors)
    chosen = min(stable, key=lambda lr: (abs(math.log2(lr) - math.log2(peak)), lr))  # nearest in log space
    return _Choice(chosen, best, peak, means, errors)


def fitted_peak(rates: Sequence[float], means: Sequence[float]) -> float | None:
    """The rate at the maximum of the least-squares quadratic through (log2 rate, mean score), every rate weighted
    equally; None with fewer than three rates or a fit that is not concave (no maximum)."""
    if len(rates) < 3:
        return None
    x = np.log2(np.asarray(rates, dtype=float))
    centre = float(x.mean())  # centred: a better-conditioned fit
    a, b, _ = np.polyfit(x - centre, np.asarray(means, dtype=float), 2)
    if not a < 0:
        return None
    return float(2.0 ** (centre - b / (2 * a)))


def _edge_reason(chosen: float, grid: Sequence[float], unstable: list[float], extended: dict[str, int] | None,
                 limit: int | None) -> str | None:
    """Why the chosen rate is the smallest or largest stable rate of its grid; None when it is neither."""
    stable = [lr for lr in grid if lr not in unstable]
    if not stable:
        return "every rate of the grid diverged or collapsed in a tune seed: the least bad was chosen"
    reasons = []
    for side, end, step in (("smallest", min(stable), -1), ("largest", max(stable), 1)):
        if chosen != end:
            continue
        position = grid.index(end) + step
        if 0 <= position < len(grid):  # a rate beyond it was tuned: unstable
            word = "smaller" if step < 0 else "larger"
            reasons.append(f"the {side} stable rate: the next {word} rate, {grid[position]:g}, diverged or collapsed "
                           "in a tune seed")
        elif limit is None:
            reasons.append(f"the {side} rate of its grid")
        elif limit == 0:
            reasons.append(f"the {side} rate of its grid, which is not extended (lr_extend: 0)")
        else:
            times = (extended or {}).get(side, 0)
            reasons.append(f"the {side} rate of its grid after {times} of {limit} extensions beyond that edge "
                           "(lr_extend, the limit)")
    return "; ".join(reasons) or None


def train_condition(cfg: StudyConfig, cond: Condition, lrs: dict[str, float], *, data_root: Path, out: Path,
                    checkpoint: Path | None, tracking: bool, progress: bool,
                    unstable: dict[str, list[float]] | None = None,
                    grids: dict[str, list[float]] | None = None) -> None:
    """Every loss x seed in lockstep with its tuned lr; resumable from ``checkpoint`` after SIGINT/SIGTERM.

    A loss whose rate diverges or collapses in any seed falls back to the next smaller rate of the grid that was
    stable in tuning (``unstable``: the rates tuning found unstable, per loss; ``grids``: the grids it tuned, per
    loss, the condition's lr_grid where absent), and that loss trains again: a
    model's numbers do not depend on the models stacked beside it (``tests/test_backend.py``), so the other losses'
    models keep what they measured, and the tables are those of one pass at the final rates."""
    with fixed_threads(cfg.threads):
        _train_condition(cfg, cond, lrs, data_root=data_root, out=out, checkpoint=checkpoint, tracking=tracking,
                         progress=progress, unstable=unstable, grids=grids)


def _train_condition(cfg: StudyConfig, cond: Condition, lrs: dict[str, float], *, data_root: Path, out: Path,
                     checkpoint: Path | None, tracking: bool, progress: bool,
                     unstable: dict[str, list[float]] | None = None,
                     grids: dict[str, list[float]] | None = None) -> None:
    dataset = _load_data(cond, data_root)
    for name in TRAIN_OUTPUTS:  # nothing from an earlier run may look like this run's output
        (out / name).unlink(missing_ok=True)
    lrs, fallbacks = dict(lrs), {}
    again: dict = {"kept": [], "losses": None}  # the next pass: items it keeps, losses it trains (None: all)

    def finish(trainer: train.Trainer, items: list, history: pd.DataFrame, summary: pd.DataFrame, tracker) -> bool:
        """After a pass, inside its tracker: fall back from the failed rates (False: train again), or write the
        outputs and attach them to the parent run (True)."""
        moved = {}
        for loss, evidence in _failed_losses(history).items():
            if again["losses"] is not None and loss not in again["losses"]:
                continue  # kept from an earlier pass, which recorded its failure
            grid = (grids or {}).get(loss, cond.lr_grid)
            smaller = [lr for lr in grid if lr < lrs[loss] and lr not in (unstable or {}).get(loss, [])]
            fallbacks.setdefault(loss, []).append({"lr": lrs[loss], **evidence,
                                                   "next_lr": max(smaller) if smaller else None})
            if smaller:
                moved[loss] = max(smaller)
        if moved:
            changes = ", ".join(f"{loss} {lrs[loss]:g} -> {lr:g}" for loss, lr in moved.items())
            print(f"study train: {cond.name}: {changes} ({FALLBACK_RULE})", file=sys.stderr)
            lrs.update(moved)
            again.update(kept=[item for item in items if item.loss not in moved], losses=set(moved))
            return False
        setup = {**_setup(cfg, cond, dataset, trainer, lrs), "lr_fallbacks": fallbacks, "fallback_rule": FALLBACK_RULE}
        tables.write_parquet(
            tables.examples_frame([i for i in items if isinstance(i, ExampleStats)],
                                  condition=cond.name, dataset=cond.dataset),
            out / tables.EXAMPLES)
        tables.write_json(setup, out / tables.SETUP)
        tables.write_csv(summary, out / tables.SUMMARY)
        tables.write_csv(tables.curves(history), out / tables.CURVES)
        tables.write_csv(history, out / tables.HISTORY)  # last: its presence means the stage finished
        tracker.log_artifacts([out / tables.SUMMARY, out / tables.SETUP])
        return True

    while not _train_pass(cfg, cond, dataset, lrs, checkpoint=checkpoint, tracking=tracking, progress=progress,
                          finish=finish, data_root=data_root, kept=again["kept"], losses=again["losses"]):
        pass
    if checkpoint:
        Checkpoint(checkpoint, "").remove()


def _train_pass(cfg: StudyConfig, cond: Condition, dataset: data.Dataset, lrs: dict[str, float], *,
                checkpoint: Path | None, tracking: bool, progress: bool, finish, data_root: Path,
                kept: Sequence[Record | ExampleStats] = (), losses: set[str] | None = None) -> bool:
    """One lockstep run of the loss x seed grid at ``lrs``, then ``finish(trainer, items, history, summary,
    tracker)`` inside the run's tracker; returns what ``finish`` returns. With ``losses``, only those losses'
    models train and ``kept`` (an earlier pass's items of the others) stands for the rest: the tables and the
    tracker's runs cover every loss either way."""
    members = train.grid(cond.losses, cond.seeds, {loss: [lrs[loss]] for loss in cond.losses})
    training = members if losses is None else [m for m in members if m.loss in losses]
    settings = _settings(cfg, splits=("val", "test"), instrument=True, progress=progress)
    trainer = train.Trainer(cond, dataset, training, settings)
    local = _executor(cfg) == "local"  # shards on Ray restart from scratch: no checkpoint
    fingerprint = _fingerprint(cfg, cond, lrs, dataset.sizes(), training)
    saved = Checkpoint(checkpoint, fingerprint) if checkpoint and local else None
    items: list[Record | ExampleStats] = []
    state = saved.load() if saved else None
    if state is not None:
        trainer.load(state["trainer"])
        items = _decode(state["items"])
    with _tracker(cfg, cond, "train", members, tuned=True, enabled=tracking) as tracker:
        tracker.log([item for item in [*kept, *items] if isinstance(item, Record)])
        with _stop_signals() as stopping:
            try:
                _run_grid(cfg, cond, data_root, trainer, tracker, into=items, keep_examples=True, stop=stopping)
            except train.Interrupted:
                if saved:
                    saved.save({"trainer": trainer.state(), "items": _encode(items)})
                raise KeyboardInterrupt from None
        print(f"study train: {cond.name}: evaluations took {trainer.evaluation_seconds:.0f} s", file=sys.stderr)
        if kept:
            items = cluster.merge([kept, items], members)  # the order of one pass over every member
        records = [item for item in items if isinstance(item, Record)]
        history = tables.history_frame(records, condition=cond.name, dataset=cond.dataset)
        history = _with_collapses(history, records, tracker, cond, chance=1 / dataset.num_classes)
        summary = measures.run_summary(history, cond.targets)
        for row in summary.to_dict("records"):
            tracker.set_summary(row["run"], {k: v for k, v in row.items()
                                             if k.startswith(tables.SUMMARY_PREFIXES) and _finite(v)})
        return finish(trainer, items, history, summary, tracker)


def _with_collapses(history: pd.DataFrame, records: list[Record], tracker, cond: Condition, *,
                    chance: float) -> pd.DataFrame:
    """The history with a ``train/collapsed_step`` row per collapsed model (also sent to the tracker, which tags
    the run)."""
    found = measures.collapses(history, chance)
    if found.empty:
        return history
    steps_per_epoch = _steps_per_epoch(history)
    marks = [Record(row.loss, row.lr, row.seed, round(row.collapsed_step / steps_per_epoch, 4), row.collapsed_step,
                    "train", "collapsed_step", float(row.collapsed_step)) for row in found.itertuples()]
    tracker.log(marks)
    records.extend(marks)
    return tables.history_frame(records, condition=cond.name, dataset=cond.dataset)


def _steps_per_epoch(history: pd.DataFrame) -> float:
    rows = history[history["epoch"] > 0]
    return float((rows["step"] / rows["epoch"]).median()) if len(rows) else 1.0


def _failed_losses(history: pd.DataFrame) -> dict[str, dict]:
    """Per loss with a diverged or collapsed seed: which seeds, at which steps."""
    models = measures.runs(history)
    failed = {}
    for loss, group in models[models["diverged"] | models["collapsed"]].groupby("loss", sort=False):
        failed[loss] = {
            "diverged": {int(r.seed): int(r.diverged_step) for r in group.itertuples() if r.diverged},
            "collapsed": {int(r.seed): int(r.collapsed_step) for r in group.itertuples() if r.collapsed},
        }
    return failed


def _executor(cfg: StudyConfig) -> str:
    return cluster.executor(cfg.executor)  # STUDY_EXECUTOR, when set, overrides the params


def _run_grid(cfg: StudyConfig, cond: Condition, data_root: Path, trainer: train.Trainer, tracker, *, into: list,
              keep_examples: bool, stop=lambda: False, load_data=None) -> None:
    """Train the trainer's grid into ``into``: here, or as one Ray task per seed (the same items, in the same
    order; each task loads the data itself from ``data_root``, with ``load_data(cond, root)``, by default
    ``_load_data``)."""
    if _executor(cfg) == "local":
        collect(trainer.run(stop=stop), tracker, into=into, keep_examples=keep_examples)
        return
    load = functools.partial(load_data or _load_data, cond, Path(data_root).resolve())
    settings = dataclasses.replace(trainer.settings, progress=False)
    with cluster.session():
        outcome = cluster.run_grid(cond, load, trainer.members, settings, tracker, keep_examples=keep_examples,
                                   stop=stop)
    into.extend(outcome.items)
    trainer.evaluation_seconds = outcome.evaluation_seconds


def collect(stream: Iterator[Record | ExampleStats], tracker, *, into: list, keep_examples: bool = False) -> None:
    """Drain a trainer's stream into ``into`` (kept even if the stream raises); Records also go to the tracker,
    which sends them in batches off the training loop."""
    items = into
    pending: list[Record] = []
    for item in stream:
        if isinstance(item, Record):
            items.append(item)
            pending.append(item)
            if len(pending) >= 500:
                tracker.log(pending)
                pending = []
        elif keep_examples:
            items.append(item)
    tracker.log(pending)


def _load_data(cond: Condition, root: Path) -> data.Dataset:
    return data.load(cond.dataset, root, val_size=cond.val_size, split_seed=cond.split_seed,
                     train_size=cond.train_size, test_size=cond.test_size, label_noise=cond.label_noise,
                     noise_seed=cond.noise_seed, heldout_classes=cond.heldout_classes)


def _load_tune_data(cond: Condition, root: Path) -> data.Dataset:
    """The tune stage's data: validation labels with the training labels' noise (clean where there is none)."""
    return _load_data(cond, root).with_noisy_validation()


def _settings(cfg: StudyConfig, *, splits, instrument: bool, progress: bool) -> train.Settings:
    return train.Settings(
        confident=cfg.confident, ece_bins=cfg.ece_bins, device=cfg.device, splits=splits, instrument=instrument,
        progress=progress, threads=cfg.threads)


@contextmanager
def _tracker(cfg: StudyConfig, cond: Condition, stage: str, members, *, tuned: bool, enabled: bool):
    runs = [tracking.RunSpec(m.loss, m.lr, m.seed, tuned=tuned, conventions=CONVENTIONS[m.loss]) for m in members]
    with tracking.open_tracker(enabled=enabled and cfg.tracking, experiment=cfg.experiment, condition=cond.name,
                               stage=stage, dataset=cond.dataset, params=flatten(cfg, cond.name),
                               runs=runs) as tracker:
        yield tracker


def _setup(cfg: StudyConfig, cond: Condition, dataset: data.Dataset, trainer: train.Trainer, lrs) -> dict:
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cond).items()}
    return {
        "condition": cond.name, "dataset": cond.dataset, "params": params, "sizes": dataset.sizes(),
        "model": cond.model.describe(dataset.input_dim, dataset.num_classes), "backend": trainer.backend,
        "losses": list(cond.losses), "seeds": list(cond.seeds),
        "lrs": {loss: lrs[loss] for loss in cond.losses}, "lr_source": cond.lr_from,
        "steps_per_epoch": trainer.steps_per_epoch, "total_steps": trainer.total_steps,
        "device": str(trainer.device), "confident": cfg.confident, "ece_bins": cfg.ece_bins,
        "loss_options": _loss_options(cond),
    }


def _loss_options(cond: Condition) -> dict[str, dict[str, float]]:
    return {loss: dict(losses.spec(loss).options) for loss in cond.losses}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ---- interruption -------------------------------------------------------------------------------------------


@contextmanager
def _stop_signals():
    """While the block runs, SIGINT and SIGTERM ask training to pause at the next step boundary (a second
    signal interrupts at once). Yields the ``stop()`` callable the trainer polls."""
    requested = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(requested)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Checkpoint:
    """An interrupted run's state, written atomically and loaded with ``weights_only=True`` (no pickle code)."""

    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = Path(path), fingerprint

    def save(self, state: dict) -> None:
        with tables.atomic_path(self.path) as tmp:
            torch.save({"fingerprint": self.fingerprint, **state}, tmp)

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, weights_only=True, map_location="cpu")
        except Exception as err:  # truncated or foreign file: start over, loudly
            warnings.warn(f"checkpoint {self.path} is unreadable ({type(err).__name__}); training from scratch",
                          stacklevel=2)
            return None
        if state.get("fingerprint") != self.fingerprint:
            warnings.warn(f"checkpoint {self.path} belongs to other params, data or trainer version; training "
                          "from scratch", stacklevel=2)
            return None
        return state

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _fingerprint(cfg: StudyConfig, cond: Condition, lrs: dict[str, float], sizes: dict,
                 members: list[train.Member]) -> str:
    what = {"condition": dataclasses.asdict(cond), "losses": cond.losses, "seeds": cond.seeds, "lrs": lrs,
            "members": [dataclasses.astuple(m) for m in members],
            "loss_options": _loss_options(cond), "confident": cfg.confident, "ece_bins": cfg.ece_bins, "sizes": sizes,
            "device": cfg.device, "state_format": train.STATE_FORMAT}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=list).encode()).hexdigest()


_EXAMPLE_ARRAYS = ("index", "label", "predicted", "p_true", "confidence", "loss_value", "logit_grad_norm")


def _encode(items: list[Record | ExampleStats]) -> list:
    """Records and example stats as tuples, dicts and tensors: what ``torch.load(weights_only=True)`` accepts."""
    out = []
    for item in items:
        if isinstance(item, Record):
            out.append(("record", *dataclasses.astuple(item)))
        else:
            arrays = {name: torch.from_numpy(np.ascontiguousarray(getattr(item, name))) for name in _EXAMPLE_ARRAYS}
            out.append(("examples", item.loss, item.lr, item.seed, item.epoch, item.step, item.split, arrays))
    return out


def _decode(encoded: list) -> list[Record | ExampleStats]:
    items: list[Record | ExampleStats] = []
    for kind, *fields in encoded:
        if kind == "record":
            items.append(Record(*fields))
        else:
            *head, arrays = fields
            items.append(ExampleStats(*head, **{name: arrays[name].numpy() for name in _EXAMPLE_ARRAYS}))
    return items

