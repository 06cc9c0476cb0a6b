"""How a condition's grid of M models is held and stepped at once: ``Stack`` (MLPs as stacked tensors, the fused
hand-written backward), ``Autograd`` (any model of the factory under ``vmap``), and the stacked optimizers (one
learning rate per model). Tensors in, tensors out: no records, no files, no tracker.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from study import grads, model
from study.model import MLP, init_mlp

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
ADAM_EPS = 1e-8


def resolve_backend(name: str, spec: model.ModelSpec) -> str:
    """auto is fused for an MLP (the published results' path), autograd for any other model."""
    if name == "auto":
        return "fused" if isinstance(spec, model.MLPSpec) else "autograd"
    problem = model.backend_problem(name, spec)
    if problem:
        raise ValueError(problem)
    if name not in ("fused", "autograd"):
        raise ValueError(f"unknown backend {name!r}; one of auto, fused, autograd")
    return name


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

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits [M, B, K] from inputs [M, B, D] (one batch per model) or [B, D] (shared by all models); with
        ``features`` also the last hidden layer's output [M, B, H] (after its ReLU)."""
        for weight, bias in zip(self.weights[:-1], self.biases[:-1]):
            # A shared [B, D] input is expanded (stride 0, not copied) so that one baddbmm adds the bias in the
            # product itself rather than in a second pass over [M, B, H].
            x = torch.baddbmm(bias[:, None], x if x.dim() == 3 else x.expand(len(weight), *x.shape), weight)
            x = x.relu_()  # in place: the product is a fresh tensor
        logits = torch.baddbmm(self.biases[-1][:, None], x, self.weights[-1])
        return (x, logits) if features else logits

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

        def run_features(params: Sequence[Tensor], x: Tensor) -> tuple[Tensor, Tensor]:  # ([B, H], [B, K])
            return functional_call(skeleton, dict(zip(self.names, params)), (x,), {"features": True})

        self._own = vmap(run, in_dims=(0, 0))  # x [M, B, D]: a batch per model
        self._shared = vmap(run, in_dims=(0, None))  # x [B, D]: one batch for every model
        self._shared_features = vmap(run_features, in_dims=(0, None))
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

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits [M, B, K] from inputs [M, B, D] (one batch per model) or [B, D] (shared by all models); with
        ``features`` (shared inputs only) also the penultimate layer's output [M, B, H]."""
        with torch.no_grad():
            if features:
                return self._shared_features(self.params, x)
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
        so that each model keeps its own learning rate: one kernel reads and writes each tensor once, where the same
        update in torch ops takes seven elementwise passes and twice the time (a Fashion-MNIST step of 20 models)."""
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
