"""PASCAL VOC loader on a tiny fake VOCdevkit."""

from __future__ import annotations

import os
import time

import pytest
from data_fixtures import make_fake_coco, make_fake_voc, reference_observe

from scl_hf.data.protocol import DatasetLayoutError, split_train_val
from scl_hf.data.voc import VOC_CLASS_NAMES, load_voc


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    truth = make_fake_voc(root)
    cache = str(root / "cache")
    return root, truth, cache, load_voc(root, cache_dir=cache)


def _vid(voc_id: str) -> int:
    return int(voc_id.replace("_", ""))


def test_counts_and_difficult_only_images_excluded(voc):
    _, truth, _, dd = voc
    n = len(truth["train"])
    assert truth["train_excluded"] and truth["val_excluded"]
    assert len(dd["validation"]) == round(0.2 * n) and len(dd["train"]) == n - round(0.2 * n)
    assert len(dd["test"]) == len(truth["val"])
    seen = set(dd["train"]["image_id"]) | set(dd["validation"]["image_id"])
    assert seen == {_vid(v) for v in truth["train"]}
    assert not seen & {_vid(v) for v in truth["train_excluded"]}


def test_classes_labels_and_draws_match_reference(voc):
    root, truth, _, dd = voc
    assert dd["train"].features["label"].names == VOC_CLASS_NAMES and len(VOC_CLASS_NAMES) == 20
    order = sorted(truth["train"])
    drawn = reference_observe([truth["train"][v] for v in order], 20, 1200)
    train_idx, val_idx = split_train_val(len(order), 0.2, 1200)
    for split, idx in (("train", train_idx), ("validation", val_idx)):
        assert dd[split]["image_id"] == [_vid(order[i]) for i in idx]
        assert dd[split]["labels"] == [truth["train"][order[i]] for i in idx]
        assert dd[split]["label"] == [drawn[i] for i in idx]
    test_order = sorted(truth["val"])
    assert dd["test"]["labels"] == [truth["val"][v] for v in test_order]
    assert dd["test"]["label"] == reference_observe(dd["test"]["labels"], 20, 1200)
    row = dd["train"][0]
    assert row["image"].size == (24, 16) and row["label"] in row["labels"]


def test_root_variants_and_cache(voc):
    root, _, cache, dd = voc
    start = time.perf_counter()
    again = load_voc(root, cache_dir=cache)
    assert time.perf_counter() - start < 5 and again["train"].cache_files == dd["train"].cache_files
    for variant in (root / "VOCdevkit", root / "VOCdevkit" / "VOC2012"):
        other = load_voc(variant, cache_dir=cache)
        assert other["train"]["label"] == dd["train"]["label"]


def test_missing_root_and_files(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"nowhere[\s\S]*Expected layout"):
        load_voc(tmp_path / "nowhere", cache_dir=str(tmp_path / "c"))
    make_fake_voc(tmp_path, num_train=6, num_val=4)
    missing = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main" / "sofa_val.txt"
    os.remove(missing)
    with pytest.raises(DatasetLayoutError, match=rf"{missing}[\s\S]*Expected layout"):
        load_voc(tmp_path, cache_dir=str(tmp_path / "c"))


def test_malformed_class_file(tmp_path):
    make_fake_voc(tmp_path, num_train=6, num_val=4)
    path = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main" / "cat_train.txt"
    path.write_text(path.read_text() + "2008_000001 2\n")
    with pytest.raises(DatasetLayoutError, match=r"cat_train\.txt:\d+: expected '<image id> <1\|-1\|0>'"):
        load_voc(tmp_path, cache_dir=str(tmp_path / "c"))


def test_coco_root_given_to_load_voc(tmp_path):
    make_fake_coco(tmp_path, num_train=3, num_val=2)
    with pytest.raises(DatasetLayoutError, match="COCO folder: use scl_hf.data.load_coco"):
        load_voc(tmp_path, cache_dir=str(tmp_path / "c"))
