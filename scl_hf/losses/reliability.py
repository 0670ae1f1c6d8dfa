"""How far the bank can be trusted, per class: the gate of the spatial term and of the crop-negative mask.

Why: the running averages are targets only once the network that wrote them has learnt something. A
fixed warm-up and absolute thresholds encode how fast one benchmark learns; on data that learns slowly,
the averages of a barely trained network become targets and the method falls below "assume negative".
So the trainer measures, once per epoch, how well each class's stored averages rank the images that
carry that class as their observed positive above the images that do not (a ROC AUC over the training
set; hidden positives among the others only lower it, so it errs on the side of caution), and maps it to
a gate in [0, 1]: 0 at `low` (no better than a guess), 1 from `high` on. Pure functions, no files.
"""

from __future__ import annotations

import torch


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks along dim 0 with ties sharing their average rank (as scipy.stats.rankdata)."""
    ordered, _ = values.sort(dim=0)
    below = torch.searchsorted(ordered.T.contiguous(), values.T.contiguous(), right=False).T
    upto = torch.searchsorted(ordered.T.contiguous(), values.T.contiguous(), right=True).T
    return (below + upto + 1).to(torch.float64) / 2


def observed_positive_auc(scores: torch.Tensor, observed: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per class, the probability that an observed positive outscores a row without that observed label.

    scores (N, C) stored averages; observed (N, C) bool observed positives; valid (N,) rows the bank has
    seen. A class without an observed positive, or without any other row, gets 0.5 (nothing is known).
    """
    if valid is not None:
        scores, observed = scores[valid], observed[valid]
    scores, observed = scores.double(), observed.bool()
    positives = observed.sum(0).double()
    negatives = (~observed).sum(0).double()
    if len(scores) == 0:
        return torch.full((observed.shape[1],), 0.5, dtype=torch.float64)
    rank_sum = (average_ranks(scores) * observed).sum(0)
    auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives).clamp_min(1.0)
    return torch.where((positives > 0) & (negatives > 0), auc, torch.full_like(auc, 0.5))


def reliability_gate(auc: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """0 at or below `low`, 1 at or above `high`, linear between."""
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
    return ((auc - low) / (high - low)).clamp(0.0, 1.0).float()
