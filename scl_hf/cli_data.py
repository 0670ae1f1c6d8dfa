"""The datasets `scl-hf train` / `scl-hf eval` can read, by name: one loader per name, the flags each needs.

A registry rather than an if-chain: a new dataset is one entry in PROTOCOL_LOADERS (its loader in scl_hf.data and
the --*_root flags it reads), and `scl-hf train --help` lists it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

PROTOCOL_LOADERS: dict[str, tuple[str, tuple[str, ...]]] = {  # name → (scl_hf.data function, the flags it takes)
    "coco": ("load_coco", ("coco_root",)),
    "voc": ("load_voc", ("voc_root",)),
    "nuswide": ("load_nus_wide", ("nus_root",)),
    "cub": ("load_cub", ("cub_root",)),
    "imagenet": ("load_imagenet_real", ("imagenet_train", "imagenet_val", "real_json")),
}
DATASETS = ("synthetic", *PROTOCOL_LOADERS)
OWN_DATA = ("imagefolder", "hub", "parquet")  # scl_hf.sources
TINY = {"num_train": 48, "num_test": 24, "source_size": 96, "image_size": 64, "epochs": 2, "batch_size": 16}


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _required(ns: argparse.Namespace, flags: tuple[str, ...]) -> list:
    missing = [f"--{flag}" for flag in flags if not getattr(ns, flag, None)]
    if missing:
        raise CLIError(f"dataset {ns.dataset!r} needs {' and '.join(missing)}")
    return [getattr(ns, flag) for flag in flags]


def _synthetic(ns: argparse.Namespace):
    from .data import make_synthetic

    tiny = TINY if ns.tiny else {}
    return make_synthetic(num_train=ns.num_train or tiny.get("num_train", 2000),
                          num_test=ns.num_test or tiny.get("num_test", 500),
                          image_size=tiny.get("source_size", 128), seed=ns.data_seed, cache_dir=ns.cache_dir)


def load_dataset(ns: argparse.Namespace):
    """The DatasetDict of the chosen dataset (train + test, validation where the protocol has one)."""
    from . import data

    if ns.paths and ns.dataset not in OWN_DATA:
        raise CLIError(f"dataset {ns.dataset!r} takes no SOURCE arguments ({ns.paths}); use its --*_root options")
    if ns.dataset == "synthetic":
        return _synthetic(ns)
    if ns.dataset in OWN_DATA:
        from .sources import load_source

        splits = load_source(ns.dataset, ns.paths, ns.image_column or "image", ns.test_size, ns.data_seed,
                             ns.cache_dir, ns.test_files)
    else:
        function, flags = PROTOCOL_LOADERS[ns.dataset]
        loader: Callable = getattr(data, function)
        splits = loader(*_required(ns, flags), cache_dir=ns.cache_dir)
    if ns.tiny:
        splits = type(splits)({name: ds.select(range(min(len(ds), TINY["num_train" if name == "train" else "num_test"])))
                               for name, ds in splits.items()})
    return splits


def class_names(splits, ns: argparse.Namespace | None = None) -> list[str]:
    """The class names of a loaded dataset, in label-id order."""
    if ns is not None and ns.dataset in OWN_DATA:
        from .sources import class_names as own_class_names

        multihot = any(o.replace(" ", "") == "label_format=multihot" for o in getattr(ns, "overrides", []))
        return own_class_names(splits, ns.label_column or "label", ns.labels_column or "labels", multihot)
    feature = splits["train"].features["label"] if "train" in splits else None
    if feature is None or not hasattr(feature, "names"):
        raise CLIError("the dataset's label column has no class names")
    return list(feature.names)
