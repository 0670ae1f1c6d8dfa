"""ImageNet + ReaL loader on a tiny fake ImageFolder tree, validation folder and real.json."""

from __future__ import annotations

import json

import pytest
from data_fixtures import make_fake_imagenet_real
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as ImageFeature

from scl_hf.data.imagenet_real import load_imagenet_real
from scl_hf.data.protocol import DatasetLayoutError


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    truth = make_fake_imagenet_real(root)
    truth["cache"] = str(root / "cache")
    return truth


def _load(fake, **kwargs):
    train = kwargs.pop("train", fake["train_dir"])
    return load_imagenet_real(
        train, fake["val_dir"], fake["real_json"], **{"cache_dir": fake["cache"], **kwargs}
    )


def test_folder_training_set_and_real_test_set(fake):
    dd = _load(fake)
    assert list(dd) == ["train", "test"]
    assert dd["train"].features["label"].names == fake["wnids"]
    assert dd["train"]["label"] == [c for _, c in fake["train"]]
    non_empty = [(k + 1, ids) for k, ids in enumerate(fake["real"]) if ids]
    assert len(dd["test"]) == len(non_empty) < len(fake["real"])
    assert dd["test"]["image_id"] == [k for k, _ in non_empty]
    assert dd["test"]["labels"] == [ids for _, ids in non_empty]
    assert set(dd["test"].column_names) == {"image", "labels", "image_id"}
    assert dd["test"][0]["image"].size == (24, 16)
    assert _load(fake)["train"].cache_files == dd["train"].cache_files


def test_class_names_and_validation_split(fake):
    names = [f"class {i}" for i in range(len(fake["wnids"]))]
    dd = _load(fake, class_names=names, val_fraction=0.25)
    assert dd["train"].features["label"].names == names
    n = len(fake["train"])
    assert len(dd["validation"]) == round(0.25 * n) and len(dd["train"]) + len(dd["validation"]) == n


def test_dataset_as_training_source(fake):
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=fake["wnids"])})
    train = Dataset.from_dict(
        {"image": [p for p, _ in fake["train"]], "label": [c for _, c in fake["train"]]}, features=features
    )
    dd = _load(fake, train=train)
    assert dd["train"] is train and dd["test"].features["labels"].feature.names == fake["wnids"]
    no_label = Dataset.from_dict(
        {"image": [fake["train"][0][0]]}, features=Features({"image": ImageFeature()})
    )
    with pytest.raises(DatasetLayoutError, match=r"lacks column\(s\) \['label'\]"):
        _load(fake, train=no_label)
    plain = Dataset.from_dict(
        {"image": [fake["train"][0][0]], "label": [0]},
        features=Features({"image": ImageFeature(), "label": Value("int64")}),
    )
    with pytest.raises(DatasetLayoutError, match="pass class_names"):
        _load(fake, train=plain)


@pytest.mark.parametrize(
    "content, match",
    [
        ([[0]] * 3, r"has 3 entries but .* holds 10 images"),
        (
            [[0]] * 9 + [[4]],
            r"image ILSVRC2012_val_00000010\.JPEG has label id 4, outside the valid range 0\.\.3",
        ),
        ({"labels": []}, "expected a JSON list of lists"),
    ],
)
def test_bad_real_files(fake, tmp_path, content, match):
    bad = tmp_path / "real.json"
    bad.write_text(json.dumps(content))
    with pytest.raises(DatasetLayoutError, match=match):
        load_imagenet_real(fake["train_dir"], fake["val_dir"], bad, cache_dir=str(tmp_path / "c"))


def test_missing_paths(fake, tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"real\.json[\s\S]*Expected layout"):
        load_imagenet_real(fake["train_dir"], fake["val_dir"], tmp_path / "real.json")
    with pytest.raises(DatasetLayoutError, match=r"training image folder not found: expected .*nope"):
        load_imagenet_real(tmp_path / "nope", fake["val_dir"], fake["real_json"])
    with pytest.raises(DatasetLayoutError, match="2 class_names but 4 class folders"):
        _load(fake, class_names=["a", "b"])
