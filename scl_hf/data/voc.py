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

import hashlib
import os

from datasets import DatasetDict

from .protocol import (
    DEFAULT_SEED,
    DatasetLayoutError,
    file_stamp,
    load_protocol_dataset,
    require_path,
    sample_single_positive,
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


def _official_rows(spec: dict, phase: str) -> list[dict]:
    """Rows of official ``phase`` ("train" / "val") with the drawn positive."""
    voc_dir = spec["voc_dir"]
    parsed = read_image_sets(voc_dir, phase)
    drawn = sample_single_positive(
        [labels for _, labels in parsed], spec["seed"], num_classes=len(VOC_CLASS_NAMES)
    )
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
        "voc_dir": voc_dir,
        "train_stamp": _stamp(voc_dir, "train", layout),
        "val_stamp": _stamp(voc_dir, "val", layout),
    }
    return load_protocol_dataset(
        _official_rows, spec, VOC_CLASS_NAMES, seed=seed, cache_dir=cache_dir, num_proc=num_proc,
        verify_images=verify_images, skip_corrupt_images=skip_corrupt_images,
    )
