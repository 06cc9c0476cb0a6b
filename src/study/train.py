"""Lockstep training of a condition's grid (losses x seeds x learning rates) on shared batches, held and stepped by
a backend of ``backends``; the evaluation pass measures every model at once (calibration from ``calibration``).

Yields ``Record`` and ``ExampleStats``; writes no files and knows no tracker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from study import features, grads, losses, ood
from study.backends import Autograd, Stack, StackedAdam, StackedSGD, resolve_backend
from study.calibration import (
    classwise_calibration_error,
    expected_calibration_error,
    fit_temperature,
    own_calibration_error,
)
from study.config import Condition
from study.data import NUM_CLASSES, Dataset
from study.records import ExampleStats, Record

PROBE_SEED = 0  # which test examples form the probe set: fixed, independent of every training seed
MEMO_SIZE = 5000  # training examples watched: gradient populations, confident-wrong corrections, memorisation
EVAL_CHUNK = 512  # examples per forward pass during evaluation: bounds the activations [M, EVAL_CHUNK, H] held at once
STATE_FORMAT = 3  # of Trainer.state(): raise when its keys change, so that older checkpoints are not resumed


@dataclass(frozen=True)
class Member:
    """One model of the grid. Its initial weights and its batch order depend on ``seed`` alone."""

    loss: str
    lr: float
    seed: int


def grid(loss_names: Sequence[str], seeds: Sequence[int], lrs: Mapping[str, Sequence[float]]) -> list[Member]:
    """Members ordered by loss, then lr, then seed (so each loss owns one contiguous slice of the stack)."""
    return [Member(loss, lr, seed) for loss in loss_names for lr in lrs[loss] for seed in seeds]


@dataclass(frozen=True)
class Settings:
    """What training reads besides the condition and the data."""

    loss_options: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # overrides of the registry's
    backend: str | None = None  # overrides the condition's backend (auto | fused | autograd): bench compares them
    confident: float = 0.9  # max softmax probability from which a wrong prediction counts as confident
    ece_bins: int = 15
    device: str = "cpu"
    splits: tuple[str, ...] = ("val", "test")  # evaluated splits; tuning looks at "val" only
    instrument: bool = True  # gradient norms, probe-set logit gradients, per-example test outputs
    # (resolution, from): the validation-accuracy-alone readings are this much coarser before ``from`` (a share of
    # the run's steps) and at the condition's speed_resolution from there on; None: at speed_resolution throughout
    coarse_speed: tuple[float, float] | None = None
    progress: bool = True
    # intra-op threads (study.threads), fixed by whoever runs the loop before any tensor work (runner.fixed_threads,
    # a Ray shard); None: the process's. Another count reorders the sums inside a matmul, and training amplifies
    # those last bits into another seed's spread
    threads: int | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def speed_steps(total_steps: int, resolution: float) -> set[int]:
    """Steps 1, 2, ... where each next step is at most ``resolution`` of itself past the last one, up to
    ``total_steps``: a target crossed between two of them is bracketed to within ``resolution`` of its step."""
    steps, step = set(), 1
    while step <= total_steps:
        steps.add(step)
        step = max(step + 1, math.floor(step * (1 + resolution)))
    return steps


def schedule(total_steps: int, resolution: float, coarse: tuple[float, float] | None = None) -> set[int]:
    """The speed readings of a run: ``speed_steps`` at ``resolution``, or with ``coarse = (resolution', share)``
    at resolution' before ``share`` of the steps and at ``resolution`` from there on."""
    if coarse is None:
        return speed_steps(total_steps, resolution)
    coarse_resolution, share = coarse
    start = share * total_steps
    return ({s for s in speed_steps(total_steps, coarse_resolution) if s < start}
            | {s for s in speed_steps(total_steps, resolution) if s >= start})


def batch_order(num_examples: int, seed: int, epoch: int) -> Tensor:
    """The permutation of training examples for one epoch: a function of (seed, epoch) alone, never of the loss."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)



@dataclass(frozen=True)
class _Split:
    x: Tensor
    y: Tensor


class Trainer:
    """Trains ``members`` in lockstep; ``run()`` yields their measurements. ``state()``/``load()`` checkpoint it."""

    def __init__(self, cond: Condition, data: Dataset, members: Sequence[Member], settings: Settings):
        if not members:
            raise ValueError("no models to train: the grid is empty")
        self.cond, self.members, self.settings = cond, list(members), settings
        self.device = resolve_device(settings.device)
        dev = self.device
        self.train_x, self.train_y = data.x_train.to(dev), data.y_train.to(dev)
        self.splits = {"val": _Split(data.x_val.to(dev), data.y_val.to(dev)),
                       "test": _Split(data.x_test.to(dev), data.y_test.to(dev))}
        self.num_classes = data.num_classes
        self.steps_per_epoch = len(data.y_train) // cond.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"condition {cond.name}: {len(data.y_train)} training examples cannot fill one batch of "
                f"{cond.batch_size}; lower batch_size or raise train_size"
            )
        self.total_steps = self.steps_per_epoch * cond.epochs
        per_eval = self.steps_per_epoch / cond.evals_per_epoch
        self.eval_steps = {round(k * per_eval) for k in range(1, cond.epochs * cond.evals_per_epoch + 1)}
        self.speed_steps = schedule(self.total_steps, cond.speed_resolution, settings.coarse_speed) - self.eval_steps

        self.seeds = list(dict.fromkeys(m.seed for m in self.members))  # rows of each step's batch [S, B]
        self.seed_of = torch.tensor([self.seeds.index(m.seed) for m in self.members], device=dev)  # [M]: its row
        self.groups = _loss_groups(self.members, settings.loss_options)
        self.backend = resolve_backend(settings.backend or cond.backend, cond.model)
        seeds = [m.seed for m in self.members]
        if self.backend == "fused":
            self.stack = Stack((data.input_dim, *cond.model.hidden, data.num_classes), seeds, dev)
        else:
            self.stack = Autograd(cond.model, data.input_dim, data.num_classes, seeds, dev)
        lr = torch.tensor([m.lr for m in self.members], dtype=torch.float32, device=dev)
        if cond.optimizer == "sgd":
            self.opt = StackedSGD(self.stack.params, lr, cond.momentum)
        else:
            self.opt = StackedAdam(self.stack.params, lr)

        probe_order = torch.randperm(len(data.y_test), generator=torch.Generator().manual_seed(PROBE_SEED))
        self.probe_index = probe_order[: cond.probe_size].sort().values
        # Test images of the classes left out of training (heldout_classes): scored against the test set's.
        self.heldout = data.x_heldout.to(dev) if len(data.x_heldout) else None
        # Training images of every class with their original classes, and the test images' original classes: the
        # linear probe on frozen features at the last evaluation (transfer to the classes never trained on).
        self.transfer = None
        if len(data.x_transfer) and self.heldout is not None:
            classes = torch.tensor(data.classes, dtype=torch.long)
            self.transfer = (data.x_transfer.to(dev), data.y_transfer.to(dev),
                             torch.cat([classes[data.y_test], data.y_heldout]).to(dev))
        watch = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(PROBE_SEED))
        self.watch = watch[:MEMO_SIZE].to(dev)  # a fixed training subset (flipped labels included, as trained on)
        self.watch_classes = data.y_train_clean.to(dev)[self.watch]  # their true classes: class separation's
        self.memo = None
        if data.flipped.any():
            self.memo = (data.y_train_clean.to(dev)[self.watch], data.flipped.to(dev)[self.watch])
        # Which watched examples each model got confidently wrong at the last full evaluation [M, W].
        self.confident_wrong = torch.zeros(len(self.members), len(self.watch), dtype=torch.bool, device=dev)

        self.step = 0
        self.evaluation_seconds = 0.0  # wall time spent evaluating (bench separates it from training)
        self.diverged_at = torch.full((len(self.members),), -1, dtype=torch.long, device=dev)
        self.dead: set[int] = set()
        # Each step's batch losses since the last training log, one row per step: the logged window mean, and the
        # first non-finite step of a model, read at the next log or evaluation rather than with a sync every step.
        self.step_losses = torch.zeros(cond.log_every, len(self.members), device=dev)
        self.window_steps = 0
        # Every step gathers its batch into these, allocated once: the step allocates no [M * B, D] tensor.
        rows = len(self.members) * cond.batch_size
        self.batch_x = torch.empty(rows, data.input_dim, dtype=self.train_x.dtype, device=dev)
        self.batch_y = torch.empty(rows, dtype=self.train_y.dtype, device=dev)

    # ---- checkpointing -------------------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything ``run()`` needs to continue bit-for-bit: tensors, lists and numbers only."""
        return {
            "step": self.step, "params": [p.detach().clone() for p in self.stack.params], "opt": self.opt.state(),
            "diverged_at": self.diverged_at.clone(), "dead": sorted(self.dead),
            "step_losses": self.step_losses.clone(), "window_steps": self.window_steps,
            "confident_wrong": self.confident_wrong.clone(),
        }

    def load(self, state: dict) -> None:
        with torch.no_grad():
            for p, saved in zip(self.stack.params, state["params"]):
                p.copy_(saved)
        self.opt.load(state["opt"])
        self.step = int(state["step"])
        self.diverged_at.copy_(state["diverged_at"])
        self.dead = set(state["dead"])
        self.step_losses.copy_(state["step_losses"])
        self.window_steps = int(state["window_steps"])
        self.confident_wrong.copy_(state["confident_wrong"])

    # ---- the loop ------------------------------------------------------------------------------------------
    def run(self, stop: Callable[[], bool] = lambda: False) -> Iterator[Record | ExampleStats]:
        """Train to the end, yielding measurements. When ``stop()`` turns true the loop pauses at a step boundary
        and raises ``Interrupted`` (``state()`` then resumes from exactly there)."""
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.cond.name, unit="step",
                   disable=not self.settings.progress, mininterval=1.0, dynamic_ncols=True)
        try:
            if self.step == 0:
                yield from self._timed_evaluation()
            while self.step < self.total_steps:
                if stop():
                    raise Interrupted(self.step)
                epoch, position = divmod(self.step, self.steps_per_epoch)
                orders = torch.stack([batch_order(len(self.train_y), s, epoch) for s in self.seeds])
                orders = orders.to(self.device)  # [S, N], on the device for the whole epoch
                bar.set_description(f"{self.cond.name} epoch {epoch + 1}/{self.cond.epochs}")
                for start in range(position * self.cond.batch_size,
                                   self.steps_per_epoch * self.cond.batch_size, self.cond.batch_size):
                    batch = orders[:, start:start + self.cond.batch_size]  # [S, B]
                    log_now = (self.step + 1) % self.cond.log_every == 0
                    logit_grads, layer_norms = self._train_step(batch, measure=log_now)
                    self.step += 1
                    bar.update()
                    if log_now:
                        yield from self._log_train(logit_grads, layer_norms, bar)
                    if self.step in self.eval_steps or self.step == self.total_steps:
                        yield from self._timed_evaluation()
                    elif self.step in self.speed_steps:
                        yield from self._timed_evaluation(speed_only=True)
                    if self.step >= self.total_steps:
                        break
                    if stop():
                        raise Interrupted(self.step)
        finally:
            bar.close()

    def _train_step(self, batch: Tensor, *, measure: bool) -> tuple[Tensor | None, Tensor | None]:
        """One optimizer step of every model on ``batch`` [S, B], the example indices of each seed's batch."""
        m, b = len(self.members), batch.shape[1]
        index = batch.index_select(0, self.seed_of).view(-1)  # [M * B]: each model gets the batch of its own seed
        x = torch.index_select(self.train_x, 0, index, out=self.batch_x).view(m, b, -1)  # [M, B, D]
        y = torch.index_select(self.train_y, 0, index, out=self.batch_y).view(m, b)
        per_example, logit_grads, layer_norms = self.stack.step(x, y, self.groups, self.opt,
                                                                measure=measure and self.settings.instrument)
        torch.mean(per_example, dim=1, out=self.step_losses[self.window_steps])  # [M]
        self.window_steps += 1
        return logit_grads, layer_norms

    def _per_example(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Each model's own loss on its own logits: [M, N, K], [M, N] -> [M, N]."""
        k = logits.shape[-1]
        parts = [fn(logits[s].reshape(-1, k), labels[s].reshape(-1)).view(s.stop - s.start, -1)
                 for fn, _, s in self.groups]
        return torch.cat(parts)

    def _flag_nonfinite(self, values: list[tuple[int, float]], step: int) -> None:
        """Mark the models with a non-finite measurement diverged at ``step`` (an earlier mark stands)."""
        for m in {m for m, value in values if not math.isfinite(value)}:
            if self.diverged_at[m] < 0:
                self.diverged_at[m] = step

    def _scan_step_losses(self) -> None:
        """Mark the models whose batch loss went non-finite in this window, at the first such step (an earlier mark
        stands, so searching the same rows again changes nothing)."""
        rows = self.step_losses[:self.window_steps]  # [n, M]
        if len(rows):
            bad = ~torch.isfinite(rows)
            first = self.step - self.window_steps + bad.int().argmax(dim=0)  # argmax: the first True
            self.diverged_at = torch.where(bad.any(dim=0) & (self.diverged_at < 0), first, self.diverged_at)

    def _retire_diverged(self) -> Iterator[Record]:
        """Sync the divergence flags; a model whose loss (or a measurement) went non-finite stops: no measurement
        after that step."""
        self._scan_step_losses()
        for m, at in enumerate(self.diverged_at.tolist()):
            if at >= 0 and m not in self.dead:
                self.dead.add(m)
                with torch.no_grad():
                    for p in self.stack.params:
                        p[m] = 0  # keep its (now meaningless) arithmetic finite and cheap
                    self.opt.lr[m] = 0
                self.opt.reset(m)
                yield self._record(m, "train", "diverged_step", float(at), step=at)

    def _log_train(self, logit_grads: Tensor | None, layer_norms: Tensor | None, bar: tqdm) -> Iterator[Record]:
        self._scan_step_losses()
        # Each model's window along its own contiguous row: a reduction down the columns of [n, M] sums in an
        # order that depends on M, and a model's logged loss would change with the models stacked beside it.
        window = self.step_losses[:self.window_steps].T.contiguous().mean(dim=1).tolist()
        self.window_steps = 0
        values: dict[str, list[float]] = {"loss": window}
        if layer_norms is not None:
            values["grad_norm"] = grads.global_norm(layer_norms).tolist()
            for i, column in enumerate(layer_norms.T.tolist(), start=1):
                values[f"grad_norm_layer{i}"] = column
            values["logit_grad_norm"] = logit_grads.tolist()
        # Gradients that overflow float32 while the loss is still finite: that step diverged too.
        self._flag_nonfinite([(m, column[m]) for column in values.values() for m in self._alive()], self.step - 1)
        yield from self._retire_diverged()
        for m in self._alive():
            for metric, column in values.items():
                yield self._record(m, "train", metric, column[m])
        bar.set_postfix({name: f"{_mean(window[s.start:s.stop]):.3g}" for name, s in self._named_groups()},
                        refresh=False)

    def _timed_evaluation(self, *, speed_only: bool = False) -> Iterator[Record | ExampleStats]:
        start = time.perf_counter()
        yield from self._evaluate_speed() if speed_only else self._evaluate()
        self.evaluation_seconds += time.perf_counter() - start

    def _evaluate_speed(self) -> Iterator[Record]:
        """Validation accuracy alone: the cheap, dense reading that brackets each steps-to-target."""
        yield from self._retire_diverged()
        val = self.splits["val"]
        with torch.no_grad():
            correct = torch.cat([self.stack.forward(val.x[i:i + EVAL_CHUNK]).argmax(dim=2) == val.y[i:i + EVAL_CHUNK]
                                 for i in range(0, len(val.y), EVAL_CHUNK)], dim=1)  # [M, N]
        accuracy = correct.float().mean(dim=1).tolist()
        for m in self._alive():
            yield self._record(m, "val", "accuracy", accuracy[m])

    def _evaluate(self) -> Iterator[Record | ExampleStats]:
        yield from self._retire_diverged()
        last = self.step == self.total_steps
        outputs: dict[str, Tensor] = {}
        columns: dict[tuple[str, str], list[float]] = {}  # (split, metric) -> one value per model
        instrument = self.settings.instrument
        with torch.no_grad():
            for split in self.settings.splits:
                labels = self.splits[split].y
                if instrument and split == "test":
                    outputs[split], columns[(split, "class_separation")] = self._separated(self.splits[split].x,
                                                                                           labels)
                else:
                    outputs[split] = self._logits(self.splits[split].x)
                metrics = self._metrics(outputs[split], labels)
                columns.update({(split, metric): values for metric, values in metrics.items()})
            watched = None
            if instrument:
                watched, columns[("train_subset", "class_separation")] = self._separated(
                    self.train_x[self.watch], self.watch_classes)
            elif self.memo is not None:
                watched = self._logits(self.train_x[self.watch])
            if self.memo is not None:
                columns.update(self._memorisation(watched))
            if self.settings.instrument and "test" in outputs:
                columns.update(self._populations(outputs["test"], watched))
                if self.heldout is not None:
                    found = ood.measure(outputs["test"], self._logits(self.heldout))
                    columns.update({key: values.tolist() for key, values in found.items()})
            if self.settings.instrument and last and "val" in outputs and "test" in outputs:
                columns.update(self._calibration(outputs["val"], outputs["test"]))
            if self.settings.instrument and last and self.transfer is not None:
                columns.update(self._transfer())
        # Weights that overflowed in the last update before any loss went non-finite: diverged at this step.
        # A None value is a metric that does not apply to that model (ece_own of a loss without probabilities).
        self._flag_nonfinite([(m, values[m]) for values in columns.values() for m in self._alive()
                              if values[m] is not None], self.step)
        yield from self._retire_diverged()
        alive = self._alive()
        for (split, metric), values in columns.items():
            for m in alive:
                if values[m] is not None:
                    yield self._record(m, split, metric, values[m])
        if not self.settings.instrument or "test" not in outputs:
            return
        test = self.splits["test"]
        yield from self._examples(outputs["test"][:, self.probe_index], test.y[self.probe_index],
                                  self.probe_index, "probe", alive)
        if last:
            yield from self._examples(outputs["test"], test.y, torch.arange(len(test.y)), "test", alive)

    def _logits(self, x: Tensor) -> Tensor:
        return torch.cat([self.stack.forward(x[i:i + EVAL_CHUNK]) for i in range(0, len(x), EVAL_CHUNK)], dim=1)

    def _separated(self, x: Tensor, classes: Tensor) -> tuple[Tensor, list[float]]:
        """``_logits`` of ``x`` and, from the same forward pass, each model's class separation (R^2 of its
        penultimate features, study.features) with ``classes`` the examples' true classes."""
        separation = features.ClassSeparation(len(self.members), self.num_classes, x.device)
        chunks = []
        for i in range(0, len(x), EVAL_CHUNK):
            hidden, logits = self.stack.forward(x[i:i + EVAL_CHUNK], features=True)
            separation.add(hidden, classes[i:i + EVAL_CHUNK])
            chunks.append(logits)
        return torch.cat(chunks, dim=1), separation.value().tolist()

    def _features(self, x: Tensor) -> Tensor:
        return torch.cat([self.stack.forward(x[i:i + EVAL_CHUNK], features=True)[0]
                          for i in range(0, len(x), EVAL_CHUNK)], dim=1)

    def _transfer(self) -> dict[tuple[str, str], list[float]]:
        """A linear probe per model on its frozen penultimate features (study.features.linear_probe), fitted on
        training images of every class, the held-out ones included, and scored on the test images of all classes:
        accuracy over them all, on the classes the network never saw, and on the classes it trained on."""
        x_fit, y_fit, y_test = self.transfer
        test = torch.cat([self._features(self.splits["test"].x), self._features(self.heldout)], dim=1)
        predicted = features.linear_probe(self._features(x_fit), y_fit, test, NUM_CLASSES)
        correct = (predicted == y_test).float()  # [M, N]
        unseen = torch.zeros(len(y_test), dtype=torch.bool, device=y_test.device)
        unseen[len(self.splits["test"].y):] = True
        return {("transfer", "accuracy"): correct.mean(dim=1).tolist(),
                ("transfer", "heldout_accuracy"): correct[:, unseen].mean(dim=1).tolist(),
                ("transfer", "trained_accuracy"): correct[:, ~unseen].mean(dim=1).tolist()}

    def _metrics(self, logits: Tensor, labels: Tensor) -> dict[str, list[float]]:
        """Per-model metrics of logits [M, N, K] against labels [N]; softmax-based ones hold for every loss."""
        m, n, k = logits.shape
        log_probs = logits.log_softmax(dim=2)
        probs = log_probs.exp()
        confidence, predicted = probs.max(dim=2)  # [M, N]
        correct = predicted == labels
        targets = torch.nn.functional.one_hot(labels, k).to(probs.dtype)
        nll = -log_probs.gather(2, labels.expand(m, n)[..., None]).squeeze(2)  # [M, N]
        own = self._per_example(logits, labels.expand(m, n))
        wrong_confident = ~correct & (confidence >= self.settings.confident)
        metrics = {
            "accuracy": correct.float().mean(dim=1),
            "nll": nll.mean(dim=1),
            "brier": (probs - targets).pow(2).sum(dim=2).mean(dim=1),
            "ece": expected_calibration_error(confidence, correct, self.settings.ece_bins),
            "confidence": confidence.mean(dim=1),
            "loss": own.mean(dim=1),
            "confident_wrong_rate": wrong_confident.float().mean(dim=1),
            "confident_wrong_loss_share": _share(own, wrong_confident),
            "confident_wrong_nll_share": _share(nll, wrong_confident),
        }
        return {name: values.tolist() for name, values in metrics.items()}

    def _populations(self, test_logits: Tensor, watched: Tensor) -> dict[tuple[str, str], list[float]]:
        """Per-example logit-gradient norms on whole populations (the test set, the watched training subset):
        quartiles, and the share of wrong examples whose gradient vanished (below ``grads.SATURATION``), with how
        many were wrong. On the training subset also: of the examples confidently wrong at the last full
        evaluation, the share now classified right (does the loss pull them back?)."""
        columns: dict[tuple[str, str], Tensor] = {}
        quarters = torch.tensor([0.25, 0.5, 0.75], device=test_logits.device)
        for split, logits, labels in (("test", test_logits, self.splits["test"].y),
                                      ("train_subset", watched, self.train_y[self.watch])):
            _, norms = self._own_losses_and_grad_norms(logits, labels)
            confidence, predicted = logits.softmax(dim=2).max(dim=2)
            wrong = predicted != labels
            n_wrong = wrong.sum(dim=1)
            q25, median, q75 = torch.quantile(norms, quarters, dim=1)
            columns.update({
                (split, "logit_grad_q25"): q25, (split, "logit_grad_median"): median, (split, "logit_grad_q75"): q75,
                (split, "wrong_count"): n_wrong.float(),
                # 0 when nothing is wrong (wrong_count says so): NaN here would read as divergence.
                (split, "saturated_wrong_share"): ((wrong & (norms < grads.SATURATION)).sum(dim=1)
                                                   / n_wrong.clamp(min=1)),
            })
            if split == "train_subset":
                before = self.confident_wrong
                columns[(split, "confident_wrong_before")] = before.sum(dim=1).float()
                columns[(split, "confident_wrong_corrected")] = ((before & ~wrong).sum(dim=1)
                                                                 / before.sum(dim=1).clamp(min=1))
                self.confident_wrong = wrong & (confidence >= self.settings.confident)
        return {key: values.tolist() for key, values in columns.items()}

    def _memorisation(self, watched: Tensor) -> dict[tuple[str, str], list[float]]:
        """How many flipped training labels each model reproduces (memorised) or corrects (recovered)."""
        clean, flipped = self.memo
        predicted = watched.argmax(dim=2)  # [M, W]
        noisy = self.train_y[self.watch]
        values = {
            ("train_flipped", "memorised"): (predicted == noisy)[:, flipped].float().mean(dim=1),
            ("train_flipped", "recovered"): (predicted == clean)[:, flipped].float().mean(dim=1),
            ("train_clean", "accuracy"): (predicted == clean)[:, ~flipped].float().mean(dim=1),
        }
        return {key: column.tolist() for key, column in values.items()}

    def _examples(self, logits: Tensor, labels: Tensor, index: Tensor, split: str,
                  alive: list[int]) -> Iterator[ExampleStats]:
        probs = logits.softmax(dim=2)
        confidence, predicted = probs.max(dim=2)
        p_true = probs.gather(2, labels.expand(logits.shape[:2])[..., None]).squeeze(2)
        per_example, norms = self._own_losses_and_grad_norms(logits, labels)
        columns = {"loss_value": per_example, "logit_grad_norm": norms,
                   "p_true": p_true, "confidence": confidence, "predicted": predicted}
        columns = {name: values.cpu().numpy() for name, values in columns.items()}
        index_np, labels_np = index.cpu().numpy(), labels.cpu().numpy()
        for m in alive:
            member = self.members[m]
            yield ExampleStats(member.loss, member.lr, member.seed, self._epoch(), self.step, split, index_np,
                               labels_np, **{name: values[m] for name, values in columns.items()})

    def _own_losses_and_grad_norms(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Each model's own per-example loss and the L2 norm of its gradient with respect to the logits:
        [M, N, K], [N] -> [M, N], [M, N]."""
        per_example, norms = [], []
        for fn, _, s in self.groups:
            count = s.stop - s.start
            value, grad = grads.logit_grads(fn, logits[s].reshape(-1, logits.shape[2]), labels.repeat(count))
            per_example.append(value.view(count, -1))
            norms.append(grad.norm(dim=1).view(count, -1))
        return torch.cat(per_example), torch.cat(norms)

    def _calibration(self, val_logits: Tensor, test_logits: Tensor) -> dict[tuple[str, str], list[float | None]]:
        """Calibration at the last evaluation, every loss in its own terms (the ``ece`` of every evaluation is on the
        softmax, whatever the loss):

        - ``val/temperature``: the temperature T minimising validation NLL (Guo et al. 2017); ``test/nll_ts`` and
          ``test/ece_ts``: test NLL and ECE of softmax(z / T), the comparison every loss can enter.
        - ``test/ece_own``: ECE before scaling on the probabilities the loss is trained to output
          (``LossSpec.probabilities``): the softmax's (then equal to ``test/ece``), or for per-class sigmoids
          confidence = the largest sigmoid and prediction = its argmax, in the same bins. None (no record) for a
          loss that models no probability.
        - ``test/classwise_ece``: the classwise ECE of the softmax (Kull et al. 2019; Nixon et al. 2019): each
          class's probability binned over all examples against that class's indicator, averaged over classes.
        """
        bins, labels = self.settings.ece_bins, self.splits["test"].y
        temperature = fit_temperature(val_logits, self.splits["val"].y)  # [M]
        scaled = (test_logits / temperature[:, None, None]).log_softmax(dim=2)  # as _metrics computes nll and ece
        ts_nll = -scaled.gather(2, labels.expand(scaled.shape[:2])[..., None]).squeeze(2).mean(dim=1)
        ts_confidence, ts_predicted = scaled.exp().max(dim=2)
        ts_ece = expected_calibration_error(ts_confidence, ts_predicted == labels, bins)

        probs = test_logits.log_softmax(dim=2).exp()  # as _metrics: ece_own of a softmax loss is its ece to the bit
        kinds = [losses.spec(member.loss).probabilities for member in self.members]
        return {("val", "temperature"): temperature.tolist(), ("test", "nll_ts"): ts_nll.tolist(),
                ("test", "ece_ts"): ts_ece.tolist(),
                ("test", "ece_own"): own_calibration_error(test_logits, labels, kinds, bins, probs=probs),
                ("test", "classwise_ece"): classwise_calibration_error(probs, labels, bins).tolist()}

    def _alive(self) -> list[int]:
        return [m for m in range(len(self.members)) if m not in self.dead]

    def _named_groups(self) -> list[tuple[str, slice]]:
        return [(self.members[s.start].loss, s) for _, _, s in self.groups]

    def _epoch(self) -> float:
        return round(self.step / self.steps_per_epoch, 4)

    def _record(self, m: int, split: str, metric: str, value: float, *, step: int | None = None) -> Record:
        member = self.members[m]
        step = self.step if step is None else step
        return Record(member.loss, member.lr, member.seed, round(step / self.steps_per_epoch, 4), step, split,
                      metric, float(value))


class Interrupted(Exception):
    """Training paused at a step boundary because it was asked to stop; the trainer's state resumes it."""

    def __init__(self, step: int):
        super().__init__(f"training interrupted at step {step}")
        self.step = step


def _loss_groups(members: Sequence[Member],
                 options: Mapping[str, Mapping[str, float]]) -> list[tuple[Callable, Callable, slice]]:
    """(loss, the loss with its closed-form logit gradient, the members' slice) for each loss, in the members'
    order."""
    groups: list[tuple[Callable, Callable, slice]] = []
    for m, member in enumerate(members):
        if groups and members[groups[-1][2].start].loss == member.loss:
            fn, grad, s = groups[-1]
            groups[-1] = (fn, grad, slice(s.start, m + 1))
        else:
            if any(members[s.start].loss == member.loss for _, _, s in groups):
                raise ValueError("members must be ordered by loss (use train.grid)")
            given = options.get(member.loss)
            fns = losses.build(member.loss, given), losses.build_with_grad(member.loss, given)
            groups.append((*fns, slice(m, m + 1)))
    return groups


def _share(per_example: Tensor, mask: Tensor) -> Tensor:
    total = per_example.sum(dim=1)
    return torch.where(total > 0, (per_example * mask).sum(dim=1) / total, torch.zeros_like(total))


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
