"""Torch datasets that turn rows of a `datasets.Dataset` into model inputs.

`TrainViews` yields the augmented view with its crop box, flip flag and row index (the bank key), and
the single observed label only: the full-label column is dropped before any row is read, so it cannot
reach the training loss. The one exception is explicit: `full_labels_column`, which SCLTrainer sets only for
the full-label upper bound (method "full"), adds a multi-hot `full_labels` target; `pseudo_label_column` adds the
CLIP scores a pseudo-label base loss reads (an input computed from the image, like the single positive). `EvalViews` yields the
whole image and the multi-hot target of all labels.
Both run in dataloader workers; the epoch lives in a shared-memory tensor that the trainer sets at the
start of every epoch, so workers (persistent or not) draw the views of the right epoch.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from .transforms import EvalTransform, TrainTransform


def require_columns(dataset, needed: dict[str, str], role: str) -> None:
    """Fail early, naming the missing column, what it is for, and the config field that renames it."""
    present = list(dataset.column_names)
    for column, config_field in needed.items():
        if column not in present:
            raise ValueError(
                f"the {role} dataset has no column {column!r} (columns: {present}). Rename the column, or set "
                f"SCLConfig.{config_field} to the column that holds it."
            )


def check_label_range(values, num_labels: int, column: str, role: str) -> None:
    flat = [v for row in values for v in (row if isinstance(row, list) else [row])]
    bad = [v for v in flat if not 0 <= int(v) < num_labels]
    if bad:
        raise ValueError(
            f"the {role} column {column!r} holds class id(s) {sorted(set(bad))[:10]} outside 0..{num_labels - 1}; "
            f"the model has num_labels={num_labels}. Check the label mapping or create the model with more labels."
        )


class TrainViews(Dataset):
    def __init__(self, dataset, transform: TrainTransform, epoch_ref: torch.Tensor, image_column: str, label_column: str,
                 full_labels_column: str | None = None, num_labels: int = 0, pseudo_label_column: str | None = None):
        require_columns(dataset, {image_column: "image_column", label_column: "label_column"}, "training")
        columns = [image_column, label_column]
        if full_labels_column is not None:  # the "full" upper bound only
            require_columns(dataset, {full_labels_column: "labels_column"}, "training (method='full')")
            columns.append(full_labels_column)
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
        row = self.rows[int(index)]
        image = row[self.image_column]
        if image is None:
            raise ValueError(f"training row {index} has no image")
        pixels, box = self.transform(image, epoch=int(self.epoch_ref[0]), index=int(index))
        item = {
            "pixel_values": pixels,
            "label": torch.tensor(int(row[self.label_column])),
            "index": torch.tensor(int(index)),
            "boxes": box.as_tensor(),
            "flips": torch.tensor(box.flip),
        }
        if self.full_labels_column is not None:
            item["full_labels"] = torch.zeros(self.num_labels)
            item["full_labels"][list(row[self.full_labels_column])] = 1.0
        if self.pseudo_label_column is not None:
            item["pseudo_labels"] = torch.as_tensor(row[self.pseudo_label_column], dtype=torch.float32)
        return item


class EvalViews(Dataset):
    def __init__(self, dataset, transform: EvalTransform, num_labels: int, image_column: str, labels_column: str):
        require_columns(dataset, {image_column: "image_column", labels_column: "labels_column"}, "evaluation")
        check_label_range(dataset[labels_column], num_labels, labels_column, "evaluation")
        self.rows = dataset.select_columns([image_column, labels_column])
        self.transform, self.num_labels = transform, num_labels
        self.image_column, self.labels_column = image_column, labels_column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[int(index)]
        target = torch.zeros(self.num_labels)
        target[list(row[self.labels_column])] = 1.0
        return {"pixel_values": self.transform(row[self.image_column]), "labels": target}


def stack_batch(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
