"""The consistency terms: "cl", "en" and "scl", and the crop correction of the base loss. Pure functions.

See docs/method.md for the equations and the defaults.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import masked_mean


def crop_corrected_weights(
    targets: torch.Tensor, map_targets: torch.Tensor, cell_weights: torch.Tensor, negative_threshold: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the stored heatmaps say about this crop, as base-loss weights and an ignore mask.

    The observed class is weighted by its peak stored heat inside the crop: a crop that cut the labelled
    object out of view no longer asks for a positive. Unobserved classes whose peak stored heat inside the
    crop reaches `negative_threshold` are left out of the negatives (an unlabelled object in view).
    Cells never observed (weight 0) say nothing.
    """
    seen = (cell_weights > 0)[:, None]
    peak = torch.where(seen, map_targets, torch.zeros_like(map_targets)).amax(dim=(2, 3))  # (B, C)
    has_view = seen.flatten(1).any(dim=1)[:, None]
    weights = torch.where((targets > 0.5) & has_view, peak, torch.ones_like(peak))
    ignore = torch.zeros_like(targets, dtype=torch.bool)
    if negative_threshold is not None:
        ignore = (targets < 0.5) & has_view & (peak >= negative_threshold)
    return weights, ignore


def consistency_loss(logits: torch.Tensor, targets: torch.Tensor, running_probs: torch.Tensor,
                     rows: torch.Tensor | None = None, observed_negatives: torch.Tensor | None = None) -> torch.Tensor:
    """BCE of the unobserved classes towards the image's running-average prediction P̄; `rows` (B,) bool, optional:
    the rows that take part (a mask, not an index, so no host sync); observed negatives have labels: the base loss
    trains them."""
    unobserved = targets < 0.5
    if rows is not None:
        unobserved = unobserved & rows[:, None]
    if observed_negatives is not None:
        unobserved = unobserved & ~observed_negatives.bool()
    values = F.binary_cross_entropy_with_logits(logits, running_probs.to(logits.dtype), reduction="none")
    return masked_mean(values, unobserved)


def expected_negatives_ignore(targets: torch.Tensor, running_probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Unobserved classes the running average does not call absent: the base loss leaves them out."""
    return (targets < 0.5) & (running_probs >= threshold)


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T) / (p^(1/T) + (1−p)^(1/T)): averaged targets are less confident than the model; T < 1 undoes it."""
    if temperature == 1.0:
        return probs
    p = probs.clamp(1e-6, 1 - 1e-6) ** (1.0 / temperature)
    q = (1 - probs).clamp(1e-6, 1 - 1e-6) ** (1.0 / temperature)
    return p / (p + q)


def spatial_consistency_loss(
    class_maps: torch.Tensor, map_targets: torch.Tensor, cell_weights: torch.Tensor, form: str = "bce",
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-cell loss between the current class maps (logits) and the stored heatmaps cut under the crop.

    Weighted by the observed fraction of each cell; cells never observed before carry no loss. `class_weights`
    (C,) or (B, C) scale each class's share (the reliability gate; a row's observed classes left out) without
    renormalising: a bank trusted for no class gives no spatial loss at all.
    """
    map_targets = map_targets.to(class_maps.dtype)
    if form == "bce":
        values = F.binary_cross_entropy_with_logits(class_maps, map_targets, reduction="none")
    elif form == "mse":
        values = (torch.sigmoid(class_maps) - map_targets) ** 2
    else:
        raise ValueError(f"unknown spatial loss form {form!r}; use 'bce' or 'mse'")
    weights = cell_weights.to(class_maps.dtype)[:, None].expand_as(values)
    total = weights.sum().clamp_min(1e-6)
    if class_weights is not None:
        class_weights = class_weights.to(class_maps.dtype)
        weights = weights * (class_weights[None] if class_weights.dim() == 1 else class_weights)[:, :, None, None]
    return (values * weights).sum() / total
