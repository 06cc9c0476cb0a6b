"""The "none of the above" scores: AUROC against a brute-force pair count, the "none" share by hand."""

from __future__ import annotations

import itertools

import pytest
import torch

from study import ood


def brute_auroc(inside: list[float], outside: list[float]) -> float:
    pairs = list(itertools.product(inside, outside))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def test_auroc_counts_pairs_with_ties_as_half():
    generator = torch.Generator().manual_seed(0)
    inside = torch.randint(0, 6, (3, 40), generator=generator).float()  # many ties on purpose
    outside = torch.randint(0, 5, (3, 25), generator=generator).float()
    got = ood.auroc(inside, outside)
    for m in range(3):
        assert got[m].item() == pytest.approx(brute_auroc(inside[m].tolist(), outside[m].tolist()), abs=1e-12)
    assert ood.auroc(torch.ones(1, 5), torch.zeros(1, 3)).item() == 1.0
    assert ood.auroc(torch.zeros(1, 5), torch.ones(1, 3)).item() == 0.0
    assert ood.auroc(torch.ones(1, 5), torch.ones(1, 3)).item() == 0.5


def test_scores_and_none_share():
    logits = torch.tensor([[[2.0, -1.0, 0.0], [-3.0, -0.5, -1.0]]])  # one model, two inputs, three classes
    scores = ood.scores(logits)
    assert scores["max_softmax"][0].tolist() == pytest.approx(logits[0].softmax(dim=1).max(dim=1).values.tolist())
    assert scores["max_sigmoid"][0].tolist() == pytest.approx([torch.sigmoid(torch.tensor(2.0)).item(),
                                                                torch.sigmoid(torch.tensor(-0.5)).item()])
    assert ood.none_share(logits).tolist() == [0.5]  # the second input has every logit below 0: "none"


def test_measure_separates_confident_inside_from_unsure_outside():
    inside = torch.tensor([[[5.0, 0.0], [4.0, 0.0]]])  # confident
    outside = torch.tensor([[[0.1, 0.0], [-1.0, -2.0]]])  # unsure; the second says "none"
    values = ood.measure(inside, outside)
    assert values[("heldout", "auroc_max_softmax")].item() == 1.0
    assert values[("heldout", "auroc_max_sigmoid")].item() == 1.0
    assert values[("heldout", "none_share")].item() == 0.5 and values[("test", "none_share")].item() == 0.0
