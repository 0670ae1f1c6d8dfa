"""The TrainerCallbacks that SCLTrainer installs: each hooks one of its duties to a point of Trainer's loop.

Those that take the trainer read its state when they fire (its loss state and bank are made after they are), and
type it as a plain Trainer so that this module does not import the trainer that imports it."""

from __future__ import annotations

import math

import torch
from transformers import Trainer, TrainerCallback


class _EpochSync(TrainerCallback):
    """Publishes the epoch to dataloader workers before each epoch's iterator is created."""

    def __init__(self, epoch_ref: torch.Tensor):
        self.epoch_ref = epoch_ref

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is e + j/steps_in_epoch with j < steps_in_epoch mid-epoch (a resume) and exactly e at a
        # boundary, so floor is exact; a "+ 1e-6" would round e + (n-1)/n up for epochs of over 10^6 steps
        self.epoch_ref.fill_(math.floor(state.epoch or 0.0))


class _LossStateGrads(TrainerCallback):
    """Trainer zeroes only the model's gradients after a step: a loss state's parameters (ROLE) need it too."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.loss_state is not None:
            self.trainer.loss_state.zero_grad(set_to_none=True)


class _BankReliability(TrainerCallback):
    """At each epoch's end, after its last bank write: how far each class's stored averages can be trusted."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.reliability.refresh(self.trainer.bank, self.trainer.train_dataset.labels)
