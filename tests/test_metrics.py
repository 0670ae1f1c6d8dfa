"""Tests of scl_hf.metrics and the evaluate wrapper, with scikit-learn as the reference."""

import socket

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score
from transformers import EvalPrediction

from scl_hf.metrics import (
    average_precision_per_class,
    f1_at_threshold,
    load_map_metric,
    make_compute_metrics,
    mean_average_precision,
)


def sklearn_ap_per_class(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.array([average_precision_score(targets[:, c], scores[:, c]) for c in range(targets.shape[1])])


def random_problem(seed: int, num_samples: int = 300, num_classes: int = 9, prevalence: float = 0.15):
    """Scores loosely correlated with multi-hot targets; every class gets at least one positive."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((num_samples, num_classes)) < prevalence).astype(np.int64)
    targets[rng.integers(num_samples), :] = 1
    scores = rng.standard_normal((num_samples, num_classes)) + 1.2 * targets
    return scores, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_on_random_scores(seed):
    scores, targets = random_problem(seed)
    np.testing.assert_allclose(
        average_precision_per_class(scores, targets), sklearn_ap_per_class(scores, targets), atol=1e-6
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_on_heavily_tied_scores(seed):
    scores, targets = random_problem(seed)
    tied_scores = np.round(scores / 4, 1)  # about 20 distinct values per class for 300 samples
    assert len(np.unique(tied_scores[:, 0])) < 40
    np.testing.assert_allclose(
        average_precision_per_class(tied_scores, targets),
        sklearn_ap_per_class(tied_scores, targets),
        atol=1e-6,
    )


def test_all_equal_scores_give_the_prevalence():
    _, targets = random_problem(3)
    equal_scores = np.full(targets.shape, 0.5)
    ap = average_precision_per_class(equal_scores, targets)
    np.testing.assert_allclose(ap, sklearn_ap_per_class(equal_scores, targets), atol=1e-6)
    np.testing.assert_allclose(ap, targets.mean(axis=0), atol=1e-12)


def test_tied_positive_and_negative_share_one_threshold():
    # A positive at 0.9, then a negative and a positive tied at 0.5: one threshold for the tie, so
    # AP = (1/2) * (1/1 + 2/3) = 5/6 in both input orders (ranking the tied positive first would give 1).
    scores = np.array([[0.9], [0.5], [0.5], [0.1]])
    for tied_targets in ([0, 1], [1, 0]):
        targets = np.array([[1], *([t] for t in tied_targets), [0]])
        assert average_precision_per_class(scores, targets)[0] == pytest.approx(5 / 6)


def test_all_positive_class_has_ap_one():
    scores, targets = random_problem(4)
    targets[:, 2] = 1
    ap = average_precision_per_class(scores, targets)
    assert ap[2] == pytest.approx(1.0)
    np.testing.assert_allclose(ap, sklearn_ap_per_class(scores, targets), atol=1e-6)


def test_class_without_positive_follows_policy():
    scores, targets = random_problem(5, num_classes=4)
    targets[:, 1] = 0
    other_classes = [0, 2, 3]
    expected_others = sklearn_ap_per_class(scores[:, other_classes], targets[:, other_classes])

    ap_zero = average_precision_per_class(scores, targets, empty_class="zero")
    assert ap_zero[1] == 0.0
    np.testing.assert_allclose(ap_zero[other_classes], expected_others, atol=1e-6)
    ap_skip = average_precision_per_class(scores, targets, empty_class="skip")
    assert np.isnan(ap_skip[1])
    np.testing.assert_allclose(ap_skip[other_classes], expected_others, atol=1e-6)

    assert mean_average_precision(scores, targets, "zero") == pytest.approx(expected_others.sum() / 4 * 100)
    assert mean_average_precision(scores, targets, "skip") == pytest.approx(expected_others.mean() * 100)
    assert np.isnan(mean_average_precision(scores, np.zeros_like(targets), "skip"))


def test_perfect_ranking_gives_100_and_accepts_torch_tensors():
    scores, targets = random_problem(6)
    perfect_scores = torch.tensor(targets + 0.01 * scores, dtype=torch.bfloat16)
    assert mean_average_precision(perfect_scores, torch.tensor(targets)) == pytest.approx(100.0)
    float_scores = torch.tensor(scores, requires_grad=True)
    expected = sklearn_ap_per_class(scores, targets).mean() * 100
    assert mean_average_precision(float_scores, torch.tensor(targets, dtype=torch.bool)) == pytest.approx(
        expected
    )


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_f1_matches_sklearn(threshold):
    scores, targets = random_problem(7)
    targets[:, 0] = 0  # no positive and no prediction: F1 = 0, still counted in the macro mean
    scores[:, 0] = -5.0
    probs = 1 / (1 + np.exp(-scores))
    predicted = (probs >= threshold).astype(int)
    result = f1_at_threshold(probs, targets, threshold=threshold)
    assert result["F1_micro"] == pytest.approx(
        100 * f1_score(targets, predicted, average="micro", zero_division=0)
    )
    assert result["F1_macro"] == pytest.approx(
        100 * f1_score(targets, predicted, average="macro", zero_division=0)
    )


def test_f1_counts_a_probability_equal_to_the_threshold_as_positive():
    assert f1_at_threshold(np.array([[0.5], [0.2]]), np.array([[1], [0]]), threshold=0.5)["F1_micro"] == 100.0


def test_compute_metrics_on_eval_prediction():
    logits, targets = random_problem(8, num_classes=3)
    targets[:, 2] = 0  # empty class: 0 in "mAP", left out of "mAP_skip_empty"
    probs = 1 / (1 + np.exp(-logits))
    ap_with_positives = sklearn_ap_per_class(probs[:, :2], targets[:, :2]) * 100
    compute_metrics = make_compute_metrics(id2label={0: "cat", 1: "dog", 2: "zebra"})

    metrics = compute_metrics(
        EvalPrediction(predictions=(logits.astype(np.float32), None), label_ids=targets)
    )
    assert set(metrics) == {"mAP", "mAP_skip_empty", "F1_micro", "F1_macro", "AP/cat", "AP/dog", "AP/zebra"}
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["mAP"] == pytest.approx(ap_with_positives.sum() / 3)
    assert metrics["mAP_skip_empty"] == pytest.approx(ap_with_positives.mean())
    assert metrics["AP/dog"] == pytest.approx(ap_with_positives[1])
    assert metrics["AP/zebra"] == 0.0
    assert metrics["F1_micro"] == pytest.approx(f1_at_threshold(probs, targets)["F1_micro"])


def test_compute_metrics_options():
    logits, targets = random_problem(9, num_classes=3)
    targets[:, 1] = 0
    skip_metrics = make_compute_metrics(empty_class="skip", per_class=False)(EvalPrediction(logits, targets))
    assert not any(key.startswith("AP/") for key in skip_metrics)
    assert skip_metrics["mAP"] == pytest.approx(skip_metrics["mAP_skip_empty"])
    named_by_index = make_compute_metrics(id2label={"0": "a"})((logits, targets))  # JSON-style keys
    assert {"AP/a", "AP/1", "AP/2"} <= set(named_by_index)
    assert named_by_index["mAP"] < skip_metrics["mAP"]


def test_evaluate_metric_from_file_works_offline(monkeypatch):
    def refuse_network(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse_network)
    monkeypatch.setattr(socket, "create_connection", refuse_network)
    scores, targets = random_problem(10, num_samples=60, num_classes=4)
    targets[:, 3] = 0

    metric = load_map_metric(keep_in_memory=True)
    metric.add_batch(predictions=scores[:30].tolist(), references=targets[:30].tolist())
    metric.add_batch(predictions=scores[30:].tolist(), references=targets[30:].tolist())
    result = metric.compute(empty_class="skip")
    assert result["mAP"] == pytest.approx(mean_average_precision(scores, targets, empty_class="skip"))
    assert np.isnan(result["AP_per_class"][3])
    zero_result = metric.compute(predictions=scores.tolist(), references=targets.tolist())
    assert zero_result["mAP"] == pytest.approx(mean_average_precision(scores, targets, empty_class="zero"))


@pytest.mark.parametrize(
    ("scores", "targets", "kwargs", "message"),
    [
        (np.zeros((4, 2)), np.zeros((4, 3)), {}, r"same shape, got \(4, 2\) and \(4, 3\)"),
        (np.zeros(4), np.zeros(4), {}, r"2-D array \(N samples, C classes\)"),
        (np.zeros((0, 2)), np.zeros((0, 2)), {}, "no samples"),
        (np.zeros((3, 2)), np.array([[0, 1], [2, 1], [-1, 0]]), {}, r"multi-hot.*\[-1, 2\]"),
        (np.array([[0.1, np.nan], [0.2, 0.3]]), np.eye(2), {}, "1 NaN value"),
        (np.zeros((2, 2)), np.eye(2), {"empty_class": "ignore"}, "empty_class must be one of"),
    ],
)
def test_invalid_inputs_raise_clear_errors(scores, targets, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mean_average_precision(scores, targets, **kwargs)


def test_invalid_inputs_raise_in_f1_and_compute_metrics():
    with pytest.raises(ValueError, match="probs contain 1 NaN"):
        f1_at_threshold(np.array([[np.nan]]), np.array([[1]]))
    with pytest.raises(ValueError, match="empty_class must be one of"):
        make_compute_metrics(empty_class="drop")
