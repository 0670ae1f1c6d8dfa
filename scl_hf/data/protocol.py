"""The single-positive protocol of Cole et al. (CVPR 2021), as pure functions.

Everything here reproduces the public reference code (elijahcole/single-positive-multi-label,
``preproc/generate_observed_labels.py`` and ``datasets.generate_split``) draw for draw, so that
the labels and splits built by this package are the ones the published numbers were measured on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from datasets import DatasetDict

DEFAULT_SEED = 1200
PROTOCOL_SPLITS = ("train", "validation", "test")
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


def draw_single_positive_or_none(label_matrix: np.ndarray, seed: int = DEFAULT_SEED) -> list[int | None]:
    """One positive per row as ``observe_uniform(num_pos=1, num_neg=0)`` draws it, rows without one → None.

    Same stream as :func:`sample_single_positive`: shuffle the ascending positive ids and keep the
    first, then shuffle the negatives (selecting none; it only consumes the stream). For label
    matrices where some images carry no class (NUS-WIDE, CUB attributes).
    """
    rng = np.random.RandomState(seed)
    everything = np.arange(label_matrix.shape[1])
    drawn: list[int | None] = []
    for row in label_matrix:
        pos = np.nonzero(row == 1)[0]
        rng.shuffle(pos)
        drawn.append(int(pos[0]) if len(pos) else None)
        neg = np.delete(everything, pos)
        rng.shuffle(neg)
    return drawn


def label_matrix_rows(
    paths: Sequence[str], labels: np.ndarray, image_dir: str, seed: int, id_offset: int
) -> list[dict]:
    """Protocol rows of a 0/1 label matrix; an image without any class gets ``label`` −1, no ``labels``."""
    drawn = draw_single_positive_or_none(labels, seed)
    return [
        {
            "image": os.path.join(image_dir, str(path)),
            "label": -1 if label is None else label,
            "labels": np.nonzero(row == 1)[0].tolist(),
            "image_id": id_offset + i,
        }
        for i, (path, row, label) in enumerate(zip(paths, labels, drawn))
    ]


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


def official_part(split: str) -> str:
    """The official set a split comes from: ``test`` is official val; the others split official train."""
    return "val" if split == "test" else "train"


def select_protocol_split(rows: list[dict], split: str, seed: int) -> list[dict]:
    """The rows of ``split`` among those of its official part (``official_part(split)``).

    Official train is split 80/20 over every row (``split_train_val(seed)``); training then keeps
    only the rows with a drawn positive (``label >= 0``: every row, unless some image has no class).
    """
    if split == "test":
        return rows
    train_idx, val_idx = split_train_val(len(rows), 0.2, seed)
    chosen = [rows[i] for i in (train_idx if split == "train" else val_idx)]
    return [row for row in chosen if row["label"] >= 0] if split == "train" else chosen


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


def image_check_spec(verify_images: bool, skip_corrupt_images: bool) -> dict:
    """The ``verify`` / ``skip`` entries of a spec; skipping bad images implies decoding every image."""
    return {"verify": bool(verify_images or skip_corrupt_images), "skip": bool(skip_corrupt_images)}


def _generate_rows(read_rows, spec_json: str, split: str, shards: list[int], num_shards: int):
    """The generator behind ``build_split``: the rows of ``read_rows(spec, split)``, sharded and checked."""
    spec = json.loads(spec_json)
    rows = read_rows(spec, split)
    yield from iter_shard_rows(rows, shards, num_shards, spec["verify"], spec["skip"], split)


def build_split(
    read_rows: Callable[[dict, str], list[dict]],
    spec: dict,
    split: str,
    features,
    cache_dir=None,
    num_proc=None,
):
    """Build one split with ``Dataset.from_generator``, cached under a fingerprint of ``spec``.

    ``read_rows(spec, split)`` returns the split's rows; it runs only on a cache miss (in each worker
    with ``num_proc``), so it must pickle by name (a module-level function, or a partial of one).
    ``spec`` must hold everything the rows depend on (file stamps, seed, a format version, and the
    ``verify`` / ``skip`` flags of ``image_check_spec``; the features, class names included, are added
    to the key), so an edited annotation file or a different seed gives a new cache entry, and the
    same call again reuses the Arrow files without re-reading any annotation.
    """
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    spec_json = json.dumps(spec, sort_keys=True)
    key = f"{spec_json}|{split}|{json.dumps(features.to_dict(), sort_keys=True)}"
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:24]
    num_shards = max(1, num_proc or 1)
    try:
        return Dataset.from_generator(
            functools.partial(_generate_rows, read_rows),
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


@functools.lru_cache(maxsize=2)
def _official_rows(read_official, spec_json: str, part: str) -> list[dict]:
    """Cached so that train and validation parse official train once (cleared after each load)."""
    return read_official(json.loads(spec_json), part)


def _protocol_split_rows(read_official, spec: dict, split: str) -> list[dict]:
    """``read_rows`` of a single-positive dataset: its split of the (cached) official rows."""
    part = official_part(split)
    rows = _official_rows(read_official, json.dumps(spec, sort_keys=True), part)
    return select_protocol_split(rows, split, spec["seed"])


def load_protocol_dataset(
    read_official: Callable[[dict, str], list[dict]],
    spec: dict,
    names: Sequence[str],
    *,
    seed: int = DEFAULT_SEED,
    cache_dir: str | None = None,
    skip_corrupt_images: bool = False,
    num_proc: int | None = None,
    verify_images: bool = False,
) -> DatasetDict:
    """The ``train`` / ``validation`` / ``test`` DatasetDict of a single-positive dataset, built or reused.

    What the loaders share: ``read_official(spec, part)`` (a module-level function) returns the rows
    of official ``part`` ("train" or "val") with the drawn positive (``label``, −1 for an image without
    any class); test is official val, train / validation the 80/20 split of official train
    (``select_protocol_split``). ``spec`` holds the dataset's own cache key (format version, file
    stamps, folders); the seed and the image-check flags are added here. The other arguments are
    those of :func:`scl_hf.data.load_coco`.
    """
    from datasets import DatasetDict

    spec = {**spec, "seed": int(seed), **image_check_spec(verify_images, skip_corrupt_images)}
    features = protocol_features(names)
    read_rows = functools.partial(_protocol_split_rows, read_official)
    try:
        return DatasetDict(
            {
                split: build_split(read_rows, spec, split, features, cache_dir, num_proc)
                for split in PROTOCOL_SPLITS
            }
        )
    finally:
        _official_rows.cache_clear()  # only needed while building; frees the parsed annotations
