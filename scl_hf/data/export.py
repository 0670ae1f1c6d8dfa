"""Save / restore the protocol's labels and splits as Parquet, without images or annotation files.

Lets anyone reproduce exactly the same single-positive labels and train/validation split: share the
folder (a few MB for COCO), and each user points ``load_protocol_splits`` at their own image root.
Per split, ``<split>.parquet`` holds ``path`` (image path relative to the root, POSIX separators)
and every non-image column (``image_id``, ``label``, ``labels``); ``features.json`` keeps the
column types (class names included) so the restored DatasetDict has the same features.
"""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict, Features, Image

from .protocol import DatasetLayoutError, require_path

FEATURES_FILE = "features.json"


def image_paths(ds: Dataset, column: str = "image") -> list[str]:
    """The stored file paths of a path-backed image column, without decoding any image."""
    return [item["path"] for item in ds.cast_column(column, Image(decode=False))[column]]


def save_protocol_splits(
    dataset_dict: DatasetDict, folder: str | os.PathLike, root: str | None = None
) -> str:
    """Write each split's labels as Parquet under ``folder``; paths relative to ``root``.

    ``root`` defaults to the deepest folder shared by all image paths (e.g. the COCO root).
    """
    paths = {split: image_paths(ds) for split, ds in dataset_dict.items()}
    if any(p is None for ps in paths.values() for p in ps):
        raise DatasetLayoutError("some images are stored as bytes, not paths: nothing to make relative")
    everything = [p for ps in paths.values() for p in ps]
    root = os.path.abspath(root or os.path.commonpath([os.path.dirname(p) for p in everything]))
    os.makedirs(folder, exist_ok=True)
    features = {}
    for split, ds in dataset_dict.items():
        relative = [os.path.relpath(p, root).replace(os.sep, "/") for p in paths[split]]
        table = ds.remove_columns("image").add_column("path", relative)
        table.to_parquet(os.path.join(folder, f"{split}.parquet"))
        features[split] = ds.features.to_dict()
    with open(os.path.join(folder, FEATURES_FILE), "w", encoding="utf-8") as f:
        json.dump({"splits": list(dataset_dict), "features": features}, f)
    return root


def load_protocol_splits(folder: str | os.PathLike, root: str | os.PathLike) -> DatasetDict:
    """Rebuild the DatasetDict written by ``save_protocol_splits``, with images under ``root``."""
    meta_path = require_path(
        os.path.join(folder, FEATURES_FILE),
        "protocol split description",
        "  <folder>/features.json and <folder>/<split>.parquet, written by save_protocol_splits",
    )
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    root = os.path.abspath(os.fspath(root))
    splits = {}
    for split in meta["splits"]:
        features = Features.from_dict(meta["features"][split])
        table = pq.read_table(os.path.join(folder, f"{split}.parquet")).to_pydict()
        images = [os.path.join(root, *p.split("/")) for p in table["path"]]
        columns = {name: table[name] for name in features if name != "image"}
        splits[split] = Dataset.from_dict({"image": images, **columns}, features=features)
    return DatasetDict(splits)
