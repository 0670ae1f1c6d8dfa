"""Torch datasets that turn rows of a `datasets.Dataset` into model inputs.

`TrainViews` yields the augmented view with its crop box, flip flag and row index (the bank key), and
the observed labels only: `targets`, the multi-hot (C,) vector of the row's observed positives (one-hot for a
single label), `label`, its first positive (the class a sparse bank always keeps), and `negatives` when the
labels carry observed negatives. The full-label column is dropped before any row is read, so it cannot
reach the training loss. The one exception is explicit: `full_labels_column`, which SCLTrainer sets only for
the full-label upper bound (method "full"), adds a multi-hot `full_labels` target; `pseudo_label_column` adds the
CLIP scores a pseudo-label base loss reads (an input computed from the image, like the single positive). `EvalViews` yields the
whole image and the multi-hot target of all labels.
Labels of every shape are read and checked once, at construction (scl_hf/labels.py).
Both run in dataloader workers; the epoch lives in a shared-memory tensor that the trainer sets at the
start of every epoch, so workers (persistent or not) draw the views of the right epoch.
"""

from __future__ import annotations

import warnings

import torch
from torch.utils.data import Dataset

from .labels import column_values, read_labels, require_map_style
from .transforms import EvalTransform, TrainTransform

SINGLE_LABEL_EVAL_WARNING = (
    "the evaluation dataset has no column {labels!r} (all positive labels); evaluating on the single labels of "
    "{label!r} instead: an unlabelled object in view then counts as a false positive, so mAP is a lower bound. "
    "Set SCLConfig.labels_column={label!r} to say so and silence this warning."
)


def require_columns(dataset, needed: dict[str, str], role: str) -> None:
    """Fail early, naming the missing column, what it is for, and the config field that renames it."""
    present = list(dataset.column_names)
    for column, config_field in needed.items():
        if column not in present:
            raise ValueError(
                f"the {role} dataset has no column {column!r} (columns: {present}). Rename the column, or set "
                f"SCLConfig.{config_field} to the column that holds it."
            )


def infer_num_labels(dataset, column: str) -> int:
    """Classes of a ClassLabel column (or a list of them), else the largest id + 1; used only when no model says it."""
    feature = dataset.features[column]
    feature = getattr(feature, "feature", feature)
    if hasattr(feature, "num_classes"):
        return int(feature.num_classes)
    ids = [v for row in column_values(dataset, column) for v in (row if isinstance(row, list) else [row])]
    if ids and all(isinstance(v, int) for v in ids):
        return max(ids) + 1
    raise ValueError(f"cannot tell the number of classes from column {column!r}: pass num_labels")


class TrainViews(Dataset):
    def __init__(self, dataset, transform: TrainTransform, epoch_ref: torch.Tensor, image_column: str, label_column: str,
                 full_labels_column: str | None = None, num_labels: int = 0, names: list[str] | None = None,
                 label_format: str = "auto", pseudo_label_column: str | None = None):
        require_map_style(dataset, "training")
        require_columns(dataset, {image_column: "image_column", label_column: "label_column"}, "training")
        num_labels = num_labels or infer_num_labels(dataset, label_column)
        self.labels = read_labels(dataset, label_column, num_labels, "training", names, label_format,
                                  need_positive=True, allow_negatives=True)
        self.full_labels = None
        if full_labels_column is not None:  # the "full" upper bound only
            require_columns(dataset, {full_labels_column: "labels_column"}, "training (method='full')")
            self.full_labels = read_labels(dataset, full_labels_column, num_labels, "training (method='full')", names)
        columns = [image_column]
        if pseudo_label_column is not None:  # CLIP scores of a pseudo-label base loss: an input, not a label
            require_columns(dataset, {pseudo_label_column: "pseudo_label_column"}, "training (method 'vlpl'/'aevlp')")
            columns.append(pseudo_label_column)
        self.rows = dataset.select_columns(columns)
        self.transform, self.epoch_ref = transform, epoch_ref
        self.image_column, self.label_column = image_column, label_column
        self.full_labels_column, self.num_labels = full_labels_column, num_labels
        self.pseudo_label_column = pseudo_label_column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        row = self.rows[index]
        image = row[self.image_column]
        if image is None:
            raise ValueError(f"training row {index} has no image")
        pixels, box = self.transform(image, epoch=int(self.epoch_ref[0]), index=index)
        item = {
            "pixel_values": pixels,
            "targets": self.labels.targets(index),
            "label": torch.tensor(self.labels.primary(index)),
            "index": torch.tensor(index),
            "boxes": box.as_tensor(),
            "flips": torch.tensor(box.flip),
        }
        if self.labels.has_negatives:
            item["negatives"] = self.labels.negative_mask(index)
        if self.full_labels is not None:
            item["full_labels"] = self.full_labels.targets(index)
        if self.pseudo_label_column is not None:
            item["pseudo_labels"] = torch.as_tensor(row[self.pseudo_label_column], dtype=torch.float32)
        return item


class EvalViews(Dataset):
    """`labels_column` holds every positive of a row (ids, names or a 0/1 vector); a split with only the
    single-label `label_column` is evaluated on it, with a warning that says what that measures."""

    def __init__(self, dataset, transform: EvalTransform, num_labels: int, image_column: str, labels_column: str,
                 names: list[str] | None = None, labels_format: str = "auto", label_column: str | None = None):
        require_map_style(dataset, "evaluation")
        if labels_column not in dataset.column_names and label_column in dataset.column_names:
            warnings.warn(SINGLE_LABEL_EVAL_WARNING.format(labels=labels_column, label=label_column), UserWarning,
                          stacklevel=3)
            labels_column = label_column
        require_columns(dataset, {image_column: "image_column", labels_column: "labels_column"}, "evaluation")
        self.labels = read_labels(dataset, labels_column, num_labels, "evaluation", names, labels_format)
        self.rows = dataset.select_columns([image_column])
        self.transform, self.num_labels = transform, num_labels
        self.image_column, self.labels_column = image_column, labels_column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        return {"pixel_values": self.transform(self.rows[index][self.image_column]), "labels": self.labels.targets(index)}


def stack_batch(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
