"""The study's arithmetic: the floating-point operations of every training step and every evaluation the params
ask for, and the time they take at a given matmul rate. Against a measured wall time this says how close the
study runs to the machine's peak, and where the rest goes. Before a run it says the time to expect on this
machine (its peak measured in seconds, at an assumed arithmetic ratio) and warns when that is over 30 minutes.

Per-example FLOPs come from PyTorch's own counter (``torch.utils.flop_counter.FlopCounterMode``) on the
condition's real model, forward alone (evaluations) and forward + backward (training), so any registered model is
counted without a hand-written formula. Only matrix products and convolutions are counted: elementwise work
(activations, losses, optimizer updates) is part of "the rest".

    study budget --params experiments/study.yaml [--peak-gflops 90] [--wall-seconds 1369]
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from study import config, data, features, losses, model, runner, train
from study.config import Condition, StudyConfig

PROBE_BATCH = 8  # examples pushed through the counter (per-example FLOPs are its total / PROBE_BATCH)
# The share of the matmul peak the whole study sustains (arithmetic bound / wall time): 0.45-0.6 measured on 2-core
# machines (issue 29). The expected time is the bound divided by it.
ARITHMETIC_RATIO = 0.5
BUDGET_MINUTES = 30  # the study's wall-time budget


@dataclass(frozen=True)
class Arithmetic:
    """FLOPs of one condition's stage, split into training steps and evaluations."""

    condition: str
    stage: str  # "tune" | "train"
    models: int
    steps: int
    train_flops: float
    eval_flops: float

    @property
    def total(self) -> float:
        return self.train_flops + self.eval_flops


def model_spec(cond: Condition):
    return cond.model


def per_example_flops(spec, input_dim: int, classes: int) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of one example through the model ``spec`` builds."""
    net = model.init(spec, input_dim, classes, seed=0)
    x = torch.randn(PROBE_BATCH, input_dim)
    y = torch.zeros(PROBE_BATCH, dtype=torch.long)
    with FlopCounterMode(display=False) as forward:
        with torch.no_grad():
            net(x)
    with FlopCounterMode(display=False) as step:
        losses.build(losses.reference())(net(x), y).mean().backward()
    return forward.get_total_flops() / PROBE_BATCH, step.get_total_flops() / PROBE_BATCH


def arithmetic(cfg: StudyConfig, cond: Condition, sizes: dict[str, int], input_dim: int,
               classes: int) -> list[Arithmetic]:
    forward, step = per_example_flops(model_spec(cond), input_dim, classes)
    out = []
    stages = [("train", len(cond.losses) * len(cond.seeds), cond.epochs, True)]
    if cond.name in cfg.tune:
        stages.insert(0, ("tune", len(cfg.tuned_losses(cond.name)) * len(cond.lr_grid) * len(cond.tune_seeds),
                          cond.tune_epochs, False))
    for stage, models, epochs, instrument in stages:
        steps_per_epoch = sizes["train"] // cond.batch_size
        total = steps_per_epoch * epochs
        per_eval = steps_per_epoch / cond.evals_per_epoch
        full = {round(k * per_eval) for k in range(1, epochs * cond.evals_per_epoch + 1)}
        speed = train.schedule(total, cond.speed_resolution, None if instrument else runner.TUNE_SPEED) - full
        full_examples = sizes["val"]
        if instrument:
            full_examples += sizes["test"] + min(train.MEMO_SIZE, sizes["train"]) + sizes.get("heldout", 0)
        elif sizes.get("flipped"):
            full_examples += min(train.MEMO_SIZE, sizes["train"])
        evals = (len(full) + 1) * full_examples + len(speed) * sizes["val"]
        probe_fit = 0.0
        if instrument and sizes.get("transfer"):  # the last evaluation's linear probe on frozen features
            evals += sizes["transfer"] + sizes["test"] + sizes.get("heldout", 0)
            probe_fit = probe_flops(cond, sizes["transfer"], input_dim, classes)
        out.append(Arithmetic(cond.name, stage, models, total, models * total * cond.batch_size * step,
                              models * (evals * forward + probe_fit)))
    return out


def probe_flops(cond: Condition, examples: int, input_dim: int, classes: int) -> float:
    """One model's linear-probe fit (study.features.linear_probe): at most PROBE_ITERATIONS L-BFGS iterations, each
    counted as two objective evaluations (the line search's), each a forward and backward pass (3 x 2 FLOPs per
    multiply-add) of a [features, every class] map over ``examples``."""
    with torch.no_grad():
        hidden, _ = model_spec(cond).build(input_dim, classes)(torch.zeros(1, input_dim), features=True)
    return features.PROBE_ITERATIONS * 2 * 6 * examples * hidden.shape[1] * data.NUM_CLASSES


def study_arithmetic(cfg: StudyConfig, data_root: Path) -> list[Arithmetic]:
    rows = []
    for cond in cfg.conditions.values():
        ds = data.load(cond.dataset, data_root, val_size=cond.val_size, split_seed=cond.split_seed,
                       train_size=cond.train_size, test_size=cond.test_size, label_noise=cond.label_noise,
                       noise_seed=cond.noise_seed, heldout_classes=cond.heldout_classes)
        rows += arithmetic(cfg, cond, ds.sizes(), ds.input_dim, ds.num_classes)
    return rows


def table(rows: list[Arithmetic], peak_flops: float | None, wall_seconds: float | None) -> str:
    lines = ["| stage | models | steps | training TFLOP | evaluation TFLOP | at peak (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        at_peak = f"{r.total / peak_flops:.0f}" if peak_flops else "-"
        lines.append(f"| {r.stage}@{r.condition} | {r.models} | {r.steps} | {r.train_flops / 1e12:.1f} | "
                     f"{r.eval_flops / 1e12:.1f} | {at_peak} |")
    total = sum(r.total for r in rows)
    lines.append(f"\nTotal: {total / 1e12:.1f} TFLOP ({sum(r.train_flops for r in rows) / 1e12:.1f} training, "
                 f"{sum(r.eval_flops for r in rows) / 1e12:.1f} evaluation).")
    if peak_flops:
        bound = total / peak_flops
        lines.append(f"At the measured matmul peak of {peak_flops / 1e9:.0f} GFLOP/s: {bound:.0f} s "
                     f"({bound / 60:.1f} min).")
        lines.append(expectation(total, peak_flops))
        if wall_seconds:
            lines.append(f"Measured wall time {wall_seconds:.0f} s: the arithmetic bound is "
                         f"{bound / wall_seconds:.2f} of it.")
    return "\n".join(lines)


def expected_minutes(total_flops: float, peak_flops: float) -> float:
    """The study's expected wall time on a machine of this matmul peak, at the assumed ``ARITHMETIC_RATIO``."""
    return total_flops / (peak_flops * ARITHMETIC_RATIO) / 60


def expectation(total_flops: float, peak_flops: float) -> str:
    """The expected time on this machine, as a WARNING when it is over ``BUDGET_MINUTES``."""
    minutes = expected_minutes(total_flops, peak_flops)
    reckoning = (f"{total_flops / 1e12:.1f} TFLOP / ({peak_flops / 1e9:.0f} GFLOP/s matmul peak x {ARITHMETIC_RATIO} "
                 f"assumed arithmetic ratio, 0.45-0.6 measured) = {minutes:.1f} min")
    if minutes > BUDGET_MINUTES:
        return (f"WARNING: the study is expected to take {minutes:.1f} min on this machine, over its "
                f"{BUDGET_MINUTES}-minute budget: {reckoning}. Cut the params' arithmetic (seeds, epochs, grid, "
                f"evaluation sizes) or expect the longer run.")
    return f"Expected on this machine: {reckoning}, within the {BUDGET_MINUTES}-minute budget."


def main(*, params: Path, data_root: Path, peak_gflops: float | None, wall_seconds: float | None,
         as_json: bool) -> None:
    """``study budget``: the table (or one JSON object) on stdout; without ``peak_gflops``, the peak is measured."""
    cfg = config.load(params, tracking=False)
    rows = study_arithmetic(cfg, data_root)
    peak = peak_gflops * 1e9 if peak_gflops else _measured_peak()
    if as_json:
        total = sum(r.total for r in rows)
        json.dump({"rows": [r.__dict__ for r in rows], "peak_flops": peak, "wall_seconds": wall_seconds,
                   "arithmetic_ratio": ARITHMETIC_RATIO, "expected_minutes": expected_minutes(total, peak)},
                  sys.stdout, indent=1)
        print(expectation(total, peak), file=sys.stderr)  # stdout stays one JSON object
    else:
        print(table(rows, peak, wall_seconds))


def _measured_peak() -> float:
    from study.ops.bench import matmul_peak

    return matmul_peak(3.0)
