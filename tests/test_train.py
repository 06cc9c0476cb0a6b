"""The lockstep trainer on a tiny synthetic dataset: identical starts, shared batches, lockstep = alone = a plain
torch loop, determinism, overfitting, divergence, and the calibration helpers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import synthetic_dataset, tiny_condition
from study import calibration, losses, train
from study.data import Dataset
from study.model import MLPSpec, init_mlp
from study.records import ExampleStats, Record
from study.train import Member, Settings, speed_steps

NAMES = ["mse", "sigmoid_bce", "softmax_nll", "smoothed_ce"]
SETTINGS = Settings(loss_options={"smoothed_ce": {"eps": 0.1}}, progress=False)
RTOL, ATOL = 1e-4, 1e-5


def run(cond, data: Dataset, members, settings: Settings = SETTINGS):
    trainer = train.Trainer(cond, data, members, settings)
    items = list(trainer.run())
    records = [item for item in items if isinstance(item, Record)]
    examples = [item for item in items if isinstance(item, ExampleStats)]
    assert len(records) + len(examples) == len(items)
    return records, examples, trainer


def of(records, member: Member) -> dict[tuple[int, str, str], float]:
    """One member's records keyed by (step, split, metric); keys must be unique."""
    mine = [r for r in records if (r.loss, r.lr, r.seed) == (member.loss, member.lr, member.seed)]
    keyed = {(r.step, r.split, r.metric): r.value for r in mine}
    assert len(keyed) == len(mine), "duplicate (step, split, metric) for one member"
    return keyed


def examples_of(examples, member: Member) -> dict[tuple[int, str], ExampleStats]:
    return {(e.step, e.split): e for e in examples if (e.loss, e.lr, e.seed) == (member.loss, member.lr, member.seed)}


def sizes(data: Dataset, cond) -> tuple[int, ...]:
    return (data.input_dim, *cond.model.hidden, data.num_classes)


def assert_same_records(got: dict, want: dict, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert got.keys() == want.keys()
    keys = sorted(want)
    np.testing.assert_allclose([got[k] for k in keys], [want[k] for k in keys], rtol=rtol, atol=atol,
                               err_msg=str(keys))


def assert_same_weights(net_a, net_b, rtol: float = RTOL, atol: float = ATOL) -> None:
    for (name, a), (_, b) in zip(net_a.named_parameters(), net_b.named_parameters()):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=name)


# ---- identical starts and batches ---------------------------------------------------------------------------------


def test_initial_weights_depend_on_the_seed_only(tiny_data):
    cond = tiny_condition()
    members = train.grid(NAMES, [0, 1], {loss: [0.1, 0.3] for loss in NAMES})
    trainer = train.Trainer(cond, tiny_data, members, SETTINGS)
    reference = {seed: init_mlp(sizes(tiny_data, cond), seed) for seed in (0, 1)}
    for m, member in enumerate(members):
        net = trainer.stack.member(m)
        for (name, got), (_, want) in zip(net.named_parameters(), reference[member.seed].named_parameters()):
            assert torch.equal(got, want), (member, name)  # bit-identical, whatever the loss and lr
    first_layer = [p.detach() for p in reference[0].parameters()][0]
    assert not torch.equal(first_layer, [p.detach() for p in reference[1].parameters()][0])


def test_init_mlp_is_reproducible_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = init_mlp((12, 16, 10), 3), init_mlp((12, 16, 10), 3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_step0_logits_and_measurements_equal_across_losses(tiny_data):
    cond = tiny_condition(epochs=1)
    members = train.grid(NAMES, [0, 1], {loss: [0.1] for loss in NAMES})
    trainer = train.Trainer(cond, tiny_data, members, SETTINGS)
    with torch.no_grad():
        logits = trainer.stack.forward(tiny_data.x_test)  # [M, N, K]
    for m, member in enumerate(members):
        first = next(i for i, other in enumerate(members) if other.seed == member.seed)
        assert torch.equal(logits[m], logits[first]), member
    assert not torch.equal(logits[0], logits[1])  # seeds 0 and 1 differ

    records, examples, _ = run(cond, tiny_data, members)
    for seed in (0, 1):
        same_seed = [m for m in members if m.seed == seed]
        # Everything but the loss's own value and its own logit gradients (norms, saturation) is loss-free.
        own = ("loss", "logit_grad_q25", "logit_grad_median", "logit_grad_q75", "saturated_wrong_share")
        at_step0 = [{k: v for k, v in of(records, m).items() if k[0] == 0 and k[2] not in own} for m in same_seed]
        assert at_step0[0] and all(values == at_step0[0] for values in at_step0)
        probes = [examples_of(examples, m)[0, "probe"] for m in same_seed]
        for probe in probes[1:]:
            assert np.array_equal(probe.p_true, probes[0].p_true)
            assert np.array_equal(probe.predicted, probes[0].predicted)


def test_batch_order_is_a_seeded_permutation():
    a = train.batch_order(100, seed=3, epoch=2)
    assert torch.equal(a, train.batch_order(100, seed=3, epoch=2))
    assert torch.equal(a.sort().values, torch.arange(100))
    assert not torch.equal(a, train.batch_order(100, seed=4, epoch=2))
    assert not torch.equal(a, train.batch_order(100, seed=3, epoch=1))


def test_every_member_sees_its_seeds_batches(tiny_data):
    cond = tiny_condition()
    members = train.grid(NAMES, [5, 2], {loss: [0.1] for loss in NAMES})
    trainer = train.Trainer(cond, tiny_data, members, SETTINGS)
    assert [trainer.seeds[i] for i in trainer.seed_of.tolist()] == [m.seed for m in members]
    seen = []
    step_once = trainer._train_step

    def spy(batch, *, measure):
        seen.append(batch.clone())
        return step_once(batch, measure=measure)

    trainer._train_step = spy
    list(trainer.run())
    n, b = len(tiny_data.y_train), cond.batch_size
    assert len(seen) == trainer.total_steps == (n // b) * cond.epochs
    for step, batch in enumerate(seen):
        epoch, position = divmod(step, trainer.steps_per_epoch)
        for row, seed in enumerate(trainer.seeds):
            want = train.batch_order(n, seed, epoch)[position * b:(position + 1) * b]
            assert torch.equal(batch[row], want), (step, seed)


def test_members_in_any_seed_order_train_as_they_would_alone(tiny_data):
    """Seeds in no particular order (here 1, 0, 0): each model still reads its own seed's batches."""
    cond = tiny_condition(epochs=2, log_every=3)
    members = [Member("mse", 0.1, 1), Member("mse", 0.1, 0), Member("softmax_nll", 0.2, 0)]
    together, _, big = run(cond, tiny_data, members)
    for m, member in enumerate(members):
        alone, _, small = run(cond, tiny_data, [member])
        got, want = of(together, member), of(alone, member)
        # The fitted temperature is the argmin of a flat NLL after 12 steps: float rounding moves it by ~1e-3.
        fitted = {key for key in want if key[2] in ("temperature", "nll_ts", "ece_ts")}
        assert_same_records({k: got[k] for k in want.keys() - fitted}, {k: want[k] for k in want.keys() - fitted})
        assert_same_records({k: got[k] for k in fitted}, {k: want[k] for k in fitted}, rtol=1e-2)
        assert_same_weights(big.stack.member(m), small.stack.member(0))


def test_members_must_be_ordered_by_loss(tiny_data):
    members = [Member("mse", 0.1, 0), Member("softmax_nll", 0.1, 0), Member("mse", 0.1, 1)]
    with pytest.raises(ValueError, match="ordered by loss"):
        train.Trainer(tiny_condition(), tiny_data, members, SETTINGS)
    assert train.grid(["mse", "softmax_nll"], [0, 1], {"mse": [0.1], "softmax_nll": [0.2, 0.3]}) == [
        Member("mse", 0.1, 0), Member("mse", 0.1, 1), Member("softmax_nll", 0.2, 0), Member("softmax_nll", 0.2, 1),
        Member("softmax_nll", 0.3, 0), Member("softmax_nll", 0.3, 1),
    ]


# ---- lockstep = alone = a plain per-model loop ---------------------------------------------------------------------


def plain_loop(cond, data: Dataset, member: Member, log_every: int):
    """The textbook loop: one nn.Module, autograd, torch.optim, the member's own batches. Returns the net, its
    windowed training losses and its gradient norms (autograd's) keyed like the trainer's records, and the first
    step whose loss was not finite (or None)."""
    net = init_mlp(sizes(data, cond), member.seed)
    if cond.optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=member.lr, momentum=cond.momentum)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=member.lr)
    loss_fn = losses.build(member.loss, SETTINGS.loss_options.get(member.loss))
    n, b = len(data.y_train), cond.batch_size
    window, logged, step, first_bad = [], {}, 0, None
    for epoch in range(cond.epochs):
        order = train.batch_order(n, member.seed, epoch)
        for position in range(n // b):
            index = order[position * b:(position + 1) * b]
            loss = loss_fn(net(data.x_train[index]), data.y_train[index]).mean()
            if first_bad is None and not torch.isfinite(loss):
                first_bad = step
            opt.zero_grad()
            loss.backward()
            if (step + 1) % log_every == 0:
                layers = [math.hypot(layer.weight.grad.norm().item(), layer.bias.grad.norm().item())
                          for layer in net.layers]
                logged[step + 1, "train", "grad_norm"] = math.hypot(*layers)
                for i, norm in enumerate(layers, start=1):
                    logged[step + 1, "train", f"grad_norm_layer{i}"] = norm
            opt.step()
            step += 1
            window.append(loss.item())
            if step % log_every == 0:
                logged[step, "train", "loss"] = sum(window) / len(window)
                window = []
    return net, logged, first_bad


def logged_metrics(logged: dict) -> set[tuple[str, str]]:
    return {key[1:] for key in logged}


@pytest.mark.parametrize("optimizer, lrs", [("sgd", (0.05, 0.2)), ("adam", (0.003, 0.01))])
def test_lockstep_member_equals_the_same_member_alone_and_a_plain_loop(tiny_data, optimizer, lrs):
    cond = tiny_condition(optimizer=optimizer, epochs=2, log_every=3)
    members = train.grid(NAMES, [0, 1], {loss: list(lrs) for loss in NAMES})
    target = Member("sigmoid_bce", lrs[1], 1)
    together, together_examples, big = run(cond, tiny_data, members)
    alone, alone_examples, small = run(cond, tiny_data, [target])

    assert_same_records(of(together, target), of(alone, target))
    assert len(of(alone, target)) > 50
    got, want = examples_of(together_examples, target), examples_of(alone_examples, target)
    assert got.keys() == want.keys() and (cond.epochs * 6, "test") in want
    for key in want:
        assert np.array_equal(got[key].index, want[key].index)
        assert np.array_equal(got[key].predicted, want[key].predicted)
        np.testing.assert_allclose(got[key].loss_value, want[key].loss_value, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got[key].logit_grad_norm, want[key].logit_grad_norm, rtol=RTOL, atol=ATOL)
    assert_same_weights(big.stack.member(members.index(target)), small.stack.member(0))

    for member in (target, Member("mse", lrs[0], 0), Member("smoothed_ce", lrs[1], 0)):
        net, logged, _ = plain_loop(cond, tiny_data, member, cond.log_every)
        assert_same_weights(big.stack.member(members.index(member)), net)
        trainer_train = {k: v for k, v in of(together, member).items() if k[1:] in logged_metrics(logged)}
        assert_same_records(trainer_train, logged)  # losses and gradient norms (hand-written backward = autograd)
        initial = init_mlp(sizes(tiny_data, cond), member.seed)
        moved = sum((p - q).abs().sum().item() for p, q in zip(net.parameters(), initial.parameters()))
        assert moved > 1e-2  # training happened: the comparison is not between two untouched nets


def test_same_settings_give_identical_records(tiny_data):
    cond = tiny_condition(optimizer="adam")
    members = train.grid(NAMES, [0, 1], {loss: [0.01] for loss in NAMES})
    first, first_examples, _ = run(cond, tiny_data, members)
    second, second_examples, _ = run(cond, tiny_data, members)
    assert first == second  # exact, in the same order
    assert len(first_examples) == len(second_examples)
    for a, b in zip(first_examples, second_examples):
        for field in dataclasses.fields(ExampleStats):
            x, y = getattr(a, field.name), getattr(b, field.name)
            assert np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y


def test_a_fixed_batch_can_be_overfit():
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(32, 12, generator=generator)
    y = torch.randint(0, 10, (32,), generator=generator)  # random labels: only memorising fits them
    data = Dataset("fixed", x, y, y, torch.zeros(32, dtype=torch.bool), x, y, x[:8], y[:8], 10)
    cond = tiny_condition(model=MLPSpec((64,)), batch_size=32, epochs=300, evals_per_epoch=1, log_every=50,
                          optimizer="adam")
    settings = dataclasses.replace(SETTINGS, instrument=False, splits=("val",))
    member = Member("softmax_nll", 0.01, 0)
    records, _, _ = run(cond, data, [member], settings)
    mine = of(records, member)
    assert mine[0, "val", "loss"] > 2.0  # near ln 10 at the start
    assert mine[300, "val", "loss"] < 0.05
    assert mine[300, "val", "accuracy"] == 1.0
    assert mine[300, "train", "loss"] < 0.05


# ---- divergence ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss, lr", [("softmax_nll", 1e3), ("sigmoid_bce", 1e6)])
def test_divergence_stops_that_model_only(tiny_data, loss, lr):
    cond = tiny_condition(epochs=2, evals_per_epoch=6, log_every=1)  # measure at every step: nowhere to hide
    healthy = {name: [0.1] for name in NAMES}
    members = train.grid(NAMES, [0, 1], {**healthy, loss: [0.1, lr]})
    records, examples, trainer = run(cond, tiny_data, members)
    baseline, baseline_examples, _ = run(cond, tiny_data, train.grid(NAMES, [0, 1], healthy))

    assert all(math.isfinite(r.value) for r in records), [r for r in records if not math.isfinite(r.value)][:5]
    for e in examples:
        for name in ("p_true", "confidence", "loss_value", "logit_grad_norm"):
            assert np.isfinite(getattr(e, name)).all(), (e.run, e.step, name)

    for seed in (0, 1):
        bad = Member(loss, lr, seed)
        mine = of(records, bad)
        diverged = [(k, v) for k, v in mine.items() if k[2] == "diverged_step"]
        assert len(diverged) == 1, "the model must be recorded as diverged, exactly once"
        (step, split, _), value = diverged[0]
        assert split == "train" and value == step and 0 < step < trainer.total_steps
        assert max(k[0] for k in mine) == step  # nothing measured after it
        assert (0, "test", "accuracy") in mine  # the step-0 evaluation is kept
        assert all(e.step <= step for e in examples_of(examples, bad).values())

    for member in train.grid(NAMES, [0, 1], healthy):  # the others are complete and unchanged
        assert_same_records(of(records, member), of(baseline, member))
        assert not any(k[2] == "diverged_step" for k in of(records, member))
        assert examples_of(examples, member).keys() == examples_of(baseline_examples, member).keys()


@pytest.mark.parametrize("loss, lr", [("softmax_nll", 1e3), ("sigmoid_bce", 1e6), ("smoothed_ce", 1e3)])
def test_diverged_step_is_the_first_non_finite_loss(tiny_data, loss, lr):
    """Measured rarely (one evaluation per epoch, no training logs in between), the recorded step is still the
    first step whose loss was not finite, as a plain torch loop on the same batches finds it."""
    cond = tiny_condition(epochs=2, evals_per_epoch=1, log_every=100)
    for seed in (0, 1):
        member = Member(loss, lr, seed)
        _, _, first_bad = plain_loop(cond, tiny_data, member, cond.log_every)
        assert first_bad is not None
        records, _, _ = run(cond, tiny_data, [Member("mse", 0.1, seed), member])
        diverged = [r for r in records if r.metric == "diverged_step"]
        assert [(r.loss, r.step, r.value) for r in diverged] == [(loss, first_bad, float(first_bad))]
        assert all(math.isfinite(r.value) for r in records)


# ---- calibration helpers ------------------------------------------------------------------------------------------


def test_ece_hand_computed_example():
    fifteenth = torch.tensor(2 / 15)  # exactly on the edge between bins 1 and 2 (in float32 as trained)
    confidence = torch.tensor([[0.1, fifteenth.item(), 0.3, 0.3, 0.9, 0.92, 1.0]])
    correct = torch.tensor([[1, 0, 0, 1, 1, 0, 1]], dtype=torch.bool)
    # bins (lower, upper] of width 1/15:
    #   bin 1 (1/15, 2/15]: 0.1 right, 2/15 wrong -> acc 0.5, conf 0.11667 -> 2 x 0.38333
    #   bin 4 (4/15, 5/15]: 0.3 wrong, 0.3 right -> acc 0.5, conf 0.3      -> 2 x 0.2
    #   bin 13 (13/15, 14/15]: 0.9 right, 0.92 wrong -> acc 0.5, conf 0.91  -> 2 x 0.41
    #   bin 14 (14/15, 1]: 1.0 right -> acc 1, conf 1                      -> 0
    expected = (2 * (0.5 - (0.1 + 2 / 15) / 2) + 2 * 0.2 + 2 * 0.41) / 7
    ece = calibration.expected_calibration_error(confidence, correct, 15)
    assert ece.shape == (1,)
    assert ece.item() == pytest.approx(expected, abs=1e-6)
    # Had 2/15 landed in bin 2, bin 1 would hold 0.1 alone: |1 - 0.1| + |0 - 2/15| instead of 2 x 0.38333.
    wrong_membership = (0.9 + 2 / 15 + 2 * 0.2 + 2 * 0.41) / 7
    assert abs(ece.item() - wrong_membership) > 0.01


@pytest.mark.parametrize("k", range(1, 16))
def test_ece_upper_edge_belongs_to_the_lower_bin(k):
    """A confidence of k/15 (as float32) falls in bin k-1: paired with a wrong example at the bin's middle, the
    two share one bin (ECE |0.5 - mean conf|) rather than two (ECE averaged over two gaps)."""
    edge = torch.tensor(k / 15)
    middle = torch.tensor((k - 0.5) / 15)
    confidence = torch.stack([edge, middle])[None]
    correct = torch.tensor([[True, False]])
    together = abs(0.5 - (edge.item() + middle.item()) / 2)
    assert calibration.expected_calibration_error(confidence, correct, 15).item() == pytest.approx(together, abs=1e-6)


def numpy_ece(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """Guo et al. (2017), bin by bin, with (lower, upper] membership."""
    total = 0.0
    for b in range(bins):
        lower, upper = b / bins, (b + 1) / bins
        inside = (confidence > lower) & (confidence <= upper)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def test_ece_matches_a_bin_by_bin_reference():
    generator = torch.Generator().manual_seed(0)
    confidence = torch.rand(3, 500, generator=generator, dtype=torch.float64) * 0.9 + 0.1
    correct = torch.rand(3, 500, generator=generator, dtype=torch.float64) < confidence**2
    got = calibration.expected_calibration_error(confidence, correct, 15)
    for m in range(3):
        assert got[m].item() == pytest.approx(numpy_ece(confidence[m].numpy(), correct[m].numpy(), 15), abs=1e-9)
    perfect = calibration.expected_calibration_error(torch.ones(1, 10), torch.ones(1, 10, dtype=torch.bool), 15)
    assert perfect.item() == 0.0


def test_fit_temperature_recovers_a_known_temperature():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(5000, 10, generator=generator) * 2.0
    labels = torch.multinomial(base.softmax(dim=1), 1, generator=generator).squeeze(1)
    temperatures = torch.tensor([0.5, 1.0, 2.5])
    logits = temperatures[:, None, None] * base  # [3, N, K]: dividing by T0 gives back the true model
    fitted = calibration.fit_temperature(logits, labels)
    assert fitted.shape == (3,)
    torch.testing.assert_close(fitted, temperatures, rtol=0.05, atol=0.0)  # 5000 draws: about 2% off


# ---- label noise --------------------------------------------------------------------------------------------------


def test_memorisation_is_measured_only_under_label_noise():
    cond = tiny_condition()
    members = train.grid(["softmax_nll", "mse"], [0], {"softmax_nll": [0.1], "mse": [0.1]})
    noisy = synthetic_dataset(label_noise=0.4)
    assert noisy.flipped.any() and (noisy.y_train[noisy.flipped] != noisy.y_train_clean[noisy.flipped]).all()
    records, _, trainer = run(cond, noisy, members)
    eval_steps = sorted({r.step for r in records if r.split == "test"})
    for m, member in enumerate(members):
        mine = of(records, member)
        for step in eval_steps:
            for key in [("train_flipped", "memorised"), ("train_flipped", "recovered"), ("train_clean", "accuracy")]:
                assert 0.0 <= mine[(step, *key)] <= 1.0
        with torch.no_grad():  # the final numbers, recomputed from the member's own weights
            predicted = trainer.stack.member(m)(noisy.x_train).argmax(dim=1)
        flipped = noisy.flipped
        final = trainer.total_steps
        assert mine[final, "train_flipped", "memorised"] == pytest.approx(
            (predicted[flipped] == noisy.y_train[flipped]).float().mean().item())
        assert mine[final, "train_flipped", "recovered"] == pytest.approx(
            (predicted[flipped] == noisy.y_train_clean[flipped]).float().mean().item())
        assert mine[final, "train_clean", "accuracy"] == pytest.approx(
            (predicted[~flipped] == noisy.y_train_clean[~flipped]).float().mean().item())

    clean, _, _ = run(cond, synthetic_dataset(), members)
    assert not any(r.split in ("train_flipped", "train_clean") for r in clean)


def test_heldout_images_are_scored_at_every_full_evaluation():
    """With held-out images in the data, every full evaluation records each model's AUROC (in-distribution test
    images against held-out ones, by max softmax and max sigmoid) and "none" shares; recomputed here from the
    model's own weights with a brute-force count of pairs."""
    cond = tiny_condition()
    members = train.grid(["softmax_nll", "sigmoid_bce"], [0], {"softmax_nll": [0.1], "sigmoid_bce": [0.1]})
    base = synthetic_dataset(classes=8)
    heldout = torch.randn(40, base.input_dim, generator=torch.Generator().manual_seed(5)) * 3
    data = dataclasses.replace(base, x_heldout=heldout)
    records, _, trainer = run(cond, data, members)
    full_steps = sorted({r.step for r in records if r.split == "test" and r.metric == "nll"})
    metrics = ["auroc_max_softmax", "auroc_max_sigmoid", "none_share"]
    for m, member in enumerate(members):
        mine = of(records, member)
        for step in full_steps:
            assert all(0.0 <= mine[(step, "heldout", metric)] <= 1.0 for metric in metrics)
            assert 0.0 <= mine[(step, "test", "none_share")] <= 1.0
        with torch.no_grad():
            net = trainer.stack.member(m)
            inside, outside = net(data.x_test), net(heldout)
        final = trainer.total_steps
        for metric, score in (("auroc_max_softmax", lambda z: z.softmax(dim=1).amax(dim=1)),
                              ("auroc_max_sigmoid", lambda z: z.sigmoid().amax(dim=1))):
            a, b = score(inside).double(), score(outside).double()
            pairs = (a[:, None] > b[None, :]).double() + 0.5 * (a[:, None] == b[None, :]).double()
            assert mine[final, "heldout", metric] == pytest.approx(pairs.mean().item(), abs=1e-6)
        assert mine[final, "heldout", "none_share"] == pytest.approx((outside.amax(dim=1) < 0).float().mean().item())
        assert mine[final, "test", "none_share"] == pytest.approx((inside.amax(dim=1) < 0).float().mean().item())

    plain, _, _ = run(cond, base, members)
    assert not any(r.split == "heldout" or r.metric == "none_share" for r in plain)


# ---- choosing the learning rate (runner) ----------------------------------------------------------------------------


def tune_history(curves: dict[tuple[str, float, int], list[float]], last_step: int = 10):
    """Validation-accuracy records: each run evaluated at steps 0, 5, 10; a shorter curve diverged."""
    from study import tables

    records = []
    for (loss, lr, seed), values in curves.items():
        for step, value in zip(range(0, last_step + 1, 5), values):
            records.append(Record(loss, lr, seed, step / 10, step, "val", "accuracy", value))
        if len(values) < 3:
            records.append(Record(loss, lr, seed, 0.5, 5, "train", "diverged_step", 5.0))
    return tables.history_frame(records, condition="c", dataset="d")


def test_choose_lrs_never_picks_a_rate_that_diverged_or_collapsed_in_a_tune_seed():
    from study.runner import choose_lrs

    history = tune_history({
        ("mse", 0.1, 0): [0.1, 0.3, 0.4], ("mse", 0.1, 1): [0.1, 0.3, 0.4],
        ("mse", 1.0, 0): [0.1, 0.95], ("mse", 1.0, 1): [0.1, 0.95, 0.95],  # one seed diverged at step 5
        ("sigmoid_bce", 0.1, 0): [0.1, 0.3, 0.4], ("sigmoid_bce", 0.1, 1): [0.1, 0.3, 0.4],
        ("sigmoid_bce", 1.0, 0): [0.1, 0.9, 0.9], ("sigmoid_bce", 1.0, 1): [0.1, 0.9, 0.9],
    })
    marks = history[(history["loss"] == "sigmoid_bce") & (history["lr"] == 1.0) & (history["step"] == 10)].assign(
        split="train", metric="collapsed_step", value=10.0).head(1)  # one seed collapsed
    history = pd.concat([history, marks], ignore_index=True)
    choice = choose_lrs(history, ["mse", "sigmoid_bce"], [0.1, 1.0], val_size=1000)
    assert choice["lrs"] == {"mse": 0.1, "sigmoid_bce": 0.1}
    assert choice["unstable"] == {"mse": [1.0], "sigmoid_bce": [1.0]}
    assert choice["scores"]["mse"]["1"] == pytest.approx(0.475)  # the diverged seed scores 0


def test_evaluations_run_at_step_zero_each_interval_and_densely_for_speed(tiny_data):
    cond = tiny_condition(epochs=2, evals_per_epoch=2, speed_resolution=0.5)
    records, _, trainer = run(cond, tiny_data, [Member("softmax_nll", 0.1, 0)])
    full = {r.step for r in records if r.split == "val" and r.metric == "nll"}
    val_acc = sorted({r.step for r in records if r.split == "val" and r.metric == "accuracy"})
    half = trainer.steps_per_epoch / 2
    assert full == {0, *(round(k * half) for k in range(1, 5))}
    assert set(val_acc) == full | speed_steps(trainer.total_steps, 0.5)
    # Every step is read up to 1/resolution; past it each bracket [a, b] is within the resolution: b <= 1.5 a.
    assert val_acc[:3] == [0, 1, 2]
    assert all(b <= 1.5 * a for a, b in zip(val_acc[2:], val_acc[3:]))


def test_speed_steps_are_at_most_the_resolution_apart():
    steps = sorted(speed_steps(10_000, 0.1))
    assert steps[:10] == list(range(1, 11)) and steps[-1] <= 10_000
    assert all((b - a) / a <= 0.1 for a, b in zip(steps[9:], steps[10:]))
    assert len(steps) < 10 + math.log(1000) / math.log(1.1) + 10  # geometric, not every step


def test_a_coarse_schedule_is_dense_only_from_its_share_on():
    total = 842
    dense = speed_steps(total, 0.1)
    coarse = train.schedule(total, 0.1, (0.25, 0.8))
    assert {s for s in coarse if s >= 0.8 * total} == {s for s in dense if s >= 0.8 * total}  # the window unchanged
    early = sorted(s for s in coarse if s < 0.8 * total)
    assert early == sorted(s for s in speed_steps(total, 0.25) if s < 0.8 * total)
    assert all(b <= max(a + 1, math.floor(a * 1.25)) for a, b in zip(early, early[1:]))
    assert len(coarse) < len(dense) / 1.5
    assert train.schedule(total, 0.1) == dense
