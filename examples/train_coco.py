"""Train a multi-label classifier on MS-COCO from one positive label per image, and report its test mAP.

    accelerate launch examples/train_coco.py --coco_root /data/coco --output_dir out/coco-scl
    python examples/train_coco.py --coco_root /data/coco --output_dir out/coco-scl        # one process

    # the assume-negative baseline, a learning-rate choice of the protocol's range, a quick look:
    accelerate launch examples/train_coco.py --coco_root /data/coco --output_dir out/coco-an --method an
    accelerate launch examples/train_coco.py --coco_root /data/coco --output_dir out/coco-lr1e-4 \
        --learning_rate 1e-4
    python examples/train_coco.py --coco_root /data/coco --output_dir out/try --max_train_samples 200 \
        --max_eval_samples 100 --num_train_epochs 1

``--coco_root`` holds ``annotations/instances_{train,val}2014.json`` and the ``train2014/`` and
``val2014/`` image folders (``--coco_year 2017`` for the 2017 names). Labels and splits follow Cole et
al. (CVPR 2021): one positive drawn per training image (seed 1200), official train split 80/20 into
train / validation, official val as the test set with all its labels. Protocol defaults (ResNet-50
with ImageNet weights, 448 px, 10 epochs, Adam at 1e-5 constant, batch 8, best epoch by validation
mAP) are explained in examples/common.py; every one can be overridden, and every SCLConfig /
TrainingArguments option is accepted (``--help`` lists them).

Writes ``<output_dir>/test_results.json`` (``eval_mAP`` on the test split, ×100), the model in the
transformers format under ``<output_dir>/final`` (``AutoModelForImageClassification.from_pretrained``
loads it), checkpoints and the training log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from common import DataArguments, parse_arguments, setup_logging, train_and_test

from scl_hf.data import COCO_CLASS_NAMES, load_coco

# the loss options left unset take COCO's published values (scl_hf/losses/defaults.py)
LOSS_DEFAULTS = {"dataset_defaults": "coco"}


@dataclass
class CocoArguments(DataArguments):
    coco_root: str | None = field(
        default=None,
        metadata={"help": "COCO folder: annotations/, train2014/, val2014/ (required).", "required": True},
    )
    coco_year: int = field(default=2014, metadata={"help": "2014 (the protocol's) or 2017 file names."})


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    data_args, model_args, training_args = parse_arguments(CocoArguments, argv, defaults=LOSS_DEFAULTS)
    setup_logging(training_args)
    with training_args.main_process_first(desc="build the COCO splits"):
        data = load_coco(
            data_args.coco_root, year=data_args.coco_year, seed=data_args.protocol_seed,
            cache_dir=data_args.cache_dir, skip_corrupt_images=data_args.skip_corrupt_images,
            num_proc=data_args.num_proc,
        )
    return train_and_test(data, COCO_CLASS_NAMES, data_args, model_args, training_args)


if __name__ == "__main__":
    main()
