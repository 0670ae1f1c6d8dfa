"""Multi-label evaluation metrics: mean average precision (mAP) and F1.

mAP is the headline number of the single-positive multi-label literature (COCO, VOC, NUS-WIDE),
reported on a 0-100 scale. The AP of one class is computed exactly like scikit-learn's
``average_precision_score``: samples with the same score form a single threshold, so the result
does not depend on how tied samples happen to be ordered. Instead of calling scikit-learn once per
class, all classes are sorted with one ``argsort`` call and the precision is only evaluated at the
positive samples, which makes a COCO-sized evaluation several times faster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

EMPTY_CLASS_POLICIES = ("zero", "skip")
EVALUATE_SCRIPT_PATH = Path(__file__).with_name("evaluate_map.py")


def _to_numpy(array_like: Any) -> np.ndarray:
    """Convert numpy arrays, lists and torch tensors (any device, with or without grad) to numpy."""
    if hasattr(array_like, "detach"):  # torch.Tensor, without importing torch
        tensor = array_like.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.double()  # numpy has no bfloat16; float64 keeps the ranking exact
        return tensor.numpy()
    return np.asarray(array_like)


def _check_policy(empty_class: str) -> None:
    if empty_class not in EMPTY_CLASS_POLICIES:
        raise ValueError(f"empty_class must be one of {EMPTY_CLASS_POLICIES}, got {empty_class!r}")


def _validated_inputs(
    scores: Any, targets: Any, scores_name: str = "scores"
) -> tuple[np.ndarray, np.ndarray]:
    """Return (float scores, bool targets) of shape (N, C), or raise a ValueError that says what is wrong."""
    scores = _to_numpy(scores)
    targets = _to_numpy(targets)
    if scores.ndim != 2:
        raise ValueError(
            f"{scores_name} must be a 2-D array (N samples, C classes), got shape {scores.shape}"
        )
    if scores.shape != targets.shape:
        raise ValueError(
            f"{scores_name} and targets must have the same shape, got {scores.shape} and {targets.shape}"
        )
    if scores.shape[0] == 0:
        raise ValueError(f"{scores_name} has no samples (shape {scores.shape})")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if np.isnan(scores).any():
        nan_count = int(np.isnan(scores).sum())
        raise ValueError(f"{scores_name} contain {nan_count} NaN value(s); check the model outputs")
    if targets.dtype != np.bool_:
        is_binary = (targets == 0) | (targets == 1)
        if not is_binary.all():
            bad_values = np.unique(targets[~is_binary])[:5].tolist()
            raise ValueError(f"targets must be multi-hot (only 0 and 1), found values such as {bad_values}")
        targets = targets.astype(np.bool_)
    return scores, targets


def average_precision_per_class(
    scores: npt.ArrayLike, targets: npt.ArrayLike, empty_class: str = "zero"
) -> np.ndarray:
    """Average precision of every class (0-1 scale), identical to scikit-learn's per-column result.

    Args:
        scores: (N, C) scores; any monotonic transform (logits, probabilities) gives the same AP.
        targets: (N, C) multi-hot ground truth in {0, 1}.
        empty_class: what a class without any positive sample gets. ``"zero"`` (AP = 0, the policy
            most single-positive papers use) or ``"skip"`` (NaN, so that it can be left out of a mean).

    Returns:
        (C,) float64 array of AP values.
    """
    _check_policy(empty_class)
    scores, targets = _validated_inputs(scores, targets)
    num_samples, num_classes = scores.shape

    # Work class-major (C, N): each class is then a contiguous row, which keeps the gathers cache friendly.
    descending_scores = np.negative(scores.T, order="C")
    targets_by_class = np.ascontiguousarray(targets.T)
    order = np.argsort(descending_scores, axis=1)
    sorted_scores = np.take_along_axis(descending_scores, order, axis=1)
    sorted_targets = np.take_along_axis(targets_by_class, order, axis=1)
    count_dtype = np.int32 if num_samples < 2**31 else np.int64
    true_positives = np.cumsum(sorted_targets, axis=1, dtype=count_dtype)

    # A threshold sits after the last sample of each group of equal scores (scikit-learn's
    # distinct-value boundaries); the last sample always closes a group.
    closes_group = np.ones((num_classes, num_samples), dtype=bool)
    closes_group[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]

    # AP = mean over the positives of the precision at the threshold that first includes them.
    # Flat (row-major) indices into the (C, N) arrays let all classes be handled at once.
    positive_flat = np.flatnonzero(sorted_targets)
    threshold_flat = _group_end_of(positive_flat, closes_group.ravel())
    positive_class, threshold_rank = np.divmod(threshold_flat, num_samples)
    precision = true_positives.ravel()[threshold_flat] / (threshold_rank + 1.0)
    precision_sum = np.bincount(positive_class, weights=precision, minlength=num_classes)

    num_positives = true_positives[:, -1]
    empty_value = 0.0 if empty_class == "zero" else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(num_positives > 0, precision_sum / num_positives, empty_value)


def _group_end_of(positions: np.ndarray, closes_group: np.ndarray) -> np.ndarray:
    """Flat index of the last sample of the tie group of each position (the position itself if untied).

    Only the few samples tied with their successor are looked at, which keeps the common case of
    (almost) no ties cheap. Every row ends with a group end, so a group never spans two classes.
    """
    tied_with_next = np.flatnonzero(~closes_group)
    if tied_with_next.size == 0:
        return positions
    # A run of consecutive "tied with next" samples is one group; it ends one sample after the run.
    is_last_of_run = np.append(np.diff(tied_with_next) != 1, True)
    group_ends = tied_with_next[is_last_of_run] + 1
    group_end_of_positions = positions.copy()
    inside_a_group = ~closes_group[positions]
    next_end = np.searchsorted(group_ends, positions[inside_a_group])
    group_end_of_positions[inside_a_group] = group_ends[next_end]
    return group_end_of_positions


def mean_average_precision(scores: npt.ArrayLike, targets: npt.ArrayLike, empty_class: str = "zero") -> float:
    """Mean of the per-class AP on the 0-100 scale used in the literature.

    With ``empty_class="skip"`` the mean is over the classes that have a positive (NaN if none has).
    """
    return _mean_percent(average_precision_per_class(scores, targets, empty_class=empty_class))


def _mean_percent(ap: np.ndarray) -> float:
    """Mean of the non-NaN APs on the 0-100 scale; NaN when there is none (no warning)."""
    if np.isnan(ap).all():
        return float("nan")
    return float(np.nanmean(ap) * 100.0)


def f1_at_threshold(probs: npt.ArrayLike, targets: npt.ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """Micro and macro F1 (0-100) when every class with ``prob >= threshold`` is predicted.

    mAP ignores calibration; F1 at a fixed threshold shows whether the probabilities are usable as
    decisions. A class with no positive and no prediction has F1 = 0 (scikit-learn's ``zero_division=0``).
    """
    probs, targets = _validated_inputs(probs, targets, scores_name="probs")
    predicted = probs >= threshold
    true_pos = (predicted & targets).sum(axis=0)
    false_pos = (predicted & ~targets).sum(axis=0)
    false_neg = (~predicted & targets).sum(axis=0)

    per_class_denominator = 2 * true_pos + false_pos + false_neg
    per_class_f1 = np.divide(
        2.0 * true_pos, per_class_denominator, out=np.zeros(true_pos.shape), where=per_class_denominator > 0
    )
    micro_denominator = 2 * true_pos.sum() + false_pos.sum() + false_neg.sum()
    micro_f1 = 2.0 * true_pos.sum() / micro_denominator if micro_denominator > 0 else 0.0
    return {"F1_micro": float(micro_f1 * 100.0), "F1_macro": float(per_class_f1.mean() * 100.0)}


def _first_array(output: Any) -> Any:
    """Trainer hands over a tuple when the model returns several outputs; the logits come first."""
    return output[0] if isinstance(output, tuple | list) else output


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """Sigmoid in float64 without overflow warnings for large negative logits."""
    return np.exp(-np.logaddexp(0.0, -logits.astype(np.float64)))


def make_compute_metrics(
    id2label: Mapping[int, str] | None = None,
    empty_class: str = "zero",
    threshold: float = 0.5,
    per_class: bool = True,
) -> Callable[[Any], dict[str, float]]:
    """Build a ``compute_metrics`` function for ``transformers.Trainer``.

    The returned function takes an ``EvalPrediction`` (or a ``(predictions, label_ids)`` tuple) with
    logits (N, C) and multi-hot labels (N, C) and returns ``mAP`` (with ``empty_class``),
    ``mAP_skip_empty``, ``F1_micro``, ``F1_macro`` and, if ``per_class``, ``AP/<label>`` (all 0-100).
    AP is computed on the logits: the sigmoid does not change the ranking, and skipping it avoids
    artificial ties where it saturates. F1 uses ``sigmoid(logits) >= threshold``.
    """
    _check_policy(empty_class)

    def class_name(class_index: int) -> str:
        if id2label is None:
            return str(class_index)
        # config.id2label has int keys, but a JSON round trip turns them into strings.
        return str(id2label.get(class_index, id2label.get(str(class_index), class_index)))

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        logits = _to_numpy(_first_array(eval_prediction[0]))
        labels = _to_numpy(_first_array(eval_prediction[1]))
        ap_or_nan = average_precision_per_class(logits, labels, empty_class="skip")
        ap = np.nan_to_num(ap_or_nan, nan=0.0) if empty_class == "zero" else ap_or_nan
        metrics = {"mAP": _mean_percent(ap), "mAP_skip_empty": _mean_percent(ap_or_nan)}
        metrics.update(f1_at_threshold(_sigmoid(logits), labels, threshold=threshold))
        if per_class:
            for class_index, class_ap in enumerate(ap):
                metrics[f"AP/{class_name(class_index)}"] = float(class_ap * 100.0)
        return metrics

    return compute_metrics


def load_map_metric(**load_kwargs: Any) -> Any:
    """Load the mAP as a Hugging Face ``evaluate`` metric from the local script (works offline).

    ``evaluate`` copies the script into its modules cache and imports it from there, so no network
    access is needed. Extra keyword arguments go to ``evaluate.load`` (e.g. ``keep_in_memory=True``).
    """
    import evaluate  # imported here: it pulls in `datasets`, which the plain metrics do not need

    return evaluate.load(str(EVALUATE_SCRIPT_PATH), **load_kwargs)
