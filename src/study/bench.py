"""``study bench``: the lockstep trainer against per-model loops and the machine's matmul peak, side by side; its
two backends (fused, autograd) on the MLP grid; the autograd CNN grid against a per-model loop of the same CNN.

Every variant is timed once per round, the rounds alternating the variants' order (ABC, CBA, ...), all in one
process, so that drifting load on a shared machine hits them alike. The claims are the ratios, each the median
over rounds of the ratio within a round; throughputs are medians. Imports the trainer and the tracker; nothing
imports this module.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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
STEPS = 800  # about two Fashion-MNIST epochs: optimizer steps per timed trainer run
ROUNDS = 5


def main(*, data_root: Path, as_json: bool, seconds: float) -> None:
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    peak = matmul_peak(seconds)
    results["peak_gflops"] = peak / 1e9
    with tempfile.TemporaryDirectory() as scratch:
        results.update(bench_dataset("fashion_mnist", (256, 256), data_root, seconds, peak, Path(scratch)))
        results["mnist1d"] = bench_dataset("mnist1d", (100, 100), data_root, seconds, peak, Path(scratch))
    results["mnist1d_cnn"] = bench_cnn(data_root, seconds)
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
    keep = STEPS * BATCH  # Fashion-MNIST: one epoch of STEPS steps; MNIST-1D is smaller and runs several epochs
    return dataclasses.replace(small, x_train=small.x_train[:keep], y_train=small.y_train[:keep],
                               y_train_clean=small.y_train_clean[:keep], flipped=small.flipped[:keep])


def bench_dataset(name: str, hidden: tuple[int, ...], root: Path, seconds: float, peak: float,
                  scratch: Path) -> dict:
    """The MLP grid: the trainer (fused backend, as the study runs it) with and without instrumentation and tracking,
    the same grid on the autograd backend, and per-model loops."""
    small = _bench_data(name, root)
    spec = MLPSpec(hidden)
    sizes = (small.input_dim, *hidden, small.num_classes)
    weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    models = len(LOSS_NAMES) * len(SEEDS)
    store = f"sqlite:///{scratch / 'bench.db'}"
    trainer_rates(small, spec, store, instrument=False, track=True)  # warm-up; creates the store's schema
    trainer_rates(small, spec, store, instrument=False, track=False, backend="autograd")  # warm-up
    variants: dict[str, Callable[[], Any]] = {
        "trainer": lambda: trainer_rates(small, spec, store, instrument=True, track=True),
        "trainer_plain": lambda: trainer_rates(small, spec, store, instrument=False, track=False, backend="fused"),
        "autograd_plain": lambda: trainer_rates(small, spec, store, instrument=False, track=False,
                                                backend="autograd"),
        "inmemory": lambda: inmemory_rate(small, sizes, seconds / ROUNDS),
    }
    if name != "mnist1d":
        variants["canonical"] = lambda: canonical_rate(name, root, sizes, seconds / ROUNDS)
    samples = interleaved(variants, ROUNDS, label=name)
    trainer, trainer_run = zip(*samples["trainer"])
    plain, plain_run = zip(*samples["trainer_plain"])
    autograd, _ = zip(*samples["autograd_plain"])
    out = {
        "model": spec.describe(small.input_dim, small.num_classes),
        "models": models,
        "rounds": ROUNDS,
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


def interleaved(variants: dict[str, Callable[[], Any]], rounds: int, *, label: str) -> dict[str, list]:
    """Each variant's measurement in every round, the variants' order reversed in every other round (a drift
    in load then hits the first and the last alike)."""
    samples: dict[str, list] = {name: [] for name in variants}
    order = list(variants)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            print(f"bench {label}: round {r + 1}/{rounds}: {name}", file=sys.stderr)
            samples[name].append(variants[name]())
    return samples


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median over rounds of the ratio of two variants measured in the same round."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def bench_cnn(root: Path, seconds: float) -> dict:
    """The cnn1d grid on MNIST-1D (autograd backend) against the same CNN trained one model at a time (nn.Module and
    torch.optim, in-memory batches of the study's size)."""
    small = _bench_data("mnist1d", root)
    models = len(LOSS_NAMES) * len(SEEDS)
    trainer_rates(small, CNN, None, instrument=False, track=False)  # warm-up
    samples = interleaved({
        "trainer_plain": lambda: trainer_rates(small, CNN, None, instrument=False, track=False)[0],
        "loop": lambda: inmemory_rate(small, CNN, seconds / ROUNDS),
    }, ROUNDS, label="mnist1d cnn1d")
    return {
        "model": CNN.describe(small.input_dim, small.num_classes),
        "models": models,
        "rounds": ROUNDS,
        "trainer_plain_model_samples_per_s": statistics.median(samples["trainer_plain"]),
        "loop_model_samples_per_s": statistics.median(samples["loop"]),
        "trainer_step_ms": 1e3 * models * BATCH / statistics.median(samples["trainer_plain"]),
        "speedup_vs_loop": paired_ratio(samples["trainer_plain"], samples["loop"]),
        "per_round": samples,
    }


def trainer_rates(ds: data.Dataset, spec: model.ModelSpec, store: str | None, *, instrument: bool, track: bool,
                  backend: str = "auto") -> tuple[float, float]:
    """The study's trainer on about ``STEPS`` steps, with or without instrumentation (gradient norms, probe-set
    logit gradients, per-example test outputs, temperature) and MLflow tracking. Returns model-samples per second
    (training: the steps with their periodic measurements, evaluation excluded, as the per-model loops do none)
    and the whole run's rate (set-up, tracker, the evaluations at step 0 and the end included)."""
    steps_per_epoch = len(ds.y_train) // BATCH
    epochs = max(1, round(STEPS / steps_per_epoch))
    cond = Condition(
        name="bench", dataset=ds.name, model=spec, backend=backend, losses=LOSS_NAMES, optimizer="sgd", momentum=0.9,
        batch_size=BATCH,
        epochs=epochs, label_noise=0.0, noise_seed=0, val_size=len(ds.y_val), split_seed=0, train_size=0,
        test_size=len(ds.y_test), lr_grid=(0.03,), lr_from="bench", tune_epochs=1, tune_seeds=(0,),
        evals_per_epoch=1, speed_resolution=0.1, log_every=50, probe_size=256, targets=(0.5,))
    members = train.grid(LOSS_NAMES, SEEDS, {loss: [0.03] for loss in LOSS_NAMES})
    settings = train.Settings(instrument=instrument, progress=False)
    runs = [tracking.RunSpec(m.loss, m.lr, m.seed, tuned=False, conventions=CONVENTIONS[m.loss]) for m in members]
    start = time.perf_counter()
    trainer = train.Trainer(cond, ds, members, settings)
    with tracking.open_tracker(enabled=track, experiment="bench", condition="bench", stage="bench",
                               dataset=ds.name, params={}, runs=runs, uri=store) as tracker:
        run_start = time.perf_counter()
        runner.collect(trainer.run(), tracker, into=[])
        training = time.perf_counter() - run_start - trainer.evaluation_seconds
    whole = time.perf_counter() - start
    samples = trainer.total_steps * BATCH * len(members)
    return samples / training, samples / whole


def inmemory_rate(ds: data.Dataset, net: tuple[int, ...] | model.ModelSpec, seconds: float) -> float:
    """One model at a time (an MLP's sizes, or any spec), data already in memory as tensors, the study's batch size:
    samples per second."""
    module = init_mlp(net, 0) if isinstance(net, tuple) else model.init(net, ds.input_dim, ds.num_classes, 0)
    opt = torch.optim.SGD(module.parameters(), lr=0.03, momentum=0.9)
    x, y = ds.x_train, ds.y_train
    return _timed_loop(module, opt, _tensor_batches(x, y, BATCH), seconds)


def canonical_rate(name: str, root: Path, sizes: tuple[int, ...], seconds: float) -> float:
    """The textbook loop: torchvision dataset with ToTensor, DataLoader(batch 64, shuffle), one model at a time."""
    from torchvision import datasets, transforms

    cls = {"fashion_mnist": datasets.FashionMNIST, "mnist": datasets.MNIST}[name]
    dataset = cls(str(root), train=True, download=False, transform=transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=CANONICAL_BATCH, shuffle=True)
    module = init_mlp(sizes, 0)
    opt = torch.optim.SGD(module.parameters(), lr=0.03, momentum=0.9)

    def batches():
        while True:
            for images, labels in loader:
                yield images.flatten(1), labels

    return _timed_loop(module, opt, batches(), seconds)


def _tensor_batches(x: torch.Tensor, y: torch.Tensor, batch: int):
    while True:
        order = torch.randperm(len(y))
        for i in range(0, len(y) - batch + 1, batch):
            index = order[i:i + batch]
            yield x[index], y[index]


def _timed_loop(net, opt, batches, seconds: float) -> float:
    samples, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        x, y = next(batches)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        samples += len(y)
    return samples / (time.perf_counter() - start)


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
