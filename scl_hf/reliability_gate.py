"""A run's reliability gate: the bank's per-class AUC, refreshed at each epoch's end and saved with each checkpoint,
so that a resumed run gates as an uninterrupted one would (the measure itself: losses/reliability.py)."""

from __future__ import annotations

import os

import torch

from .bank import SharedBank
from .config import SCLConfig
from .labels import LabelTable
from .losses import MethodSpec, observed_positive_auc, reliability_gate

GATE_FILE = "scl_reliability.safetensors"


class ReliabilityGate:
    """How far each class's stored averages can be trusted, and the gates of the crop-negative mask and of the
    spatial term that follow. `args` is read at each call, so the run's config as it stands decides."""

    def __init__(self, args: SCLConfig, method: MethodSpec, num_classes: int):
        self.args, self.method, self.num_classes = args, method, num_classes
        self.class_auc: torch.Tensor | None = None  # (C,), set at epoch ends

    @property
    def enabled(self) -> bool:
        return self.method.needs_heatmaps and self.args.reliability_gate

    def refresh(self, bank: SharedBank | None, labels: LabelTable) -> None:
        """Per-class AUC of the stored averages at ranking each class's observed positives first (whole bank)."""
        if bank is None or not self.enabled:
            return
        observed = labels.dense().bool()  # (N, C) observed positives (partial labels too)
        scores, seen = bank.stored_predictions()
        self.class_auc = observed_positive_auc(scores, observed, seen).float()

    def gate(self, device: torch.device, spatial: bool = False) -> torch.Tensor:
        """The gate of each class (of the spatial term's own thresholds with `spatial`), 0 until a first epoch of
        the bank has been scored."""
        if self.class_auc is None:
            return torch.zeros(self.num_classes, device=device)
        low, high = self.args.spatial_gate_thresholds if spatial else (self.args.reliability_low, self.args.reliability_high)
        return reliability_gate(self.class_auc, low, high).to(device)

    def log_values(self) -> dict[str, float]:
        """How far the bank is trusted: mean AUC and mean gate, once an epoch has been scored."""
        if self.class_auc is None:
            return {}
        return {"bank_auc": round(self.class_auc.mean().item(), 4),
                "bank_gate": round(self.gate(torch.device("cpu")).mean().item(), 4)}

    def save(self, folder: str) -> None:
        from safetensors.torch import save_file

        if self.class_auc is not None:
            os.makedirs(folder, exist_ok=True)
            save_file({"class_auc": self.class_auc.contiguous()}, os.path.join(folder, GATE_FILE))

    def restore(self, checkpoint: str) -> None:
        from safetensors.torch import load_file

        path = os.path.join(checkpoint, GATE_FILE)
        self.class_auc = load_file(path)["class_auc"] if os.path.isfile(path) else None
