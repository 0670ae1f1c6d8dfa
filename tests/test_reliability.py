"""The bank's reliability per class (losses/reliability.py) against sklearn, and the gate's effect on the loss."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from scl_hf.losses import observed_positive_auc, reliability_gate, spatial_consistency_loss


def test_auc_equals_sklearn_with_ties_unseen_rows_and_empty_classes():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((200, 5)), 1)  # one decimal: many ties
    observed = rng.random((200, 5)) < 0.2
    observed[:, 4] = False  # a class nobody observed
    scores[:, 1] += 0.5 * observed[:, 1]  # class 1 separable-ish
    valid = rng.random(200) < 0.8
    auc = observed_positive_auc(torch.tensor(scores), torch.tensor(observed), torch.tensor(valid))
    for c in range(4):
        expected = roc_auc_score(observed[valid, c], scores[valid, c])
        assert auc[c].item() == pytest.approx(expected, abs=1e-12)
    assert auc[4].item() == 0.5  # nothing known
    assert auc[1] > auc[0]


def test_gate_is_zero_below_low_one_above_high_and_linear_between():
    gate = reliability_gate(torch.tensor([0.5, 0.7, 0.8, 0.9, 0.99]), 0.7, 0.9)
    assert gate.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="low < high"):
        reliability_gate(torch.tensor([0.5]), 0.9, 0.7)


def test_class_weights_scale_each_class_without_renormalising():
    torch.manual_seed(0)
    maps, targets = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    cells = torch.rand(2, 4, 4)
    full = spatial_consistency_loss(maps, targets, cells, "mse")
    per_class = [spatial_consistency_loss(maps, targets, cells, "mse", torch.eye(3)[c]) for c in range(3)]
    assert sum(per_class).item() == pytest.approx(full.item(), rel=1e-6)  # the classes' shares add up
    assert spatial_consistency_loss(maps, targets, cells, "mse", torch.zeros(3)).item() == 0.0
    # by hand: class 0 alone, weight 0.5
    values = (torch.sigmoid(maps[:, 0]) - targets[:, 0]) ** 2
    expected = 0.5 * (values * cells).sum() / (cells.sum() * 3)
    got = spatial_consistency_loss(maps, targets, cells, "mse", torch.tensor([0.5, 0.0, 0.0]))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_per_row_class_weights_leave_each_rows_observed_class_out():
    """(B, C) weights: row 0 keeps classes 1-2, row 1 keeps 0 and 2 (their observed class is left out)."""
    torch.manual_seed(1)
    maps, targets = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    cells = torch.rand(2, 4, 4)
    keep = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    got = spatial_consistency_loss(maps, targets, cells, "mse", keep)
    values = (torch.sigmoid(maps) - targets) ** 2
    expected = sum(values[b, c].mul(cells[b]).sum() for b in range(2) for c in range(3) if keep[b, c]) / (cells.sum() * 3)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # a (C,) gate times the row mask equals the (B, C) product given directly
    gate = torch.tensor([0.2, 0.6, 1.0])
    assert spatial_consistency_loss(maps, targets, cells, "mse", gate[None] * keep).item() == pytest.approx(
        sum(gate[c] * values[b, c].mul(cells[b]).sum() for b in range(2) for c in range(3) if keep[b, c]).item()
        / (cells.sum() * 3).item(), rel=1e-6)
