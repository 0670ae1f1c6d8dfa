"""NUS-WIDE (81 concepts) under the single-positive protocol of Cole et al. (CVPR 2021).

Their NUS-WIDE is a re-crawl distributed as formatted files (data/README.md of elijahcole/single-positive-multi-label):
``formatted_{train,val}_images.npy`` (image paths relative to ``Flickr/``) and ``formatted_{train,val}_labels.npy``
(N × 81, 0/1, the 81 concepts in the order below). Many NUS-WIDE images carry none of the 81 concepts. The positive is
drawn as their ``generate_observed_labels.py`` does, over every row in file order (a row without a concept draws
nothing but its negatives' shuffle still consumes the stream), and official train is split 80/20 into train /
validation (``generate_split``, seed 1200) over every row, so the kept rows are exactly theirs. A training row needs a
positive, so the rows without any concept leave the training split (their "observed" vector is all zero there); they
stay in validation and test, where they are negatives of every class (``label`` −1, ``labels`` empty).
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

FORMAT_VERSION = "nuswide-1"
NUS_WIDE_CLASS_NAMES = (
    "airport animal beach bear birds boats book bridge buildings cars castle cat cityscape clouds computer coral cow "
    "dancing dog earthquake elk fire fish flags flowers food fox frost garden glacier grass harbor horses house lake "
    "leaf map military moon mountain nighttime ocean person plane plants police protest railroad rainbow reflection "
    "road rocks running sand sign sky snow soccer sports statue street sun sunset surf swimmers tattoo temple tiger "
    "tower town toy train tree valley vehicle water waterfall wedding whales window zebra"
).split()

LAYOUT = """  <root>/formatted_train_images.npy, formatted_train_labels.npy   (official train: paths, N x 81 0/1 labels)
  <root>/formatted_val_images.npy, formatted_val_labels.npy       (official test)
  <root>/Flickr/<path as listed in formatted_*_images.npy>
  (Cole et al.'s files: https://zenodo.org/records/10162606; images: Flickr.zip from the NUS-WIDE site)"""


def read_formatted(root: str, phase: str, num_classes: int, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """(image paths, 0/1 label matrix) of ``formatted_<phase>_*.npy``, checked against each other."""
    images_path = require_path(os.path.join(root, f"formatted_{phase}_images.npy"), f"{phase} image list", layout)
    labels_path = require_path(os.path.join(root, f"formatted_{phase}_labels.npy"), f"{phase} label matrix", layout)
    images = np.load(images_path, allow_pickle=False)
    labels = np.load(labels_path, allow_pickle=False)
    if labels.ndim != 2 or labels.shape[1] != num_classes:
        raise DatasetLayoutError(f"{labels_path}: expected an N x {num_classes} label matrix, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DatasetLayoutError(f"{images_path} lists {len(images)} images but {labels_path} has {len(labels)} rows")
    if not np.isin(labels, (0, 1)).all():
        raise DatasetLayoutError(f"{labels_path}: labels must be 0 or 1 (Cole et al.'s formatted files)")
    return images, labels


def _official_rows(spec: dict, phase: str) -> list[dict]:
    """Rows of official ``phase`` ("train" / "val") with the drawn positive (−1 for an image without any concept)."""
    root = spec["root"]
    images, labels = read_formatted(root, phase, len(NUS_WIDE_CLASS_NAMES), LAYOUT)
    id_offset = 0 if phase == "train" else 10**7
    return label_matrix_rows(images, labels, os.path.join(root, "Flickr"), spec["seed"], id_offset)


def load_nus_wide(
    root: str | os.PathLike,
    seed: int = DEFAULT_SEED,
    cache_dir: str | None = None,
    skip_corrupt_images: bool = False,
    num_proc: int | None = None,
    verify_images: bool = False,
) -> DatasetDict:
    """NUS-WIDE as a DatasetDict with ``train`` / ``validation`` / ``test`` (columns as in ``load_coco``)."""
    root = os.path.abspath(os.fspath(root))
    require_path(root, "NUS-WIDE root folder", LAYOUT)
    require_path(os.path.join(root, "Flickr"), "NUS-WIDE image folder Flickr/", LAYOUT)
    spec = {"format": FORMAT_VERSION, "root": root}
    for phase in ("train", "val"):
        read_formatted(root, phase, len(NUS_WIDE_CLASS_NAMES), LAYOUT)  # fail now, naming the file
        spec[f"{phase}_stamp"] = "|".join(
            file_stamp(os.path.join(root, f"formatted_{phase}_{kind}.npy")) for kind in ("images", "labels"))
    return load_protocol_dataset(
        _official_rows, spec, NUS_WIDE_CLASS_NAMES, seed=seed, cache_dir=cache_dir, num_proc=num_proc,
        verify_images=verify_images, skip_corrupt_images=skip_corrupt_images,
    )
