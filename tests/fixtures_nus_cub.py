"""Tiny NUS-WIDE (Cole et al.'s formatted files + Flickr/) and CUB-200-2011 (the tgz layout) folders for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = tuple(int(v) for v in np.random.RandomState(seed).randint(0, 255, 3))
    Image.new("RGB", (40, 30), color).save(path, quality=80)


def make_fake_nus_wide(root: Path, num_train: int = 20, num_val: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 0/1 labels over 81 concepts, every 4th row without any concept (as many NUS-WIDE images)."""
    rng = np.random.RandomState(seed)
    out = {}
    for phase, n in (("train", num_train), ("val", num_val)):
        labels = (rng.rand(n, 81) < 0.04).astype(np.int64)
        labels[np.arange(n) % 4 == 0] = 0
        labels[(np.arange(n) % 4 != 0) & (labels.sum(1) == 0), rng.randint(0, 81)] = 1
        paths = np.array([f"concept{i % 3}/{phase}_{i:04d}.jpg" for i in range(n)])
        for i, p in enumerate(paths):
            _jpeg(root / "Flickr" / p, i)
        np.save(root / f"formatted_{phase}_images.npy", paths)
        np.save(root / f"formatted_{phase}_labels.npy", labels)
        out[phase] = labels
    return out


def make_fake_cub(root: Path, num_images: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CUB_200_2011/ with images.txt, train_test_split.txt, attributes/image_attribute_labels.txt, images/, and
    attributes.txt beside it (where the official tgz puts it). Returns (is_train, labels N × 312)."""
    rng = np.random.RandomState(seed)
    cub = root / "CUB_200_2011"
    (cub / "attributes").mkdir(parents=True, exist_ok=True)
    (root / "attributes.txt").write_text("".join(f"{a} has_part_{a}::value_{a % 7}\n" for a in range(1, 313)))
    is_train = rng.rand(num_images) < 0.6
    labels = (rng.rand(num_images, 312) < 0.1).astype(np.int64)
    labels[5] = 0  # an image with no attribute
    with open(cub / "images.txt", "w") as images, open(cub / "train_test_split.txt", "w") as split, \
            open(cub / "attributes" / "image_attribute_labels.txt", "w") as attrs:
        for i in range(num_images):
            rel = f"{1 + i % 3:03d}.Bird_{i % 3}/Bird_{i}.jpg"
            images.write(f"{i + 1} {rel}\n")
            split.write(f"{i + 1} {int(is_train[i])}\n")
            _jpeg(cub / "images" / rel, i)
            for a in range(312):
                extra = " 0" if (i, a) == (2, 7) else ""  # the official file has a few lines with an extra field
                attrs.write(f"{i + 1} {a + 1} {labels[i, a]}{extra} 3 12.5\n")
    return is_train, labels
