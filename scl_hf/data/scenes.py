"""Composed scenes: the robustness regimes of the method benchmark, unlike the embedded shapes set.

Why: a default chosen on one fast-learning dataset says little about data nobody tuned on. These
generators compose objects into multi-object scenes with what the shapes set lacks:

- `make_clutter_scenes`: many classes (default 48 = 12 shapes × 4 colour families, so a class is a
  conjunction, not a colour), COCO-like long-tailed class frequencies and co-occurrence (each image draws
  its objects mostly from one of a few "contexts"), small objects that may occlude each other, distractor
  objects of no class, and backgrounds cut from real photographs (scikit-learn's sample images).
- `make_digit_scenes`: real handwritten digits (scikit-learn's copy of the UCI digits, 1,797 scans),
  inked in random colours over photographic backgrounds with clutter strokes; the digit scans of the test
  and of the validation split are disjoint from training's and from each other.

Both return train / validation / test with the columns of `make_synthetic` (image, label, labels,
boxes); the single positive is drawn with Cole et al.'s RandomState rule. Everything is generated
locally from packages already installed; nothing is downloaded.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import datasets
import numpy as np
from PIL import Image, ImageDraw

from .synthetic import _POLYGONS, _features, sample_single_positive

SCENES_VERSION = 2  # 2: digit validation scans apart from training
_SHAPES = ["circle", "square", "triangle", "diamond", "cross", "ring", "star", "bar", "pentagon", "hexagon",
           "halfmoon", "hourglass"]
_FAMILIES = {  # colour families: a class is a shape in one family; jitter inside the family
    "red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (225, 200, 30),
}


def clutter_class_names(num_classes: int = 48) -> list[str]:
    names = [f"{family}_{shape}" for family in _FAMILIES for shape in _SHAPES]
    if not 2 <= num_classes <= len(names):
        raise ValueError(f"num_classes must be in [2, {len(names)}], got {num_classes}")
    return names[:num_classes]


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(img, dtype=np.float32) for img in load_sample_images().images]


def photo_background(rng: np.random.Generator, size: int, photos: list[np.ndarray]) -> np.ndarray:
    """A random crop of a real photograph, resized to size×size, dimmed towards grey (H×W×3 float)."""
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.25, 0.6) * min(h, w))
    y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
    crop = Image.fromarray(photo[y:y + side, x:x + side].astype(np.uint8)).resize((size, size), Image.BILINEAR)
    pixels = np.asarray(crop, dtype=np.float32)
    return 0.6 * pixels + 0.4 * pixels.mean()


def long_tail_frequencies(num_classes: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like class frequencies in a random class order (COCO: the top class is ~30× the rarest)."""
    weights = 1.0 / np.arange(1, num_classes + 1) ** exponent
    return rng.permutation(weights / weights.sum())


def sample_classes(rng: np.random.Generator, count: int, frequencies: np.ndarray, contexts: np.ndarray,
                   context_bias: float) -> list[int]:
    """Distinct classes: each from the image's context with probability `context_bias`, else from all."""
    context = contexts[int(rng.integers(len(contexts)))]
    chosen: list[int] = []
    while len(chosen) < count:
        pool = context if rng.random() < context_bias else np.arange(len(frequencies))
        p = frequencies[pool].copy()
        p[np.isin(pool, chosen)] = 0.0
        if p.sum() <= 0:
            continue
        chosen.append(int(rng.choice(pool, p=p / p.sum())))
    return sorted(chosen)


def _place(rng: np.random.Generator, sizes: list[float], max_overlap: float) -> list[list[float]] | None:
    boxes: list[list[float]] = []
    for w in sizes:
        for _ in range(60):
            x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - w)
            box = [x0, y0, x0 + w, y0 + w]
            if all(_overlap_fraction(box, other) <= max_overlap for other in boxes):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def _overlap_fraction(a: list[float], b: list[float]) -> float:
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: list[float], size: int, fill: tuple) -> None:
    x0, y0, x1, y1 = (v * size for v in box)
    x1, y1 = x1 - 1, y1 - 1
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "ring":
        draw.ellipse([x0, y0, x1, y1], outline=fill, width=max(2, round(0.22 * (x1 - x0))))
    elif shape == "halfmoon":
        draw.pieslice([x0, y0 + 0.25 * (y1 - y0), x1, y1 + 0.75 * (y1 - y0)], 180, 360, fill=fill)
    elif shape == "bar":
        cy, half = (y0 + y1) / 2, 0.2 * (y1 - y0)
        draw.rectangle([x0, cy - half, x1, cy + half], fill=fill)
    else:
        draw.polygon([(x0 + px * (x1 - x0), y0 + py * (y1 - y0)) for px, py in _POLYGONS[shape]], fill=fill)


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255))


@dataclass
class SceneSpec:
    """What a composed-scene split looks like; every field enters the dataset's identity."""

    num_classes: int = 48
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 6
    object_size: tuple[float, float] = (0.09, 0.17)
    max_overlap: float = 0.35  # occlusion: later objects may cover this share of an earlier one
    distractors: tuple[int, int] = (1, 4)  # objects of no class per image
    long_tail_exponent: float = 1.0
    num_contexts: int = 6
    context_bias: float = 0.75


def _object_count(rng: np.random.Generator, spec: SceneSpec) -> int:
    """Geometric-like counts (COCO: most images hold 1–3 labelled classes, a few many)."""
    count = spec.min_objects + int(rng.geometric(0.45)) - 1
    return int(min(count, spec.max_objects, spec.num_classes))


def _render_clutter(rng, spec: SceneSpec, frequencies, contexts, photos) -> tuple[Image.Image, list, list]:
    classes = sample_classes(rng, _object_count(rng, spec), frequencies, contexts, spec.context_bias)
    n_distract = int(rng.integers(spec.distractors[0], spec.distractors[1] + 1))
    while True:
        sizes = list(rng.uniform(*spec.object_size, size=len(classes) + n_distract))
        boxes = _place(rng, sizes, spec.max_overlap)
        if boxes is not None:
            break
    canvas = Image.fromarray(np.clip(photo_background(rng, spec.image_size, photos), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    order = rng.permutation(len(boxes))  # drawing order decides who occludes whom
    families = list(_FAMILIES.values())
    for i in order:
        if i < len(classes):
            family, shape = divmod(classes[i], len(_SHAPES))
            _draw_shape(draw, _SHAPES[shape], boxes[i], spec.image_size, _jitter(families[family], rng, 25))
        else:  # a distractor: a class shape in a colour of no family (grey-ish / brown-ish)
            grey = int(rng.integers(40, 220))
            fill = _jitter((grey, int(grey * 0.85), int(grey * 0.7)), rng, 15)
            _draw_shape(draw, _SHAPES[int(rng.integers(len(_SHAPES)))], boxes[i], spec.image_size, fill)
    pixels = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 5.0, (spec.image_size, spec.image_size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    return image, classes, [[float(v) for v in boxes[i]] for i in range(len(classes))]


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(int)


def _render_digits(rng, spec: SceneSpec, frequencies, contexts, photos, scans, scan_labels):
    classes = sample_classes(rng, _object_count(rng, spec), frequencies, contexts, spec.context_bias)
    n_strokes = int(rng.integers(spec.distractors[0], spec.distractors[1] + 1))
    while True:
        boxes = _place(rng, list(rng.uniform(*spec.object_size, size=len(classes))), spec.max_overlap)
        if boxes is not None:
            break
    size = spec.image_size
    pixels = photo_background(rng, size, photos)
    strokes = Image.new("L", (size, size))
    stroke_draw = ImageDraw.Draw(strokes)
    for _ in range(n_strokes):  # clutter: ink strokes of no class
        points = [tuple(rng.uniform(0, size, 2)) for _ in range(int(rng.integers(2, 4)))]
        stroke_draw.line(points, fill=255, width=max(1, size // 48))
    alpha = np.asarray(strokes, dtype=np.float32)[..., None] / 255.0
    pixels = pixels * (1 - alpha) + alpha * rng.uniform(0, 255, 3)
    for cls, box in zip(classes, boxes):
        pool = np.flatnonzero(scan_labels == cls)
        scan = scans[int(rng.choice(pool))]
        x0, y0 = int(box[0] * size), int(box[1] * size)
        side = max(4, int((box[2] - box[0]) * size))
        mask = np.asarray(Image.fromarray((scan * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR),
                          dtype=np.float32)[..., None] / 255.0
        ink = np.array(_jitter(tuple(int(v) for v in rng.uniform(0, 255, 3)), rng, 0), dtype=np.float32)
        region = pixels[y0:y0 + side, x0:x0 + side]
        mask = mask[: region.shape[0], : region.shape[1]]
        pixels[y0:y0 + side, x0:x0 + side] = region * (1 - mask) + mask * ink
    pixels = pixels + rng.normal(0, 5.0, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8)), classes, boxes


def digit_scan_pools(num_scans: int, seed: int, held_out_share: float = 0.3) -> dict[str, np.ndarray]:
    """Which digit scans each split draws from. Validation and test each draw from scans never seen in training
    and disjoint from each other, so that validation measures what test measures (recognising new handwriting)
    rather than memorised scans. The training pool is the same as when validation shared it (SCENES_VERSION 1),
    so a seed trains on the same images as before."""
    order = np.random.default_rng(seed).permutation(num_scans)
    cut = int(round((1 - held_out_share) * num_scans))
    held_out = order[cut:]
    half = len(held_out) // 2
    return {"train": order[:cut], "validation": held_out[:half], "test": held_out[half:]}


def _split(rows, names: list[str], sampling_seed: int) -> datasets.Dataset:
    images, labels, boxes = [], [], []
    for image, classes, class_boxes in rows:
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        images.append({"bytes": buf.getvalue(), "path": None})
        labels.append(classes)
        boxes.append(class_boxes)
    data = {"image": images, "label": sample_single_positive(labels, sampling_seed), "labels": labels, "boxes": boxes}
    return datasets.Dataset.from_dict(data, features=_features(names))


def _make(kind: str, sizes: dict[str, int], spec: SceneSpec, seed: int) -> datasets.DatasetDict:
    from tqdm.auto import tqdm

    root = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    frequencies = long_tail_frequencies(spec.num_classes, spec.long_tail_exponent, root)
    contexts = np.array([root.choice(spec.num_classes, size=max(2, spec.num_classes // 3), replace=False,
                                     p=frequencies) for _ in range(spec.num_contexts)])
    photos = _photos()
    if kind == "digits":
        scans, scan_labels = _load_digits()
        pools = digit_scan_pools(len(scans), seed)
        names = [str(d) for d in range(10)]
    else:
        names = clutter_class_names(spec.num_classes)
    splits = {}
    streams = np.random.SeedSequence(seed).spawn(len(sizes))
    for k, ((split, n), stream) in enumerate(zip(sizes.items(), streams)):
        rng = np.random.default_rng(stream)
        rows = []
        for _ in tqdm(range(n), desc=f"{kind} scenes: {split}", leave=False, disable=True if n < 200 else None):
            if kind == "digits":
                pool = pools[split]
                rows.append(_render_digits(rng, spec, frequencies, contexts, photos, scans[pool], scan_labels[pool]))
            else:
                rows.append(_render_clutter(rng, spec, frequencies, contexts, photos))
        splits[split] = _split(rows, names, seed + k)
    return datasets.DatasetDict(splits)


def _cached(kind: str, sizes: dict[str, int], spec: SceneSpec, seed: int, cache_dir: str | None):
    import hashlib
    import json
    import os
    import shutil

    if cache_dir is None:
        return _make(kind, sizes, spec, seed)
    key = json.dumps({"kind": kind, "sizes": sizes, "spec": asdict(spec), "seed": seed, "v": SCENES_VERSION},
                     sort_keys=True)
    path = os.path.join(cache_dir, f"scenes-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}")
    if not os.path.isdir(path):
        tmp = f"{path}.tmp-{os.getpid()}"
        _make(kind, sizes, spec, seed).save_to_disk(tmp)
        try:
            os.replace(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(path)


CLUTTER_SPEC = SceneSpec()
DIGIT_SPEC = SceneSpec(num_classes=10, max_objects=5, object_size=(0.16, 0.3), max_overlap=0.2, distractors=(1, 3),
                       long_tail_exponent=0.6, num_contexts=4, context_bias=0.5)


def make_clutter_scenes(num_train: int = 1500, num_validation: int = 400, num_test: int = 600,
                        spec: SceneSpec | None = None, seed: int = 0, cache_dir: str | None = None):
    """Many small, occluded, long-tailed, co-occurring shape classes among distractors on photographs."""
    spec = spec or CLUTTER_SPEC
    return _cached("clutter", {"train": num_train, "validation": num_validation, "test": num_test}, spec, seed,
                   cache_dir)


def make_digit_scenes(num_train: int = 1200, num_validation: int = 400, num_test: int = 600,
                      spec: SceneSpec | None = None, seed: int = 0, cache_dir: str | None = None):
    """Real handwritten digits composed into scenes (10 classes), test scans disjoint from training."""
    spec = spec or DIGIT_SPEC
    if spec.num_classes != 10:
        raise ValueError("digit scenes have exactly 10 classes")
    return _cached("digits", {"train": num_train, "validation": num_validation, "test": num_test}, spec, seed,
                   cache_dir)
