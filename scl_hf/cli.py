"""`scl-hf`: train, evaluate, export, push and describe multi-label classifiers trained from single labels.

    scl-hf train synthetic --tiny --output_dir runs/demo     # a seconds-long run on a CPU
    scl-hf export runs/demo runs/demo-release                 # trainer output dir or checkpoint-* → release
    scl-hf eval runs/demo-release synthetic --tiny            # prints eval_mAP
    scl-hf card runs/demo-release                             # prints the model card
    scl-hf push runs/demo-release your-name/demo-model        # uploads the release files only
    scl-hf train imagefolder photos/ --output_dir runs/mine   # your own data: imagefolder DIR | hub NAME | parquet FILES
    scl-hf predict a.jpg b.jpg --model runs/mine/final        # labels ≥ threshold + class-map overlays (PNG)

A release folder loads without scl_hf: AutoModelForImageClassification.from_pretrained(folder),
pipeline("image-classification", model=folder, top_k=<number of classes>) or
timm.create_model("local-dir:" + folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_data import DATASETS, OWN_DATA, TINY, CLIError, class_names, load_dataset

__all__ = ["CLIError", "build_parser", "class_names", "load_dataset", "main"]
RUN_INFO = "scl_hf_run.json"  # what the CLI knows about a run and the trainer does not (dataset, initialisation)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line (the full usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- arguments
def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS + OWN_DATA, help="which dataset: %(choices)s")
    parser.add_argument("paths", nargs="*", metavar="SOURCE",
                        help="own data: the folder (imagefolder), the dataset name or local copy (hub), the files (parquet)")
    group = parser.add_argument_group("data")
    group.add_argument("--coco_root", help="COCO folder holding annotations/, train2014/ and val2014/")
    group.add_argument("--voc_root", help="folder holding VOCdevkit/ (or VOCdevkit, or VOC2012 itself)")
    group.add_argument("--nus_root", help="NUS-WIDE folder: Cole et al.'s formatted_*.npy files and Flickr/")
    group.add_argument("--cub_root", help="folder holding CUB_200_2011/ and attributes.txt (the extracted tgz)")
    group.add_argument("--imagenet_train", help="ImageNet train folder (one sub-folder per class)")
    group.add_argument("--imagenet_val", help="ImageNet validation image folder")
    group.add_argument("--real_json", help="ReaL multi-label file (real.json) for the validation images")
    group.add_argument("--cache_dir", help="datasets cache for the built splits (default: datasets' own)")
    group.add_argument("--num_train", type=int, help="synthetic: training images (default 2000)")
    group.add_argument("--num_test", type=int, help="synthetic: test images (default 500)")
    group.add_argument("--data_seed", type=int, default=0, help="synthetic: generation seed (default 0)")
    group.add_argument("--image_column", help="own data: image column (default: image)")
    group.add_argument("--label_column", help="own data: observed labels of the train split (default: label)")
    group.add_argument("--labels_column", help="own data: all positive labels of the test split (default: labels; "
                       "a test split with only --label_column is evaluated on its single labels)")
    group.add_argument("--test_files", nargs="+", help="parquet: files of the test split")
    group.add_argument("--test_size", type=float, default=0.2,
                       help="own data without a test split: share of the training rows held out (default 0.2)")
    group.add_argument("--tiny", action="store_true",
                       help="smoke run: 48 training / 24 test images, 64 px, 2 epochs (any dataset)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="scl-hf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"scl-hf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model and write a release folder to OUTPUT_DIR/final",
                           description="Train with SCLTrainer; checkpoints go to --output_dir, the release "
                           "folder (model, preprocessor, card, arguments) to OUTPUT_DIR/final.")
    _add_data_args(train)
    train.add_argument("--model", help="timm model name (default: resnet18 for synthetic, resnet50 otherwise)")
    train.add_argument("--method", default="role+scl", help="loss: an, scl, role+scl, cl+scl, ... (default: %(default)s)")
    train.add_argument("--output_dir", default="runs/scl-hf", help="checkpoints, bank and release (default: %(default)s)")
    train.add_argument("--epochs", type=float, help="training epochs (default: 8 synthetic, 10 otherwise)")
    train.add_argument("--image_size", type=int, help="square input side (default: 96 synthetic, 448 otherwise)")
    train.add_argument("--batch_size", type=int, help="per-device batch size (default: 32 synthetic, 16 otherwise)")
    train.add_argument("--learning_rate", type=float, help="peak learning rate (default: 1e-3 synthetic, 1e-4 otherwise)")
    train.add_argument("--pretrained", action="store_true",
                       help="start from timm's pretrained weights (needs the Hub or its cache; the protocol uses it)")
    train.add_argument("--model_arg", dest="model_args", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                       help="keyword arguments of timm.create_model, e.g. --model_arg output_stride=16 drop_path_rate=0.1")
    train.add_argument("--seed", type=int, default=0, help="training seed (default: 0); also seeds the initial weights")
    train.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                       help="any other SCLConfig / TrainingArguments field, e.g. --set spatial_weight=2 momentum=0.9")

    evaluate = sub.add_parser("eval", help="evaluate a saved model folder on a dataset's test split",
                              description="Load FOLDER (release or checkpoint), check its class names against the "
                              "dataset's and print eval_mAP (and F1) on the test split.")
    evaluate.add_argument("folder", help="release folder or checkpoint-* folder")
    _add_data_args(evaluate)
    evaluate.add_argument("--image_size", type=int, help="input side (default: the folder's recorded size)")
    evaluate.add_argument("--batch_size", type=int, default=32, help="evaluation batch size (default: %(default)s)")

    export = sub.add_parser("export", help="turn a checkpoint or trainer output dir into a release folder",
                            description="SOURCE is a checkpoint-* folder, a folder with config.json + "
                            "model.safetensors, or a trainer output dir (its last checkpoint is used).")
    export.add_argument("source", help="checkpoint-* folder or trainer output dir")
    export.add_argument("destination", help="release folder to write (created; must hold no pickle files)")
    export.add_argument("--image_size", type=int, help="input side (default: the run's image_size)")
    export.add_argument("--dataset", dest="dataset_name", help="dataset name for the card (default: from the run)")

    push = sub.add_parser("push", help="upload a release folder to the Hugging Face Hub",
                          description="Upload exactly config.json, model.safetensors, preprocessor_config.json, "
                          "README.md and training_args.json of FOLDER to REPO_ID (created if needed).")
    push.add_argument("folder", help="release folder (from `scl-hf export` or `scl-hf train`)")
    push.add_argument("repo_id", help="model repository, e.g. your-name/resnet50-coco-scl")
    push.add_argument("--token", help="Hub token with write access (default: HF_TOKEN or `hf auth login`)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--commit_message", default="Upload multi-label classifier (scl-hf)", help="commit message")

    card = sub.add_parser("card", help="render the model card of a release folder",
                          description="Print the model card of FOLDER (metrics and dataset from its existing card, "
                          "configuration from training_args.json); --write saves it as FOLDER/README.md.")
    card.add_argument("folder", help="release folder")
    card.add_argument("--repo_id", help="name the Hub repository in the loading snippets")
    card.add_argument("--write", action="store_true", help="write FOLDER/README.md instead of printing")

    predict = sub.add_parser("predict", help="labels above a threshold and their class maps, per image",
                             description="Print each image's labels with score ≥ --threshold and write, per image, "
                             "the class maps of those labels over the image (PNG) to --output_dir.")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--model", required=True, help="release folder (scl-hf export / train) or checkpoint-*")
    predict.add_argument("--threshold", type=float, default=0.5, help="score threshold (default: %(default)s)")
    predict.add_argument("--output_dir", default="predictions", help="overlay PNGs (default: %(default)s)")
    predict.add_argument("--image_size", type=int, help="input side (default: the folder's recorded size)")
    return parser


# --------------------------------------------------------------------------- KEY=VALUE options
def parse_pairs(pairs: list[str], flag: str) -> dict:
    """KEY=VALUE → {KEY: JSON value, or the string}."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return values


def parse_overrides(pairs: list[str]) -> dict:
    """KEY=VALUE → {KEY: JSON value, or the string}; unknown SCLConfig fields are errors."""
    from dataclasses import fields

    from .config import SCLConfig

    values = parse_pairs(pairs, "--set")
    known = {f.name for f in fields(SCLConfig)}
    unknown = [key for key in values if key not in known]
    if unknown:
        raise CLIError(f"--set {unknown[0]}: SCLConfig has no field {unknown[0]!r}")
    return values


# --------------------------------------------------------------------------- commands
def cmd_train(ns: argparse.Namespace) -> int:
    import torch

    from . import hub
    from .config import SCLConfig
    from .losses import DATASETS as LOSS_DEFAULT_DATASETS
    from .models import create_model
    from .trainer import SCLTrainer

    synthetic = ns.dataset == "synthetic"
    tiny = TINY if ns.tiny else {}
    overrides = parse_overrides(ns.overrides)
    splits = load_dataset(ns)
    names = class_names(splits, ns)
    model_name = ns.model or ("resnet18" if synthetic else "resnet50")
    try:
        model = create_model(model_name, num_labels=len(names), id2label=names, pretrained=ns.pretrained, seed=ns.seed,
                             **parse_pairs(ns.model_args, "--model_arg"))
    except (RuntimeError, OSError) as e:
        raise CLIError(f"cannot create {model_name!r}{' with pretrained weights' if ns.pretrained else ''}: "
                       f"{str(e).splitlines()[0]}") from e
    settings = dict(
        output_dir=ns.output_dir, method=ns.method, seed=ns.seed, data_seed=ns.seed,
        image_size=ns.image_size or tiny.get("image_size") or (96 if synthetic else 448),
        num_train_epochs=ns.epochs or tiny.get("epochs") or (8 if synthetic else 10),
        per_device_train_batch_size=ns.batch_size or tiny.get("batch_size") or (32 if synthetic else 16),
        per_device_eval_batch_size=64, learning_rate=ns.learning_rate or (1e-3 if synthetic else 1e-4),
        weight_decay=1e-4, lr_scheduler_type="cosine", use_cpu=not torch.cuda.is_available(), eval_strategy="epoch",
        save_strategy="epoch", save_total_limit=1, logging_steps=10, report_to="none",
    )
    if ns.dataset in LOSS_DEFAULT_DATASETS:  # the dataset's published loss hyperparameters; --set ones win
        settings["dataset_defaults"] = ns.dataset
    settings.update({k: getattr(ns, k) for k in ("image_column", "label_column", "labels_column") if getattr(ns, k)})
    if ns.tiny:  # two epochs: a one-epoch warm-up leaves the consistency terms one epoch to act (and be logged)
        settings.update(warmup_epochs=1.0, logging_steps=1)  # and six steps in all: log each one
    settings.update(overrides)
    try:
        args = SCLConfig(**settings)
    except (ValueError, TypeError) as e:
        raise CLIError(f"invalid training setting: {e}") from e
    test = splits["test"]
    held_out = "validation" if "validation" in splits else "test"  # named, so metrics say which split
    trainer = SCLTrainer(model=model, args=args, train_dataset=splits["train"],
                         eval_dataset={held_out: splits[held_out]})
    base_model = model.config.pretrained_cfg.get("hf_hub_id") if ns.pretrained else None
    run_info = {"dataset": ns.dataset, "model": model_name, "pretrained": ns.pretrained, "base_model": base_model}
    Path(ns.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(ns.output_dir) / RUN_INFO).write_text(json.dumps(run_info, indent=2) + "\n")
    trainer.train()
    metrics = trainer.evaluate(eval_dataset=trainer._eval_views(test, args), metric_key_prefix="eval_test")
    release = Path(ns.output_dir) / "final"
    if args.should_save:
        hub.export(trainer.model, release, image_size=args.image_size, metrics=metrics, training_args=args,
                   dataset_name=ns.dataset, pretrained=ns.pretrained, base_model=base_model)
    print(f"test mAP: {metrics['eval_test_mAP']:.2f}")
    print(f"release folder: {release}  (AutoModelForImageClassification.from_pretrained({str(release)!r}))")
    trainer.end_training()
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    import tempfile

    import torch

    from . import hub
    from .config import SCLConfig
    from .trainer import SCLTrainer

    folder = Path(ns.folder)
    splits = load_dataset(ns)
    model = hub.load_checkpoint(folder, expected_labels=class_names(splits, ns))
    processor = None
    if not hasattr(model.config, "pretrained_cfg") and (folder / "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(folder)
    size = ns.image_size or recorded_image_size(folder)
    with tempfile.TemporaryDirectory() as tmp:
        columns = {k: getattr(ns, k) for k in ("image_column", "label_column", "labels_column") if getattr(ns, k)}
        args = SCLConfig(output_dir=tmp, method="an", image_size=size, per_device_eval_batch_size=ns.batch_size,
                         use_cpu=not torch.cuda.is_available(), report_to="none", disable_tqdm=True, **columns)
        trainer = SCLTrainer(model=model, args=args, eval_dataset=splits["test"], processing_class=processor)
        metrics = trainer.evaluate()
        trainer.end_training()
    for key in ("eval_mAP", "eval_mAP_skip_empty", "eval_F1_micro", "eval_F1_macro"):
        if key in metrics:
            print(f"{key}: {metrics[key]:.2f}")
    return 0


def recorded_image_size(folder: Path) -> int:
    """The input side a folder was trained/exported with (scl_hf.hub.recorded_image_size), or a CLI error."""
    from .hub import recorded_image_size as recorded

    try:
        return recorded(folder)
    except ValueError as e:
        raise CLIError(f"{e}: pass --image_size") from e


def resolve_checkpoint(source: Path) -> Path:
    """A folder with weights as it is; a trainer output dir → its best (else last) checkpoint."""
    if not source.is_dir():
        raise CLIError(f"{source} is not a folder")
    if (source / "config.json").is_file():
        return source
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(source))
    if last is None:
        raise CLIError(f"{source} is not a checkpoint (no config.json) nor a trainer output dir (no checkpoint-*)")
    state = Path(last) / "trainer_state.json"
    best = json.loads(state.read_text()).get("best_model_checkpoint") if state.is_file() else None
    return Path(best) if best and Path(best).is_dir() else Path(last)


def cmd_export(ns: argparse.Namespace) -> int:
    from . import hub

    source = resolve_checkpoint(Path(ns.source))
    model = hub.load_checkpoint(source)
    metrics, run, args = {}, {}, None
    state = source / "trainer_state.json"
    if state.is_file():
        metrics = hub.latest_eval_metrics(json.loads(state.read_text()).get("log_history", []))
    for folder in (source, source.parent):
        if not run and (folder / RUN_INFO).is_file():
            run = json.loads((folder / RUN_INFO).read_text())
        if args is None and (folder / "training_args.json").is_file():
            args = json.loads((folder / "training_args.json").read_text())
    size = ns.image_size or (args or {}).get("image_size") or recorded_image_size(source)
    out = hub.export(model, ns.destination, image_size=size, metrics=metrics, training_args=args,
                     dataset_name=ns.dataset_name or run.get("dataset"), pretrained=run.get("pretrained"),
                     base_model=run.get("base_model"))
    print(f"exported {source} → {out}")
    return 0


def cmd_push(ns: argparse.Namespace) -> int:
    from . import hub

    info = hub.push(ns.folder, ns.repo_id, token=ns.token, private=ns.private, commit_message=ns.commit_message)
    print(f"pushed {', '.join(p.name for p in hub.release_files(ns.folder))} → {getattr(info, 'commit_url', info)}")
    return 0


def cmd_card(ns: argparse.Namespace) -> int:
    from .model_card import make_model_card

    folder = Path(ns.folder)
    if not (folder / "config.json").is_file():
        raise CLIError(f"{folder} is not a release folder (no config.json)")
    card = make_model_card(folder, repo_id=ns.repo_id)
    if ns.write:
        card.save(folder / "README.md")
        print(f"wrote {folder / 'README.md'}")
    else:
        print(card.content)
    return 0


def cmd_predict(ns: argparse.Namespace) -> int:
    from .predict import predict, save_overlay

    found = predict(ns.images, resolve_checkpoint(Path(ns.model)), threshold=ns.threshold, image_size=ns.image_size)
    out = Path(ns.output_dir)
    for k, item in enumerate(found):
        labels = ", ".join(f"{name} {score:.3f}" for name, score in item.labels) or \
            f"nothing ≥ {ns.threshold:g} (best: {max(item.scores, key=item.scores.get)} {max(item.scores.values()):.3f})"
        path = save_overlay(item, out / f"{k:03d}_{Path(item.source).stem}_maps.png")
        print(f"{item.source}: {labels}  →  {path}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "push": cmd_push, "card": cmd_card,
            "predict": cmd_predict}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `scl-hf` console script; returns the exit code (2 for user errors)."""
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) and argparse's own usage errors (2)
        return int(e.code or 0)
    try:
        return COMMANDS[ns.command](ns)
    except (CLIError, ValueError, OSError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"scl-hf {ns.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
