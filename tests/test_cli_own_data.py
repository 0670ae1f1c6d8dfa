"""A user's own data through `scl-hf`: imagefolder, a local copy of a Hub dataset, parquet files; then
`scl-hf predict` on the release folder, and `scl_hf.predict` returning the same maps."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from scl_hf import __version__
from scl_hf.cli import main
from scl_hf.data.synthetic import make_synthetic
from scl_hf.predict import predict

TRAIN = ["--model", "resnet18", "--image_size", "32", "--epochs", "1", "--batch_size", "4", "--method", "an",
         "--set", "save_strategy=no", "per_device_eval_batch_size=8", "disable_tqdm=true"]


@pytest.fixture(scope="module")
def shapes():
    return make_synthetic(num_train=16, num_test=8, image_size=48, num_classes=3, max_objects=2, seed=1)


def write_imagefolder(split, root):
    names = split.features["label"].names
    for k, row in enumerate(split):
        folder = root / names[row["label"]]
        folder.mkdir(parents=True, exist_ok=True)
        row["image"].save(folder / f"{k}.png")
    return names


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"scl-hf {__version__}"


def test_train_imagefolder_then_predict_writes_maps(shapes, tmp_path, capsys):
    names = write_imagefolder(shapes["train"], tmp_path / "photos")
    out = tmp_path / "run"
    assert main(["train", "imagefolder", str(tmp_path / "photos"), "--output_dir", str(out), *TRAIN]) == 0
    printed = capsys.readouterr().out
    assert "test mAP:" in printed and (out / "final" / "model.safetensors").is_file()
    pictures = [tmp_path / "photos" / names[0] / p.name for p in sorted((tmp_path / "photos" / names[0]).iterdir())[:2]]
    assert main(["predict", *map(str, pictures), "--model", str(out / "final"), "--threshold", "0",
                 "--output_dir", str(tmp_path / "maps")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(name in lines[0] for name in names)  # threshold 0: every class, with a score
    written = sorted((tmp_path / "maps").glob("*.png"))
    assert len(written) == 2 and Image.open(written[0]).size[0] > 300
    found = predict(pictures, out / "final", threshold=0.0)
    assert [n for n, _ in found[0].labels] == sorted(names, key=lambda n: -found[0].scores[n])
    for heat in found[0].maps.values():
        assert heat.shape == (48, 48) and 0.0 <= heat.min() <= heat.max() <= 1.0
    high = predict(pictures[:1], out / "final", threshold=1.01)[0]
    assert high.labels == [] and high.maps == {}


def test_class_maps_average_to_the_logit(shapes, tmp_path):
    """The maps are the classifier at every cell: their mean logit is the image logit (pool → linear head)."""
    from scl_hf import create_model, hub
    from scl_hf.predict import Predictor

    model = create_model("resnet18", num_labels=3, id2label=["a", "b", "c"], seed=0)
    hub.export(model, tmp_path / "release", image_size=32)
    predictor = Predictor(tmp_path / "release")
    image = shapes["test"][0]["image"]
    pixels = predictor.transform(image)[None]
    with torch.no_grad():
        logits = predictor.model(pixel_values=pixels).logits
        maps = predictor.hook.pop_maps()
    assert torch.allclose(maps.mean(dim=(2, 3)), logits, atol=1e-4)
    scores = predictor([image], threshold=0.0)[0].scores
    assert np.allclose([scores[n] for n in "abc"], torch.sigmoid(logits)[0].numpy(), atol=1e-6)


def test_train_from_a_local_hub_copy_and_parquet_with_columns(shapes, tmp_path, capsys):
    train = shapes["train"].rename_columns({"image": "picture", "label": "tag"}).remove_columns(["boxes"])
    test = shapes["test"].rename_columns({"image": "picture"}).remove_columns(["boxes", "label"])
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "copy"))
    columns = ["--image_column", "picture", "--label_column", "tag"]
    assert main(["train", "hub", str(tmp_path / "copy"), "--output_dir", str(tmp_path / "a"), *columns, *TRAIN]) == 0
    assert "test mAP:" in capsys.readouterr().out
    train.to_parquet(str(tmp_path / "train.parquet"))
    test.to_parquet(str(tmp_path / "test.parquet"))
    assert main(["train", "parquet", str(tmp_path / "train.parquet"), "--test_files", str(tmp_path / "test.parquet"),
                 "--output_dir", str(tmp_path / "b"), *columns, *TRAIN]) == 0
    assert "test mAP:" in capsys.readouterr().out


def test_own_data_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "parquet", str(tmp_path / "missing.parquet")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["train", "imagefolder", str(tmp_path), str(tmp_path)]) == 2
    assert "needs one folder" in capsys.readouterr().err
