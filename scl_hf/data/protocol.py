"""The single-positive protocol of Cole et al. (CVPR 2021), as pure functions.

Everything here reproduces the public reference code (elijahcole/single-positive-multi-label,
``preproc/generate_observed_labels.py`` and ``datasets.generate_split``) draw for draw, so that
the labels and splits built by this package are the ones the published numbers were measured on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence

import numpy as np

DEFAULT_SEED = 1200
logger = logging.getLogger(__name__)


class DatasetLayoutError(ValueError):
    """A dataset on disk does not have the layout, format or label space the loader expects."""


def validate_label_lists(label_lists: Sequence[Sequence[int]], num_classes: int) -> list[list[int]]:
    """Return each image's positives as a sorted, de-duplicated list; fail on a bad id.

    Sorting matters: the reference code draws from ``np.nonzero(row == 1)``, i.e. ascending ids.
    """
    clean = []
    for i, labels in enumerate(label_lists):
        ids = sorted({int(c) for c in labels})
        if not ids:
            raise DatasetLayoutError(f"image {i} has no positive label; the protocol needs at least one")
        bad = [c for c in ids if not 0 <= c < num_classes]
        if bad:
            raise DatasetLayoutError(
                f"image {i} has label id {bad[0]}, outside the valid range 0..{num_classes - 1}"
            )
        clean.append(ids)
    return clean


def sample_single_positive(
    label_lists: Sequence[Sequence[int]], seed: int = DEFAULT_SEED, *, num_classes: int
) -> list[int]:
    """Keep one positive per image, exactly as Cole et al.'s ``observe_uniform(num_pos=1, num_neg=0)``.

    Procedure (one ``numpy.random.RandomState(seed)`` stream, images in the given order):
    for each image, ``pos = ascending positive ids``; ``rng.shuffle(pos)``; keep ``pos[0]``; then
    ``neg = ascending ids of the other classes``; ``rng.shuffle(neg)`` and keep none of them.
    The second shuffle selects nothing but consumes random numbers in the reference code, so it
    is replayed here: without it every draw after the first image would differ from theirs.
    ``num_classes`` is therefore required (it fixes the negatives) and also bounds the ids.
    """
    clean = validate_label_lists(label_lists, num_classes)
    rng = np.random.RandomState(seed)
    everything = np.arange(num_classes)
    chosen = []
    for ids in clean:
        pos = np.asarray(ids, dtype=np.int64)
        rng.shuffle(pos)
        chosen.append(int(pos[0]))
        neg = np.delete(everything, ids)
        rng.shuffle(neg)
    return chosen


def split_train_val(
    num_images: int, val_fraction: float = 0.2, seed: int = DEFAULT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(num_images)`` into sorted train / validation row indices (``generate_split``).

    ``n_val = round(val_fraction * N)`` (numpy rounding), ``perm = RandomState(seed).permutation(N)``,
    train = sorted first ``N - n_val`` of ``perm``, validation = sorted rest. Unlike the reference,
    ``n_val == 0`` gives an empty validation set (theirs would take ``perm[-0:]``, i.e. everything).
    """
    if num_images < 0 or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"need num_images >= 0 and 0 <= val_fraction < 1, got {num_images}, {val_fraction}")
    n_val = int(np.round(val_fraction * num_images))
    perm = np.random.RandomState(seed).permutation(num_images)
    n_train = num_images - n_val
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def file_stamp(path: str | os.PathLike) -> str:
    """A cheap cache key for a file: absolute path, size and modification time (ns)."""
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"


def require_path(path: str | os.PathLike, what: str, layout: str, hint: str = "") -> str:
    """Return ``path`` if it exists, else raise a DatasetLayoutError naming it and the expected layout."""
    path = os.fspath(path)
    if not os.path.exists(path):
        msg = f"{what} not found: expected {path}\nExpected layout:\n{layout}"
        raise DatasetLayoutError(msg + (f"\n{hint}" if hint else ""))
    return path


def check_image(path: str) -> str | None:
    """Return why ``path`` cannot be decoded, or None. JPEGs are decoded at 1/8 scale to stay cheap."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except Exception as err:  # any decoder failure means "corrupt"
        return f"{type(err).__name__}: {err}"
    return None


def iter_shard_rows(
    rows: list[dict], shards: list[int], num_shards: int, verify: bool, skip: bool, split: str
):
    """Yield the rows of the given shards (contiguous chunks, in order), optionally checking each image.

    With ``verify`` a corrupt or missing image raises a DatasetLayoutError naming the file, unless
    ``skip``: then it is left out, counted and the count logged once per shard.
    """
    bounds = np.linspace(0, len(rows), num_shards + 1).astype(int)
    skipped = 0
    for shard in shards:
        for row in rows[bounds[shard] : bounds[shard + 1]]:
            problem = check_image(row["image"]) if verify else None
            if problem is None:
                yield row
            elif skip:
                skipped += 1
            else:
                raise DatasetLayoutError(
                    f"unreadable image {row['image']} ({problem}); "
                    "pass skip_corrupt_images=True to leave such images out"
                )
    if skipped:
        logger.warning("split %s: skipped %d corrupt or missing image(s)", split, skipped)


def protocol_features(names: list[str], single_label: bool = True):
    """Columns of a protocol split: path-backed image, drawn positive, all positives, integer image id."""
    from datasets import ClassLabel, Features, Image, List, Value

    columns = {"image": Image()}
    if single_label:
        columns["label"] = ClassLabel(names=list(names))
    columns["labels"] = List(ClassLabel(names=list(names)))
    columns["image_id"] = Value("int64")
    return Features(columns)


def build_split(generator, spec: dict, split: str, features, cache_dir=None, num_proc=None):
    """Build one split with ``Dataset.from_generator``, cached under a fingerprint of ``spec``.

    ``spec`` must hold everything the rows depend on (file stamps, seed, flags, a format version;
    the features, class names included, are added to the key), so an edited annotation file or
    a different seed gives a new cache entry, and the same call
    again reuses the Arrow files without re-reading any annotation.
    """
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    spec_json = json.dumps(spec, sort_keys=True)
    key = f"{spec_json}|{split}|{json.dumps(features.to_dict(), sort_keys=True)}"
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:24]
    num_shards = max(1, num_proc or 1)
    try:
        return Dataset.from_generator(
            generator,
            features=features,
            cache_dir=cache_dir,
            gen_kwargs={
                "spec_json": spec_json,
                "split": split,
                "shards": list(range(num_shards)),
                "num_shards": num_shards,
            },
            num_proc=num_proc if num_shards > 1 else None,
            split=split,
            fingerprint=fingerprint,
        )
    except DatasetGenerationError as err:  # surface our own message, not the builder's wrapper
        if isinstance(err.__cause__, DatasetLayoutError):
            raise err.__cause__ from None
        raise
