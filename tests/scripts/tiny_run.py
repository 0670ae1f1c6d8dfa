"""A tiny SCL training run on the synthetic shapes, for the bank's multi-process and resume tests.

Run directly (`python tiny_run.py '<json>'`) or under `accelerate launch`; the JSON holds SCLConfig
overrides plus `resume` (a checkpoint path or true) and `stop_at` (stop training after that global step).
At the end the world's main process writes `<output_dir>/weights.pt` (the model's state dict); the bank
stays in `bank_dir`. The model has no batch statistics (a ViT), so a run's result does not depend on how
the global batch is split across processes.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from transformers import TrainerCallback

from scl_hf import SCLConfig, SCLTrainer, create_model
from scl_hf.data.synthetic import make_synthetic

NUM_CLASSES = 5


class StopAt(TrainerCallback):
    """Stops training after a given global step (after that step's checkpoint is saved)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def tiny_data(num_train: int = 32):
    return make_synthetic(num_train=num_train, num_test=4, image_size=64, num_classes=NUM_CLASSES, seed=3)["train"]


def tiny_args(output_dir: str, **overrides) -> SCLConfig:
    values = dict(
        output_dir=output_dir, method="cl+scl", image_size=32, bank_size=4, num_train_epochs=2,
        per_device_train_batch_size=8, learning_rate=1e-3, lr_scheduler_type="constant", use_cpu=True,
        warmup_epochs=1, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        dataloader_drop_last=True,
    )
    values.update(overrides)
    return SCLConfig(**values)


def tiny_trainer(output_dir: str, stop_at: int | None = None, num_train: int = 32, **overrides) -> SCLTrainer:
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", num_labels=NUM_CLASSES, img_size=32, drop_rate=0.0)
    callbacks = [StopAt(stop_at)] if stop_at else []
    return SCLTrainer(model=model, args=tiny_args(output_dir, **overrides), train_dataset=tiny_data(num_train),
                      callbacks=callbacks)


def main(config: dict) -> None:
    torch.set_num_threads(1)
    config = dict(config)
    resume = config.pop("resume", None)
    trainer = tiny_trainer(config.pop("output_dir"), config.pop("stop_at", None), **config)
    trainer.train(resume_from_checkpoint=resume)
    if trainer.is_world_process_zero():
        torch.save(trainer.model.state_dict(), os.path.join(trainer.args.output_dir, "weights.pt"))
    trainer.end_training()  # an orderly gloo shutdown: without it a rank can abort at exit


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
