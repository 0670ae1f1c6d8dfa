"""Single-label training data evaluated with ImageNet "ReaL" multi-labels (Beyer et al. 2020).

Assumptions (checked where possible):
- training data is any single-label image dataset: an ImageFolder tree ``train/<class>/<image>``
  (class index = position of the folder name in sorted order, the torchvision/timm ImageNet order
  that ReaL's class ids use) or a ``datasets.Dataset`` with ``image`` and ``label`` columns;
- ``real.json`` is a JSON list with one list of class ids per validation image, in the order of the
  sorted validation file names (``ILSVRC2012_val_00000001.JPEG``, ...); ``val_dir`` may be flat
  (official) or hold class sub-folders: files are ordered by file name either way;
- images whose ReaL list is empty are left out, as the ReaL evaluation does (46,837 of 50,000 remain).
The test split has ``image``, ``labels`` and ``image_id`` (the number in the validation file name).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re

from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from .protocol import (
    DEFAULT_SEED,
    DatasetLayoutError,
    build_split,
    file_stamp,
    image_check_spec,
    protocol_features,
    require_path,
    split_train_val,
)

FORMAT_VERSION = "imagenet-real-1"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
LAYOUT = """  <train_source>/<class folder, e.g. n01440764>/<image>.JPEG   (or a datasets.Dataset with image, label)
  <val_dir>/ILSVRC2012_val_00000001.JPEG ...                 (flat, or inside class sub-folders)
  <real_json>: [[class ids of image 1], [class ids of image 2], ...]  one list per validation image"""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_class_folders(train_dir: str) -> list[str]:
    """Sorted class folder names of an ImageFolder tree (the class index order)."""
    require_path(train_dir, "training image folder", LAYOUT)
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir())
    if not classes:
        raise DatasetLayoutError(f"{train_dir} has no class sub-folders\nExpected layout:\n{LAYOUT}")
    return classes


@functools.lru_cache(maxsize=1)
def _train_rows(train_dir: str, stamp: str) -> list[dict]:
    """One row per image file, classes in sorted folder order, files sorted inside each folder."""
    rows = []
    for label, cls in enumerate(list_class_folders(train_dir)):
        folder = os.path.join(train_dir, cls)
        for name in sorted(n for n in os.listdir(folder) if _is_image(n)):
            rows.append({"image": os.path.join(folder, name), "label": label, "image_id": len(rows)})
    return rows


def _image_id(name: str, position: int) -> int:
    """The number in ``ILSVRC2012_val_00000042.JPEG`` (42), else the 1-based position."""
    match = re.search(r"(\d+)\.\w+$", name)
    return int(match.group(1)) if match else position + 1


@functools.lru_cache(maxsize=1)
def _test_rows(val_dir: str, real_json: str, num_classes: int, stamp: str) -> list[dict]:
    """Validation images paired with their ReaL lists (empty lists dropped); checks count and ids."""
    files = sorted(
        (name, os.path.join(d, name)) for d, _, names in os.walk(val_dir) for name in names if _is_image(name)
    )
    try:
        with open(real_json, encoding="utf-8") as f:
            real = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetLayoutError(
            f"{real_json} is not valid JSON ({err})\nExpected layout:\n{LAYOUT}"
        ) from err
    if not isinstance(real, list) or not all(isinstance(x, list) for x in real):
        raise DatasetLayoutError(
            f"{real_json} is not a ReaL label file: expected a JSON list of lists of ids"
        )
    if len(real) != len(files):
        raise DatasetLayoutError(
            f"{real_json} has {len(real)} entries but {val_dir} holds {len(files)} images; "
            "ReaL needs exactly one entry per validation image (sorted by file name)"
        )
    rows = []
    for position, ((name, path), ids) in enumerate(zip(files, real)):
        bad = [c for c in ids if not (isinstance(c, int) and 0 <= c < num_classes)]
        if bad:
            raise DatasetLayoutError(
                f"{real_json}: image {name} has label id {bad[0]}, outside the valid range 0..{num_classes - 1}"
            )
        if ids:
            rows.append({"image": path, "labels": sorted(set(ids)), "image_id": _image_id(name, position)})
    return rows


def _read_rows(spec: dict, split: str) -> list[dict]:
    if split == "test":
        return _test_rows(spec["val_dir"], spec["real_json"], spec["num_classes"], spec["real_stamp"])
    return _train_rows(spec["train_dir"], spec["train_stamp"])


def _folder_stamp(train_dir: str, classes: list[str]) -> str:
    """Cache key of an ImageFolder tree: the class folders' mtimes change when files are added/removed."""
    parts = [f"{c}:{os.stat(os.path.join(train_dir, c)).st_mtime_ns}" for c in classes]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _dataset_names(train: Dataset, class_names: list[str] | None) -> list[str]:
    """Class names of a ready-made training Dataset (from its ClassLabel, else ``class_names``)."""
    missing = {"image", "label"} - set(train.column_names)
    if missing:
        raise DatasetLayoutError(
            f"training Dataset lacks column(s) {sorted(missing)}; it needs image and label"
        )
    feature = train.features["label"]
    if isinstance(feature, ClassLabel):
        if class_names is not None and len(class_names) != feature.num_classes:
            raise DatasetLayoutError(
                f"{len(class_names)} class_names for a label with {feature.num_classes} classes"
            )
        return list(class_names or feature.names)
    if class_names is None:
        raise DatasetLayoutError("the training Dataset's label is not a ClassLabel: pass class_names")
    return list(class_names)


def load_imagenet_real(
    train_source: str | os.PathLike | Dataset,
    val_dir: str | os.PathLike,
    real_json: str | os.PathLike,
    class_names: list[str] | None = None,
    seed: int = DEFAULT_SEED,
    cache_dir: str | None = None,
    val_fraction: float = 0.0,
    skip_corrupt_images: bool = False,
    num_proc: int | None = None,
    verify_images: bool = False,
) -> DatasetDict:
    """``train`` (image, label[, image_id]) and ``test`` (image, labels, image_id) splits.

    ``val_fraction > 0`` also splits a ``validation`` set off the training rows (single labels only,
    sorted indices from ``split_train_val(seed)``). ``class_names`` names the classes (default: the
    folder names or the Dataset's ClassLabel names). The ReaL file is checked (count, id range)
    before anything is built. A Dataset passed as ``train_source`` is used as it is.
    """
    val_dir, real_json = os.path.abspath(os.fspath(val_dir)), os.path.abspath(os.fspath(real_json))
    require_path(val_dir, "ImageNet validation image folder", LAYOUT)
    require_path(real_json, "ReaL label file (real.json)", LAYOUT)
    spec = {"format": FORMAT_VERSION, **image_check_spec(verify_images, skip_corrupt_images)}
    if isinstance(train_source, Dataset):
        names = _dataset_names(train_source, class_names)
        train = train_source
    else:
        train_dir = os.path.abspath(os.fspath(train_source))
        classes = list_class_folders(train_dir)
        if class_names is not None and len(class_names) != len(classes):
            raise DatasetLayoutError(
                f"{len(class_names)} class_names but {len(classes)} class folders in {train_dir}"
            )
        names = list(class_names or classes)
        spec.update(train_dir=train_dir, train_stamp=_folder_stamp(train_dir, classes))
        features = Features({"image": Image(), "label": ClassLabel(names=names), "image_id": Value("int64")})
        train = None
    spec.update(val_dir=val_dir, real_json=real_json, num_classes=len(names))
    spec["real_stamp"] = f"{file_stamp(real_json)}|{os.stat(val_dir).st_mtime_ns}"
    _test_rows(val_dir, real_json, len(names), spec["real_stamp"])  # fail early on a bad ReaL file
    try:
        if train is None:
            train = build_split(_read_rows, spec, "train", features, cache_dir, num_proc)
        test = build_split(
            _read_rows, spec, "test", protocol_features(names, single_label=False), cache_dir, num_proc
        )
    finally:
        _train_rows.cache_clear()
        _test_rows.cache_clear()
    splits = {"train": train}
    if val_fraction > 0:
        train_idx, val_idx = split_train_val(len(train), val_fraction, seed)
        splits = {"train": train.select(train_idx), "validation": train.select(val_idx)}
    return DatasetDict({**splits, "test": test})
