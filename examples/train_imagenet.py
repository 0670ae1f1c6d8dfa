"""Train on ImageNet's single labels and evaluate multi-label mAP with the ReaL labels (Beyer et al. 2020).

    accelerate launch examples/train_imagenet.py --train_dir /data/imagenet/train \
        --val_dir /data/imagenet/val --real_json /data/real.json --output_dir out/imagenet-scl
    python examples/train_imagenet.py --train_dir ... --val_dir ... --real_json ... --output_dir ...

    # training images from a datasets table instead of a folder tree (a hub name, a parquet folder,
    # or a Dataset.save_to_disk folder), with 1 % held out to watch each epoch:
    accelerate launch examples/train_imagenet.py --train_dataset imagenet-1k --val_dir /data/imagenet/val \
        --real_json /data/real.json --output_dir out/imagenet-scl --val_fraction 0.01

Data: ``--train_dir`` is an ImageFolder tree ``<class folder, e.g. n01440764>/<image>`` (class index =
sorted folder order, the order ReaL's ids use), or ``--train_dataset`` any table with ``image`` and a
ClassLabel ``label`` in that same order. ``--val_dir`` holds the 50,000 validation images (flat or in
class folders) and ``--real_json`` is ReaL's ``real.json`` (one list of class ids per validation
image, in file-name order); images with an empty ReaL list are left out (46,837 remain), as ReaL does.
The test split is that validation set with its ReaL labels; the reported number is ``eval_mAP`` on it.
With ``--val_fraction f`` a part of the training images is held out and evaluated each epoch; it has
single labels only, so its mAP is a proxy (model selection by it is far weaker than COCO/VOC's).
Without it (the default) nothing is evaluated during training (``eval_strategy="no"``).

Defaults differ from COCO/VOC in two documented ways: 224 px (ImageNet's usual resolution; 448 px
quadruples the cost of 1.28M images per epoch) and therefore ``bank_size=7`` (ResNet-50's grid at
224 px). ``--pretrained True`` (the shared default) starts from timm's ImageNet weights, which were
trained on these very images with these single labels: the run is then a fine-tune that compares
methods from the same starting point. For a from-scratch run pass ``--pretrained False`` and an
ImageNet schedule (e.g. ``--num_train_epochs 90 --learning_rate 1e-3 --lr_scheduler_type cosine``).

The bank: 1.28M images × 1000 classes does not fit in the dense layout (heatmaps at S=7 are
N·C·S²·2 bytes ≈ 125 GB, 500 GB at S=14; the trainer refuses to start when the disk is too small),
so this example defaults ``--bank_layout sparse``: heatmaps of the observed class and the
``--bank_top_k`` likeliest others per image only (docs/bank.md). (Against an scl_hf older than
``SCLConfig.bank_layout`` the default is skipped and the bank is dense: then use ``--method cl`` or
``en``, whose N×C prediction bank is 5 GB, or ``--max_train_samples``.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from common import DataArguments, has_config_field, parse_arguments, setup_logging, train_and_test
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from scl_hf.data import load_imagenet_real

#: What ImageNet changes in the shared protocol defaults (see the module docstring).
# method "scl": the default role+scl keeps an N×C table of estimates with Adam's moments, ~15 GB at ImageNet's size
IMAGENET_DEFAULTS: dict = {"image_size": 224, "bank_size": 7, "method": "scl"}
if has_config_field("bank_layout"):  # absent before scl_hf's sparse bank: keep this example runnable there
    IMAGENET_DEFAULTS["bank_layout"] = "sparse"


@dataclass
class ImageNetArguments(DataArguments):
    train_dir: str | None = field(
        default=None, metadata={"help": "ImageFolder tree of the training images: <class folder>/<image>."}
    )
    train_dataset: str | None = field(
        default=None,
        metadata={"help": "Instead of --train_dir: a datasets hub name or local path with image + ClassLabel "
                  "label columns, or a Dataset.save_to_disk folder."},
    )
    train_split: str = field(default="train", metadata={"help": "Split of --train_dataset to train on."})
    val_dir: str | None = field(
        default=None, metadata={"help": "The ImageNet validation images (required).", "required": True}
    )
    real_json: str | None = field(
        default=None, metadata={"help": "ReaL's real.json, one id list per validation image (required).",
                                "required": True}
    )
    val_fraction: float = field(
        default=0.0,
        metadata={"help": "Hold out this fraction of the training images, evaluated each epoch."},
    )


def adjust_defaults(namespace) -> dict:
    """No validation split unless --val_fraction: then nothing to evaluate during training."""
    return {} if namespace.val_fraction > 0 else {"eval_strategy": "no"}


def training_source(data_args: ImageNetArguments) -> str | Dataset:
    if bool(data_args.train_dir) == bool(data_args.train_dataset):
        raise SystemExit("give exactly one of --train_dir (an ImageFolder tree) or --train_dataset")
    if data_args.train_dir:
        return data_args.train_dir
    source = data_args.train_dataset
    if os.path.isdir(source) and os.path.exists(os.path.join(source, "state.json")):
        return load_from_disk(source)
    if os.path.isdir(source) and os.path.exists(os.path.join(source, "dataset_dict.json")):
        return load_from_disk(source)[data_args.train_split]
    return load_dataset(source, split=data_args.train_split, cache_dir=data_args.cache_dir)


def _single_label_list(label: int) -> dict:
    return {"labels": [label]}


def with_label_lists(data: DatasetDict) -> DatasetDict:
    """The held-out training part gets ``labels = [label]`` so that it can be evaluated like the test set."""
    if "validation" not in data or "labels" in data["validation"].column_names:
        return data
    validation = data["validation"].map(_single_label_list, input_columns="label", desc="labels = [label]")
    return DatasetDict({**data, "validation": validation})


def readable_names(names: list[str]) -> list[str]:
    """ImageNet wordnet ids (n01440764) → timm's descriptions (tench, Tinca tinca): a readable id2label."""
    try:
        from timm.data import ImageNetInfo
    except ImportError:  # older timm
        return names
    info = ImageNetInfo()
    known = set(info.label_names())
    if not names or not all(name in known for name in names):
        return names
    return [info.label_name_to_description(name) for name in names]


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    data_args, model_args, training_args = parse_arguments(
        ImageNetArguments, argv, defaults=IMAGENET_DEFAULTS, adjust_defaults=adjust_defaults
    )
    setup_logging(training_args)
    with training_args.main_process_first(desc="build the ImageNet / ReaL splits"):
        data = load_imagenet_real(
            training_source(data_args), data_args.val_dir, data_args.real_json, seed=data_args.protocol_seed,
            cache_dir=data_args.cache_dir, val_fraction=data_args.val_fraction,
            skip_corrupt_images=data_args.skip_corrupt_images, num_proc=data_args.num_proc,
        )
        data = with_label_lists(data)
    names = readable_names(list(data["train"].features["label"].names))
    return train_and_test(data, names, data_args, model_args, training_args)


if __name__ == "__main__":
    main()
