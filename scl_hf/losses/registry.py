"""The registry of base losses and the method grammar of single-positive multi-label learning.

A training method is written as a "+"-joined string: at most one *base loss* (a registry entry, "an" by
default) and any of the *consistency terms* "cl" / "en" and "scl":

- base: L_base(z, Y) on image logits z (B, C) and the observed positives Y (B, C) multi-hot: one-hot for
  single-positive rows, several ones for partial labels; `ctx.observed_negatives` (B, C) marks known negatives;
- "cl":  λ_c · mean over unobserved classes of BCE(σ(z), P̄)      (P̄: the image's running average);
- "en":  expected negatives: unobserved classes with P̄ ≥ τ are left out of the base loss;
- "scl": λ_s · Σ W·BCE(σ(F), T) / Σ W over cells and classes      (T, W: bank heatmaps cut under the crop).

The terms live in terms.py, the base losses in baselines.py; see docs/method.md for the equations and defaults.
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
    observed_negatives: torch.Tensor | None = None  # (B, C) bool: classes the labels say are absent (partial labels)
    class_maps: torch.Tensor | None = None  # (B, C, h, w) class-map logits, for a base with logits_from_maps
    pseudo_labels: torch.Tensor | None = None  # (B, C) scores of a pseudo-label column (pseudo_labels.py)
    options: dict = field(default_factory=dict)


BaseLoss = Callable[[torch.Tensor, torch.Tensor, LossContext, torch.Tensor | None], torch.Tensor]
StateFactory = Callable[[torch.Tensor, int, dict], torch.nn.Module]  # (observed positives (N, C), C, options)
BASE_LOSSES: dict[str, BaseLoss] = {}


@dataclass(frozen=True)
class BaseLossInfo:
    """What the trainer must provide besides logits and labels: a per-image state, the full labels."""

    make_state: StateFactory | None = None
    full_labels: bool = False
    # '+scl' leaves unobserved classes seen in the crop out of this loss (crop_negative_threshold): right for losses
    # that push unobserved classes hard to 0, harmful where they are soft targets or weak (see docs/method.md)
    crop_negative_mask: bool = True
    # a base that scores images from their class maps (BoostLU): the trainer passes ctx.class_maps and evaluates
    # logits_from_maps(class_maps, options) instead of the model's logits
    logits_from_maps: Callable[[torch.Tensor, dict], torch.Tensor] | None = None
    pseudo_labels: bool = False  # reads ctx.pseudo_labels (the training set's pseudo-label column)


BASE_LOSS_INFO: dict[str, BaseLossInfo] = {}
# loss-option defaults that hold only for one composition, keyed by (base, term); they win over a dataset's
# defaults and lose to any value the user sets (SCLConfig.apply_defaults)
COMPOSITION_DEFAULTS: dict[tuple[str, str], dict[str, float]] = {}


def register_base_loss(
    name: str, make_state: StateFactory | None = None, full_labels: bool = False, crop_negative_mask: bool = True,
    logits_from_maps: Callable[[torch.Tensor, dict], torch.Tensor] | None = None, pseudo_labels: bool = False,
) -> Callable[[BaseLoss], BaseLoss]:
    """Register a base loss under `name` (the single registry of methods); stateful losses declare
    `make_state`, and only an upper bound may ask for `full_labels` (see baselines.py); a loss whose unobserved
    classes are not hard negatives declares `crop_negative_mask=False`; `logits_from_maps` and `pseudo_labels`
    ask the trainer for the class maps / the pseudo-label column (boostlu.py, pseudo_labels.py)."""

    def wrap(fn: BaseLoss) -> BaseLoss:
        BASE_LOSSES[name] = fn
        BASE_LOSS_INFO[name] = BaseLossInfo(make_state, full_labels, crop_negative_mask, logits_from_maps, pseudo_labels)
        return fn

    return wrap


def register_composition_defaults(base: str, term: str, **options: float) -> None:
    """Give `base` composed with `term` its own defaults for some loss options: a base keeps its authors'
    values when it runs alone, and its composition the values chosen for it (docs/method.md says why each)."""
    if term not in CONSISTENCY_TERMS:
        raise ValueError(f"{term!r} is not a consistency term; choose one of {list(CONSISTENCY_TERMS)}")
    COMPOSITION_DEFAULTS.setdefault((base, term), {}).update(options)


def observed_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels.long(), num_classes).float()


def observed_matrix(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C) bool of observed positives from a (N, C) multi-hot matrix or (N,) single class ids."""
    if labels.dim() == 1:
        return observed_one_hot(labels, num_classes).bool()
    if labels.shape[1] != num_classes:
        raise ValueError(f"observed labels have {labels.shape[1]} columns, expected {num_classes}")
    return labels > 0.5


def known_negatives(values: torch.Tensor, logits: torch.Tensor, ctx: LossContext) -> torch.Tensor:
    """Per-entry losses with the observed negatives made plain BCE towards 0, whatever the base loss does with
    unobserved classes (down-weighting, entropy, estimates): a label that says "absent" is not a guess."""
    if ctx.observed_negatives is None:
        return values
    return torch.where(ctx.observed_negatives.bool(), F.softplus(logits).to(values.dtype), values)


def masked_mean(values: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Mean over the kept entries (all when keep is None); 0 with a gradient when nothing is kept."""
    if keep is None:
        return values.mean()
    keep = keep.float()
    return (values * keep).sum() / keep.sum().clamp_min(1.0)


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
    def needs_class_maps(self) -> bool:
        return self.needs_heatmaps or self.info.logits_from_maps is not None

    @property
    def needs_full_labels(self) -> bool:
        return self.info.full_labels

    @property
    def composition_defaults(self) -> dict[str, float]:
        """The loss-option defaults registered for this base with any of its terms."""
        found: dict[str, float] = {}
        for term in sorted(self.terms):
            found.update(COMPOSITION_DEFAULTS.get((self.base, term), {}))
        return found


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
