"""Release folders: export, checked loading and Hub upload (the model card is in `scl_hf.model_card`).

A release folder is what a user of the trained model needs and nothing else: `config.json`,
`model.safetensors`, `preprocessor_config.json`, `README.md` (the model card) and `training_args.json`.
It loads with `AutoModelForImageClassification`, `pipeline("image-classification")` and, for timm
backbones, `timm.create_model("local-dir:…")`, none of which needs `scl_hf` or remote code.

timm backbones are written in the TimmWrapper layout with timm-native weight names (no `timm_model.`
prefix, as on the timm Hub repos), so both transformers and timm read the same file. The
preprocessing recorded there is the evaluation transform of training (whole image squashed to S×S,
bilinear, no centre crop), so a pipeline sees what the evaluation saw.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

from .model_card import (  # the model card's part; its names stay importable from scl_hf.hub
    _METRIC_KEY,
    CARD_MARKER,
    _read_json,
    config_labels,
    make_model_card,
    template_path,  # noqa: F401 (re-export)
    training_args_dict,
)

RELEASE_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "training_args.json")
SHARD_PATTERNS = ("model-*-of-*.safetensors", "model.safetensors.index.json")  # large transformers models
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MULTI_LABEL = "multi_label_classification"
# pretrained_cfg keys that point at the weights the architecture started from, not at these weights
_SOURCE_KEYS = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict")


# --------------------------------------------------------------------------- small helpers
def _write_json(path: Path, data: Mapping) -> Path:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path


def write_training_args(args: Any, folder: str | Path) -> Path:
    """training_args.json (the readable, token-free twin of Trainer's pickled training_args.bin)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return _write_json(folder / "training_args.json", training_args_dict(args))


def latest_eval_metrics(log_history: Sequence[Mapping]) -> dict[str, float]:
    """The most recent evaluation entry of a Trainer's log history that has an mAP."""
    for entry in reversed(list(log_history)):
        if any(_METRIC_KEY.match(k) and k.startswith("eval_") for k in entry):
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return {}


def release_files(folder: str | Path) -> list[Path]:
    """The files of a release folder that exist, in upload order (never banks, checkpoints or pickles)."""
    folder = Path(folder)
    found = [folder / name for name in RELEASE_FILES if (folder / name).is_file()]
    for pattern in SHARD_PATTERNS:
        found += sorted(p for p in folder.glob(pattern) if p.is_file())
    return found


def _pickles(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES) if folder.is_dir() else []


# --------------------------------------------------------------------------- export
def export(model, folder: str | Path, *, image_size: int | None = None, metrics: Mapping[str, float] | None = None,
           training_args: Any = None, dataset_name: str | None = None, processor=None, **card_options) -> Path:
    """Write `model` as a release folder (see the module doc) and return its path.

    `image_size` defaults to `training_args.image_size`, then to the model's own input size. `processor`
    (transformers-native models) supplies mean/std when the model config has none. `card_options` go to
    `make_model_card` (repo_id, base_model, pretrained, model_name).
    """
    from transformers import PreTrainedModel

    model = getattr(model, "module", model)  # DistributedDataParallel
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"export needs a transformers model (scl_hf.create_model gives one), got {type(model).__name__}")
    folder = Path(folder)
    if pickles := _pickles(folder):
        raise ValueError(f"{folder} already holds pickle files {pickles}: export into a new or clean folder")
    folder.mkdir(parents=True, exist_ok=True)
    args = training_args_dict(training_args) if training_args is not None else None
    size = int(image_size or (args or {}).get("image_size") or _native_size(model))
    _write_release(model, folder, size, processor)
    if args is not None:
        _write_json(folder / "training_args.json", args)
    else:
        (folder / "training_args.json").unlink(missing_ok=True)  # a stale one would describe another run
    (folder / "README.md").unlink(missing_ok=True)  # so that the card takes nothing from an earlier export
    make_model_card(folder, metrics=metrics, training_args=args, dataset_name=dataset_name, **card_options).save(
        folder / "README.md")
    if pickles := _pickles(folder):
        raise RuntimeError(f"export wrote pickle files {pickles} into {folder}; please report this")
    return folder


def _native_size(model) -> int:
    cfg = getattr(model.config, "pretrained_cfg", None) or {}
    if cfg.get("input_size"):
        return int(cfg["input_size"][-1])
    size = getattr(model.config, "image_size", None)
    return int(size) if isinstance(size, int) else 224


def _release_config(model):
    config = copy.deepcopy(model.config)
    config.problem_type = MULTI_LABEL
    config.architectures = [type(model).__name__]
    return config


def _write_timm_configs(model, folder: Path, size: int) -> None:
    config = _release_config(model)
    cfg = {k: v for k, v in dict(config.pretrained_cfg or {}).items() if k not in _SOURCE_KEYS and k != "num_classes"}
    old = tuple(cfg.get("input_size") or (3, size, size))
    # timm's eval transform with crop_mode="squash" and crop_pct=1: Resize((S, S)) then a no-op centre crop,
    # i.e. exactly EvalTransform (PIL bilinear on the whole image)
    cfg.update(input_size=[int(old[0]), size, size], crop_pct=1.0, crop_mode="squash", interpolation="bilinear")
    for key in ("test_input_size", "test_crop_pct", "test_pool_size"):
        cfg.pop(key, None)
    if tuple(old[1:]) != (size, size):
        cfg["pool_size"] = None  # as timm's own export: the feature grid changed with the input size
    config.pretrained_cfg = cfg
    # timm 1.0.31 records num_classes in model_args; TimmWrapper passes num_classes too → "multiple values for
    # keyword argument". And timm's local-dir reader needs a dict here, not null.
    config.model_args = {k: v for k, v in (config.model_args or {}).items() if k != "num_classes"}
    config.save_pretrained(folder)
    _write_json(folder / "preprocessor_config.json", {
        "image_processor_type": "TimmWrapperImageProcessor", "architecture": config.architecture, "pretrained_cfg": cfg,
    })


def _write_transformers_configs(model, folder: Path, size: int, processor) -> None:
    from .models import normalization_for

    _release_config(model).save_pretrained(folder)
    mean, std = normalization_for(model, processor)
    # ViTImageProcessor is the plain "resize to H×W, rescale, normalise" processor: our eval transform
    _write_json(folder / "preprocessor_config.json", {
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": size, "width": size},
        "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(mean), "image_std": list(std),
    })


def _write_release(model, folder: Path, size: int, processor=None, weights: bool = True) -> None:
    """config.json + preprocessor_config.json (+ the weights): everything but the card and the arguments."""
    from transformers import TimmWrapperForImageClassification

    if isinstance(model, TimmWrapperForImageClassification):
        if weights:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in model.timm_model.state_dict().items()}
            save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        _write_timm_configs(model, folder, size)
    else:
        if weights:
            model.save_pretrained(folder)  # safetensors; transformers 5 never writes pickles
        _write_transformers_configs(model, folder, size, processor)


# --------------------------------------------------------------------------- checked loading
# (config_labels, which the card needs too, is in model_card.py)
def check_labels(found: Sequence[str], expected: Sequence[str], where: str = "the checkpoint") -> None:
    """Fail, naming the first difference, when two class lists disagree (order matters: it is the output order)."""
    found, expected = list(map(str, found)), list(map(str, expected))
    if found == expected:
        return
    if len(found) != len(expected):
        raise ValueError(f"{where} has {len(found)} classes but {len(expected)} were expected "
                         f"(first ones: {found[:5]} vs {expected[:5]})")
    i = next(i for i, (a, b) in enumerate(zip(found, expected)) if a != b)
    raise ValueError(f"{where} has different class names: class {i} is {found[i]!r}, expected {expected[i]!r}")


def recorded_image_size(folder: str | Path) -> int:
    """The input side a folder was trained/exported with: training_args.json, else its preprocessing config."""
    folder = Path(folder)
    for path in (folder / "training_args.json", folder.parent / "training_args.json"):
        if path.is_file() and (size := _read_json(path).get("image_size")):
            return int(size)
    config = _read_json(folder / "config.json")
    if config.get("pretrained_cfg", {}).get("input_size"):
        return int(config["pretrained_cfg"]["input_size"][-1])
    proc = folder / "preprocessor_config.json"
    if proc.is_file() and (size := _read_json(proc).get("size", {}).get("height")):
        return int(size)
    raise ValueError(f"{folder} does not record its image size")


def load_checkpoint(folder: str | Path, expected_labels: Sequence[str] | None = None):
    """AutoModelForImageClassification from a release folder or a Trainer checkpoint, after checking it.

    ValueError (saying what is wrong) for: no such folder, no config.json, pickle-only or missing weights,
    class count disagreeing with the class names, class names differing from `expected_labels`.
    Repairs, in memory, the timm 1.0.31 `model_args.num_classes` duplication of older exports.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a checkpoint: it has no config.json")
    raw = _read_json(folder / "config.json")
    if "model_type" not in raw and "architecture" not in raw:
        raise ValueError(f"{folder}/config.json is not a model config (no model_type)")
    names = config_labels(raw)
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        found = _pickles(folder)
        extra = f" (only pickle files {found}; scl_hf loads safetensors only)" if found else ""
        raise ValueError(f"{folder} is not a checkpoint: it has no model.safetensors{extra}")
    if expected_labels is not None:
        check_labels(names, expected_labels, where=str(folder))
    from transformers import AutoConfig, AutoModelForImageClassification

    try:
        config = AutoConfig.from_pretrained(folder)
        if "num_classes" in (getattr(config, "model_args", None) or {}):
            config.model_args = {k: v for k, v in config.model_args.items() if k != "num_classes"}
        return AutoModelForImageClassification.from_pretrained(folder, config=config)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        raise ValueError(f"{folder} could not be loaded as an image classifier: {str(e).splitlines()[0]}") from e


load = load_checkpoint


# --------------------------------------------------------------------------- push
def push(folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
         commit_message: str = "Upload multi-label classifier (scl-hf)", revision: str | None = None,
         update_card: bool = True):
    """Upload exactly the release files of `folder` to the model repo `repo_id` (created if needed).

    One commit of explicit files: never the bank, optimizer/scheduler/rng state, checkpoints or pickles.
    With `update_card`, a card generated by scl_hf is first re-rendered so that its snippets name `repo_id`.
    Refuses to upload a text file that contains `token`.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file() and not (
            folder / "model.safetensors.index.json").is_file():
        raise ValueError(f"{folder} is not a release folder (config.json and model.safetensors are needed): "
                         "create one with scl_hf.hub.export or `scl-hf export`")
    readme = folder / "README.md"
    if update_card and (not readme.is_file() or CARD_MARKER in readme.read_text(encoding="utf-8")):
        make_model_card(folder, repo_id=repo_id).save(readme)
    files = release_files(folder)
    for path in files:
        if token and path.suffix in (".json", ".md") and token in path.read_text(encoding="utf-8"):
            raise ValueError(f"refusing to upload {path.name}: it contains the access token")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
    return api.create_commit(repo_id=getattr(repo, "repo_id", repo_id), operations=operations,
                             commit_message=commit_message, revision=revision, repo_type="model")


# --------------------------------------------------------------------------- SCLTrainer glue
def _trainer_model(trainer):
    return trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)


def save_trainer_model(trainer, folder: str | Path, **card_options) -> Path | None:
    """`SCLTrainer.save_model(dir)`: the release folder of the current model, on the saving process only."""
    if not trainer.args.should_save:
        return None
    dataset = getattr(getattr(trainer, "raw_train_dataset", None), "info", None)
    card_options.setdefault("dataset_name", getattr(dataset, "dataset_name", None))
    return export(_trainer_model(trainer), folder, image_size=trainer.args.image_size,
                  metrics=latest_eval_metrics(trainer.state.log_history), training_args=trainer.args,
                  processor=trainer.processing_class, **card_options)


def _card_options(options: Mapping[str, Any]) -> dict:
    """Trainer.create_model_card / push_to_hub keywords → make_model_card keywords (others are ignored)."""
    dataset = options.get("dataset_name", options.get("dataset"))
    found = {"base_model": options.get("base_model") or options.get("finetuned_from"),
             "pretrained": options.get("pretrained"), "model_name": options.get("model_name"),
             "dataset_name": dataset if isinstance(dataset, str) else None}
    return {k: v for k, v in found.items() if v is not None}


def trainer_model_card(trainer, **card_options) -> ModelCard:
    """The card of the trainer's current model and run (for `SCLTrainer.create_model_card`)."""
    import tempfile

    card_options = _card_options(card_options)
    card_options.update(repo_id=trainer.args.hub_model_id, location=str(trainer.args.output_dir))
    with tempfile.TemporaryDirectory() as tmp:
        _write_release(_trainer_model(trainer), Path(tmp), trainer.args.image_size, trainer.processing_class,
                       weights=False)
        return make_model_card(tmp, metrics=latest_eval_metrics(trainer.state.log_history),
                               training_args=trainer.args, **card_options)


def push_trainer(trainer, *, commit_message: str | None = None, token: str | None = None,
                 revision: str | None = None, private: bool | None = None, **card_options):
    """`SCLTrainer.push_to_hub()`: export to a temporary release folder, push it, delete it."""
    import tempfile

    if not trainer.is_world_process_zero():
        return None
    args = trainer.args
    repo_id = args.hub_model_id or Path(args.output_dir).absolute().name
    card_options = _card_options(card_options)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_trainer_model(trainer, Path(tmp) / "release", repo_id=repo_id, **card_options)
        return push(folder, repo_id, token=token if token is not None else args.hub_token,
                    private=bool(private if private is not None else args.hub_private_repo),
                    commit_message=commit_message or "End of training", revision=revision or args.hub_revision)
