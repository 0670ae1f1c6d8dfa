"""Pretext weights for the pretrained regime: a backbone trained on a task disjoint from the downstream one.

    .venv/bin/python benchmarks/pretext.py            # makes (or finds) the cached weights and prints the path

Hub weights cannot be downloaded here, so the `digits-pretrained` regime of benchmarks/regimes.py starts from
weights this script makes once: resnet10t trained with full labels on the 48 clutter classes (coloured shapes
on photographs; no digit in sight), its own data seed, 96 px. The downstream fine-tuning then loads them the
way a user loads any local timm checkpoint: `pretrained=True, pretrained_cfg_overlay={"file": path,
"num_classes": 48}` (timm drops the classifier whose size differs).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

CACHE = Path(os.environ.get("SCL_HF_CACHE", Path.home() / ".cache" / "scl_hf")) / "pretext"
PRETEXT = {"data_seed": 100, "num_train": 2500, "epochs": 12, "image_size": 96, "learning_rate": 2e-3,
           "batch_size": 32, "version": 1}


def pretext_weights(model_name: str = "resnet10t") -> tuple[Path, int]:
    """Path of the cached safetensors (made on first use) and the pretext's class count."""
    from safetensors.torch import save_file

    from scl_hf import SCLConfig, SCLTrainer, create_model
    from scl_hf.data.scenes import make_clutter_scenes

    stem = CACHE / f"{model_name}-clutter48-v{PRETEXT['version']}"
    path, meta = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if path.exists() and meta.exists():
        return path, json.loads(meta.read_text())["num_classes"]
    data = make_clutter_scenes(num_train=PRETEXT["num_train"], num_validation=200, num_test=10,
                               seed=PRETEXT["data_seed"], cache_dir=str(CACHE.parent / "datasets"))
    names = data["train"].features["label"].names
    torch.manual_seed(PRETEXT["data_seed"])
    model = create_model(model_name, num_labels=len(names), id2label=names, pretrained=False)
    work = CACHE / f"work-{os.getpid()}"
    args = SCLConfig(output_dir=str(work), method="full", image_size=PRETEXT["image_size"],
                     num_train_epochs=PRETEXT["epochs"], per_device_train_batch_size=PRETEXT["batch_size"],
                     learning_rate=PRETEXT["learning_rate"], weight_decay=1e-4, use_cpu=True, seed=PRETEXT["data_seed"],
                     eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=50)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # method="full" warns that it trains on full labels: that is the point here
        trainer = SCLTrainer(model=model, args=args, train_dataset=data["train"])
        trainer.train()
    val_map = trainer.evaluate(data["validation"], metric_key_prefix="val")["val_mAP"]
    CACHE.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.timm_model.state_dict().items()}
    save_file(tensors, str(path))
    meta.write_text(json.dumps({**PRETEXT, "model_name": model_name, "num_classes": len(names),
                                "pretext_val_mAP": val_map}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return path, len(names)


if __name__ == "__main__":
    weights, classes = pretext_weights()
    print(f"{weights} ({classes} pretext classes)")
