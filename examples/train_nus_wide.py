"""Train a multi-label classifier on NUS-WIDE (81 concepts) from one positive label per image; report test mAP.

    accelerate launch examples/train_nus_wide.py --nus_root /data/nuswide --output_dir out/nus-scl
    python examples/train_nus_wide.py --nus_root /data/nuswide --output_dir out/try --max_train_samples 200 \
        --max_eval_samples 100 --num_train_epochs 1

``--nus_root`` holds Cole et al.'s formatted files (``formatted_{train,val}_{images,labels}.npy``) and the
``Flickr/`` image folder (scl_hf/data/nus_wide.py). One positive drawn per training image (seed 1200), official
train split 80/20 into train / validation, official test as the test set; images without any of the 81 concepts
leave the training split only. The loss options take NUS-WIDE's published values (``--dataset_defaults nuswide``:
expected positives 1.9, EM α 0.1, APL β 0.2, ...); protocol defaults as in examples/common.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from common import DataArguments, parse_arguments, setup_logging, train_and_test

from scl_hf.data import NUS_WIDE_CLASS_NAMES, load_nus_wide

# the loss options left unset take NUS-WIDE's published values (scl_hf/losses/defaults.py)
LOSS_DEFAULTS = {"dataset_defaults": "nuswide"}


@dataclass
class NusWideArguments(DataArguments):
    nus_root: str | None = field(
        default=None,
        metadata={"help": "Folder with formatted_*_{images,labels}.npy and Flickr/ (required).", "required": True},
    )


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    data_args, model_args, training_args = parse_arguments(NusWideArguments, argv, defaults=LOSS_DEFAULTS)
    setup_logging(training_args)
    with training_args.main_process_first(desc="build the NUS-WIDE splits"):
        data = load_nus_wide(data_args.nus_root, seed=data_args.protocol_seed, cache_dir=data_args.cache_dir,
                             skip_corrupt_images=data_args.skip_corrupt_images, num_proc=data_args.num_proc)
    return train_and_test(data, NUS_WIDE_CLASS_NAMES, data_args, model_args, training_args)


if __name__ == "__main__":
    main()
