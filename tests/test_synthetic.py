"""Tests for the embedded synthetic single-positive multi-label dataset."""

import itertools

import datasets
import numpy as np
import pytest

from scl_hf.data import synthetic
from scl_hf.data.synthetic import SYNTHETIC_CLASS_COLORS, SYNTHETIC_CLASS_NAMES, make_synthetic, render_image

COLOR_TOL = 45  # colour jitter (20) + 3 sigma of pixel noise (18) fits inside


@pytest.fixture(scope="module")
def dsd():
    return make_synthetic(num_train=300, num_validation=20, num_test=60, seed=3)


def _box_pixels(row, box):
    img = np.asarray(row["image"].convert("RGB")).astype(int)
    size = img.shape[0]
    x0, y0, x1, y1 = (round(v * size) for v in box)
    return img[y0:y1, x0:x1].reshape(-1, 3)


def _matches(pixels, cls):
    return np.abs(pixels - np.array(SYNTHETIC_CLASS_COLORS[cls])).max(1) <= COLOR_TOL


def test_class_names_distinct_shapes_and_colours():
    assert len(SYNTHETIC_CLASS_NAMES) >= 10
    colours = [n.split("_")[0] for n in SYNTHETIC_CLASS_NAMES]
    shapes = [n.split("_", 1)[1] for n in SYNTHETIC_CLASS_NAMES]
    assert len(set(colours)) == len(colours) and len(set(shapes)) == len(shapes)
    assert len(set(SYNTHETIC_CLASS_COLORS)) == len(SYNTHETIC_CLASS_NAMES)


def test_determinism_same_seed_identical_different_seed_differs():
    a = make_synthetic(num_train=8, num_test=4, seed=11)
    b = make_synthetic(num_train=8, num_test=4, seed=11)
    c = make_synthetic(num_train=8, num_test=4, seed=12)
    raw = {k: v["train"].cast_column("image", datasets.Image(decode=False)) for k, v in dict(a=a, b=b, c=c).items()}
    assert [r["image"]["bytes"] for r in raw["a"]] == [r["image"]["bytes"] for r in raw["b"]]
    assert a["train"]["labels"] == b["train"]["labels"] and a["test"]["boxes"] == b["test"]["boxes"]
    assert all(x["image"]["bytes"] != y["image"]["bytes"] for x, y in zip(raw["a"], raw["c"]))


def test_train_and_test_streams_independent(dsd):
    train = dsd["train"].cast_column("image", datasets.Image(decode=False))
    test = dsd["test"].cast_column("image", datasets.Image(decode=False))
    assert not {r["image"]["bytes"] for r in train} & {r["image"]["bytes"] for r in test}


def test_columns_and_feature_types(dsd):
    assert list(dsd) == ["train", "validation", "test"]
    names = SYNTHETIC_CLASS_NAMES[:10]
    for split in dsd.values():
        feats = split.features
        assert split.column_names == ["image", "label", "labels", "boxes"]
        assert isinstance(feats["image"], datasets.Image)
        assert isinstance(feats["label"], datasets.ClassLabel) and feats["label"].names == names
        assert isinstance(feats["labels"].feature, datasets.ClassLabel) and feats["labels"].feature.names == names
        assert feats["boxes"].feature.feature.dtype == "float32"
    assert len(dsd["train"]) == 300 and len(dsd["validation"]) == 20 and len(dsd["test"]) == 60
    assert dsd["train"][0]["image"].size == (128, 128)
    assert "validation" not in make_synthetic(num_train=2, num_test=2)


def test_single_positive_belongs_to_labels_and_counts(dsd):
    for split in dsd.values():
        for row in split.select_columns(["label", "labels", "boxes"]):
            assert row["label"] in row["labels"]
            assert 1 <= len(row["labels"]) <= 4
            assert len(set(row["labels"])) == len(row["labels"]) == len(row["boxes"])
            assert row["labels"] == sorted(row["labels"])


def test_object_count_range_respected():
    ds = make_synthetic(num_train=40, num_test=0, min_objects=2, max_objects=3, num_classes=12, seed=5)["train"]
    counts = [len(x) for x in ds["labels"]]
    assert min(counts) >= 2 and max(counts) <= 3 and set(counts) == {2, 3}
    assert max(max(x) for x in ds["labels"]) < 12


def test_boxes_inside_image_sized_and_not_overlapping(dsd):
    lo, hi = 0.12, 0.22
    for boxes in dsd["train"]["boxes"]:
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 1 + 1e-6 and 0 <= y0 < y1 <= 1 + 1e-6
            assert lo - 1e-6 <= x1 - x0 <= hi + 1e-6 and y1 - y0 <= x1 - x0 + 1e-6
        for a, b in itertools.combinations(boxes, 2):
            assert synthetic._overlap(np.array(a), np.array(b)) <= 0.1 + 1e-6


def test_object_pixels_carry_class_colour(dsd):
    ds = dsd["train"].select(range(60))
    background_hits = background_total = 0
    for row in ds:
        mask = np.ones((128, 128), bool)
        for cls, box in zip(row["labels"], row["boxes"]):
            pixels = _box_pixels(row, box)
            own = _matches(pixels, cls).mean()
            assert own >= 0.25, (SYNTHETIC_CLASS_NAMES[cls], own)
            others = max(_matches(pixels, c).mean() for c in range(10) if c != cls)
            assert own > others + 0.15
            x0, y0, x1, y1 = (round(v * 128) for v in box)
            mask[y0:y1, x0:x1] = False
        bg = np.asarray(row["image"].convert("RGB")).astype(int)[mask]
        background_hits += sum(_matches(bg, c).sum() for c in range(10))
        background_total += len(bg)
    assert background_hits / background_total < 0.01


def test_single_positive_follows_randomstate(dsd):
    for split, offset in [("train", 0), ("validation", 1), ("test", 2)]:
        rs = np.random.RandomState(3 + offset)
        expected = [int(rs.choice(labels)) for labels in dsd[split]["labels"]]
        assert dsd[split]["label"] == expected
    # not a trivial rule such as "always the first class"
    assert any(row["label"] != row["labels"][0] for row in dsd["train"].select_columns(["label", "labels"]))


def test_most_images_have_several_objects(dsd):
    share = np.mean([len(x) >= 2 for x in dsd["train"]["labels"]])
    assert share > 0.5


def test_cache_roundtrip(tmp_path, monkeypatch):
    first = make_synthetic(num_train=6, num_test=3, seed=1, cache_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 1

    def fail(*args, **kwargs):
        raise AssertionError("should have loaded from the cache")

    monkeypatch.setattr(synthetic, "_build_split", fail)
    second = make_synthetic(num_train=6, num_test=3, seed=1, cache_dir=str(tmp_path))
    assert second["train"]["labels"] == first["train"]["labels"]
    assert second["train"].features == first["train"].features
    with pytest.raises(AssertionError):
        make_synthetic(num_train=6, num_test=3, seed=2, cache_dir=str(tmp_path))


def test_render_image_is_pure_and_sized():
    objects = [(0, [0.1, 0.1, 0.3, 0.3]), (3, [0.5, 0.5, 0.7, 0.7])]
    a = render_image(objects, 64, np.random.default_rng(0))
    b = render_image(objects, 64, np.random.default_rng(0))
    assert a.size == (64, 64) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_invalid_arguments_rejected():
    with pytest.raises(ValueError):
        make_synthetic(num_classes=len(SYNTHETIC_CLASS_NAMES) + 1)
    with pytest.raises(ValueError):
        make_synthetic(min_objects=3, max_objects=2)
    with pytest.raises(ValueError):
        make_synthetic(object_size=(0.5, 1.2))
