"""``study bench``: the lockstep trainer against per-model loops and the machine's matmul peak, side by side; its
two backends (fused, autograd) on the MLP grid; the autograd CNN grid against a per-model loop of the same CNN.

Every variant is timed once per round, the rounds alternating the variants' order (ABC, CBA, ...), all in one
process, so that drifting load on a shared machine hits them alike. The claims are the ratios, each the median
over rounds of the ratio within a round; throughputs are medians. Each measurement keeps to its time budget: a
variant is built, fed its data and warmed up once, and every measurement continues it for ``seconds`` and counts
the whole steps it took, so the bench's length is set by its budgets, not by the machine's speed. Imports the
trainer and the tracker; only ``study.ops.budget`` imports this module (for ``matmul_peak``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from study import data, model, runner, tracking, train
from study.config import Condition
from study.losses import CONVENTIONS, LOSSES
from study.model import CNN1dSpec, MLPSpec, init_mlp

LOSS_NAMES = tuple(LOSSES)[:4]  # the default grid's: the mission's four, registered first
SEEDS = (0, 1, 2, 3, 4)  # the default grid: 4 losses x 5 seeds
CNN = CNN1dSpec(channels=(25, 25, 25), kernel=5, stride=2, padding=1)  # the MNIST-1D paper's
BATCH = 128  # the study's batch size
CANONICAL_BATCH = 64  # the textbook loop's
TRAIN_EXAMPLES = 60_000  # at most: every training example of either dataset (tests shrink it)
EPOCHS = 1000  # the trainer's schedule, never reached: a measurement ends on its clock, not at the schedule's end
ROUNDS = 5
VARIANTS = 5 + 4 + 2  # Fashion-MNIST's, MNIST-1D's and the CNN's: each warmed up once and measured every round


def main(*, data_root: Path, as_json: bool, seconds: float) -> None:
    """``seconds`` is every measurement's budget (the peak's and the warm-ups' too); progress goes to stderr."""
    started = time.perf_counter()
    count = VARIANTS * (ROUNDS + 1) + 1
    print(f"bench: {count} measurements of {seconds:g} s each, plus set-up", file=sys.stderr, flush=True)
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    peak = matmul_peak(seconds)
    results["peak_gflops"] = peak / 1e9
    with tempfile.TemporaryDirectory() as scratch:
        results.update(bench_dataset("fashion_mnist", (256, 256), data_root, seconds, peak, Path(scratch)))
        results["mnist1d"] = bench_dataset("mnist1d", (100, 100), data_root, seconds, peak, Path(scratch))
    results["mnist1d_cnn"] = bench_cnn(data_root, seconds)
    print(f"bench: done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(results))


def matmul_peak(seconds: float, size: int = 2048) -> float:
    """The machine's fp32 matrix-multiply rate in FLOP/s: the best of repeated square products."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def _bench_data(name: str, root: Path) -> data.Dataset:
    small = data.load(name, root, val_size=1000, split_seed=0, train_size=0, test_size=1000, label_noise=0.0,
                      noise_seed=0)
    keep = TRAIN_EXAMPLES
    return dataclasses.replace(small, x_train=small.x_train[:keep], y_train=small.y_train[:keep],
                               y_train_clean=small.y_train_clean[:keep], flipped=small.flipped[:keep])


def bench_dataset(name: str, hidden: tuple[int, ...], root: Path, seconds: float, peak: float,
                  scratch: Path) -> dict:
    """The MLP grid: the trainer (fused backend, as the study runs it) with and without instrumentation and tracking,
    the same grid on the autograd backend, and per-model loops. Every variant is built and warmed up once; each
    measurement then trains it on for ``seconds``."""
    small = _bench_data(name, root)
    spec = MLPSpec(hidden)
    sizes = (small.input_dim, *hidden, small.num_classes)
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    models = len(LOSS_NAMES) * len(SEEDS)
    store = f"sqlite:///{scratch / 'bench.db'}"
    with contextlib.ExitStack() as trackers:
        variants: dict[str, Callable[[], Any]] = {
            "trainer": TrainerRun(small, spec, trackers, store=store, instrument=True, track=True),
            "trainer_plain": TrainerRun(small, spec, trackers, instrument=False, backend="fused"),
            "autograd_plain": TrainerRun(small, spec, trackers, instrument=False, backend="autograd"),
            "inmemory": PerModelLoop(init_mlp(sizes, 0), _tensor_batches(small.x_train, small.y_train, BATCH)),
        }
        if name != "mnist1d":
            variants["canonical"] = PerModelLoop(init_mlp(sizes, 0), _canonical_batches(name, root))
        samples = interleaved(_budgeted(variants, seconds), ROUNDS, label=name)
    trainer, trainer_run = zip(*samples["trainer"])
    plain, plain_run = zip(*samples["trainer_plain"])
    autograd, _ = zip(*samples["autograd_plain"])
    out = {
        "model": spec.describe(small.input_dim, small.num_classes),
        "models": models,
        "rounds": ROUNDS,
        "seconds": seconds,
        "flops_per_sample": 6 * weights,
        "trainer_model_samples_per_s": statistics.median(trainer),
        "trainer_plain_model_samples_per_s": statistics.median(plain),
        "trainer_run_model_samples_per_s": statistics.median(trainer_run),
        "trainer_plain_run_model_samples_per_s": statistics.median(plain_run),
        "inmemory_model_samples_per_s": statistics.median(samples["inmemory"]),
        "fraction_of_peak": statistics.median(trainer) * 6 * weights / peak,
        "speedup_vs_inmemory": paired_ratio(trainer, samples["inmemory"]),
        "tracking_overhead": paired_ratio(plain_run, trainer_run) - 1,
        # The two backends on the same grid, neither instrumented nor tracked: model-samples/s and a step's time.
        "fused_model_samples_per_s": statistics.median(plain),
        "autograd_model_samples_per_s": statistics.median(autograd),
        "fused_step_ms": 1e3 * models * BATCH / statistics.median(plain),
        "autograd_step_ms": 1e3 * models * BATCH / statistics.median(autograd),
        "autograd_vs_fused": paired_ratio(autograd, plain),  # < 1: autograd is slower
    }
    if "canonical" in samples:
        out["canonical_model_samples_per_s"] = statistics.median(samples["canonical"])
        out["speedup_vs_canonical"] = paired_ratio(trainer, samples["canonical"])
    # Every round's model-samples/s, for the spread behind the medians (trainer variants: training, whole run).
    out["per_round"] = samples
    return out


def _budgeted(variants: dict[str, Callable[[float], Any]], seconds: float) -> dict[str, Callable[[], Any]]:
    """Each variant warmed up once (its first steps, allocations, the trainer's step-0 evaluation, outside every
    measurement), then bound to the budget of one measurement."""
    for name, measure in variants.items():
        start = time.perf_counter()
        measure(seconds)
        print(f"bench: warm-up {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return {name: functools.partial(measure, seconds) for name, measure in variants.items()}


def interleaved(variants: dict[str, Callable[[], Any]], rounds: int, *, label: str) -> dict[str, list]:
    """Each variant's measurement in every round, the variants' order reversed in every other round (a drift
    in load then hits the first and the last alike). A line on stderr after each measurement: its time."""
    samples: dict[str, list] = {name: [] for name in variants}
    order = list(variants)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            start = time.perf_counter()
            samples[name].append(variants[name]())
            print(f"bench {label}: round {r + 1}/{rounds}: {name}: {time.perf_counter() - start:.1f} s",
                  file=sys.stderr, flush=True)
    return samples


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median over rounds of the ratio of two variants measured in the same round."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def bench_cnn(root: Path, seconds: float) -> dict:
    """The cnn1d grid on MNIST-1D (autograd backend) against the same CNN trained one model at a time (nn.Module and
    torch.optim, in-memory batches of the study's size)."""
    small = _bench_data("mnist1d", root)
    models = len(LOSS_NAMES) * len(SEEDS)
    with contextlib.ExitStack() as trackers:
        trainer = TrainerRun(small, CNN, trackers, instrument=False)
        variants = {
            "trainer_plain": lambda budget: trainer(budget)[0],
            "loop": PerModelLoop(model.init(CNN, small.input_dim, small.num_classes, 0),
                                 _tensor_batches(small.x_train, small.y_train, BATCH)),
        }
        samples = interleaved(_budgeted(variants, seconds), ROUNDS, label="mnist1d cnn1d")
    return {
        "model": CNN.describe(small.input_dim, small.num_classes),
        "models": models,
        "rounds": ROUNDS,
        "seconds": seconds,
        "trainer_plain_model_samples_per_s": statistics.median(samples["trainer_plain"]),
        "loop_model_samples_per_s": statistics.median(samples["loop"]),
        "trainer_step_ms": 1e3 * models * BATCH / statistics.median(samples["trainer_plain"]),
        "speedup_vs_loop": paired_ratio(samples["trainer_plain"], samples["loop"]),
        "per_round": samples,
    }


class TrainerRun:
    """The study's trainer on the default grid, built once, with or without instrumentation (gradient norms,
    probe-set logit gradients, per-example test outputs, temperature) and MLflow tracking (its tracker is entered
    into ``trackers`` and closed with them). Each call trains on where the last one stopped until ``seconds`` are
    spent (at least one step) and returns model-samples per second over the whole steps taken: training (the steps
    with their periodic measurements, evaluation excluded, as the per-model loops do none) and the whole measurement
    (evaluations that fell into it and the records sent to the tracker included; set-up is paid once, outside every
    measurement)."""

    def __init__(self, ds: data.Dataset, spec: model.ModelSpec, trackers: contextlib.ExitStack, *, instrument: bool,
                 track: bool = False, store: str | None = None, backend: str = "auto"):
        cond = Condition(
            name="bench", dataset=ds.name, model=spec, backend=backend, losses=LOSS_NAMES, optimizer="sgd",
            momentum=0.9, batch_size=BATCH, epochs=EPOCHS, label_noise=0.0, noise_seed=0, val_size=len(ds.y_val),
            split_seed=0, train_size=0, test_size=len(ds.y_test), lr_grid=(0.03,), lr_from="bench", tune_epochs=1,
            tune_seeds=(0,), evals_per_epoch=1, speed_resolution=0.1, log_every=50, probe_size=256,
            targets=(0.5,))
        members = train.grid(LOSS_NAMES, SEEDS, {loss: [0.03] for loss in LOSS_NAMES})
        runs = [tracking.RunSpec(m.loss, m.lr, m.seed, tuned=False, conventions=CONVENTIONS[m.loss])
                for m in members]
        self.trainer = train.Trainer(cond, ds, members, train.Settings(instrument=instrument, progress=False))
        self.models = len(members)
        self.tracker = trackers.enter_context(tracking.open_tracker(
            enabled=track, experiment="bench", condition="bench", stage="bench", dataset=ds.name, params={},
            runs=runs, uri=store))

    def __call__(self, seconds: float) -> tuple[float, float]:
        trainer = self.trainer
        steps, evaluating = trainer.step, trainer.evaluation_seconds
        start = time.perf_counter()
        deadline = start + seconds
        # At least one step, so that a budget spent on an evaluation still measures one.
        spent = lambda: trainer.step > steps and time.perf_counter() >= deadline  # noqa: E731
        runner.collect(_until_stopped(trainer.run(stop=spent)), self.tracker, into=[])
        whole = time.perf_counter() - start
        if trainer.step >= trainer.total_steps:
            raise RuntimeError(f"the bench's trainer reached the end of its {EPOCHS} epochs; raise bench.EPOCHS")
        samples = (trainer.step - steps) * BATCH * self.models
        return samples / (whole - (trainer.evaluation_seconds - evaluating)), samples / whole


def _until_stopped(stream: Iterator) -> Iterator:
    """The trainer's stream, ending quietly where its ``stop()`` paused it."""
    try:
        yield from stream
    except train.Interrupted:
        return


class PerModelLoop:
    """One model at a time (nn.Module and torch.optim SGD), built once; each call trains it on for ``seconds`` (at
    least one step) and returns samples per second over the whole steps taken."""

    def __init__(self, net: torch.nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]):
        self.net, self.batches = net, batches
        self.opt = torch.optim.SGD(net.parameters(), lr=0.03, momentum=0.9)

    def __call__(self, seconds: float) -> float:
        samples, start = 0, time.perf_counter()
        while samples == 0 or time.perf_counter() - start < seconds:
            x, y = next(self.batches)
            loss = F.cross_entropy(self.net(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            samples += len(y)
        return samples / (time.perf_counter() - start)


def _canonical_batches(name: str, root: Path) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The textbook loop's batches: torchvision dataset with ToTensor, DataLoader(batch 64, shuffle)."""
    from torchvision import datasets, transforms

    cls = {"fashion_mnist": datasets.FashionMNIST, "mnist": datasets.MNIST}[name]
    dataset = cls(str(root), train=True, download=False, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=CANONICAL_BATCH, shuffle=True)
    while True:
        for images, labels in loader:
            yield images.flatten(1), labels


def _tensor_batches(x: torch.Tensor, y: torch.Tensor, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        order = torch.randperm(len(y))
        for i in range(0, len(y) - batch + 1, batch):
            index = order[i:i + batch]
            yield x[index], y[index]


def format_table(results: dict) -> str:
    rows = [("", "Fashion-MNIST", "MNIST-1D")]
    fashion, small = results, results["mnist1d"]

    def both(key: str, fmt: str) -> tuple[str, str, str]:
        return (key, *(fmt.format(r[key]) if key in r else "n/a" for r in (fashion, small)))

    rows += [
        ("model", fashion["model"], small["model"]),
        both("trainer_model_samples_per_s", "{:,.0f}"),
        both("trainer_plain_model_samples_per_s", "{:,.0f}"),
        both("trainer_run_model_samples_per_s", "{:,.0f}"),
        both("trainer_plain_run_model_samples_per_s", "{:,.0f}"),
        both("inmemory_model_samples_per_s", "{:,.0f}"),
        both("canonical_model_samples_per_s", "{:,.0f}"),
        both("fraction_of_peak", "{:.0%}"),
        both("speedup_vs_inmemory", "{:.1f}x"),
        both("speedup_vs_canonical", "{:.1f}x"),
        both("tracking_overhead", "{:+.1%}"),
        both("fused_step_ms", "{:.1f}"),
        both("autograd_step_ms", "{:.1f}"),
        both("autograd_vs_fused", "{:.2f}x"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"fp32 matmul peak: {results['peak_gflops']:.0f} GFLOP/s on {results['threads']} threads; "
             f"throughputs are medians of {fashion['rounds']} rounds, ratios medians of within-round ratios"]
    lines += [f"{a:<{width}}  {b:>16}  {c:>16}" for a, b, c in rows]
    cnn = results.get("mnist1d_cnn")
    if cnn:
        lines.append(f"{cnn['model']} on MNIST-1D, {cnn['models']} models (autograd): "
                     f"{cnn['trainer_plain_model_samples_per_s']:,.0f} model-samples/s "
                     f"({cnn['trainer_step_ms']:.1f} ms a step), {cnn['speedup_vs_loop']:.1f}x a per-model loop's "
                     f"{cnn['loop_model_samples_per_s']:,.0f}")
    return "\n".join(lines)
