"""MS-COCO (2014 or 2017 layout) under the single-positive protocol of Cole et al. (CVPR 2021).

Protocol, as in their ``preproc/format_coco.py`` + ``generate_observed_labels.py``:
- an image is kept when it has at least one annotation of any kind (``iscrowd=1`` ones count: the
  reference does not filter them); 82,081 of the 82,783 train2014 images, 40,137 of val2014;
- rows are ordered by image id sorted *as strings* (their "backwards compatibility" sort), which
  fixes the order of the random draws;
- category ids 1..90 map to 0..79 in the order of ``categories`` (the official id order);
- one positive per image with ``RandomState(seed)`` (see ``protocol.sample_single_positive``), drawn
  over the whole official train set, which is then split 80/20 into train / validation with the
  same seed; official val is the test set, with its own fresh ``RandomState(seed)`` draw for
  ``label`` (as the reference does); ``labels`` holds the full positives on every split.

Images are path-backed ``datasets.Image()`` values: nothing is opened while building unless
``verify_images`` (or ``skip_corrupt_images``) is set; otherwise a corrupt file surfaces when the
row is decoded (PIL names the file for unidentifiable images, not always for truncated ones).
"""

from __future__ import annotations

import contextlib
import io
import json
import os

from datasets import DatasetDict

from .protocol import (
    DEFAULT_SEED,
    DatasetLayoutError,
    file_stamp,
    load_protocol_dataset,
    require_path,
    sample_single_positive,
    validate_label_lists,
)

FORMAT_VERSION = "coco-1"
_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella "
    "handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard "
    "surfboard tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange "
    "broccoli carrot hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop "
    "mouse remote keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors "
    "teddy_bear hair_drier toothbrush"
)
_MISSING_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in _MISSING_IDS]
COCO_CLASS_NAMES = [n.replace("_", " ") for n in _NAMES.split()]
assert len(COCO_CATEGORY_IDS) == len(COCO_CLASS_NAMES) == 80

LAYOUT = """  <root>/annotations/instances_train{year}.json   (COCO "instances" file, 80 categories)
  <root>/annotations/instances_val{year}.json
  <root>/train{year}/<file_name of each image>
  <root>/val{year}/<file_name of each image>"""


def _check_instances_format(data, path: str) -> None:
    """Reject captions / keypoints / panoptic / non-COCO JSON with a message saying what it is."""
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DatasetLayoutError(
            f"{path} is not a COCO annotation file (expected a JSON object with 'images', "
            "'annotations' and 'categories'); give the instances_*.json file"
        )
    anns = data["annotations"]
    first = anns[0] if anns else {}
    if "categories" not in data or (first and "caption" in first):
        raise DatasetLayoutError(f"{path} looks like a COCO captions file; expected instances_*.json")
    if first and "segments_info" in first:
        raise DatasetLayoutError(f"{path} looks like a COCO panoptic file; expected instances_*.json")
    cats = data["categories"]
    if any("keypoints" in c for c in cats):
        raise DatasetLayoutError(
            f"{path} looks like a person_keypoints file (1 category); expected instances_*.json"
        )
    found = [(c.get("id"), c.get("name")) for c in cats]
    if found != list(zip(COCO_CATEGORY_IDS, COCO_CLASS_NAMES)):
        hint = " (these are the 20 PASCAL VOC classes: use load_voc)" if len(cats) == 20 else ""
        raise DatasetLayoutError(
            f"{path} has {len(cats)} categories {[n for _, n in found[:5]]}...{hint}; expected the 80 "
            "COCO object categories with ids 1..90 in the official order (instances_*.json)"
        )


def read_instances(ann_path: str, image_dir: str) -> list[tuple[int, str, list[int]]]:
    """(image_id, image path, sorted positive class indices) of every annotated image, in protocol order."""
    from pycocotools.coco import COCO

    try:
        with open(ann_path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetLayoutError(
            f"{ann_path} is not valid JSON ({err}); expected a COCO instances file"
        ) from err
    _check_instances_format(data, ann_path)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    index = {cat_id: i for i, cat_id in enumerate(COCO_CATEGORY_IDS)}
    rows = []
    for image_id in sorted((k for k, v in coco.imgToAnns.items() if v), key=str):
        if image_id not in coco.imgs:
            raise DatasetLayoutError(
                f"{ann_path}: annotations refer to image id {image_id}, absent from 'images'"
            )
        labels = set()
        for ann in coco.imgToAnns[image_id]:
            if ann["category_id"] not in index:
                raise DatasetLayoutError(
                    f"{ann_path}: annotation {ann.get('id')} of image {image_id} has category_id "
                    f"{ann['category_id']}, not one of the 80 COCO category ids (1..90)"
                )
            labels.add(index[ann["category_id"]])
        rows.append(
            (int(image_id), os.path.join(image_dir, coco.imgs[image_id]["file_name"]), sorted(labels))
        )
    return rows


def _official_rows(spec: dict, part: str) -> list[dict]:
    """Rows of official ``part`` ("train" / "val") with the drawn positive."""
    ann_path = spec[f"{part}_annotations"].rsplit(":", 2)[0]
    parsed = read_instances(ann_path, spec[f"{part}_images"])
    label_lists = validate_label_lists([labels for _, _, labels in parsed], len(COCO_CLASS_NAMES))
    drawn = sample_single_positive(label_lists, spec["seed"], num_classes=len(COCO_CLASS_NAMES))
    return [
        {"image": path, "label": label, "labels": labels, "image_id": image_id}
        for (image_id, path, labels), label in zip(parsed, drawn)
    ]


def _hint_for(root: str) -> str:
    if any(os.path.exists(os.path.join(root, d)) for d in ("VOCdevkit", "JPEGImages", "ImageSets")):
        return "This looks like a PASCAL VOC folder: use scl_hf.data.load_voc for it."
    return ""


def load_coco(
    root: str | os.PathLike,
    year: int = 2014,
    seed: int = DEFAULT_SEED,
    cache_dir: str | None = None,
    skip_corrupt_images: bool = False,
    num_proc: int | None = None,
    verify_images: bool = False,
    train_annotations: str | os.PathLike | None = None,
    val_annotations: str | os.PathLike | None = None,
) -> DatasetDict:
    """COCO as a DatasetDict with ``train`` / ``validation`` / ``test`` splits (see the module doc).

    ``verify_images`` decodes every image once while building and fails on the first bad one, naming
    it; ``skip_corrupt_images`` implies it and leaves bad images out instead (counted in the log;
    the drawn labels of the other images do not change). ``train_annotations`` / ``val_annotations``
    override the annotation paths. A second identical call reuses the ``datasets`` cache; editing
    an annotation file (size or mtime) rebuilds.
    """
    root = os.path.abspath(os.fspath(root))
    layout = LAYOUT.format(year=year)
    require_path(root, "COCO root folder", layout)
    hint = _hint_for(root)
    spec = {"format": FORMAT_VERSION, "year": int(year)}
    overrides = {"train": train_annotations, "val": val_annotations}
    for part in ("train", "val"):
        ann = overrides[part] or os.path.join(root, "annotations", f"instances_{part}{year}.json")
        ann = require_path(ann, f"COCO {part}{year} instances annotation file", layout, hint)
        images = require_path(
            os.path.join(root, f"{part}{year}"), f"COCO {part}{year} image folder", layout, hint
        )
        spec[f"{part}_annotations"] = file_stamp(ann)
        spec[f"{part}_images"] = images
    return load_protocol_dataset(
        _official_rows, spec, COCO_CLASS_NAMES, seed=seed, cache_dir=cache_dir, num_proc=num_proc,
        verify_images=verify_images, skip_corrupt_images=skip_corrupt_images,
    )
