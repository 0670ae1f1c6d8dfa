"""NUS-WIDE and CUB-200-2011 loaders: fixtures in the official layouts, protocol draws and counts, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_nus_cub import make_fake_cub, make_fake_nus_wide

from scl_hf.data import DatasetLayoutError, load_cub, load_nus_wide, split_train_val


def cole_observe_one_positive(label_matrix: np.ndarray, seed: int) -> np.ndarray:
    """Cole et al.'s generate_observed_labels.py (observe_uniform, num_pos 1, num_neg 0), written out as a loop."""
    matrix = np.where(label_matrix == 1, 1.0, -1.0)
    rng = np.random.RandomState(seed)
    observed = np.zeros_like(matrix)
    for i in range(len(matrix)):
        idx_pos = np.nonzero(matrix[i] == 1.0)[0]
        rng.shuffle(idx_pos)
        observed[i, idx_pos[:1]] = 1.0
        idx_neg = np.nonzero(matrix[i] == -1.0)[0]
        rng.shuffle(idx_neg)
    return observed


def expected_splits(labels: np.ndarray, seed: int = 1200):
    observed = cole_observe_one_positive(labels, seed)
    drawn = [int(np.nonzero(row)[0][0]) if row.any() else -1 for row in observed]
    train_idx, val_idx = split_train_val(len(labels), 0.2, seed)
    return [(i, drawn[i]) for i in train_idx if drawn[i] >= 0], list(val_idx)


def test_nus_wide_follows_the_protocol(tmp_path):
    labels = make_fake_nus_wide(tmp_path / "nus", num_train=20, num_val=8)
    data = load_nus_wide(tmp_path / "nus", cache_dir=str(tmp_path / "cache"))
    train_rows, val_idx = expected_splits(labels["train"])
    assert len(train_rows) < 16  # the rows without a concept left training
    assert (len(data["train"]), len(data["validation"]), len(data["test"])) == (len(train_rows), len(val_idx), 8)
    assert data["train"]["image_id"] == [i for i, _ in train_rows]
    assert data["train"]["label"] == [label for _, label in train_rows]
    assert data["validation"]["image_id"] == val_idx
    assert [sorted(x) for x in data["test"]["labels"]] == [np.nonzero(r)[0].tolist() for r in labels["val"]]
    assert data["train"].features["label"].num_classes == 81
    assert data["train"][0]["image"].size == (40, 30)


def test_nus_wide_errors_name_the_expected_files(tmp_path):
    make_fake_nus_wide(tmp_path / "nus", num_train=8, num_val=4)
    (tmp_path / "nus" / "formatted_val_labels.npy").unlink()
    with pytest.raises(DatasetLayoutError, match="formatted_val_labels.npy"):
        load_nus_wide(tmp_path / "nus", cache_dir=str(tmp_path / "cache"))
    np.save(tmp_path / "nus" / "formatted_val_labels.npy", np.zeros((4, 80), dtype=np.int64))
    with pytest.raises(DatasetLayoutError, match="N x 81"):
        load_nus_wide(tmp_path / "nus", cache_dir=str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="Flickr"):
        load_nus_wide(tmp_path / "empty")


def test_cub_follows_the_protocol(tmp_path):
    is_train, labels = make_fake_cub(tmp_path / "cub", num_images=24)
    data = load_cub(tmp_path / "cub", cache_dir=str(tmp_path / "cache"))
    official_train = np.nonzero(is_train)[0]
    train_rows, val_idx = expected_splits(labels[official_train])
    assert (len(data["train"]), len(data["validation"]), len(data["test"])) == (
        len(train_rows), len(val_idx), int((~is_train).sum()))
    assert data["train"]["label"] == [label for _, label in train_rows]
    names = data["train"].features["label"].names
    assert len(names) == 312 and names[0] == "has_part_1::value_1"
    test_rows = np.nonzero(~is_train)[0]
    assert [sorted(x) for x in data["test"]["labels"]] == [np.nonzero(labels[i])[0].tolist() for i in test_rows]


def test_cub_errors_name_the_expected_files(tmp_path):
    make_fake_cub(tmp_path / "cub", num_images=6)
    (tmp_path / "cub" / "attributes.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="attributes.txt"):
        load_cub(tmp_path / "cub", cache_dir=str(tmp_path / "cache"))
    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(DatasetLayoutError, match="images.txt"):
        load_cub(tmp_path / "nothing_here")
