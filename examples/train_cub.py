"""Train a multi-label classifier on CUB-200-2011's 312 attributes from one positive per image; report test mAP.

    accelerate launch examples/train_cub.py --cub_root /data/cub --output_dir out/cub-scl
    python examples/train_cub.py --cub_root /data/cub --output_dir out/try --max_train_samples 200 \
        --max_eval_samples 100 --num_train_epochs 1

``--cub_root`` is the folder ``CUB_200_2011.tgz`` was extracted in (``CUB_200_2011/`` and ``attributes.txt``) or
``CUB_200_2011/`` itself (scl_hf/data/cub.py). One positive attribute drawn per training image (seed 1200),
official train split 80/20 into train / validation, official test as the test set. The loss options take CUB's
published values (``--dataset_defaults cub``: expected positives 31.4, EM α 0.01, APL β 0.4, ...); protocol
defaults as in examples/common.py (Cole et al. and Zhou et al. use learning rate 1e-4 on CUB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from common import DataArguments, parse_arguments, setup_logging, train_and_test

from scl_hf.data import load_cub

# the loss options left unset take CUB's published values (scl_hf/losses/defaults.py)
LOSS_DEFAULTS = {"dataset_defaults": "cub"}


@dataclass
class CubArguments(DataArguments):
    cub_root: str | None = field(
        default=None,
        metadata={"help": "Folder holding CUB_200_2011/ and attributes.txt, or CUB_200_2011/ (required).",
                  "required": True},
    )


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    data_args, model_args, training_args = parse_arguments(CubArguments, argv, defaults=LOSS_DEFAULTS)
    setup_logging(training_args)
    with training_args.main_process_first(desc="build the CUB splits"):
        data = load_cub(data_args.cub_root, seed=data_args.protocol_seed, cache_dir=data_args.cache_dir,
                        skip_corrupt_images=data_args.skip_corrupt_images, num_proc=data_args.num_proc)
    names = data["train"].features["label"].names
    return train_and_test(data, names, data_args, model_args, training_args)


if __name__ == "__main__":
    main()
