"""Tiny fake COCO / VOC / ImageNet-ReaL datasets in the official on-disk layouts, with real JPEGs.

Each ``make_fake_*`` writes the files under ``root`` and returns the ground truth the loaders must
recover, so other tests (training, CLI, examples) can reuse the same data.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image

from scl_hf.data.coco import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from scl_hf.data.voc import VOC_CLASS_NAMES


def write_jpeg(path: str | os.PathLike, rng: random.Random, size: tuple[int, int] = (24, 16)) -> None:
    """A small real JPEG with a random flat colour and a random rectangle."""
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    x, y = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
    img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + size[0] // 3, y + size[1] // 3))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=80)


def _coco_annotation(ann_id: int, image_id: int, cat_id: int, rng: random.Random, crowd: bool) -> dict:
    x, y, w, h = rng.uniform(0, 10), rng.uniform(0, 6), rng.uniform(2, 12), rng.uniform(2, 8)
    seg = {"counts": [0, 5, 10, 5], "size": [16, 24]} if crowd else [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat_id,
        "bbox": [x, y, w, h],
        "area": w * h,
        "iscrowd": int(crowd),
        "segmentation": seg,
    }


def _coco_split(root: Path, part: str, year: int, n: int, rng: random.Random, ann_start: int) -> tuple:
    """Write one split's images and instances JSON; return (positives by image id, unannotated ids)."""
    ids = rng.sample(range(1, 600_000), n)  # wide range: string order != numeric order
    images, anns, truth, empty = [], [], {}, []
    for k, image_id in enumerate(ids):
        file_name = f"COCO_{part}{year}_{image_id:012d}.jpg"
        write_jpeg(root / f"{part}{year}" / file_name, rng)
        images.append({"id": image_id, "file_name": file_name, "width": 24, "height": 16, "license": 1})
        if k % 8 == 7:  # every 8th image has no annotation at all and must be left out
            empty.append(image_id)
            continue
        classes = rng.sample(range(80), rng.choice([1, 1, 2, 3, 4]))
        truth[image_id] = sorted(classes)
        for c in classes:
            for _ in range(rng.randint(1, 3)):
                crowd = k % 5 == 0 and c == classes[0]  # some images have only crowd boxes of a class
                anns.append(
                    _coco_annotation(ann_start + len(anns), image_id, COCO_CATEGORY_IDS[c], rng, crowd)
                )
    rng.shuffle(anns)
    cats = [
        {"id": i, "name": n, "supercategory": "thing"} for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASS_NAMES)
    ]
    data = {
        "info": {"description": "fake COCO", "year": year},
        "licenses": [{"id": 1, "name": "test"}],
        "images": images,
        "annotations": anns,
        "categories": cats,
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{part}{year}.json").write_text(json.dumps(data))
    return truth, empty


def make_fake_coco(
    root: str | os.PathLike, year: int = 2014, num_train: int = 40, num_val: int = 20, seed: int = 0
) -> dict:
    """COCO layout under ``root``; returns {"train"/"val": {image_id: positives}, "*_unannotated": [...]}."""
    root, rng = Path(root), random.Random(seed)
    train, train_empty = _coco_split(root, "train", year, num_train, rng, 1)
    val, val_empty = _coco_split(root, "val", year, num_val, rng, 10_000_000)
    return {"train": train, "val": val, "train_unannotated": train_empty, "val_unannotated": val_empty}


def _voc_xml(voc_id: str, objects: list[tuple[int, bool]]) -> str:
    objs = "".join(
        f"<object><name>{VOC_CLASS_NAMES[c]}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(d)}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax>"
        f"<ymax>8</ymax></bndbox></object>"
        for c, d in objects
    )
    return (
        f"<annotation><folder>VOC</folder><filename>{voc_id}.jpg</filename><size><width>24</width>"
        f"<height>16</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>"
    )


def make_fake_voc(
    root: str | os.PathLike, year: int = 2012, num_train: int = 30, num_val: int = 20, seed: int = 0
) -> dict:
    """VOCdevkit layout under ``root``; returns {"train"/"val": {voc_id: positives}, "*_excluded": [...]}.

    Every 6th image has only "difficult" objects: its class files say 0, never 1, so it is excluded.
    """
    rng = random.Random(seed)
    voc = Path(root) / "VOCdevkit" / f"VOC{year}"
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    ids = [f"{2008 + i % 4}_{rng.randrange(1, 999_999):06d}" for i in range(num_train + num_val)]
    ids = list(dict.fromkeys(ids))
    out: dict = {"train": {}, "val": {}, "train_excluded": [], "val_excluded": []}
    for phase, phase_ids in (("train", ids[:num_train]), ("val", ids[num_train:])):
        values = {c: {} for c in range(20)}
        for k, voc_id in enumerate(phase_ids):
            write_jpeg(voc / "JPEGImages" / f"{voc_id}.jpg", rng)
            only_difficult = k % 6 == 5
            objects = [
                (c, only_difficult or rng.random() < 0.2) for c in rng.sample(range(20), rng.randint(1, 3))
            ]
            (voc / "Annotations").mkdir(exist_ok=True)
            (voc / "Annotations" / f"{voc_id}.xml").write_text(_voc_xml(voc_id, objects))
            pos = sorted({c for c, d in objects if not d})
            for c in range(20):
                values[c][voc_id] = 1 if c in pos else (0 if any(o == c for o, _ in objects) else -1)
            if pos:
                out[phase][voc_id] = pos
            else:
                out[f"{phase}_excluded"].append(voc_id)
        for c, name in enumerate(VOC_CLASS_NAMES):  # official padding: two spaces before " 1" / " 0"
            lines = [f"{i} {v:2d}" for i, v in sorted(values[c].items())]
            (main / f"{name}_{phase}.txt").write_text("\n".join(lines) + "\n")
        (main / f"{phase}.txt").write_text("\n".join(sorted(phase_ids)) + "\n")
    return out


def make_fake_imagenet_real(
    root: str | os.PathLike, num_classes: int = 4, per_class: int = 3, num_val: int = 10, seed: int = 0
) -> dict:
    """``root/train/<wnid>/*.JPEG``, ``root/val/ILSVRC2012_val_*.JPEG`` and ``root/real.json``.

    Returns {"wnids", "train": [(file, class)], "real": [list per val image], "val_dir", "real_json"}.
    Every 4th validation image gets an empty ReaL list (left out by the loader).
    """
    root, rng = Path(root), random.Random(seed)
    wnids = [f"n{1440764 + 1000 * i:08d}" for i in range(num_classes)]
    train = []
    for c, wnid in enumerate(wnids):
        for k in range(per_class):
            path = root / "train" / wnid / f"{wnid}_{k + 1}.JPEG"
            write_jpeg(path, rng)
            train.append((str(path), c))
    real = []
    for k in range(num_val):
        write_jpeg(root / "val" / f"ILSVRC2012_val_{k + 1:08d}.JPEG", rng)
        real.append([] if k % 4 == 3 else sorted(rng.sample(range(num_classes), rng.randint(1, 2))))
    (root / "real.json").write_text(json.dumps(real))
    return {
        "wnids": wnids,
        "train": train,
        "real": real,
        "train_dir": str(root / "train"),
        "val_dir": str(root / "val"),
        "real_json": str(root / "real.json"),
    }


def reference_observe(label_lists: list[list[int]], num_classes: int, seed: int) -> list[int]:
    """Cole et al.'s ``observe_uniform(num_pos=1, num_neg=0)`` written out again, on a -1/+1 matrix.

    Independent of ``scl_hf.data.protocol`` on purpose: tests compare the package's draws with it.
    """
    matrix = -np.ones((len(label_lists), num_classes))
    for i, ids in enumerate(label_lists):
        matrix[i, ids] = 1.0
    rng = np.random.RandomState(seed)
    observed = []
    for row in matrix:
        pos = np.nonzero(row == 1.0)[0]
        rng.shuffle(pos)
        observed.append(int(pos[:1][0]))
        neg = np.nonzero(row == -1.0)[0]
        rng.shuffle(neg)  # selects nothing but advances the stream
    return observed
