"""What train_coco.py, train_voc.py and train_imagenet.py share: arguments, protocol defaults, the run.

Each example only says how to load its data (a ``DatasetDict`` with ``train``, optionally ``validation``,
and ``test``) and which class names it has; everything else (command line, model, training,
evaluation, saving) is here, so that the three runs are built the same way and their numbers compare.

The defaults follow the single-positive protocol of Cole et al. (CVPR 2021), which the published
COCO / VOC numbers were measured with (their ``train.py``, "end_to_end" mode):
- ResNet-50 with ImageNet weights, 448×448 images, 10 epochs, batch size 8 (they tried 8 and 16);
- ``torch.optim.Adam`` at a constant learning rate, no weight decay. transformers offers no plain
  "adam" optimizer; ``adamw_torch`` with ``weight_decay=0`` performs exactly Adam's update, so that is
  the default, with ``lr_scheduler_type="constant"`` and no warm-up;
- learning rate 1e-5: they searched {1e-2, 1e-3, 1e-4, 1e-5} × batch {8, 16} and kept the best run on
  validation mAP; 1e-5 is a sound start for a pretrained ResNet-50 with Adam. Search that range
  (``--learning_rate``) to reproduce their protocol fully;
- validation mAP (full labels of the held-out 20 %) after every epoch, and the test mAP reported for
  the epoch with the best validation mAP: ``eval_strategy=save_strategy="epoch"``,
  ``load_best_model_at_end=True``, ``metric_for_best_model="mAP"``.
Every default can be overridden on the command line (``--num_train_epochs 20``, ``--method an``, ...).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import datasets
import transformers
from datasets import Dataset, DatasetDict
from transformers import HfArgumentParser

from scl_hf import SCLConfig, SCLTrainer, create_model

logger = logging.getLogger("scl_hf.examples")

#: SCLConfig / TrainingArguments defaults of the Cole et al. protocol (see the module docstring).
PROTOCOL_DEFAULTS: dict = {
    "method": "role+scl",
    "image_size": 448,
    "bank_size": 14,  # ResNet-50's feature grid at 448 px
    "num_train_epochs": 10,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 32,
    "learning_rate": 1e-5,
    "optim": "adamw_torch",
    "weight_decay": 0.0,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "load_best_model_at_end": True,
    "metric_for_best_model": "mAP",
    "greater_is_better": True,
    "logging_steps": 50,
    # every ResNet parameter gets a gradient: skip DDP's extra autograd traversal per step
    "ddp_find_unused_parameters": False,
    "dataloader_num_workers": min(4, os.cpu_count() or 1),  # JPEG decoding at 448 px needs workers
}

FINAL_MODEL_DIR = "final"
METRICS_FILE = "test_results.json"  # what Trainer.save_metrics("test", ...) writes


@dataclass
class DataArguments:
    """Options every example shares; each example subclasses this with its own dataset paths."""

    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Arrow cache of the built splits (default: HF_DATASETS_CACHE)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows (quick runs, debugging)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation and N test rows (quick runs)."}
    )
    skip_corrupt_images: bool = field(
        default=False,
        metadata={"help": "Open every image once while building and leave unreadable ones out (logged)."},
    )
    protocol_seed: int = field(
        default=1200,
        metadata={"help": "Seed of the single-positive draw and of the train/validation split."},
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes used to build the splits."})


@dataclass
class ModelArguments:
    model_name: str = field(
        default="resnet50",
        metadata={"help": "Any timm model name (resnet50, convnext_tiny, efficientnet_b0, ...)."},
    )
    pretrained: bool = field(
        default=True,
        metadata={"help": "Start from the ImageNet weights timm has for model_name (the protocol). "
                  "--pretrained False trains from scratch."},
    )


def parse_arguments(
    data_class: type[DataArguments],
    argv: Sequence[str] | None = None,
    defaults: dict | None = None,
    adjust_defaults: Callable[[object], dict] | None = None,
) -> tuple[DataArguments, ModelArguments, SCLConfig]:
    """Parse (data, model, SCLConfig) with the protocol's defaults injected, so any can be overridden.

    The defaults go in through ``parser.set_defaults`` rather than into the dataclasses, because
    SCLConfig's own defaults belong to the library, not to one benchmark protocol.
    ``adjust_defaults(namespace)`` may return more defaults that depend on other options (it sees
    a first parse of the command line). ``load_best_model_at_end`` follows ``eval_strategy`` when the
    user turns evaluation off, instead of failing in TrainingArguments' consistency check.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((data_class, ModelArguments, SCLConfig))
    parser.set_defaults(**{**PROTOCOL_DEFAULTS, **(defaults or {})})
    namespace, _ = parser.parse_known_args(argv)
    extra = dict(adjust_defaults(namespace)) if adjust_defaults else {}
    strategy = extra.get("eval_strategy", namespace.eval_strategy)
    if str(strategy) == "no" and not _given(argv, "load_best_model_at_end"):
        extra["load_best_model_at_end"] = False
    if extra:
        parser.set_defaults(**extra)
    data_args, model_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return data_args, model_args, training_args


def _given(argv: Sequence[str], name: str) -> bool:
    """Whether ``--name`` (or ``--no_name``) appears on the command line."""
    options = {f"--{name}", f"--{name.replace('_', '-')}", f"--no_{name}", f"--no-{name.replace('_', '-')}"}
    return any(arg.split("=", 1)[0] in options for arg in argv)


def setup_logging(training_args: SCLConfig) -> None:
    """Our progress lines on the main process only; the libraries keep their levels unless --log_level."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    if training_args.log_level != "passive":  # --log_level info|debug|... also reaches the libraries
        level = training_args.get_process_log_level()
        datasets.utils.logging.set_verbosity(level)
        transformers.utils.logging.set_verbosity(level)


def has_config_field(name: str) -> bool:
    return name in {f.name for f in fields(SCLConfig)}


def first_rows(dataset: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` rows (rows are in protocol order, so a quick run is still a fixed subset)."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.select(range(limit))


def limit_splits(data: DatasetDict, data_args: DataArguments) -> DatasetDict:
    limits = {"train": data_args.max_train_samples}
    return DatasetDict(
        {split: first_rows(ds, limits.get(split, data_args.max_eval_samples)) for split, ds in data.items()}
    )


def evaluate_split(trainer: SCLTrainer, dataset: Dataset, prefix: str = "eval") -> dict[str, float]:
    """``trainer.evaluate`` on a plain ``datasets.Dataset`` that was not given to the constructor.

    SCLTrainer wraps its evaluation sets (whole-image transform, multi-hot targets) when it is built;
    ``Trainer.evaluate(eval_dataset=...)`` would hand the raw rows to the collator, so the extra split
    is wrapped the same way first.
    """
    views = trainer._eval_views(dataset, trainer.args)
    return trainer.evaluate(eval_dataset=views, metric_key_prefix=prefix)


def build_model(model_args: ModelArguments, class_names: Sequence[str]):
    """``create_model`` with a message that says what to do when the pretrained weights cannot be fetched.

    Without this, a machine with no access to the Hugging Face Hub only shows a long download traceback.
    """
    try:
        return create_model(
            model_args.model_name, num_labels=len(class_names), pretrained=model_args.pretrained,
            id2label=list(class_names),
        )
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError (offline, no network) is an OSError
        if not model_args.pretrained:
            raise
        raise SystemExit(
            f"could not load the pretrained weights of {model_args.model_name!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0]})\n"
            "The protocol starts from timm's ImageNet weights, fetched from the Hugging Face Hub on first "
            "use. Connect once, or fetch them where there is a network and copy the HF_HOME cache over: "
            f"python -c \"import timm; timm.create_model('{model_args.model_name}', pretrained=True)\"\n"
            "Or train from scratch with --pretrained False (far below the published numbers)."
        ) from err


def train_and_test(
    data: DatasetDict,
    class_names: Sequence[str],
    data_args: DataArguments,
    model_args: ModelArguments,
    training_args: SCLConfig,
) -> dict[str, float]:
    """Train on ``train``, validate on ``validation`` each epoch, report mAP on ``test``; save model + JSON.

    Returns the test metrics (``eval_mAP``, ...), also written to ``<output_dir>/test_results.json``;
    the model (best validation epoch when ``load_best_model_at_end``) goes to ``<output_dir>/final``.
    """
    data = limit_splits(data, data_args)
    for split, ds in data.items():
        logger.info("%s: %d images", split, len(ds))
    validation = data.get("validation")
    if validation is None and training_args.eval_strategy != "no":
        raise ValueError("there is no validation split to evaluate during training: pass --eval_strategy no")

    transformers.set_seed(training_args.seed)  # the head's initialisation is part of the run
    model = build_model(model_args, class_names)
    trainer = SCLTrainer(
        model=model, args=training_args, train_dataset=data["train"], eval_dataset=validation
    )

    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_metrics = dict(train_result.metrics, train_samples=len(data["train"]))
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()

    metrics = evaluate_split(trainer, data["test"], prefix="eval")
    metrics.update(test_samples=len(data["test"]), num_processes=trainer.accelerator.num_processes)
    if trainer.state.best_model_checkpoint:
        metrics["best_model_checkpoint"] = trainer.state.best_model_checkpoint
    trainer.log_metrics("test", metrics)
    trainer.save_metrics("test", metrics)  # <output_dir>/test_results.json (and all_results.json)

    final_dir = os.path.join(training_args.output_dir, FINAL_MODEL_DIR)
    trainer.save_model(final_dir)
    if trainer.is_world_process_zero():
        print(f"test eval_mAP: {metrics['eval_mAP']:.2f}  ({len(data['test'])} images)")
        print(f"metrics: {Path(training_args.output_dir) / METRICS_FILE}")
        print(f"model:   {final_dir}")
    trainer.end_training()
    return metrics
