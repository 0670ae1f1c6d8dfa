"""COCO loader, the protocol functions it uses, and the Parquet export, on a tiny fake COCO."""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pytest
from data_fixtures import make_fake_coco, make_fake_voc, reference_observe
from datasets import Image

from scl_hf.data.coco import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, load_coco
from scl_hf.data.export import image_paths, load_protocol_splits, save_protocol_splits
from scl_hf.data.protocol import DatasetLayoutError, sample_single_positive, split_train_val


# ---------------------------------------------------------------- protocol functions
def test_sample_matches_reference_and_is_pinned():
    rng = np.random.default_rng(3)
    lists = [sorted(rng.choice(80, size=rng.integers(1, 6), replace=False).tolist()) for _ in range(300)]
    drawn = sample_single_positive(lists, 1200, num_classes=80)
    assert drawn == reference_observe(lists, 80, 1200)
    assert all(d in ids for d, ids in zip(drawn, lists))
    assert sample_single_positive(lists, 7, num_classes=80) != drawn
    assert sample_single_positive([[0, 1, 2, 3]] * 6 + [[5, 79], [7]], num_classes=80) == [
        0,
        0,
        3,
        0,
        3,
        2,
        79,
        7,
    ]


def test_sample_validates_ids():
    with pytest.raises(DatasetLayoutError, match=r"image 1 has label id 80, outside the valid range 0\.\.79"):
        sample_single_positive([[1], [3, 80]], num_classes=80)
    with pytest.raises(DatasetLayoutError, match="image 0 has no positive"):
        sample_single_positive([[]], num_classes=80)


@pytest.mark.parametrize(
    "n, n_train, n_val", [(82081, 65665, 16416), (5717, 4574, 1143), (35, 28, 7), (2, 2, 0)]
)
def test_split_sizes(n, n_train, n_val):
    train, val = split_train_val(n, 0.2, 1200)
    assert (len(train), len(val)) == (n_train, n_val)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(n))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    perm = np.random.RandomState(1200).permutation(n)
    assert set(val.tolist()) == set(perm[n_train:].tolist())


# ---------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    truth = make_fake_coco(root)
    cache = str(root / "cache")
    return root, truth, cache, load_coco(root, cache_dir=cache)


def test_counts_splits_and_exclusion(coco):
    _, truth, _, dd = coco
    n = len(truth["train"])
    assert n == 35 and len(truth["train_unannotated"]) == 5
    assert len(dd["validation"]) == round(0.2 * n) and len(dd["train"]) == n - round(0.2 * n)
    assert len(dd["test"]) == len(truth["val"])
    ids = set(dd["train"]["image_id"]) | set(dd["validation"]["image_id"])
    assert ids == set(truth["train"]) and not ids & set(truth["train_unannotated"])
    assert set(dd["test"]["image_id"]) == set(truth["val"])


def test_category_mapping_and_full_labels(coco):
    _, truth, _, dd = coco
    assert dd["train"].features["label"].names == COCO_CLASS_NAMES
    assert dd["train"].features["labels"].feature.names == COCO_CLASS_NAMES
    assert COCO_CATEGORY_IDS[79] == 90 and COCO_CLASS_NAMES[79] == "toothbrush"
    assert COCO_CATEGORY_IDS[11] == 13 and COCO_CLASS_NAMES[11] == "stop sign"
    for split, part in (("train", "train"), ("validation", "train"), ("test", "val")):
        for row_id, labels in zip(dd[split]["image_id"], dd[split]["labels"]):
            assert labels == truth[part][row_id]


def test_protocol_order_and_draws_match_reference(coco):
    _, truth, _, dd = coco
    order = sorted(truth["train"], key=str)  # Cole et al. sort image ids as strings
    assert order != sorted(truth["train"])  # the fixture makes the two orders differ
    drawn = reference_observe([truth["train"][i] for i in order], 80, 1200)
    train_idx, val_idx = split_train_val(len(order), 0.2, 1200)
    for split, idx in (("train", train_idx), ("validation", val_idx)):
        assert dd[split]["image_id"] == [order[i] for i in idx]
        assert dd[split]["label"] == [drawn[i] for i in idx]
    test_order = sorted(truth["val"], key=str)
    assert dd["test"]["label"] == reference_observe([truth["val"][i] for i in test_order], 80, 1200)
    for split in dd:
        assert all(label in labels for label, labels in zip(dd[split]["label"], dd[split]["labels"]))


def test_images_are_path_backed(coco):
    root, _, _, dd = coco
    stored = dd["train"].cast_column("image", Image(decode=False))[0]["image"]
    assert stored["bytes"] is None and stored["path"].startswith(str(root / "train2014"))
    assert dd["test"][0]["image"].size == (24, 16)


def test_cached_second_load_and_rebuild_on_change(coco, tmp_path):
    root, _, cache, dd = coco
    start = time.perf_counter()
    again = load_coco(root, cache_dir=cache)
    assert time.perf_counter() - start < 5
    assert again["train"].cache_files == dd["train"].cache_files
    assert again["train"]["label"] == dd["train"]["label"]
    # an edited annotation file (new size / mtime) must not reuse the old cache
    ann = root / "annotations" / "instances_train2014.json"
    data = json.loads(ann.read_text())
    keep = {a["image_id"] for a in data["annotations"]}
    dropped = sorted(keep)[0]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != dropped]
    original = ann.read_text()
    try:
        ann.write_text(json.dumps(data))
        changed = load_coco(root, cache_dir=cache)
        assert changed["train"].cache_files != dd["train"].cache_files
        assert len(changed["train"]) + len(changed["validation"]) == len(keep) - 1
    finally:
        ann.write_text(original)


def test_export_round_trip(coco, tmp_path):
    root, _, _, dd = coco
    assert save_protocol_splits(dd, tmp_path / "splits") == str(root)
    back = load_protocol_splits(tmp_path / "splits", root)
    for split in dd:
        assert back[split].features == dd[split].features
        assert image_paths(back[split]) == image_paths(dd[split])
        for column in ("label", "labels", "image_id"):
            assert back[split][column] == dd[split][column]


# ---------------------------------------------------------------- bad input
@pytest.fixture()
def small_coco(tmp_path):
    make_fake_coco(tmp_path, num_train=10, num_val=5)
    return tmp_path


def _write_train_ann(root, data):
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(data))


def test_missing_paths_name_path_and_layout(small_coco, tmp_path):
    with pytest.raises(DatasetLayoutError, match="Expected layout") as err:
        load_coco(tmp_path / "nowhere", cache_dir=str(tmp_path / "c"))
    assert "nowhere" in str(err.value)
    os.remove(small_coco / "annotations" / "instances_val2014.json")
    with pytest.raises(DatasetLayoutError, match=r"instances_val2014\.json[\s\S]*Expected layout"):
        load_coco(small_coco, cache_dir=str(tmp_path / "c"))


def test_voc_root_given_to_load_coco(tmp_path):
    make_fake_voc(tmp_path, num_train=4, num_val=2)
    with pytest.raises(DatasetLayoutError, match="PASCAL VOC folder: use scl_hf.data.load_voc"):
        load_coco(tmp_path, cache_dir=str(tmp_path / "c"))


@pytest.mark.parametrize(
    "kind, match",
    [
        ("captions", "captions file"),
        ("keypoints", "person_keypoints"),
        ("list", "not a COCO annotation file"),
        ("voc_classes", "20 PASCAL VOC classes"),
        ("bad_category", r"category_id 12, not one of the 80"),
        ("not_json", "not valid JSON"),
    ],
)
def test_wrong_annotation_files(small_coco, tmp_path, kind, match):
    ann = small_coco / "annotations" / "instances_train2014.json"
    data = json.loads(ann.read_text())
    if kind == "captions":
        data = {"images": data["images"], "annotations": [{"id": 1, "image_id": 1, "caption": "a cat"}]}
    elif kind == "keypoints":
        data["categories"] = [{"id": 1, "name": "person", "keypoints": ["nose"], "skeleton": []}]
    elif kind == "list":
        data = [1, 2, 3]
    elif kind == "voc_classes":
        data["categories"] = [{"id": i + 1, "name": f"class{i}"} for i in range(20)]
    elif kind == "bad_category":
        data["annotations"][0]["category_id"] = 12
    if kind == "not_json":
        ann.write_text("{not json")
    else:
        _write_train_ann(small_coco, data)
    with pytest.raises(DatasetLayoutError, match=match):
        load_coco(small_coco, cache_dir=str(tmp_path / "c"))


def test_corrupt_image_verify_skip_and_lazy(small_coco, tmp_path, caplog):
    lazy = load_coco(small_coco, cache_dir=str(tmp_path / "c1"))  # default: images are not opened
    bad = image_paths(lazy["test"])[0]
    with open(bad, "wb") as f:
        f.write(b"definitely not a jpeg")
    with pytest.raises(Exception, match=os.path.basename(bad)):  # PIL names the file at decode time
        lazy["test"][0]
    with pytest.raises(DatasetLayoutError, match=f"unreadable image {bad}"):
        load_coco(small_coco, cache_dir=str(tmp_path / "c2"), verify_images=True)
    with caplog.at_level(logging.WARNING, logger="scl_hf.data.protocol"):
        skipped = load_coco(small_coco, cache_dir=str(tmp_path / "c3"), skip_corrupt_images=True)
    assert "skipped 1 corrupt" in caplog.text
    assert len(skipped["test"]) == len(lazy["test"]) - 1 and bad not in image_paths(skipped["test"])
    assert skipped["train"]["label"] == lazy["train"]["label"]
