"""A user's own data for `scl-hf train|eval`: a folder of class sub-folders, a Hub dataset, parquet files.

    scl-hf train imagefolder photos/ --output_dir runs/mine          # photos/<class>/*.jpg (or photos/train/...)
    scl-hf train hub user/dataset --label_column tags                 # or a local copy / a save_to_disk folder
    scl-hf train parquet a.parquet b.parquet --test_files t.parquet   # image + label columns

Each loader returns a DatasetDict with a "train" and a "test" split. When the data has no test split, one
is held out of the training rows (`--test_size`, seeded); such a test split has single labels only, and the
evaluation says so (scl_hf.views). Labels in any shape scl_hf.labels reads (ids, names, lists, multi-hot).
"""

from __future__ import annotations

from pathlib import Path

import datasets

SOURCE_KINDS = ("imagefolder", "hub", "parquet")


def load_imagefolder(paths: list[str], cache_dir: str | None = None, **_) -> datasets.DatasetDict:
    if len(paths) != 1 or not Path(paths[0]).is_dir():
        raise ValueError(f"imagefolder needs one folder of class sub-folders, got {paths}")
    return datasets.load_dataset("imagefolder", data_dir=paths[0], cache_dir=cache_dir)


def load_hub(paths: list[str], cache_dir: str | None = None, **_) -> datasets.DatasetDict:
    """A Hub dataset name, a local copy of one (a folder of data files), or a `save_to_disk` folder."""
    if len(paths) != 1:
        raise ValueError(f"hub needs one dataset name (or local copy), got {paths}")
    local = Path(paths[0])
    if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
        loaded = datasets.load_from_disk(str(local))
    else:
        loaded = datasets.load_dataset(paths[0], cache_dir=cache_dir)
    return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})


def load_parquet(paths: list[str], cache_dir: str | None = None, test_files: list[str] | None = None,
                 **_) -> datasets.DatasetDict:
    missing = [p for p in [*paths, *(test_files or [])] if not Path(p).is_file()]
    if not paths or missing:
        raise ValueError(f"parquet needs existing .parquet files; missing: {missing or 'none given'}")
    files = {"train": list(paths), **({"test": list(test_files)} if test_files else {})}
    return datasets.load_dataset("parquet", data_files=files, cache_dir=cache_dir)


LOADERS = {"imagefolder": load_imagefolder, "hub": load_hub, "parquet": load_parquet}


def load_source(kind: str, paths: list[str], image_column: str = "image", test_size: float = 0.2, seed: int = 0,
                cache_dir: str | None = None, test_files: list[str] | None = None) -> datasets.DatasetDict:
    """The user's data as train + test splits, with the image column decoded as images."""
    splits = LOADERS[kind](paths, cache_dir=cache_dir, test_files=test_files)
    if "train" not in splits:
        raise ValueError(f"the {kind} data has no 'train' split (splits: {list(splits)})")
    if "test" not in splits:
        if "validation" in splits:
            splits["test"] = splits.pop("validation")
        else:
            held = splits["train"].train_test_split(test_size=test_size, seed=seed)
            splits = datasets.DatasetDict({"train": held["train"], "test": held["test"]})
    for name, split in splits.items():
        if image_column not in split.column_names:
            raise ValueError(f"the {name} split has no image column {image_column!r} (columns: {split.column_names}):"
                             " pass --image_column")
        if not isinstance(split.features[image_column], datasets.Image):
            splits[name] = split.cast_column(image_column, datasets.Image())  # paths or bytes → decoded images
    return splits


def class_names(splits: datasets.DatasetDict, label_column: str, labels_column: str,
                multihot: bool = False) -> list[str]:
    """Class names from the label features (ClassLabel, or a list of them), else the names found in the
    string labels (sorted), else class_0..class_{C−1} from the largest id or the multi-hot length
    (float lists, fixed-length lists, or `multihot=True`: SCLConfig.label_format='multihot')."""
    from .labels import column_values, feature_kind

    train = splits["train"]
    if label_column not in train.column_names:
        raise ValueError(f"the train split has no label column {label_column!r} (columns: {train.column_names}): "
                         "pass --label_column")
    kind, inner = feature_kind(train.features[label_column])
    if hasattr(inner, "names"):
        return list(inner.names)
    found, length = set(), 0
    for split in splits.values():
        for column in sorted({label_column, labels_column} & set(split.column_names)):
            kind, inner = feature_kind(split.features[column])
            values = [v for v in column_values(split, column) if v is not None]
            if kind == "list" and (multihot or str(getattr(inner, "dtype", "")).startswith("float")
                                   or getattr(split.features[column], "length", -1) > 0):
                length = max([length, *map(len, values)])
                continue
            for value in values:
                found.update(v for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None)
    if length:
        return [f"class_{i}" for i in range(length)]
    if found and all(isinstance(v, str) for v in found):
        return sorted(found)
    ids = [int(v) for v in found if not isinstance(v, str) and float(v).is_integer() and v >= 0]
    if not ids:
        raise ValueError(f"cannot tell the classes of {label_column!r}: cast it to ClassLabel(names=...)")
    return [f"class_{i}" for i in range(max(ids) + 1)]
