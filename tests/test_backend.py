"""The model factory and the two training backends: autograd (any model) equals the fused hand-written MLP backward,
and equals a plain per-model torch loop for the CNN; initial weights depend on the seed alone, batches likewise.
The `gpu` tests repeat the equalities on CUDA (skipped without one)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import synthetic_dataset, tiny_condition
from study import backends, grads, losses, model, train
from study.data import Dataset
from study.model import CNN1dSpec, MLPSpec
from study.records import ExampleStats, Record
from study.train import Member, Settings

NAMES = ["mse", "sigmoid_bce", "softmax_nll", "smoothed_ce"]
SETTINGS = Settings(progress=False)
RTOL, ATOL = 1e-4, 1e-5
CNN = CNN1dSpec(channels=(4, 5, 6), kernel=5, stride=2, padding=1)
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                        reason="needs a CUDA device")])
DEVICES = ["cpu", CUDA]


@pytest.fixture(scope="module")
def signal_data() -> Dataset:
    """40-long inputs, as MNIST-1D's: long enough for three stride-2 convolutions."""
    return synthetic_dataset(n_train=96, dim=40)


def run(cond, data: Dataset, members, settings: Settings = SETTINGS):
    trainer = train.Trainer(cond, data, members, settings)
    items = list(trainer.run())
    return ([i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, ExampleStats)], trainer)


def keyed(records, member: Member) -> dict[tuple[int, str, str], float]:
    return {(r.step, r.split, r.metric): r.value for r in records if (r.loss, r.lr, r.seed) == tuple(
        (member.loss, member.lr, member.seed))}


def assert_close_records(got: dict, want: dict, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert got.keys() == want.keys()
    keys = sorted(want)
    np.testing.assert_allclose([got[k] for k in keys], [want[k] for k in keys], rtol=rtol, atol=atol,
                               err_msg=str(keys))


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, rtol: float = RTOL, atol: float = ATOL) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p.detach().cpu(), q.detach().cpu(), rtol=rtol, atol=atol, msg=name)


# ---- the factory -------------------------------------------------------------------------------------------------


def test_the_factory_builds_each_kind_and_names_it():
    mlp = MLPSpec((256, 256))
    assert mlp.describe(784, 10) == "MLP 784-256-256-10" == model.describe((784, 256, 256, 10))
    assert model.init(mlp, 784, 10, 0)(torch.zeros(3, 784)).shape == (3, 10)
    paper = CNN1dSpec(channels=(25, 25, 25), kernel=5, stride=2, padding=1)
    assert paper.describe(40, 10) == "CNN1d 25-25-25 k5 s2"
    net = model.init(paper, 40, 10, 0)
    assert net(torch.zeros(3, 40)).shape == (3, 10)
    # Greydanus (2020): 40 -> 19 -> 9 -> 4 positions, 25 x 4 = 100 features into the linear layer.
    assert model.conv_length(40, 3, 5, 2, 1) == 4 and net.head.in_features == 100
    assert sum(p.numel() for p in net.parameters()) == 150 + 2 * 3150 + 1010
    assert paper.check(40) is None and "length 8" in paper.check(8)
    assert set(model.KINDS) == {"mlp", "cnn1d"}


@pytest.mark.parametrize("spec", [MLPSpec((16, 8)), CNN], ids=["mlp", "cnn1d"])
def test_initial_weights_depend_on_the_seed_alone_and_leave_the_global_rng(spec):
    state = torch.random.get_rng_state()
    a, b, other = (model.init(spec, 40, 10, seed) for seed in (3, 3, 4))
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, p), q, r in zip(a.named_parameters(), b.parameters(), other.parameters()):
        assert torch.equal(p, q), name
        assert not torch.equal(p, r), name


def test_every_loss_starts_a_seed_from_the_same_weights(signal_data):
    cond = tiny_condition(model=CNN, backend="autograd")
    members = train.grid(NAMES, [0, 1], {loss: [0.1, 0.3] for loss in NAMES})
    trainer = train.Trainer(cond, signal_data, members, SETTINGS)
    for m, member in enumerate(members):
        want = model.init(CNN, 40, 10, member.seed)
        for (name, got), (_, expected) in zip(trainer.stack.member(m).named_parameters(), want.named_parameters()):
            assert torch.equal(got, expected), (member, name)  # bit-identical, whatever the loss and lr
    logits = trainer.stack.forward(signal_data.x_test)  # [M, N, K]: step-0 outputs equal across losses
    for m, member in enumerate(members):
        assert torch.equal(logits[m], logits[[x.seed for x in members].index(member.seed)])


def test_auto_picks_fused_for_an_mlp_and_autograd_otherwise(tiny_data, signal_data):
    member = [Member("mse", 0.1, 0)]
    assert train.Trainer(tiny_condition(), tiny_data, member, SETTINGS).backend == "fused"
    assert isinstance(train.Trainer(tiny_condition(), tiny_data, member, SETTINGS).stack, backends.Stack)
    forced = Settings(progress=False, backend="autograd")
    assert isinstance(train.Trainer(tiny_condition(), tiny_data, member, forced).stack, backends.Autograd)
    cnn = tiny_condition(model=CNN)
    assert train.Trainer(cnn, signal_data, member, SETTINGS).backend == "autograd"
    with pytest.raises(ValueError, match="fused backend steps MLPs only"):
        train.Trainer(tiny_condition(model=CNN, backend="fused"), signal_data, member, SETTINGS)


@pytest.mark.parametrize("spec", [MLPSpec((16, 16)), CNN], ids=["mlp", "cnn1d"])
def test_every_member_sees_its_seeds_batches_on_either_backend(signal_data, spec):
    cond = tiny_condition(model=spec, backend="autograd", epochs=1)
    members = train.grid(["mse", "softmax_nll"], [5, 2], {loss: [0.1] for loss in ["mse", "softmax_nll"]})
    trainer = train.Trainer(cond, signal_data, members, SETTINGS)
    seen, step_once = [], trainer._train_step
    trainer._train_step = lambda batch, *, measure: seen.append(batch.clone()) or step_once(batch, measure=measure)
    list(trainer.run())
    n, b = len(signal_data.y_train), cond.batch_size
    assert len(seen) == trainer.total_steps
    for step, batch in enumerate(seen):
        for row, seed in enumerate(trainer.seeds):
            assert torch.equal(batch[row].cpu(), train.batch_order(n, seed, 0)[step * b:(step + 1) * b])


@pytest.mark.parametrize("spec", [MLPSpec((16, 16)), CNN], ids=["mlp-fused", "cnn1d-autograd"])
def test_a_models_numbers_do_not_depend_on_the_models_stacked_beside_it(signal_data, spec):
    """What lets a learning-rate fallback train only the losses that failed: every measurement of a model trained
    in a stack of sixteen equals, to the last bit, that of the same model trained beside its own loss's models
    alone (a logged training loss averaged down the columns of [steps, models] summed in an order that depended
    on how many models there were)."""
    cond = tiny_condition(model=spec, epochs=3, log_every=9)
    members = train.grid(NAMES, [0, 1, 2, 3], {loss: [0.1] for loss in NAMES})
    records, examples, _ = run(cond, signal_data, members)
    assert len({r.metric for r in records if r.split == "train"}) > 1 and examples
    for loss in NAMES:
        alone_records, alone_examples, _ = run(cond, signal_data, [m for m in members if m.loss == loss])
        assert alone_records == [r for r in records if r.loss == loss]
        beside = [e for e in examples if e.loss == loss]
        assert [(e.seed, e.step, e.split) for e in alone_examples] == [(e.seed, e.step, e.split) for e in beside]
        for got, want in zip(alone_examples, beside):
            for name in ("index", "predicted", "p_true", "confidence", "loss_value", "logit_grad_norm"):
                assert np.array_equal(getattr(got, name), getattr(want, name)), (loss, name)


# ---- autograd = fused on an MLP ----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer, lrs", [("sgd", (0.05, 0.2)), ("adam", (0.003, 0.01))])
def test_autograd_equals_fused_on_an_mlp(tiny_data, optimizer, lrs, device):
    cond = tiny_condition(optimizer=optimizer, epochs=2, log_every=3)
    members = train.grid(NAMES, [0, 1], {loss: list(lrs) for loss in NAMES})
    fused, fused_examples, a = run(cond, tiny_data, members, Settings(progress=False, backend="fused", device=device))
    auto, auto_examples, b = run(cond, tiny_data, members,
                                 Settings(progress=False, backend="autograd", device=device))
    assert (a.backend, b.backend) == ("fused", "autograd")
    for m, member in enumerate(members):
        want, got = keyed(fused, member), keyed(auto, member)
        # The fitted temperature is the argmin of a flat NLL after 12 steps: float rounding moves it by ~1e-3, and
        # the ECE at that temperature by a test example crossing a bin edge (1/64 each).
        fitted = {key for key in want if key[2] in ("temperature", "nll_ts", "ece_ts")}
        assert_close_records({k: got[k] for k in want.keys() - fitted}, {k: want[k] for k in want.keys() - fitted})
        assert_close_records({k: got[k] for k in fitted}, {k: want[k] for k in fitted}, rtol=1e-2,
                             atol=2 / len(tiny_data.y_test))
        assert {"grad_norm", "grad_norm_layer3", "logit_grad_norm"} <= {k[2] for k in want}
        assert_same_weights(b.stack.member(m), a.stack.member(m))
    assert len(fused_examples) == len(auto_examples)
    for x, y in zip(fused_examples, auto_examples):
        assert (x.run, x.step, x.split) == (y.run, y.step, y.split)
        np.testing.assert_allclose(y.loss_value, x.loss_value, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(y.logit_grad_norm, x.logit_grad_norm, rtol=RTOL, atol=ATOL)


# ---- autograd = a plain per-model loop on the CNN -------------------------------------------------------------------


def plain_loop(cond, data: Dataset, member: Member, device: str):
    """The textbook loop: one nn.Module, autograd, torch.optim, the member's own batches. Returns the net and its
    windowed losses and per-module gradient norms keyed like the trainer's records."""
    net = model.init(cond.model, data.input_dim, data.num_classes, member.seed).to(device)
    if cond.optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=member.lr, momentum=cond.momentum)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=member.lr)
    loss_fn = losses.build(member.loss)
    x_all, y_all = data.x_train.to(device), data.y_train.to(device)
    n, b, log_every = len(data.y_train), cond.batch_size, cond.log_every
    window, logged, step = [], {}, 0
    for epoch in range(cond.epochs):
        order = train.batch_order(n, member.seed, epoch).to(device)
        for position in range(n // b):
            index = order[position * b:(position + 1) * b]
            loss = loss_fn(net(x_all[index]), y_all[index]).mean()
            opt.zero_grad()
            loss.backward()
            if (step + 1) % log_every == 0:
                modules = [list(module.parameters(recurse=False)) for module in net.modules()]
                layers = grads.layer_norms([[p.grad[None] for p in ps] for ps in modules if ps])[0].tolist()
                logged[step + 1, "train", "grad_norm"] = math.hypot(*layers)
                for i, norm in enumerate(layers, start=1):
                    logged[step + 1, "train", f"grad_norm_layer{i}"] = norm
            opt.step()
            step += 1
            window.append(loss.item())
            if step % log_every == 0:
                logged[step, "train", "loss"] = sum(window) / len(window)
                window = []
    return net, logged


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.1), ("adam", 0.01)])
def test_autograd_cnn_equals_a_plain_loop_per_model(signal_data, optimizer, lr, device):
    cond = tiny_condition(model=CNN, optimizer=optimizer, epochs=2, log_every=3)
    members = train.grid(NAMES, [0, 1], {loss: [lr] for loss in NAMES})
    records, _, trainer = run(cond, signal_data, members, Settings(progress=False, device=device))
    assert trainer.backend == "autograd"
    for m, member in enumerate(members):
        net, logged = plain_loop(cond, signal_data, member, device)
        mine = keyed(records, member)
        assert {"grad_norm_layer4", "logit_grad_norm"} <= {k[2] for k in mine}  # three convolutions, one linear
        assert_close_records({k: mine[k] for k in logged}, logged)
        assert_same_weights(trainer.stack.member(m), net)
        initial = model.init(CNN, 40, 10, member.seed)
        moved = sum((p.cpu() - q).abs().sum().item() for p, q in zip(net.parameters(), initial.parameters()))
        assert moved > 1e-2  # training happened: the comparison is not between two untouched nets


def test_autograd_runs_are_reproducible(signal_data):
    cond = tiny_condition(model=CNN, optimizer="adam", epochs=1)
    members = train.grid(NAMES, [0], {loss: [0.01] for loss in NAMES})
    assert run(cond, signal_data, members)[0] == run(cond, signal_data, members)[0]
