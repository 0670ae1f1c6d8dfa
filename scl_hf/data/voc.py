"""PASCAL VOC (2012 by default) under the single-positive protocol of Cole et al. (CVPR 2021).

Protocol, as in their ``preproc/format_pascal.py``: the labels come from
``ImageSets/Main/<class>_<train|val>.txt`` only (lines ``<image id> <1|-1|0>``); an image belongs to
a set when some class file marks it ``1``; ``0`` ("difficult only") counts as negative; rows are
ordered by image id (sorted as strings); the 20 classes are in the standard order below. One
positive per image with ``RandomState(seed)`` over all of official train, split 80/20 into train /
validation with the same seed; official val is the test set (its own fresh draw for ``label``).
VOC 2012: 5,717 → 4,574 / 1,143, test 5,823.

``image_id`` is the VOC id with the underscore removed, as an integer (``2008_000008`` → 2008000008).
Images are path-backed, as in :mod:`scl_hf.data.coco`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

from datasets import DatasetDict

from .protocol import (
    DEFAULT_SEED,
    DatasetLayoutError,
    build_split,
    file_stamp,
    iter_shard_rows,
    protocol_features,
    require_path,
    sample_single_positive,
    split_train_val,
)

FORMAT_VERSION = "voc-1"
VOC_CLASS_NAMES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
    "pottedplant sheep sofa train tvmonitor"
).split()

LAYOUT = """  <root>/VOCdevkit/VOC{year}/ImageSets/Main/<class>_train.txt and <class>_val.txt for the 20 classes
      (lines "<image id> <1|-1|0>")
  <root>/VOCdevkit/VOC{year}/JPEGImages/<image id>.jpg
  (root may also be the VOCdevkit folder itself or the VOC{year} folder itself)"""


def resolve_voc_dir(root: str, year: int) -> str:
    """Find VOC{year}/ given the folder holding VOCdevkit, VOCdevkit itself, or VOC{year} itself."""
    for cand in (os.path.join(root, "VOCdevkit", f"VOC{year}"), os.path.join(root, f"VOC{year}"), root):
        if os.path.isdir(os.path.join(cand, "ImageSets", "Main")):
            return cand
    hint = ""
    if os.path.isdir(os.path.join(root, "annotations")) or os.path.isdir(os.path.join(root, f"train{year}")):
        hint = "This looks like a COCO folder: use scl_hf.data.load_coco for it."
    expected = os.path.join(root, "VOCdevkit", f"VOC{year}", "ImageSets", "Main")
    require_path(expected, f"PASCAL VOC{year} ImageSets/Main folder", LAYOUT.format(year=year), hint)
    return expected  # unreachable: require_path raised


def _parse_image_id(voc_id: str, where: str) -> int:
    digits = voc_id.replace("_", "")
    if not digits.isdigit():
        raise DatasetLayoutError(f"{where}: image id {voc_id!r} is not a VOC id like 2008_000008")
    return int(digits)


def read_image_sets(voc_dir: str, phase: str) -> list[tuple[str, list[int]]]:
    """(VOC image id, sorted positive class indices) for every image with a positive, sorted by id."""
    positives: dict[str, set[int]] = {}
    for c, name in enumerate(VOC_CLASS_NAMES):
        path = os.path.join(voc_dir, "ImageSets", "Main", f"{name}_{phase}.txt")
        require_path(path, f"VOC class list {name}_{phase}.txt", LAYOUT.format(year="<year>"))
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2 or parts[1] not in ("1", "-1", "0"):
                    raise DatasetLayoutError(
                        f"{path}:{line_no}: expected '<image id> <1|-1|0>', got {line.strip()!r}"
                    )
                _parse_image_id(parts[0], f"{path}:{line_no}")
                if parts[1] == "1":
                    positives.setdefault(parts[0], set()).add(c)
    return [(voc_id, sorted(positives[voc_id])) for voc_id in sorted(positives)]


@functools.lru_cache(maxsize=2)
def _official_rows(voc_dir: str, phase: str, seed: int, stamp: str) -> list[dict]:
    """Rows of one official split with the drawn positive (``stamp`` only keys the cache)."""
    parsed = read_image_sets(voc_dir, phase)
    drawn = sample_single_positive([labels for _, labels in parsed], seed, num_classes=len(VOC_CLASS_NAMES))
    image_dir = os.path.join(voc_dir, "JPEGImages")
    return [
        {
            "image": os.path.join(image_dir, f"{voc_id}.jpg"),
            "label": label,
            "labels": labels,
            "image_id": _parse_image_id(voc_id, voc_dir),
        }
        for (voc_id, labels), label in zip(parsed, drawn)
    ]


def _generate(spec_json: str, split: str, shards: list[int], num_shards: int):
    spec = json.loads(spec_json)
    phase = "val" if split == "test" else "train"
    rows = _official_rows(spec["voc_dir"], phase, spec["seed"], spec[f"{phase}_stamp"])
    if split != "test":
        train_idx, val_idx = split_train_val(len(rows), 0.2, spec["seed"])
        rows = [rows[i] for i in (train_idx if split == "train" else val_idx)]
    yield from iter_shard_rows(rows, shards, num_shards, spec["verify"], spec["skip"], split)


def _stamp(voc_dir: str, phase: str, layout: str) -> str:
    """Hash of the size+mtime of the 20 class files of one phase: the cache key of its labels."""
    stamps = []
    for name in VOC_CLASS_NAMES:
        path = os.path.join(voc_dir, "ImageSets", "Main", f"{name}_{phase}.txt")
        stamps.append(file_stamp(require_path(path, f"VOC class list {name}_{phase}.txt", layout)))
    return hashlib.sha256("|".join(stamps).encode()).hexdigest()


def load_voc(
    root: str | os.PathLike,
    year: int = 2012,
    seed: int = DEFAULT_SEED,
    cache_dir: str | None = None,
    skip_corrupt_images: bool = False,
    num_proc: int | None = None,
    verify_images: bool = False,
) -> DatasetDict:
    """VOC as a DatasetDict with ``train`` / ``validation`` / ``test`` (columns as in ``load_coco``).

    ``root`` may be the folder holding ``VOCdevkit``, ``VOCdevkit`` itself or ``VOC{year}`` itself.
    ``verify_images`` / ``skip_corrupt_images`` behave as in :func:`scl_hf.data.load_coco`.
    """
    root = os.path.abspath(os.fspath(root))
    layout = LAYOUT.format(year=year)
    require_path(root, "PASCAL VOC root folder", layout)
    voc_dir = resolve_voc_dir(root, year)
    require_path(os.path.join(voc_dir, "JPEGImages"), f"VOC{year} JPEGImages folder", layout)
    spec = {
        "format": FORMAT_VERSION,
        "seed": int(seed),
        "voc_dir": voc_dir,
        "train_stamp": _stamp(voc_dir, "train", layout),
        "val_stamp": _stamp(voc_dir, "val", layout),
        "verify": bool(verify_images or skip_corrupt_images),
        "skip": bool(skip_corrupt_images),
    }
    features = protocol_features(VOC_CLASS_NAMES)
    try:
        return DatasetDict(
            {
                split: build_split(_generate, spec, split, features, cache_dir, num_proc)
                for split in ("train", "validation", "test")
            }
        )
    finally:
        _official_rows.cache_clear()
