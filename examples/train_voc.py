"""Train a multi-label classifier on PASCAL VOC from one positive label per image, and report its test mAP.

    accelerate launch examples/train_voc.py --voc_root /data/voc --output_dir out/voc-scl
    python examples/train_voc.py --voc_root /data/voc --output_dir out/voc-scl        # one process

    # the assume-negative baseline; a quick look at a few images:
    accelerate launch examples/train_voc.py --voc_root /data/voc --output_dir out/voc-an --method an
    python examples/train_voc.py --voc_root /data/voc --output_dir out/try --max_train_samples 200 \
        --max_eval_samples 100 --num_train_epochs 1

``--voc_root`` is the folder holding ``VOCdevkit/``, the ``VOCdevkit`` folder itself or ``VOC2012/``
itself; the labels come from ``ImageSets/Main/<class>_{train,val}.txt`` ("difficult" counts as
negative), the images from ``JPEGImages/``. Labels and splits follow Cole et al. (CVPR 2021): one
positive drawn per training image (seed 1200), official train split 80/20 into train / validation,
official val as the test set with all its labels (VOC 2012: 4,574 / 1,143 / 5,823 images). Protocol
defaults (ResNet-50 with ImageNet weights, 448 px, 10 epochs, Adam at 1e-5 constant, batch 8, best
epoch by validation mAP) are explained in examples/common.py; all can be overridden (``--help``).

Writes ``<output_dir>/test_results.json`` (``eval_mAP`` on the test split, ×100) and the model in
the transformers format under ``<output_dir>/final``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from common import DataArguments, parse_arguments, setup_logging, train_and_test

from scl_hf.data import VOC_CLASS_NAMES, load_voc

# the loss options left unset take VOC's published values (scl_hf/losses/defaults.py)
LOSS_DEFAULTS = {"dataset_defaults": "voc"}


@dataclass
class VocArguments(DataArguments):
    voc_root: str | None = field(
        default=None,
        metadata={"help": "Folder holding VOCdevkit/ (or VOCdevkit/ or VOC2012/ itself) (required).",
                  "required": True},
    )
    voc_year: int = field(default=2012, metadata={"help": "VOC release (the protocol's is 2012)."})


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    data_args, model_args, training_args = parse_arguments(VocArguments, argv, defaults=LOSS_DEFAULTS)
    setup_logging(training_args)
    with training_args.main_process_first(desc="build the VOC splits"):
        data = load_voc(
            data_args.voc_root, year=data_args.voc_year, seed=data_args.protocol_seed,
            cache_dir=data_args.cache_dir, skip_corrupt_images=data_args.skip_corrupt_images,
            num_proc=data_args.num_proc,
        )
    return train_and_test(data, VOC_CLASS_NAMES, data_args, model_args, training_args)


if __name__ == "__main__":
    main()
