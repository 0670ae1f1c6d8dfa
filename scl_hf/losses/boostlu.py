"""BoostLU: LL-R on class activation maps whose positive part is boosted. Pure functions.

Kim et al., "Bridging the Gap between Model Explanations in Partially Annotated Multi-label Classification",
CVPR 2023; repo youngwk/BridgeGapExplanationPAMC (models.py `ImageClassifier.forward`: CAM = 1×1 conv of the
feature map, CAM ← α·CAM where CAM > 0, logits = spatial mean; losses.py `compute_batch_loss` LL-R; config.py
α = 5, LL-R Δrel = 0.5 % per epoch for every dataset). The boost applies at training and at evaluation (it is in
the model's forward there): SCLTrainer computes the class maps for this base and evaluates the boosted logits
too (`BaseLossInfo.logits_from_maps`). The exported model is the plain classifier; its scores rank differently.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .baselines import large_loss
from .registry import LossContext, register_base_loss

BOOSTLU_DEFAULTS: dict[str, float] = {
    "boostlu_alpha": 5.0,  # BridgeGapExplanationPAMC config.py --alpha
    "boostlu_delta_rel": 0.5,  # config.py _LOOKUP['delta_rel']['LL-R'] (%/epoch)
}


def boosted_logits(class_maps: torch.Tensor, alpha: float) -> torch.Tensor:
    """mean over cells of (α·F where F > 0, else F): (B, C, h, w) class-map logits → (B, C) image logits."""
    boosted = torch.where(class_maps > 0, class_maps * alpha, class_maps)
    return boosted.mean(dim=(2, 3))


def boostlu_logits(class_maps: torch.Tensor, options: dict) -> torch.Tensor:
    return boosted_logits(class_maps, float(options.get("boostlu_alpha", BOOSTLU_DEFAULTS["boostlu_alpha"])))


@register_base_loss("boostlu", logits_from_maps=boostlu_logits)
def boostlu_large_loss_rejection(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """LL-R (Δrel = `boostlu_delta_rel`) on the boosted logits of `ctx.class_maps`; `logits` (the model's own)
    are not used. Unobserved entries are hard negatives until rejected, as in LL-R."""
    if ctx.class_maps is None:
        raise ValueError("boostlu needs ctx.class_maps (SCLTrainer computes them for this base loss)")
    delta = float(ctx.options.get("boostlu_delta_rel", BOOSTLU_DEFAULTS["boostlu_delta_rel"]))
    ll_ctx = replace(ctx, options={**ctx.options, "ll_delta_rel": delta})
    return large_loss(boostlu_logits(ctx.class_maps, ctx.options), targets, ll_ctx, ignore, "ll-r")
