"""The composed-scene regimes: layout, labels, long tail, co-occurrence, and digit scans kept out of training."""

import numpy as np
import pytest

from scl_hf.data.scenes import (
    SceneSpec,
    clutter_class_names,
    digit_scan_pools,
    long_tail_frequencies,
    make_clutter_scenes,
    make_digit_scenes,
    sample_classes,
)


def test_clutter_scenes_have_the_protocol_columns_and_one_observed_positive_among_the_labels(tmp_path):
    data = make_clutter_scenes(num_train=24, num_validation=8, num_test=8, seed=3, cache_dir=str(tmp_path))
    assert {k: len(v) for k, v in data.items()} == {"train": 24, "validation": 8, "test": 8}
    names = data["train"].features["label"].names
    assert names == clutter_class_names(48) and len(names) == 48
    for row in data["train"]:
        assert row["label"] in row["labels"] and len(row["boxes"]) == len(row["labels"])
        assert row["image"].size == (128, 128)
        assert all(0 <= v <= 1 for box in row["boxes"] for v in box)
    again = make_clutter_scenes(num_train=24, num_validation=8, num_test=8, seed=3, cache_dir=str(tmp_path))
    assert again["train"]["labels"] == data["train"]["labels"]  # cached and reproducible


def test_long_tail_and_contexts_shape_the_class_counts():
    rng = np.random.default_rng(0)
    freq = long_tail_frequencies(48, 1.0, rng)
    assert freq.sum() == pytest.approx(1.0) and freq.max() / freq.min() == pytest.approx(48.0)
    contexts = np.array([np.arange(0, 8), np.arange(8, 16)])
    draws = [sample_classes(rng, 2, freq, contexts, context_bias=1.0) for _ in range(300)]
    assert all(len(set(d)) == 2 for d in draws)  # distinct classes
    assert all(set(d) <= set(range(8)) or set(d) <= set(range(8, 16)) for d in draws)  # one context per image


def test_digit_scenes_keep_the_test_scans_apart():
    spec = SceneSpec(num_classes=10, image_size=64, max_objects=3, object_size=(0.25, 0.35), max_overlap=0.2)
    data = make_digit_scenes(num_train=12, num_validation=4, num_test=6, spec=spec, seed=1)
    assert data["train"].features["label"].names == [str(d) for d in range(10)]
    assert all(1 <= len(labels) <= 3 for labels in data["test"]["labels"])
    pools = digit_scan_pools(1797, seed=1)
    train, validation, test = (set(pools[split].tolist()) for split in ("train", "validation", "test"))
    assert not train & test and not train & validation and not validation & test
    assert len(train) + len(validation) + len(test) == 1797 and min(len(validation), len(test)) > 250
    assert (pools["train"] == np.random.default_rng(1).permutation(1797)[:1258]).all()  # the pool of SCENES_VERSION 1
    with pytest.raises(ValueError, match="exactly 10 classes"):
        make_digit_scenes(num_train=2, num_validation=1, num_test=1, spec=SceneSpec(num_classes=12))
