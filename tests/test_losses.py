"""Loss functions against hand-computed BCE, and the method-string parser."""

import math

import pytest
import torch

from scl_hf.losses import (
    BASE_LOSSES,
    CONSISTENCY_TERMS,
    LossContext,
    assume_negative_loss,
    consistency_loss,
    expected_negatives_ignore,
    observed_one_hot,
    parse_method,
    register_base_loss,
    spatial_consistency_loss,
)

LOGITS = [[2.0, -1.0, 0.5], [-0.3, 1.5, -2.0]]
LABELS = [0, 1]  # one observed positive per image
RUNNING = [[0.9, 0.2, 0.7], [0.4, 0.95, 0.05]]


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def bce(z: float, t: float) -> float:
    p = sigmoid(z)
    return -(t * math.log(p) + (1.0 - t) * math.log(1.0 - p))


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def targets() -> torch.Tensor:
    return observed_one_hot(torch.tensor(LABELS), 3).double()


def test_observed_one_hot():
    assert targets().tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def test_assume_negative_is_mean_bce_with_unobserved_as_negatives():
    expected = sum(bce(LOGITS[b][c], 1.0 if c == LABELS[b] else 0.0) for b in range(2) for c in range(3)) / 6
    value = assume_negative_loss(tensor(LOGITS), targets(), LossContext(num_classes=3))
    assert math.isclose(value.item(), expected, rel_tol=1e-9)
    assert BASE_LOSSES["an"] is assume_negative_loss


def test_consistency_loss_uses_only_unobserved_classes_towards_the_running_average():
    kept = [(b, c) for b in range(2) for c in range(3) if c != LABELS[b]]
    expected = sum(bce(LOGITS[b][c], RUNNING[b][c]) for b, c in kept) / len(kept)
    value = consistency_loss(tensor(LOGITS), targets(), tensor(RUNNING))
    assert math.isclose(value.item(), expected, rel_tol=1e-9)
    # the observed positives carry no gradient
    logits = tensor(LOGITS).requires_grad_()
    consistency_loss(logits, targets(), tensor(RUNNING)).backward()
    assert logits.grad[0, 0] == 0 and logits.grad[1, 1] == 0 and logits.grad[0, 1] != 0


def test_consistency_loss_is_minimal_at_the_running_average():
    running = tensor(RUNNING)
    at_target = consistency_loss(torch.logit(running), targets(), running)
    elsewhere = consistency_loss(torch.logit(running) + 0.3, targets(), running)
    assert at_target < elsewhere


def test_expected_negatives_ignore_and_masked_base_loss():
    ignore = expected_negatives_ignore(targets(), tensor(RUNNING), threshold=0.6)
    # unobserved classes with running average >= 0.6: (0, 2) only; observed positives are never ignored
    assert ignore.tolist() == [[False, False, True], [False, False, False]]
    kept = [(b, c) for b in range(2) for c in range(3) if not (b == 0 and c == 2)]
    expected = sum(bce(LOGITS[b][c], 1.0 if c == LABELS[b] else 0.0) for b, c in kept) / len(kept)
    value = assume_negative_loss(tensor(LOGITS), targets(), LossContext(num_classes=3), ignore)
    assert math.isclose(value.item(), expected, rel_tol=1e-9)
    # the threshold is inclusive
    at = expected_negatives_ignore(targets(), tensor(RUNNING), threshold=0.7)
    assert at.tolist() == [[False, False, True], [False, False, False]]
    assert not expected_negatives_ignore(targets(), tensor(RUNNING), threshold=0.96).any()


def test_everything_ignored_gives_zero_with_a_gradient():
    logits = tensor(LOGITS).requires_grad_()
    value = assume_negative_loss(logits, targets(), LossContext(), torch.ones(2, 3, dtype=torch.bool))
    assert value.item() == 0.0
    value.backward()
    assert logits.grad is not None and logits.grad.eq(0).all()


# ----------------------------------------------------------------------------- spatial


MAPS = [[[[0.5, -1.0], [2.0, 0.0]], [[-0.5, 1.0], [0.3, -2.0]]]]  # (1, 2, 2, 2) logits
MAP_TARGETS = [[[[0.8, 0.1], [0.6, 0.5]], [[0.2, 0.9], [0.0, 1.0]]]]
WEIGHTS = [[[1.0, 0.5], [0.0, 0.25]]]  # (1, 2, 2): cell (1, 0) was never observed


def test_spatial_consistency_bce_weighted_mean():
    numerator = denominator = 0.0
    for k in range(2):
        for i in range(2):
            for j in range(2):
                w = WEIGHTS[0][i][j]
                numerator += w * bce(MAPS[0][k][i][j], MAP_TARGETS[0][k][i][j])
                denominator += w
    value = spatial_consistency_loss(tensor(MAPS), tensor(MAP_TARGETS), tensor(WEIGHTS))
    assert math.isclose(value.item(), numerator / denominator, rel_tol=1e-9)


def test_spatial_consistency_mse_form():
    numerator = denominator = 0.0
    for k in range(2):
        for i in range(2):
            for j in range(2):
                w = WEIGHTS[0][i][j]
                numerator += w * (sigmoid(MAPS[0][k][i][j]) - MAP_TARGETS[0][k][i][j]) ** 2
                denominator += w
    value = spatial_consistency_loss(tensor(MAPS), tensor(MAP_TARGETS), tensor(WEIGHTS), form="mse")
    assert math.isclose(value.item(), numerator / denominator, rel_tol=1e-9)


def test_zero_weight_cells_contribute_nothing():
    maps = tensor(MAPS).requires_grad_()
    changed = tensor(MAP_TARGETS).clone()
    changed[0, :, 1, 0] = torch.tensor([1.0, 0.0])  # the unobserved cell's target is irrelevant
    a = spatial_consistency_loss(maps, tensor(MAP_TARGETS), tensor(WEIGHTS))
    b = spatial_consistency_loss(maps, changed, tensor(WEIGHTS))
    assert a.item() == b.item()
    a.backward()
    assert maps.grad[0, :, 1, 0].eq(0).all() and maps.grad[0, :, 0, 0].ne(0).all()
    nothing = spatial_consistency_loss(
        tensor(MAPS), tensor(MAP_TARGETS), torch.zeros(1, 2, 2, dtype=torch.float64)
    )
    assert nothing.item() == 0.0


def test_spatial_consistency_unknown_form():
    with pytest.raises(ValueError, match="bce"):
        spatial_consistency_loss(tensor(MAPS), tensor(MAP_TARGETS), tensor(WEIGHTS), form="l1")


# ----------------------------------------------------------------------------- parse_method


@pytest.mark.parametrize(
    "method, base, terms",
    [
        ("scl", "an", {"scl"}),
        ("cl+scl", "an", {"cl", "scl"}),
        ("an", "an", set()),
        ("en", "an", {"en"}),
        (" AN + CL ", "an", {"cl"}),
        ("scl+an+en", "an", {"en", "scl"}),
    ],
)
def test_parse_method(method, base, terms):
    spec = parse_method(method)
    assert spec.base == base and spec.terms == frozenset(terms)
    assert spec.needs_heatmaps == ("scl" in terms)
    assert spec.needs_predictions == bool({"cl", "en"} & terms)


def test_parse_method_name_is_canonical():
    assert parse_method("scl+cl").name == "an+cl+scl" == parse_method("an+cl+scl").name


@pytest.mark.parametrize("method", ["scll", "an+foo", "", "+"])
def test_parse_method_unknown_lists_valid_names(method):
    with pytest.raises(ValueError) as info:
        parse_method(method)
    message = str(info.value)
    for name in [*BASE_LOSSES, *CONSISTENCY_TERMS]:
        assert repr(name) in message, (name, message)


def test_parse_method_two_bases():
    register_base_loss("test-other-base")(assume_negative_loss)
    try:
        with pytest.raises(ValueError, match="several base losses"):
            parse_method("an+test-other-base+scl")
        assert parse_method("test-other-base+scl").base == "test-other-base"
    finally:
        BASE_LOSSES.pop("test-other-base")


def test_parse_method_cl_and_en_exclusive():
    with pytest.raises(ValueError, match="choose one"):
        parse_method("cl+en")
    with pytest.raises(ValueError, match="choose one"):
        parse_method("en+scl+cl")


def test_crop_corrected_weights_by_hand():
    from scl_hf.losses import crop_corrected_weights

    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    map_targets = torch.zeros(2, 3, 2, 2)
    map_targets[0, 0, 0, 0] = 0.2  # observed class, faint in this crop → positive weight 0.2
    map_targets[0, 1, 1, 1] = 0.7  # unobserved class, strong in view → left out of the negatives
    map_targets[0, 2, 0, 1] = 0.9  # unobserved but in an unobserved cell → says nothing
    map_targets[1, 1] = 0.9  # second image: no cell observed at all → no correction
    cell_weights = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    weights, ignore = crop_corrected_weights(targets, map_targets, cell_weights, negative_threshold=0.5)
    assert weights.tolist() == [[pytest.approx(0.2), 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert ignore.tolist() == [[False, True, False], [False, False, False]]
    _, no_negatives = crop_corrected_weights(targets, map_targets, cell_weights, negative_threshold=None)
    assert not no_negatives.any()


def test_assume_negative_applies_element_weights():
    logits = torch.tensor([[0.5, -1.0]])
    targets = torch.tensor([[1.0, 0.0]])
    ctx = LossContext(element_weights=torch.tensor([[0.25, 1.0]]))
    expected = (0.25 * -math.log(1 / (1 + math.exp(-0.5))) + -math.log(1 - 1 / (1 + math.exp(1.0)))) / 2
    assert assume_negative_loss(logits, targets, ctx).item() == pytest.approx(expected, rel=1e-6)
