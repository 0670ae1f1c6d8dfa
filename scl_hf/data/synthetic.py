"""Embedded synthetic single-positive multi-label dataset ("shapes on a noisy background").

Why it exists: the CPU demo and the method benchmark need a dataset that is small, fully
reproducible, free of downloads and that still shows the failure mode the spatial consistency
loss addresses.  Every image holds a few small, spread-out objects of distinct classes, but each
training image is annotated with only ONE of them (Cole et al. 2021 single-positive protocol).
A random-resized crop therefore often cuts the labelled object out of view, and "assume negative"
training is pushed to call the unlabelled, visible objects absent.

Each class is a distinct shape AND a distinct saturated colour so that a small CNN trained from
scratch on CPU learns it in minutes; mild background texture and pixel noise keep it non-trivial.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys

import datasets
import numpy as np
from PIL import Image, ImageDraw

DATASET_VERSION = 1  # bump whenever the rendering changes, it invalidates on-disk caches

# (name, RGB) -- one shape and one colour per class, colours far from the grey-ish background.
_CLASSES: list[tuple[str, tuple[int, int, int]]] = [
    ("red_circle", (220, 20, 20)),
    ("green_square", (20, 180, 20)),
    ("blue_triangle", (20, 40, 230)),
    ("yellow_diamond", (240, 220, 0)),
    ("magenta_cross", (230, 0, 200)),
    ("cyan_ring", (0, 210, 230)),
    ("orange_star", (255, 130, 0)),
    ("purple_bar", (120, 0, 200)),
    ("white_pentagon", (250, 250, 250)),
    ("black_hexagon", (10, 10, 10)),
    ("brown_halfmoon", (140, 70, 10)),
    ("pink_hourglass", (255, 120, 170)),
]
SYNTHETIC_CLASS_NAMES: list[str] = [name for name, _ in _CLASSES]
SYNTHETIC_CLASS_COLORS: list[tuple[int, int, int]] = [rgb for _, rgb in _CLASSES]

# Height/width of each shape's tight box (the bar and the half-moon are wider than tall).
_ASPECT = {"bar": 0.4, "halfmoon": 0.5}
_MAX_OVERLAP = 0.1  # max intersection / smaller-box area between two objects of one image
_COLOR_JITTER = 20
_PIXEL_NOISE_STD = 6.0


def _shape(class_id: int) -> str:
    return SYNTHETIC_CLASS_NAMES[class_id].split("_", 1)[1]


def _regular_polygon(n: int, rotation: float = -np.pi / 2) -> list[tuple[float, float]]:
    """Regular n-gon normalised to fill the unit square (its own bounding box)."""
    ang = rotation + 2 * np.pi * np.arange(n) / n
    pts = np.stack([np.cos(ang), np.sin(ang)], 1)
    pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0))
    return [tuple(p) for p in pts]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    ang = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    rad = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0))
    return [tuple(p) for p in pts]


_A, _B = 1 / 3, 2 / 3
_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "bar": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "triangle": [(0.5, 0), (1, 1), (0, 1)],
    "diamond": [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)],
    "cross": [(_A, 0), (_B, 0), (_B, _A), (1, _A), (1, _B), (_B, _B), (_B, 1), (_A, 1), (_A, _B), (0, _B),
              (0, _A), (_A, _A)],
    "star": _star(),
    "pentagon": _regular_polygon(5),
    "hexagon": _regular_polygon(6, rotation=0.0),
    "hourglass": [(0, 0), (1, 0), (0.5, 0.5), (1, 1), (0, 1), (0.5, 0.5)],
}


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection area divided by the smaller box area (boxes as [x0, y0, x1, y1])."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(iw * ih / smaller)


def sample_layout(rng: np.random.Generator, num_classes: int, min_objects: int, max_objects: int,
                  object_size: tuple[float, float]) -> list[tuple[int, list[float]]]:
    """Draw distinct classes and spread-out, barely overlapping normalised boxes, sorted by class id."""
    count = int(rng.integers(min_objects, max_objects + 1))
    while True:  # restart in the (rare) case the objects cannot all be placed
        classes = rng.choice(num_classes, size=count, replace=False)
        boxes: list[np.ndarray] = []
        for cls in classes:
            for _ in range(100):
                w = rng.uniform(*object_size)
                h = w * _ASPECT.get(_shape(int(cls)), 1.0)
                x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
                box = np.array([x0, y0, x0 + w, y0 + h])
                if all(_overlap(box, other) <= _MAX_OVERLAP for other in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == count:
            order = np.argsort(classes)
            return [(int(classes[i]), [float(v) for v in boxes[i]]) for i in order]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-saturation base colour plus a smooth random texture (float HxWx3 array)."""
    base = rng.uniform(85, 170) + rng.uniform(-12, 12, size=3)
    coarse = rng.uniform(-18, 18, size=(6, 6, 3)).astype(np.float32)
    texture = np.stack([np.asarray(Image.fromarray(coarse[..., c], mode="F").resize(
        (size, size), Image.BILINEAR)) for c in range(3)], -1)
    return base + texture


def render_image(objects: list[tuple[int, list[float]]], image_size: int, rng: np.random.Generator) -> Image.Image:
    """Paint each (class id, normalised box) object onto a noisy background; colours get mild jitter."""
    canvas = Image.fromarray(np.clip(_background(rng, image_size), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for cls, box in objects:
        rgb = np.clip(np.array(SYNTHETIC_CLASS_COLORS[cls]) + rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, 3),
                      0, 255)
        fill = tuple(int(v) for v in rgb)
        x0, y0, x1, y1 = (v * image_size for v in box)
        x1, y1 = x1 - 1, y1 - 1  # PIL includes the last pixel
        shape = _shape(cls)
        if shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif shape == "ring":
            draw.ellipse([x0, y0, x1, y1], outline=fill, width=max(2, round(0.22 * (x1 - x0))))
        elif shape == "halfmoon":
            draw.pieslice([x0, y0, x1, y0 + 2 * (y1 - y0)], 180, 360, fill=fill)
        else:
            pts = [(x0 + px * (x1 - x0), y0 + py * (y1 - y0)) for px, py in _POLYGONS[shape]]
            draw.polygon(pts, fill=fill)
    pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0, _PIXEL_NOISE_STD, (image_size, image_size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


def sample_single_positive(labels: list[list[int]], seed: int) -> list[int]:
    """Cole et al. 2021: keep one positive per image, uniform among its classes, via RandomState(seed).

    Draws ``rs.choice(labels_i)`` for each image in order, so the draw is reproducible independently.
    """
    rs = np.random.RandomState(seed)
    return [int(rs.choice(cls)) for cls in labels]


def _features(names: list[str], with_label: bool = True) -> datasets.Features:
    class_label = datasets.ClassLabel(names=names)
    feats = {"image": datasets.Image()}
    if with_label:
        feats["label"] = class_label
    feats["labels"] = datasets.List(class_label)
    feats["boxes"] = datasets.List(datasets.List(datasets.Value("float32"), length=4))
    return datasets.Features(feats)


def _build_split(n: int, rng: np.random.Generator, sampling_seed: int, names: list[str], image_size: int,
                 min_objects: int, max_objects: int, object_size: tuple[float, float]) -> datasets.Dataset:
    images, labels, boxes = [], [], []
    for _ in range(n):
        objects = sample_layout(rng, len(names), min_objects, max_objects, object_size)
        buf = io.BytesIO()
        render_image(objects, image_size, rng).save(buf, format="PNG", compress_level=1)
        images.append({"bytes": buf.getvalue(), "path": None})
        labels.append([cls for cls, _ in objects])
        boxes.append([box for _, box in objects])
    data = {"image": images, "label": sample_single_positive(labels, sampling_seed), "labels": labels,
            "boxes": boxes}
    return datasets.Dataset.from_dict(data, features=_features(names))


def make_synthetic(num_train: int = 2000, num_validation: int = 0, num_test: int = 500, image_size: int = 128,
                   num_classes: int = 10, min_objects: int = 1, max_objects: int = 4,
                   object_size: tuple[float, float] = (0.12, 0.22), seed: int = 0,
                   cache_dir: str | None = None) -> datasets.DatasetDict:
    """Build (or load from ``cache_dir``) the synthetic single-positive multi-label dataset.

    Splits: "train", optional "validation" (if ``num_validation > 0``) and "test", each with ``image``,
    ``label`` (the single observed positive; the only target training may use), ``labels`` (all present
    classes, for the full-label upper bound and evaluation) and ``boxes`` (normalised [x0, y0, x1, y1]
    aligned with ``labels``).  Splits use independent RNG streams spawned from ``seed``; the single
    positive of split k (train=0, validation=1, test=2) is drawn with ``RandomState(seed + k)``.
    """
    if not 1 <= num_classes <= len(SYNTHETIC_CLASS_NAMES):
        raise ValueError(f"num_classes must be in [1, {len(SYNTHETIC_CLASS_NAMES)}], got {num_classes}")
    if not 1 <= min_objects <= max_objects <= num_classes:
        raise ValueError("need 1 <= min_objects <= max_objects <= num_classes")
    if not 0 < object_size[0] <= object_size[1] < 1:
        raise ValueError(f"object_size must satisfy 0 < low <= high < 1, got {object_size}")
    args = dict(num_train=num_train, num_validation=num_validation, num_test=num_test, image_size=image_size,
                num_classes=num_classes, min_objects=min_objects, max_objects=max_objects,
                object_size=[float(v) for v in object_size], seed=seed, version=DATASET_VERSION)
    path = None
    if cache_dir is not None:
        key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
        path = os.path.join(cache_dir, f"synthetic-{key}")
        if os.path.isdir(path):
            return datasets.load_from_disk(path)

    names = SYNTHETIC_CLASS_NAMES[:num_classes]
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]
    common = dict(names=names, image_size=image_size, min_objects=min_objects, max_objects=max_objects,
                  object_size=tuple(object_size))
    splits = {"train": _build_split(num_train, streams[0], seed, **common)}
    if num_validation > 0:
        splits["validation"] = _build_split(num_validation, streams[1], seed + 1, **common)
    splits["test"] = _build_split(num_test, streams[2], seed + 2, **common)
    dsd = datasets.DatasetDict(splits)

    if path is not None:
        tmp = f"{path}.tmp-{os.getpid()}"
        dsd.save_to_disk(tmp)
        try:
            os.replace(tmp, path)
        except OSError:  # another process won the race: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
        return datasets.load_from_disk(path)
    return dsd


def save_contact_sheet(dsd: datasets.DatasetDict, path: str, n: int = 12, split: str = "train") -> None:
    """Save a grid of images with boxes; the single observed positive is drawn solid, the others dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ds = dsd[split].select(range(min(n, len(dsd[split]))))
    names = ds.features["label"].names
    cols = 4
    rows = -(-len(ds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), ds):
        size = row["image"].width
        ax.imshow(row["image"])
        for cls, (x0, y0, x1, y1) in zip(row["labels"], row["boxes"]):
            style = "-" if cls == row["label"] else "--"
            ax.add_patch(Rectangle((x0 * size, y0 * size), (x1 - x0) * size, (y1 - y0) * size, fill=False,
                                   ec="lime" if cls == row["label"] else "white", ls=style, lw=1.5))
        others = [names[c] for c in row["labels"] if c != row["label"]]
        ax.set_title(f"label: {names[row['label']]}\nunlabelled: {', '.join(others) or '-'}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "synthetic_examples.png"
    save_contact_sheet(make_synthetic(num_train=12, num_test=0), out)
    print(f"wrote {out}")
