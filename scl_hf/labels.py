"""Label columns as users bring them, read once and checked before any training step.

A label column may hold, per row: a class id (int or `ClassLabel`), a class name (mapped through the column's
`ClassLabel` names or the model's `id2label`), a list of class ids or names, or a multi-hot vector of length C
(0/1; in a training set also -1 for an *observed negative*). The format is detected from the column's
features (`SCLConfig.label_format` / `labels_format` state it instead) and every row is checked at once: a
value that is none of these fails with the column, the first bad row and the fix, never as a bare `int()`
error inside a dataloader after the training time has been spent.

The result is a `LabelTable`: per row the set of observed positive class ids (and of observed negatives),
stored compactly (offsets + ids, as CSR), so ImageNet's 1.28M single labels cost 20 MB, not N·C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

LABEL_FORMATS = ("auto", "id", "name", "ids", "names", "multihot")
_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")


@dataclass
class LabelTable:
    """The observed positives (and negatives) of every row, as CSR arrays over class ids."""

    num_labels: int
    offsets: np.ndarray  # (N + 1,) int64: row i's positives are positives[offsets[i]:offsets[i + 1]]
    positives: np.ndarray  # (nnz,) int64
    format: str
    neg_offsets: np.ndarray | None = None
    negatives: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def has_negatives(self) -> bool:
        return self.negatives is not None

    def positive_ids(self, row: int) -> np.ndarray:
        return self.positives[self.offsets[row]:self.offsets[row + 1]]

    def targets(self, row: int) -> torch.Tensor:
        """Multi-hot (C,) float of the row's observed positives (one-hot for a single label)."""
        target = torch.zeros(self.num_labels)
        target[torch.from_numpy(self.positive_ids(row).copy())] = 1.0
        return target

    def negative_mask(self, row: int) -> torch.Tensor:
        mask = torch.zeros(self.num_labels, dtype=torch.bool)
        if self.negatives is not None:
            mask[torch.from_numpy(self.negatives[self.neg_offsets[row]:self.neg_offsets[row + 1]].copy())] = True
        return mask

    def primary(self, row: int) -> int:
        """The first observed positive: the class a sparse bank always keeps (slot 0)."""
        ids = self.positive_ids(row)
        return int(ids[0]) if len(ids) else 0

    def dense(self) -> torch.Tensor:
        """(N, C) float multi-hot matrix of the observed positives (what stateful losses start from)."""
        matrix = torch.zeros(len(self), self.num_labels)
        rows = np.repeat(np.arange(len(self)), np.diff(self.offsets))
        matrix[torch.from_numpy(rows), torch.from_numpy(self.positives)] = 1.0
        return matrix


class LabelError(ValueError):
    """A label value the trainer cannot read: says the column, the row and the fix."""


def _fail(role: str, column: str, row: int, value, problem: str, fix: str) -> LabelError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return LabelError(f"the {role} dataset's column {column!r}, row {row}: {shown} {problem}. Fix: {fix}")


def feature_kind(feature) -> tuple[str, object]:
    """('scalar' | 'list', inner feature) of a column's `datasets` feature."""
    import datasets

    inner = getattr(feature, "feature", None)
    if isinstance(feature, (datasets.List, datasets.LargeList, datasets.Sequence)) or inner is not None:
        return "list", inner
    if isinstance(feature, list) and feature:  # the old [Value(...)] spelling
        return "list", feature[0]
    return "scalar", feature


def _dtype(feature) -> str:
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return "classlabel"
    return str(getattr(feature, "dtype", ""))


def detect_format(feature, values: list, num_labels: int) -> str:
    """The label format a column's features (and, for ambiguous int lists, its values) say it has."""
    kind, inner = feature_kind(feature)
    dtype = _dtype(inner)
    if kind == "scalar":
        return "name" if dtype in ("string", "large_string") else "id"
    if dtype in ("string", "large_string"):
        return "names"
    if dtype in _FLOAT_DTYPES or getattr(feature, "length", -1) == num_labels:
        return "multihot"
    # a plain int list: a multi-hot vector when every row has exactly C entries, all in {-1, 0, 1}
    rows = [v for v in values if v is not None]
    if num_labels > 2 and rows and all(isinstance(v, (list, tuple)) and len(v) == num_labels for v in rows) \
            and all(x in (-1, 0, 1) for v in rows for x in v):
        return "multihot"
    return "ids"


def column_values(dataset, column: str) -> list:
    """The raw values of one column (no transform, no format), respecting select/shuffle indices."""
    return list(dataset.select_columns([column]).with_format(None)[column])


def _class_id(value, row: int, column: str, role: str, num_labels: int, name_to_id: dict[str, int]) -> int:
    fix_range = (f"the model has num_labels={num_labels} (ids 0..{num_labels - 1}): check the label mapping, or "
                 "create the model with more labels")
    if value is None:
        raise _fail(role, column, row, value, "is missing", f"drop unlabelled rows first, e.g. "
                    f"dataset.filter(lambda r: r[{column!r}] is not None)")
    if isinstance(value, str):
        if value in name_to_id:
            return name_to_id[value]
        known = sorted(name_to_id, key=name_to_id.get)
        raise _fail(role, column, row, value, "is not a known class name",
                    f"known names (ClassLabel or the model's id2label): {known[:12]}{' ...' if len(known) > 12 else ''}; "
                    "create the model with id2label=<your class names>" if known else
                    "neither the column's ClassLabel nor the model's id2label names any class: create the model with "
                    "id2label=<your class names>, or cast the column to ClassLabel(names=...)")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _fail(role, column, row, value, f"is a {type(value).__name__}, not a class id",
                    "give an int class id, a class name, a list of them, or a 0/1 vector of length "
                    f"{num_labels} (set SCLConfig.label_format / labels_format when detection cannot tell)")
    if isinstance(value, (float, np.floating)) and (not math.isfinite(value) or value != int(value)):
        raise _fail(role, column, row, value, "is not a whole number",
                    "class ids are integers: a float label is read as-is nowhere; for soft or several labels per "
                    f"image give a list of class ids, or a 0/1 vector of length {num_labels}")
    if not 0 <= int(value) < num_labels:
        raise _fail(role, column, row, value, f"is outside 0..{num_labels - 1}", fix_range)
    return int(value)


def _multihot_row(value, row: int, column: str, role: str, num_labels: int, allow_negatives: bool):
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise _fail(role, column, row, value, "is not a multi-hot vector", f"give a list of {num_labels} 0/1 values")
    if len(value) != num_labels:
        raise _fail(role, column, row, value, f"has length {len(value)}, not {num_labels}",
                    f"a multi-hot vector has one entry per class ({num_labels}, the model's num_labels)")
    allowed = (-1, 0, 1) if allow_negatives else (0, 1)
    for x in value:
        if x is None or isinstance(x, bool) or x not in allowed:
            meaning = "1 observed positive, 0 unobserved, -1 observed negative" if allow_negatives else "1 present, 0 absent"
            raise _fail(role, column, row, value, f"holds {x!r}", f"multi-hot entries are {allowed} ({meaning})")
    array = np.asarray(value, dtype=np.int64)
    return np.flatnonzero(array == 1), np.flatnonzero(array == -1)


def read_labels(dataset, column: str, num_labels: int, role: str = "training", names: list[str] | None = None,
                label_format: str = "auto", need_positive: bool = False, allow_negatives: bool = False) -> LabelTable:
    """Read and check every row of `column`; `names` (the model's id2label) maps class-name strings."""
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label format {label_format!r} is not one of {LABEL_FORMATS}")
    values = column_values(dataset, column)
    feature = dataset.features.get(column) if dataset.features is not None else None
    fmt = detect_format(feature, values, num_labels) if label_format == "auto" else label_format
    _, inner = feature_kind(feature)
    name_to_id = {n: i for i, n in enumerate(names or [])}
    class_names = getattr(inner, "names", None) if inner is not None else None
    if class_names and fmt in ("name", "names"):
        name_to_id = {n: i for i, n in enumerate(class_names)}
    offsets, positives, neg_offsets, negatives = [0], [], [0], []
    for row, value in enumerate(values):
        if fmt in ("id", "name"):
            if isinstance(value, (list, tuple)):
                raise _fail(role, column, row, value, "is a list, but the column was read as one label per row",
                            "set SCLConfig.label_format / labels_format to 'ids' (class ids) or 'multihot'")
            ids, neg = [_class_id(value, row, column, role, num_labels, name_to_id)], []
        elif fmt in ("ids", "names"):
            if not isinstance(value, (list, tuple, np.ndarray)):
                raise _fail(role, column, row, value, "is not a list of class ids",
                            "give a list per row, or set the label format to 'id' for one class id per row")
            ids, neg = sorted({_class_id(v, row, column, role, num_labels, name_to_id) for v in value}), []
        else:
            ids, neg = _multihot_row(value, row, column, role, num_labels, allow_negatives)
        if need_positive and len(ids) == 0:
            raise _fail(role, column, row, value, "has no positive label",
                        "every training row needs at least one observed positive: drop the rows without one")
        positives.extend(int(i) for i in ids)
        negatives.extend(int(i) for i in neg)
        offsets.append(len(positives))
        neg_offsets.append(len(negatives))
    table = LabelTable(num_labels, np.asarray(offsets, dtype=np.int64), np.asarray(positives, dtype=np.int64), fmt)
    if negatives:
        table.neg_offsets, table.negatives = np.asarray(neg_offsets, np.int64), np.asarray(negatives, np.int64)
    return table


def require_map_style(dataset, role: str) -> None:
    """Streaming datasets have no row positions: the bank is keyed by row, evaluation gathers by row."""
    import datasets

    if isinstance(dataset, datasets.IterableDataset) or not hasattr(dataset, "__len__"):
        why = ("SCLTrainer keeps a bank row per training image, keyed by the row's position, and draws each view "
               "from (seed, epoch, row)" if role == "training" else "the evaluation reads every row by position")
        raise ValueError(
            f"the {role} dataset is a {type(dataset).__name__} (streaming, no length): {why}. Load it without "
            "streaming=True, or materialise it: datasets.Dataset.from_generator(lambda: (yield from ds), "
            "features=ds.features)"
        )
