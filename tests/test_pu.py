"""The non-negative PU risk ("nnpu"): shares from the labels, the loss against a slow per-class loop, the clamp."""

import math

import pytest
import torch

from scl_hf.losses import BASE_LOSS_INFO, BASE_LOSSES, LossContext
from scl_hf.losses.pu import HiddenPositiveShares, hidden_positive_share


def bce(z: float, target: float) -> float:
    return -(target * math.log(1 / (1 + math.exp(-z))) + (1 - target) * math.log(1 - 1 / (1 + math.exp(-z))))


def slow_nnpu(logits, observed, share, ignore, weights):
    """Kiryo et al.'s estimator written per class with plain floats."""
    rows, classes = len(logits), len(logits[0])
    total = 0.0
    for c in range(classes):
        positives = [b for b in range(rows) if observed[b][c]]
        unobserved = [b for b in range(rows) if not observed[b][c] and not ignore[b][c]]
        pos = [weights[b][c] * bce(logits[b][c], 1.0) for b in positives]
        neg_of_pos = [weights[b][c] * bce(logits[b][c], 0.0) for b in positives]
        neg_unobserved = sum(weights[b][c] * bce(logits[b][c], 0.0) for b in unobserved)
        if positives:
            hidden = share[c] * len(unobserved)
            total += sum(pos) + hidden * sum(pos) / len(pos)
            total += max(0.0, neg_unobserved - hidden * sum(neg_of_pos) / len(neg_of_pos))
        else:
            total += (1 - share[c]) * neg_unobserved
    kept = sum(not ignore[b][c] for b in range(rows) for c in range(classes))
    return total / kept


def test_hidden_positive_share_from_observed_frequencies():
    observed = torch.nn.functional.one_hot(torch.tensor([0, 0, 0, 1, 1, 2, 0, 1]), 4).bool()
    share = hidden_positive_share(observed, expected_positives=2.5)
    q = [0.5, 0.375, 0.125, 0.0]
    for c in range(4):
        assert share[c].item() == pytest.approx(min(q[c] * 1.5 / (1 - q[c]), 0.95))
    assert share[0].item() == pytest.approx(0.95)  # 0.5·1.5/0.5 = 1.5, clamped: some negatives always remain
    assert (hidden_positive_share(observed, expected_positives=1.0) == 0).all()  # one positive per image: AN


def test_nnpu_matches_a_slow_loop_with_mask_and_weights():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    state = HiddenPositiveShares(labels, 4, {"expected_positives": 2.0}).double()
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    observed = torch.nn.functional.one_hot(labels, 4).double()  # class 3 has no observed positive in the batch
    ignore = torch.zeros(6, 4, dtype=torch.bool)
    ignore[1, 2] = ignore[4, 3] = True
    weights = torch.rand(6, 4, dtype=torch.float64)
    ctx = LossContext(num_classes=4, indices=torch.arange(6), state=state, element_weights=weights)
    value = BASE_LOSSES["nnpu"](logits, observed, ctx, ignore)
    expected = slow_nnpu(logits.tolist(), observed.bool().tolist(), state.share.tolist(), ignore.tolist(),
                         weights.tolist())
    assert value.item() == pytest.approx(expected, rel=1e-10)
    value.backward()
    assert logits.grad[1, 2] == 0 and logits.grad[4, 3] == 0  # left out by the crop-negative mask


def test_the_negative_part_stops_once_the_unobserved_score_below_the_positives():
    labels = torch.tensor([0, 1, 0, 1])
    state = HiddenPositiveShares(labels, 2, {"expected_positives": 2.0})  # share 1/1 clamped to 0.95
    observed = torch.nn.functional.one_hot(labels, 2).float()
    # class 0: its observed positives score high, the unobserved rows low → AN's negatives overshoot, the clamp holds
    logits = torch.tensor([[4.0, -6.0], [-6.0, 4.0], [4.0, -6.0], [-6.0, 4.0]], requires_grad=True)
    ctx = LossContext(num_classes=2, indices=torch.arange(4), state=state)
    BASE_LOSSES["nnpu"](logits, observed, ctx).backward()
    unobserved = observed == 0
    assert (logits.grad[unobserved] == 0).all()  # no push towards 0 from the clamped negative part
    assert (logits.grad[~unobserved] < 0).all()  # the positives (observed and the hidden share) still pull up
    an = BASE_LOSSES["an"](logits.detach().requires_grad_(), observed, ctx)
    assert math.isfinite(an.item())


def test_nnpu_is_registered_with_a_state_and_the_crop_mask():
    info = BASE_LOSS_INFO["nnpu"]
    assert info.make_state is HiddenPositiveShares and info.crop_negative_mask
    observed_negatives = torch.tensor([[False, False, True]])
    state = HiddenPositiveShares(torch.tensor([0, 1, 2]), 3, {"expected_positives": 2.0})
    logits = torch.zeros(1, 3, requires_grad=True)
    ctx = LossContext(num_classes=3, indices=torch.arange(1), state=state, observed_negatives=observed_negatives)
    BASE_LOSSES["nnpu"](logits, torch.tensor([[1.0, 0.0, 0.0]]), ctx).backward()
    assert logits.grad[0, 2].item() == pytest.approx(0.5 / 3)  # an observed negative: plain BCE to 0, not discounted
