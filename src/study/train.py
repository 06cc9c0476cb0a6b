"""Lockstep training of a condition's grid (losses x seeds x learning rates) on shared batches: any model of the
factory stacked and stepped by autograd, or an MLP by the fused hand-written backward (held equal to autograd).

Yields ``Record`` and ``ExampleStats``; writes no files and knows no tracker.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm import tqdm

from study import grads, losses, model, ood
from study.config import Condition
from study.data import Dataset
from study.model import MLP, init_mlp
from study.records import ExampleStats, Record

PROBE_SEED = 0  # which test examples form the probe set: fixed, independent of every training seed
MEMO_SIZE = 5000  # training examples watched: gradient populations, confident-wrong corrections, memorisation
EVAL_CHUNK = 512  # examples per forward pass during evaluation (see the README's arithmetic section)
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
ADAM_EPS = 1e-8
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_backend(name: str, spec: model.ModelSpec) -> str:
    """auto is fused for an MLP (the published results' path), autograd for any other model."""
    if name == "auto":
        return "fused" if isinstance(spec, model.MLPSpec) else "autograd"
    if name == "fused" and not isinstance(spec, model.MLPSpec):
        raise ValueError(f"the fused backend steps MLPs only, not a {spec.kind} model; use backend autograd")
    if name not in ("fused", "autograd"):
        raise ValueError(f"unknown backend {name!r}; one of auto, fused, autograd")
    return name


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


class Stack:
    """M MLPs held as stacked tensors, ``weights[l]`` [M, in, out] and ``biases[l]`` [M, out], so that one
    batched matrix product steps every model at once.

    The fused backend: training runs without autograd. ``train_forward`` keeps the activations and ``backward``
    takes the losses' logit gradients (closed form, or derived by autograd where a loss has none) through the layers
    by hand (batched products and a few elementwise passes, into buffers reused every step). ``Autograd`` gives the
    same numbers (tests/test_backend.py holds them equal) for any model."""

    def __init__(self, sizes: Sequence[int], seeds: Sequence[int], device: torch.device):
        if len(sizes) < 3:
            raise ValueError(f"an MLP needs at least one hidden layer, got sizes {tuple(sizes)}")
        nets = {seed: init_mlp(sizes, seed) for seed in dict.fromkeys(seeds)}
        layers = range(len(sizes) - 1)
        self.sizes = tuple(sizes)
        self.weights = [_stacked([nets[s].layers[i].weight.T for s in seeds], device) for i in layers]
        self.biases = [_stacked([nets[s].layers[i].bias for s in seeds], device) for i in layers]
        self.weight_grads = [torch.empty_like(w) for w in self.weights]
        self.bias_grads = [torch.empty_like(b) for b in self.biases]
        self._inputs = torch.empty(0)
        self._activations: list[Tensor] = []  # post-ReLU outputs of the hidden layers, [M, B, H]
        self._activation_grads: list[Tensor] = []
        self._logits = torch.empty(0)

    @property
    def params(self) -> list[Tensor]:
        return [*self.weights, *self.biases]

    def step(self, x: Tensor, y: Tensor, groups: Sequence[tuple[Callable, Callable, slice]], opt,
             *, measure: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """One optimizer step of every model on its own batch x [M, B, D], y [M, B]. Returns the per-example losses
        [M, B] and, with ``measure``, the mean per-example logit-gradient norm [M] and per-layer norms [M, L]."""
        b = x.shape[1]
        logits = self.train_forward(x)  # [M, K, B]
        parts = [with_grad(logits[s], y[s]) for _, with_grad, s in groups]
        per_example = torch.cat([value for value, _ in parts])  # [M, B]
        grad_logits = torch.cat([grad for _, grad in parts]).div_(b)  # [M, K, B], of each model's batch mean
        if measure:
            param_grads = self.backward(grad_logits)
            # x B undoes the 1/B of the batch mean: these are per-example gradients.
            logit_grads = (grad_logits * b).norm(dim=1).mean(dim=1)  # [M]
            layer_norms = grads.layer_norms(list(zip(self.weight_grads, self.bias_grads)))  # [M, L]
            opt.step(param_grads)
            return per_example, logit_grads, layer_norms
        if isinstance(opt, StackedSGD):
            self.backward(grad_logits, into=opt.buffers, beta=opt.momentum)
            opt.descend()
        else:
            opt.step(self.backward(grad_logits))
        return per_example, None, None

    def forward(self, x: Tensor) -> Tensor:
        """Logits [M, B, K] from inputs [M, B, D] (one batch per model) or [B, D] (shared by all models)."""
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            # A shared [B, D] input is expanded (stride 0, not copied) so that the bias rides on the product too;
            # with the in-place ReLU a Fashion-MNIST evaluation took 1.40 s instead of 1.77 s (measured side by side).
            x = torch.baddbmm(bias[:, None], x if x.dim() == 3 else x.expand(len(weight), *x.shape), weight)
            if i < last:
                x = x.relu_()  # in place: the product is a fresh tensor
        return x

    def train_forward(self, x: Tensor) -> Tensor:
        """Logits [M, K, B] from inputs [M, B, D], keeping what ``backward`` needs. Classes come before the batch
        (the losses' class dimension is 1) so that their reductions over K run along contiguous rows of B: in
        [M, B, K] a softmax over 10 classes takes longer than the largest matrix product of the step."""
        m, b, _ = x.shape
        if self._logits.shape != (m, self.sizes[-1], b):
            self._allocate(b)
        self._inputs = h = x
        for weight, bias, out in zip(self.weights[:-1], self.biases[:-1], self._activations):
            h = torch.baddbmm(bias[:, None], h, weight, out=out).clamp_min_(0)
        weight, bias = self.weights[-1], self.biases[-1]
        return torch.baddbmm(bias[:, :, None], weight.transpose(1, 2), h.transpose(1, 2), out=self._logits)

    def backward(self, grad_logits: Tensor, *, into: Sequence[Tensor] | None = None,
                 beta: float = 0.0) -> list[Tensor]:
        """Parameter gradients of the last ``train_forward`` given d loss / d logits [M, K, B], laid out like
        ``params``; models are independent: each gets the gradient of its own loss. With ``into`` (tensors laid
        out like ``params``) it writes ``beta * into + gradient`` there instead: SGD's momentum update, folded into
        the weight-gradient products (beta is the product's accumulation factor) so that no gradient is stored."""
        layers = len(self.weights)
        weight_out = self.weight_grads if into is None else into[:layers]
        bias_out = self.bias_grads if into is None else into[layers:]
        beta = 0.0 if into is None else beta  # at beta 0 the products ignore what their output held

        def bias_grad(i: int, grad: Tensor, batch_dim: int) -> None:
            torch.sum(grad, dim=batch_dim, out=self.bias_grads[i])
            if into is not None:
                torch.add(self.bias_grads[i], bias_out[i], alpha=beta, out=bias_out[i])

        grad, hidden = grad_logits, self._activations
        out = weight_out[-1]
        torch.baddbmm(out, hidden[-1].transpose(1, 2), grad.transpose(1, 2), beta=beta, out=out)
        bias_grad(layers - 1, grad, 2)
        back = torch.bmm(grad.transpose(1, 2), self.weights[-1].transpose(1, 2), out=self._activation_grads[-1])
        for i in reversed(range(len(hidden))):
            # ReLU's derivative: pass the gradient where the unit was active (its output > 0), else 0.
            torch.ops.aten.threshold_backward.grad_input(back, hidden[i], 0, grad_input=back)
            out, below = weight_out[i], self._inputs if i == 0 else hidden[i - 1]
            torch.baddbmm(out, below.transpose(1, 2), back, beta=beta, out=out)
            bias_grad(i, back, 1)
            if i > 0:
                back = torch.bmm(back, self.weights[i].transpose(1, 2), out=self._activation_grads[i - 1])
        return [*weight_out, *bias_out]

    def _allocate(self, batch: int) -> None:
        m, device = self.weights[0].shape[0], self.weights[0].device
        self._activations = [torch.empty(m, batch, h, device=device) for h in self.sizes[1:-1]]
        self._activation_grads = [torch.empty_like(a) for a in self._activations]
        self._logits = torch.empty(m, self.sizes[-1], batch, device=device)

    def member(self, m: int) -> MLP:
        """Model ``m`` as a plain MLP (for tests and checks)."""
        net = MLP(self.sizes)
        with torch.no_grad():
            for layer, weight, bias in zip(net.layers, self.weights, self.biases):
                layer.weight.copy_(weight[m].T)
                layer.bias.copy_(bias[m])
        return net


def _stacked(tensors: list[Tensor], device: torch.device) -> Tensor:
    return torch.stack([t.detach() for t in tensors]).to(device).contiguous()


def _dense(t: Tensor) -> bool:
    """Whether ``t`` covers its memory without gaps (contiguous in some order of its dimensions)."""
    return t.is_contiguous() or t.permute(*sorted(range(t.dim()), key=lambda d: -t.stride(d))).is_contiguous()


class Autograd:
    """M copies of any model of the factory, their parameters stacked [M, ...] (``torch.func.stack_module_state``)
    and stepped by autograd: ``functional_call`` under ``vmap`` runs each model on its own batch (batched products,
    grouped convolutions), each model's loss is its own loss's batch mean, and one backward pass of their sum gives
    every model its own gradients (the models share nothing)."""

    def __init__(self, spec: model.ModelSpec, input_dim: int, classes: int, seeds: Sequence[int],
                 device: torch.device):
        nets = {seed: model.init(spec, input_dim, classes, seed) for seed in dict.fromkeys(seeds)}
        stacked, buffers = stack_module_state([nets[s] for s in seeds])
        if buffers:
            raise ValueError(f"{spec.kind}: models with buffers (e.g. batch norm) are not stacked yet")
        self.spec, self.input_dim, self.classes = spec, input_dim, classes
        self.names = list(stacked)
        self.params = [p.detach().to(device).contiguous().requires_grad_(True) for p in stacked.values()]
        # Parameters grouped per module (a layer's weight and bias): the per-layer gradient norms.
        modules = [name.rsplit(".", 1)[0] for name in self.names]
        self.layers = [[i for i, m in enumerate(modules) if m == module] for module in dict.fromkeys(modules)]
        skeleton = copy.deepcopy(nets[seeds[0]]).to("meta")  # shapes only: functional_call brings the values

        def run(params: Sequence[Tensor], x: Tensor) -> Tensor:  # one model: [B, D] -> [B, K]
            return functional_call(skeleton, dict(zip(self.names, params)), (x,))

        self._own = vmap(run, in_dims=(0, 0))  # x [M, B, D]: a batch per model
        self._shared = vmap(run, in_dims=(0, None))  # x [B, D]: one batch for every model
        self._lay_out_like_gradients(device)
        # cuDNN may pick nondeterministic convolution algorithms (backward weight gradients accumulate atomically):
        # on CUDA the step asks for deterministic ones, so that the same seed gives the same records.
        self._deterministic = (torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True)
                               if device.type == "cuda" else contextlib.nullcontext())

    def _lay_out_like_gradients(self, device: torch.device) -> None:
        """Store each parameter in the memory layout autograd returns its gradient in (a linear layer's weight
        gradient comes transposed), so that the optimizers' elementwise passes and the fused Adam kernel, which
        reads parameters and gradients as flat memory, run over matching dense tensors without a copy per step."""
        x = torch.zeros(len(self.params[0]), 2, self.input_dim, device=device)
        found = torch.autograd.grad(self._own(self.params, x).sum(), self.params)
        for i, (p, g) in enumerate(zip(self.params, found)):
            if g.stride() != p.stride() and _dense(g):
                self.params[i] = torch.empty_like(g).copy_(p).requires_grad_(True)

    def forward(self, x: Tensor) -> Tensor:
        """Logits [M, B, K] from inputs [M, B, D] (one batch per model) or [B, D] (shared by all models)."""
        with torch.no_grad():
            return (self._own if x.dim() == 3 else self._shared)(self.params, x)

    def step(self, x: Tensor, y: Tensor, groups: Sequence[tuple[Callable, Callable, slice]], opt,
             *, measure: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """As ``Stack.step``: per-example losses [M, B]; with ``measure`` the logit-gradient and per-layer norms."""
        b = x.shape[1]
        with self._deterministic:
            logits = self._own(self.params, x)  # [M, B, K]
            by_class = logits.transpose(1, 2)  # [M, K, B]: the losses' class dimension is 1, the batch trails
            per_example = torch.cat([fn(by_class[s], y[s]) for fn, _, s in groups])  # [M, B]
            total = per_example.mean(dim=1).sum()  # each model's batch mean; the sum couples nothing
            wanted = [*self.params, logits] if measure else self.params
            found = torch.autograd.grad(total, wanted)
        # Laid out as the parameters: the fused Adam kernel reads both as flat memory (a gradient in another layout
        # would take other elements' steps). Set up so, this copies nothing.
        param_grads = [g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
                       for p, g in zip(self.params, found)]
        logit_grads = layer_norms = None
        if measure:
            # x B undoes the 1/B of the batch mean: these are per-example gradients.
            logit_grads = (found[-1] * b).norm(dim=2).mean(dim=1)  # [M]
            layer_norms = grads.layer_norms([[param_grads[i] for i in layer] for layer in self.layers])  # [M, L]
        with torch.no_grad():
            opt.step(param_grads)
        return per_example.detach(), logit_grads, layer_norms

    def member(self, m: int) -> nn.Module:
        """Model ``m`` as a plain module (for tests and checks)."""
        net = model.init(self.spec, self.input_dim, self.classes, 0)  # values replaced below; global RNG untouched
        with torch.no_grad():
            for name, p in zip(self.names, self.params):
                net.get_parameter(name).copy_(p[m])
        return net


class StackedSGD:
    """torch.optim.SGD with momentum (no dampening, no weight decay), one learning rate per model."""

    def __init__(self, params: list[Tensor], lr: Tensor, momentum: float):
        self.params, self.lr, self.momentum = params, lr, momentum
        self.buffers = [torch.zeros_like(p) for p in params]

    def step(self, grads: list[Tensor]) -> None:
        for grad, buf in zip(grads, self.buffers):
            torch.add(grad, buf, alpha=self.momentum, out=buf)  # buf = momentum * buf + grad, one pass
        self.descend()

    def descend(self) -> None:
        """p -= lr * buf, once the buffers hold this step's momentum (``step``, or ``Stack.backward`` with
        ``into=buffers, beta=momentum``)."""
        for p, buf in zip(self.params, self.buffers):
            p.addcmul_(_per_model(self.lr, p), buf, value=-1)

    def state(self) -> dict:
        return {"buffers": self.buffers}

    def load(self, state: dict) -> None:
        for buf, saved in zip(self.buffers, state["buffers"]):
            buf.copy_(saved)

    def reset(self, m: int) -> None:
        for buf in self.buffers:
            buf[m] = 0


class StackedAdam:
    """torch.optim.Adam (default betas and eps, no weight decay), one learning rate per model."""

    def __init__(self, params: list[Tensor], lr: Tensor):
        self.params, self.lr, self.steps = params, lr, 0
        self.first = [torch.zeros_like(p) for p in params]
        self.second = [torch.zeros_like(p) for p in params]

    def step(self, grads: list[Tensor]) -> None:
        """PyTorch's fused Adam kernel (``Adam(fused=True)``), once per model on its slices of the stacked tensors,
        so that each model keeps its own learning rate: 4.7 ms a Fashion-MNIST step for 20 models instead of 9.5 ms
        for the same update written as seven elementwise passes (measured side by side)."""
        beta1, beta2 = ADAM_BETAS
        self.steps += 1
        step = [torch.tensor(float(self.steps))] * len(self.params)  # the kernel reads the step count, per tensor
        for m, lr in enumerate(self.lr.tolist()):
            torch._fused_adam_([p[m] for p in self.params], [g[m] for g in grads], [a[m] for a in self.first],
                               [b[m] for b in self.second], [], step, amsgrad=False, lr=lr, beta1=beta1,
                               beta2=beta2, weight_decay=0.0, eps=ADAM_EPS, maximize=False)

    def state(self) -> dict:
        return {"first": self.first, "second": self.second, "steps": self.steps}

    def load(self, state: dict) -> None:
        for buf, saved in zip([*self.first, *self.second], [*state["first"], *state["second"]]):
            buf.copy_(saved)
        self.steps = int(state["steps"])

    def reset(self, m: int) -> None:
        for buf in [*self.first, *self.second]:
            buf[m] = 0


def _per_model(values: Tensor, like: Tensor) -> Tensor:
    """[M] -> [M, 1, ...] to broadcast against a stacked tensor."""
    return values.view(-1, *([1] * (like.dim() - 1)))


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
        watch = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(PROBE_SEED))
        self.watch = watch[:MEMO_SIZE].to(dev)  # a fixed training subset (flipped labels included, as trained on)
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
        # Every step's batch is gathered into these: allocating a fresh 8 MB tensor per step (Fashion-MNIST, 20
        # models) made the step 3% slower, measured side by side.
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
        with torch.no_grad():
            for split in self.settings.splits:
                outputs[split] = self._logits(self.splits[split].x)
                metrics = self._metrics(outputs[split], self.splits[split].y)
                columns.update({(split, metric): values for metric, values in metrics.items()})
            watch_needed = self.settings.instrument or self.memo is not None
            watched = self._logits(self.train_x[self.watch]) if watch_needed else None
            if self.memo is not None:
                columns.update(self._memorisation(watched))
            if self.settings.instrument and "test" in outputs:
                columns.update(self._populations(outputs["test"], watched))
                if self.heldout is not None:
                    found = ood.measure(outputs["test"], self._logits(self.heldout))
                    columns.update({key: values.tolist() for key, values in found.items()})
            if self.settings.instrument and last and "val" in outputs and "test" in outputs:
                columns.update(self._calibration(outputs["val"], outputs["test"]))
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


def fit(cond: Condition, data: Dataset, members: Sequence[Member],
        settings: Settings) -> Iterator[Record | ExampleStats]:
    """Train ``members`` on ``data`` in lockstep and yield every measurement."""
    return Trainer(cond, data, members, settings).run()


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


def expected_calibration_error(confidence: Tensor, correct: Tensor, bins: int) -> Tensor:
    """ECE over equal-width bins of max probability, (lower, upper] membership: sum_b n_b/n |acc_b - conf_b|.

    [M, N] confidences and correctness -> [M]."""
    m, n = confidence.shape
    which = (confidence * bins).ceil().long().clamp(1, bins) - 1  # (lower, upper]; confidence > 0 always
    gap = torch.zeros(m, bins, dtype=confidence.dtype, device=confidence.device)
    # On CUDA, scatter_add_ of floats adds a bin's terms in no fixed order (atomics): ECE may differ in its last
    # bits between runs there. Declared rather than avoided: it is a reading, never fed back into training.
    gap.scatter_add_(1, which, correct.to(confidence.dtype) - confidence)  # sum over bin of (acc - conf)
    return gap.abs().sum(dim=1) / n


def own_calibration_error(logits: Tensor, labels: Tensor, kinds: Sequence[str], bins: int, *,
                          probs: Tensor | None = None) -> list[float | None]:
    """Each model's ECE on the probabilities its loss outputs (``kinds[m]``, one of ``losses.PROBABILITIES``), in the
    bins of ``expected_calibration_error``: [M, N, K] logits, [N] labels -> M values, None where the loss models no
    probability. "softmax": the max softmax probability; "sigmoid": the largest of the per-class sigmoids, the
    prediction its argmax. ``probs``: the softmax of ``logits`` when the caller has it already."""
    if len(kinds) != logits.shape[0]:
        raise ValueError(f"{len(kinds)} kinds of probabilities for {logits.shape[0]} models")
    unknown = set(kinds) - set(losses.PROBABILITIES)
    if unknown:
        raise ValueError(f"unknown kinds of probabilities {sorted(unknown)}; known: {losses.PROBABILITIES}")
    probs = logits.log_softmax(dim=2).exp() if probs is None else probs
    confidence, predicted = probs.max(dim=2)  # [M, N]
    sigmoid = torch.tensor([kind == "sigmoid" for kind in kinds], device=logits.device)
    # The largest sigmoid is the sigmoid of the largest logit (it is monotone), and its class is the softmax's.
    own = torch.where(sigmoid[:, None], logits.amax(dim=2).sigmoid(), confidence)
    values = expected_calibration_error(own, predicted == labels, bins).tolist()
    return [None if kind == "none" else value for kind, value in zip(kinds, values)]


def classwise_calibration_error(probs: Tensor, labels: Tensor, bins: int) -> Tensor:
    """Classwise ECE (Kull et al. 2019; "static calibration error", Nixon et al. 2019): for each class k, p_k of every
    example in equal-width (lower, upper] bins, sum_b n_b/n |mean_b 1[y = k] - mean_b p_k|; the mean over classes.

    [M, N, K] probabilities and [N] labels -> [M]. All classes and models in one scatter."""
    m, n, k = probs.shape
    which = (probs * bins).ceil().long().clamp(1, bins) - 1  # [M, N, K]; an underflowed 0 goes to the first bin
    which = which + torch.arange(k, device=probs.device) * bins  # class k's bins are k * bins ... (k + 1) * bins - 1
    hits = torch.nn.functional.one_hot(labels, k).to(probs.dtype)  # [N, K]
    gap = torch.zeros(m, k * bins, dtype=probs.dtype, device=probs.device)
    gap.scatter_add_(1, which.reshape(m, n * k), (hits - probs).reshape(m, n * k))  # as in expected_calibration_error
    return gap.abs().sum(dim=1) / (n * k)


def fit_temperature(logits: Tensor, labels: Tensor, *, low: float = 0.05, high: float = 20.0,
                    iterations: int = 48) -> Tensor:
    """Per-model temperature T in [low, high] minimising the NLL of softmax(logits / T): [M, N, K] -> [M].

    The NLL of softmax(b * z) is convex in the inverse temperature b, so a golden-section search on b brackets
    the optimum for every model at once (48 steps shrink the bracket below 1e-8 of its width)."""
    m, n, _ = logits.shape
    index = labels.expand(m, n)[..., None]

    def nll(inverse: Tensor) -> Tensor:  # [M] -> [M]
        scaled = logits * inverse[:, None, None]
        return -scaled.log_softmax(dim=2).gather(2, index).squeeze(2).mean(dim=1)

    ratio = (math.sqrt(5) - 1) / 2
    lo = torch.full((m,), 1 / high, device=logits.device)
    hi = torch.full((m,), 1 / low, device=logits.device)
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)  # lo < a < b < hi
    nll_a, nll_b = nll(a), nll(b)
    for _ in range(iterations):
        left = nll_a < nll_b  # the minimum lies in [lo, b], else in [a, hi]
        hi, lo = torch.where(left, b, hi), torch.where(left, lo, a)
        fresh = torch.where(left, hi - ratio * (hi - lo), lo + ratio * (hi - lo))
        nll_fresh = nll(fresh)  # one new evaluation per step; the other point is reused
        a, b, nll_a, nll_b = (torch.where(left, fresh, b), torch.where(left, a, fresh),
                              torch.where(left, nll_fresh, nll_b), torch.where(left, nll_a, nll_fresh))
    return 1 / ((lo + hi) / 2)


def _share(per_example: Tensor, mask: Tensor) -> Tensor:
    total = per_example.sum(dim=1)
    return torch.where(total > 0, (per_example * mask).sum(dim=1) / total, torch.zeros_like(total))


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
