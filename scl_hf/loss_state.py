"""The per-image state of a base loss (ROLE's estimates, LL-Cp's corrections, EM-APL's pseudo-negatives): N rows
kept out of the model, identical on every process as the bank, and saved with each checkpoint because a resumed
run needs them (baselines.py defines each state)."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import torch

from .bank import row_gradient_mean

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .losses.registry import StateFactory

LOSS_STATE_FILE = "scl_loss_state.safetensors"
#: above this many bytes of trainable state (its values and Adam's two moments) a run is told what it costs
LARGE_STATE_BYTES = 2 * 2**30


def make_loss_state(make_state: StateFactory, labels: torch.Tensor, num_classes: int, options: dict,
                    device: torch.device, accelerator: Accelerator) -> torch.nn.Module:
    """The state of `labels` (N, C), the observed positives, on `device`; shared over the processes."""
    state = make_state(labels, num_classes, options).to(device)
    trained = 3 * sum(p.numel() * p.element_size() for p in state.parameters())  # values + Adam's two moments
    if trained > LARGE_STATE_BYTES:
        warnings.warn(f"this method keeps {trained / 2**30:.1f} GiB of per-image state ({len(labels)} images × "
                      f"{num_classes} classes, with Adam's moments) on every process; for data this large use "
                      "method='scl', whose bank lives in a memory-mapped file", stacklevel=2)
    if accelerator.num_processes > 1:  # identical copies on every process, as the bank
        state.gather = accelerator.gather
        # DDP does not see these parameters: average their gradient over the processes, sending only the
        # rows of this step's batch (not the N×C table: 26 MB a step on COCO, 5 GB on ImageNet)
        rows = {}
        state.register_forward_pre_hook(lambda _module, args: rows.update(indices=args[0]))
        for parameter in state.parameters():
            parameter.register_hook(lambda grad: row_gradient_mean(grad, rows["indices"], accelerator.gather))
    return state


def save_loss_state(state: torch.nn.Module, folder: str) -> None:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.state_dict().items()}
    save_file(tensors, os.path.join(folder, LOSS_STATE_FILE))


def load_loss_state(state: torch.nn.Module, checkpoint: str, method: str, device: torch.device) -> None:
    """Into `state`, from `checkpoint`: refused when it has none (another method) or other shapes (other data)."""
    from safetensors.torch import load_file

    path = os.path.join(checkpoint, LOSS_STATE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{checkpoint} has no {LOSS_STATE_FILE}: method {method!r} keeps "
                                "per-image state that a resumed run needs; resume from a checkpoint of this method")
    saved = load_file(path, device=str(device))
    mismatched = {k: tuple(v.shape) for k, v in saved.items() if v.shape != state.state_dict()[k].shape}
    if mismatched:
        raise ValueError(f"{path} holds state of another training set: shapes {mismatched}")
    state.load_state_dict(saved)
