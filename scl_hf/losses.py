"""Loss functions of single-positive multi-label learning. Pure functions, no state, no files.

A training method is written as a "+"-joined string: at most one *base loss* (a registry entry, "an" by
default) and any of the *consistency terms* "cl" / "en" and "scl":

- base: L_base(z, y) on image logits z (B, C) and the observed single positives y (B,);
- "cl":  λ_c · mean over unobserved classes of BCE(σ(z), P̄)      (P̄: the image's running average);
- "en":  expected negatives: unobserved classes with P̄ ≥ τ are left out of the base loss;
- "scl": λ_s · Σ W·BCE(σ(F), T) / Σ W over cells and classes      (T, W: bank heatmaps cut under the crop).

See docs/method.md for the equations and the defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

CONSISTENCY_TERMS = ("cl", "en", "scl")


@dataclass
class LossContext:
    """What a base loss may need besides logits and observed labels (schedules, per-image state)."""

    epoch: float = 0.0
    num_classes: int = 0
    indices: torch.Tensor | None = None
    full_labels: torch.Tensor | None = None  # only the "full" upper bound may read these
    element_weights: torch.Tensor | None = None  # (B, C) per-entry weights of the base loss (crop correction)
    state: torch.nn.Module | None = None  # per-image state of a stateful base loss (made by the trainer)
    options: dict = field(default_factory=dict)


BaseLoss = Callable[[torch.Tensor, torch.Tensor, LossContext, torch.Tensor | None], torch.Tensor]
StateFactory = Callable[[torch.Tensor, int, dict], torch.nn.Module]  # (observed labels (N,), C, options)
BASE_LOSSES: dict[str, BaseLoss] = {}


@dataclass(frozen=True)
class BaseLossInfo:
    """What the trainer must provide besides logits and labels: a per-image state, the full labels."""

    make_state: StateFactory | None = None
    full_labels: bool = False
    # '+scl' leaves unobserved classes seen in the crop out of this loss (crop_negative_threshold): right for losses
    # that push unobserved classes hard to 0, harmful where they are soft targets or weak (see docs/method.md)
    crop_negative_mask: bool = True


BASE_LOSS_INFO: dict[str, BaseLossInfo] = {}


def register_base_loss(
    name: str, make_state: StateFactory | None = None, full_labels: bool = False, crop_negative_mask: bool = True
) -> Callable[[BaseLoss], BaseLoss]:
    """Register a base loss under `name` (the single registry of methods); stateful losses declare
    `make_state`, and only an upper bound may ask for `full_labels` (see baselines.py); a loss whose unobserved
    classes are not hard negatives declares `crop_negative_mask=False`."""

    def wrap(fn: BaseLoss) -> BaseLoss:
        BASE_LOSSES[name] = fn
        BASE_LOSS_INFO[name] = BaseLossInfo(make_state, full_labels, crop_negative_mask)
        return fn

    return wrap


def observed_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels.long(), num_classes).float()


def masked_mean(values: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Mean over the kept entries (all when keep is None); 0 with a gradient when nothing is kept."""
    if keep is None:
        return values.mean()
    keep = keep.float()
    return (values * keep).sum() / keep.sum().clamp_min(1.0)


@register_base_loss("an")
def assume_negative_loss(
    logits: torch.Tensor, targets: torch.Tensor, ctx: LossContext, ignore: torch.Tensor | None = None
) -> torch.Tensor:
    """"Assume negative": BCE with every unobserved class as a negative (Cole et al. 2021 baseline)."""
    values = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if ctx.element_weights is not None:
        values = values * ctx.element_weights
    return masked_mean(values, None if ignore is None else ~ignore)


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


def consistency_loss(logits: torch.Tensor, targets: torch.Tensor, running_probs: torch.Tensor) -> torch.Tensor:
    """BCE of the unobserved classes towards the image's running-average prediction P̄."""
    unobserved = targets < 0.5
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
    class_maps: torch.Tensor, map_targets: torch.Tensor, cell_weights: torch.Tensor, form: str = "bce"
) -> torch.Tensor:
    """Per-cell loss between the current class maps (logits) and the stored heatmaps cut under the crop.

    Weighted by the observed fraction of each cell; cells never observed before carry no loss.
    """
    map_targets = map_targets.to(class_maps.dtype)
    if form == "bce":
        values = F.binary_cross_entropy_with_logits(class_maps, map_targets, reduction="none")
    elif form == "mse":
        values = (torch.sigmoid(class_maps) - map_targets) ** 2
    else:
        raise ValueError(f"unknown spatial loss form {form!r}; use 'bce' or 'mse'")
    weights = cell_weights.to(class_maps.dtype)[:, None].expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1e-6)


@dataclass(frozen=True)
class MethodSpec:
    base: str
    terms: frozenset[str]

    @property
    def needs_predictions(self) -> bool:
        return bool(self.terms & {"cl", "en"})

    @property
    def needs_heatmaps(self) -> bool:
        return "scl" in self.terms

    @property
    def name(self) -> str:
        return "+".join([self.base, *sorted(self.terms)])

    @property
    def info(self) -> BaseLossInfo:
        return BASE_LOSS_INFO.get(self.base, BaseLossInfo())

    @property
    def needs_full_labels(self) -> bool:
        return self.info.full_labels


def parse_method(method: str) -> MethodSpec:
    """'scl' → an + scl; 'll-r+scl' → ll-r + scl. Unknown names fail with the valid ones listed."""
    parts = [p.strip().lower() for p in method.split("+") if p.strip()]
    bases = [p for p in parts if p in BASE_LOSSES]
    terms = [p for p in parts if p in CONSISTENCY_TERMS]
    unknown = [p for p in parts if p not in BASE_LOSSES and p not in CONSISTENCY_TERMS]
    if unknown or not parts:
        raise ValueError(
            f"unknown method part(s) {unknown or [method]!r} in method={method!r}. Base losses: "
            f"{sorted(BASE_LOSSES)}; consistency terms: {list(CONSISTENCY_TERMS)}; combine with '+', "
            "e.g. 'scl', 'cl+scl', 'll-r+scl'."
        )
    if len(bases) > 1:
        raise ValueError(f"method={method!r} names several base losses {bases}; choose one")
    if {"cl", "en"} <= set(terms):
        raise ValueError("'cl' and 'en' are two treatments of the unobserved classes; choose one")
    return MethodSpec(bases[0] if bases else "an", frozenset(terms))


from . import baselines  # noqa: E402, F401  (registers the single-positive baselines; imports this module)
