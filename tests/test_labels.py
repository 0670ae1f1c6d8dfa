"""Labels as users bring them (issue 16's table): each shape trains and evaluates correctly, or fails at
SCLTrainer construction with a message that names the column, the first bad row and the fix."""

import warnings

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from scl_hf import SCLConfig, SCLTrainer, create_model
from scl_hf.labels import LabelError, read_labels
from scl_hf.transforms import TrainTransform, to_rgb
from scl_hf.views import TrainViews

C = 5


def make_args(tmp_path, **overrides):
    defaults = dict(output_dir=str(tmp_path / "run"), method="an", image_size=32, num_train_epochs=1,
                    per_device_train_batch_size=8, per_device_eval_batch_size=8, use_cpu=True, save_strategy="no",
                    report_to="none", disable_tqdm=True, seed=0, bank_size=4, warmup_epochs=0)
    defaults.update(overrides)
    return SCLConfig(**defaults)


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)) for _ in range(n)]


def dataset(column_values: dict, features: dict | None = None, n=None):
    n = n or len(next(iter(column_values.values())))
    data = {"image": images(n), **column_values}
    feats = datasets.Features({"image": datasets.Image(), **features}) if features else None
    return datasets.Dataset.from_dict(data, features=feats)


def model(names=None):
    return create_model("resnet18", num_labels=C, id2label=names, seed=0)


# ----------------------------------------------------------------------------- reading: every accepted shape
TRUE = [[0, 2], [1], [3, 4], [], [2]]


@pytest.mark.parametrize("features, values", [
    ({"labels": datasets.List(datasets.ClassLabel(num_classes=C))}, TRUE),                       # list of ClassLabel
    ({"labels": datasets.List(datasets.Value("int64"))}, TRUE),                                  # list of ints
    ({"labels": datasets.List(datasets.Value("float32"))},                                       # multi-hot floats
     [[float(c in row) for c in range(C)] for row in TRUE]),
    ({"labels": datasets.List(datasets.Value("int64"), length=C)},                               # fixed-length ints
     [[int(c in row) for c in range(C)] for row in TRUE]),
    (None, [[int(c in row) for c in range(C)] for row in TRUE]),                                 # inferred int lists
    ({"labels": datasets.List(datasets.Value("string"))}, [[f"c{c}" for c in row] for row in TRUE]),
])
def test_every_multi_label_shape_reads_the_same_sets(features, values):
    table = read_labels(dataset({"labels": values}, features), "labels", C, "evaluation",
                        names=[f"c{c}" for c in range(C)])
    assert [table.positive_ids(i).tolist() for i in range(len(TRUE))] == TRUE
    assert torch.equal(table.dense(), torch.tensor([[float(c in row) for c in range(C)] for row in TRUE]))


def test_single_labels_ids_names_and_whole_floats():
    names = [f"c{c}" for c in range(C)]
    for values, feats in [([3, 0, 4], {"label": datasets.ClassLabel(names=names)}),
                          ([3, 0, 4], None), ([3.0, 0.0, 4.0], None), (["c3", "c0", "c4"], None)]:
        table = read_labels(dataset({"label": values}, feats), "label", C, names=names)
        assert table.format in ("id", "name") and [table.primary(i) for i in range(3)] == [3, 0, 4]
        assert torch.equal(table.targets(1), torch.tensor([1.0, 0, 0, 0, 0]))


def test_string_labels_map_through_the_columns_class_names():
    feats = {"label": datasets.List(datasets.ClassLabel(names=["a", "b", "c", "d", "e"]))}
    table = read_labels(dataset({"label": [["e", "a"], ["b"]]}, feats), "label", C)  # names from the feature
    assert table.positive_ids(0).tolist() == [0, 4]


def test_stated_format_overrides_detection():
    # two classes of a 5-class model, as ids: [0, 1] would be read as ids; stated 'multihot' must fail on length
    ds = dataset({"labels": [[0, 1], [1, 0]]})
    assert read_labels(ds, "labels", C).positive_ids(0).tolist() == [0, 1]
    with pytest.raises(LabelError, match="row 0.*length 2, not 5"):
        read_labels(ds, "labels", C, label_format="multihot")


# ----------------------------------------------------------------------------- the table, at construction
BAD_TRAINING = [
    ([0.5, 1.5, 3.7], "row 0: 0.5 is not a whole number. Fix: class ids are integers"),
    ([1, None, 2], "row 1: None is missing. Fix: drop unlabelled rows"),
    (["cow", "cat", "dog"], "row 2: 'dog' is not a known class name. Fix: known names"),
    ([1, 7, 2], "row 1: 7 is outside 0..4. Fix: the model has num_labels=5"),
    ([[1], [0, 1, 1, 0], [2]], None),  # fine: a list of ids (sets)
]


@pytest.mark.parametrize("values, message", BAD_TRAINING)
def test_bad_training_labels_fail_at_construction(values, message, tmp_path):
    ds = dataset({"label": values})
    names = ["cat", "cow", "bird", "fish", "frog"]  # no "dog"
    if message is None:
        trainer = SCLTrainer(model=model(names), args=make_args(tmp_path), train_dataset=ds)
        assert trainer.train_dataset[1]["targets"].tolist() == [1.0, 1.0, 0, 0, 0]
        return
    with pytest.raises(ValueError) as info:
        SCLTrainer(model=model(names), args=make_args(tmp_path), train_dataset=ds)
    text = str(info.value)
    assert "training dataset's column 'label'" in text and message in text, text


def test_bad_multi_hot_vectors_name_row_and_fix(tmp_path):
    bad = {"labels": [[0, 1, 0, 0, 0], [0, 1, 0.5, 0, 0]]}
    with pytest.raises(ValueError, match=r"'labels', row 1: .* holds 0.5. Fix: multi-hot entries are \(0, 1\)"):
        SCLTrainer(model=model(), args=make_args(tmp_path), eval_dataset=dataset(bad, {
            "labels": datasets.List(datasets.Value("float32"))}))
    short = {"labels": [[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 1.0]]}
    with pytest.raises(ValueError, match="row 1: .* has length 2, not 5. Fix: a multi-hot vector has one entry"):
        SCLTrainer(model=model(), args=make_args(tmp_path), eval_dataset=dataset(short, {
            "labels": datasets.List(datasets.Value("float32"))}))
    with pytest.raises(ValueError, match="row 0: .*has no positive label"):  # a training row needs a positive
        SCLTrainer(model=model(), args=make_args(tmp_path), train_dataset=dataset({"label": [[], [1]]}, {
            "label": datasets.List(datasets.Value("int64"))}))


def test_unknown_name_without_id2label_says_how_to_name_classes(tmp_path):
    with pytest.raises(ValueError, match="row 0: 'dog' is not a known class name.*id2label=<your class names>"):
        SCLTrainer(model=model(), args=make_args(tmp_path), train_dataset=dataset({"label": ["dog", "cat"]}))


def test_streaming_datasets_are_refused_with_the_reason(tmp_path):
    ds = dataset({"label": [0, 1], "labels": [[0], [1, 2]]})
    for role, kwargs in [("training", {"train_dataset": ds.to_iterable_dataset()}),
                         ("evaluation", {"eval_dataset": ds.to_iterable_dataset()})]:
        with pytest.raises(ValueError, match=f"the {role} dataset is a IterableDataset .streaming.*Load it without "
                                             "streaming=True"):
            SCLTrainer(model=model(), args=make_args(tmp_path), **kwargs)


def test_only_labels_as_the_training_column_trains_on_partial_labels(tmp_path):
    ds = dataset({"labels": [[0, 2], [1], [3, 4], [2]] * 2})
    args = make_args(tmp_path, label_column="labels", method="role+scl")
    trainer = SCLTrainer(model=model(), args=args, train_dataset=ds, eval_dataset=ds)
    assert trainer.loss_state.logits[0, [0, 2]].min() > 5  # both observed positives start at logit(0.995)
    assert trainer.loss_state.logits[0, [1, 3, 4]].abs().max() < 0.5
    trainer.train()
    assert np.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_observed_negatives_reach_the_batch(tmp_path):
    ds = dataset({"label": [[1, -1, 0, 0, 0], [0, 0, 1, 0, -1]]},
                 {"label": datasets.List(datasets.Value("int64"), length=C)})
    views = TrainViews(ds, TrainTransform(16), torch.zeros(1, dtype=torch.long), "image", "label", num_labels=C)
    assert views[0]["targets"].tolist() == [1, 0, 0, 0, 0] and views[0]["negatives"].tolist() == [0, 1, 0, 0, 0]
    assert views[1]["label"].item() == 2 and views[1]["negatives"].tolist() == [0, 0, 0, 0, 1]


# ----------------------------------------------------------------------------- evaluation agrees across shapes
def test_multi_hot_and_list_of_ids_evaluation_agree(tmp_path):
    ids = {"labels": TRUE * 2}
    hot = {"labels": [[float(c in row) for c in range(C)] for row in TRUE * 2]}
    trainer = SCLTrainer(model=model(), args=make_args(tmp_path))
    by_ids = trainer.evaluate(dataset(ids))
    by_hot = trainer.evaluate(dataset(hot, {"labels": datasets.List(datasets.Value("float32"))}))
    for key in ("eval_mAP", "eval_mAP_skip_empty", "eval_loss"):
        assert abs(by_ids[key] - by_hot[key]) < 1e-6, key
    assert 0 < by_ids["eval_mAP"] < 100 and by_ids["eval_mAP_skip_empty"] < 100  # not the {0, 1} misreading


def test_single_label_eval_split_is_handled_explicitly(tmp_path):
    split = dataset({"label": [0, 1, 2, 3, 4, 0]})
    trainer = SCLTrainer(model=model(), args=make_args(tmp_path))
    with pytest.warns(UserWarning, match="evaluating on the single labels of 'label'"):
        implicit = trainer.evaluate(split)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explicit = SCLTrainer(model=model(), args=make_args(tmp_path, labels_column="label")).evaluate(split)
    assert implicit["eval_mAP"] == pytest.approx(explicit["eval_mAP"], abs=1e-9)


def test_imagefolder_split_trains_and_evaluates(tmp_path):
    for split in ("train", "test"):
        for name in ("cat", "dog", "fox"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for k, image in enumerate(images(4, seed=len(name) + len(split))):
                image.save(folder / f"{k}.png")
    splits = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "data"))
    names = splits["train"].features["label"].names
    args = make_args(tmp_path, labels_column="label", per_device_train_batch_size=4)
    trainer = SCLTrainer(model=create_model("resnet18", num_labels=3, id2label=names, seed=0), args=args,
                         train_dataset=splits["train"], eval_dataset=splits["test"])
    trainer.train()
    assert 0 < trainer.evaluate()["eval_mAP"] <= 100


# ----------------------------------------------------------------------------- images and seeds
def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    image = Image.open(tmp_path / "deep.png")
    assert image.mode in ("I;16", "I")
    rgb = np.asarray(to_rgb(image))
    expected = np.rint(ramp / 257.0)
    assert rgb.shape == (32, 32, 3) and np.abs(rgb[..., 0] - expected).max() <= 1
    assert (rgb == 255).mean() < 0.01 and (np.asarray(image.convert("RGB")) == 255).mean() > 0.9  # PIL clips
    for mode, array in [("F", np.full((4, 4), 0.5, np.float32)), ("L", np.full((4, 4), 128, np.uint8))]:
        assert np.asarray(to_rgb(Image.fromarray(array, mode=mode)))[0, 0, 0] == 128
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert np.asarray(to_rgb(rgba)).min() == 255  # transparent over white


def test_same_seed_same_initial_weights(tmp_path):
    torch.manual_seed(1)
    first = create_model("resnet18", num_labels=C, seed=0).state_dict()
    torch.manual_seed(2)
    second = create_model("resnet18", num_labels=C, seed=0).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(create_model("resnet18", num_labels=C, seed=1).state_dict()["timm_model.fc.weight"],
                           first["timm_model.fc.weight"])
    built = []
    for noise in (3, 4):
        torch.manual_seed(noise)
        trainer = SCLTrainer(model_init=lambda: create_model("resnet18", num_labels=C), args=make_args(tmp_path))
        built.append(trainer.model.state_dict()["timm_model.fc.weight"].clone())
    assert torch.equal(*built)
    with pytest.raises(ValueError, match="exactly one of model= and model_init="):
        SCLTrainer(args=make_args(tmp_path))
