"""CUB-200-2011 attributes (312 classes) under the single-positive protocol of Cole et al. (CVPR 2021).

As their ``preproc/format_cub.py``: images in ``images.txt`` order, split by ``train_test_split.txt`` (1: official
train, 0: test), labels the ``is_present`` flags of ``attributes/image_attribute_labels.txt`` (312 per image, in
attribute order), class names from ``attributes.txt``. Then as NUS-WIDE (:mod:`scl_hf.data.nus_wide`): one positive
drawn per row with ``RandomState(seed)`` over all of official train in file order, split 80/20 into train /
validation with the same seed; a row without any attribute leaves the training split only. CUB 2011: 5,994 train +
validation, 5,794 test images.
"""

from __future__ import annotations

import os

import numpy as np
from datasets import DatasetDict

from .protocol import (
    DEFAULT_SEED,
    DatasetLayoutError,
    file_stamp,
    label_matrix_rows,
    load_protocol_dataset,
    require_path,
)

FORMAT_VERSION = "cub-1"
NUM_ATTRIBUTES = 312
LAYOUT = """  <root>/CUB_200_2011/images.txt                     ("<image id> <relative path>")
  <root>/CUB_200_2011/train_test_split.txt           ("<image id> <1 train | 0 test>")
  <root>/CUB_200_2011/attributes/image_attribute_labels.txt  ("<image id> <attribute id> <is_present> ...")
  <root>/attributes.txt or <root>/CUB_200_2011/attributes/attributes.txt  ("<attribute id> <name>", 312 lines)
  <root>/CUB_200_2011/images/<relative path>
  (the layout CUB_200_2011.tgz extracts to; root may also be the CUB_200_2011 folder itself)"""


def resolve_cub_dir(root: str) -> str:
    for cand in (os.path.join(root, "CUB_200_2011"), root):
        if os.path.isfile(os.path.join(cand, "images.txt")):
            return cand
    require_path(os.path.join(root, "CUB_200_2011", "images.txt"), "CUB-200-2011 image list", LAYOUT)
    return root  # unreachable


def _read_pairs(path: str, what: str) -> list[list[str]]:
    require_path(path, what, LAYOUT)
    with open(path, encoding="utf-8") as f:
        rows = [line.split() for line in f if line.strip()]
    bad = next((i for i, parts in enumerate(rows, 1) if len(parts) < 2), None)
    if bad is not None:
        raise DatasetLayoutError(f"{path}:{bad}: expected '<id> <value>'")
    return rows


def attribute_names(cub_dir: str) -> list[str]:
    for path in (os.path.join(os.path.dirname(cub_dir), "attributes.txt"),
                 os.path.join(cub_dir, "attributes", "attributes.txt"), os.path.join(cub_dir, "attributes.txt")):
        if os.path.isfile(path):
            names = [parts[1] for parts in _read_pairs(path, "CUB attribute names")]
            if len(names) != NUM_ATTRIBUTES:
                raise DatasetLayoutError(f"{path}: expected {NUM_ATTRIBUTES} attributes, found {len(names)}")
            return names
    require_path(os.path.join(os.path.dirname(cub_dir), "attributes.txt"), "CUB attribute names", LAYOUT)
    return []  # unreachable


def read_cub(cub_dir: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(relative image paths, is_train flags, N × 312 0/1 labels), in images.txt order."""
    images = _read_pairs(os.path.join(cub_dir, "images.txt"), "CUB-200-2011 image list")
    position = {image_id: i for i, (image_id, *_rest) in enumerate(images)}
    is_train = np.zeros(len(images), dtype=bool)
    for image_id, flag, *_ in _read_pairs(os.path.join(cub_dir, "train_test_split.txt"), "CUB train/test split"):
        is_train[position[image_id]] = flag == "1"
    labels = np.zeros((len(images), NUM_ATTRIBUTES), dtype=np.int8)
    path = os.path.join(cub_dir, "attributes", "image_attribute_labels.txt")
    require_path(path, "CUB attribute labels", LAYOUT)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()  # a few lines of the official file carry an extra field: only the first 3 count
            if not parts:
                continue
            if len(parts) < 3 or parts[0] not in position or not 1 <= int(parts[1]) <= NUM_ATTRIBUTES:
                raise DatasetLayoutError(f"{path}:{line_no}: expected '<image id> <attribute 1..312> <0|1> ...'")
            labels[position[parts[0]], int(parts[1]) - 1] = parts[2] == "1"
    return [parts[1] for parts in images], is_train, labels


def _official_rows(spec: dict, phase: str) -> list[dict]:
    """Rows of official ``phase`` ("train" / "val" = test) with the drawn positive (−1 without any attribute)."""
    cub_dir = spec["cub_dir"]
    paths, is_train, labels = read_cub(cub_dir)
    keep = is_train if phase == "train" else ~is_train
    chosen = [p for p, k in zip(paths, keep) if k]
    id_offset = 0 if phase == "train" else 10**7
    return label_matrix_rows(chosen, labels[keep], os.path.join(cub_dir, "images"), spec["seed"], id_offset)


def load_cub(
    root: str | os.PathLike,
    seed: int = DEFAULT_SEED,
    cache_dir: str | None = None,
    skip_corrupt_images: bool = False,
    num_proc: int | None = None,
    verify_images: bool = False,
) -> DatasetDict:
    """CUB-200-2011 attributes as a DatasetDict with ``train`` / ``validation`` / ``test``."""
    root = os.path.abspath(os.fspath(root))
    require_path(root, "CUB-200-2011 root folder", LAYOUT)
    cub_dir = resolve_cub_dir(root)
    names = attribute_names(cub_dir)
    files = ["images.txt", "train_test_split.txt", os.path.join("attributes", "image_attribute_labels.txt")]
    stamp = "|".join(file_stamp(require_path(os.path.join(cub_dir, f), f"CUB file {f}", LAYOUT)) for f in files)
    require_path(os.path.join(cub_dir, "images"), "CUB image folder", LAYOUT)
    spec = {"format": FORMAT_VERSION, "cub_dir": cub_dir, "stamp": stamp}
    return load_protocol_dataset(
        _official_rows, spec, names, seed=seed, cache_dir=cache_dir, num_proc=num_proc,
        verify_images=verify_images, skip_corrupt_images=skip_corrupt_images,
    )
