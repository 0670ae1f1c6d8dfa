"""Vision-language pseudo-labels: the VLPL and AEVLP (GPR) base losses. Pure functions.

Both read `ctx.pseudo_labels`: per image, the cosine similarities (R, C) between CLIP's embedding of R image
regions (region 0: the whole image; then a g×g grid of crops, row-major) and the embedding of each class prompt,
computed once per training image by `scl_hf.data.add_clip_scores` and cached as a dataset column. Like the single
positive they are an input of training, never a test label. The rules that turn them into pseudo-labels:

- "vlpl": Xing et al., "Vision-Language Pseudo-Labels for Single-Positive Multi-Label Learning", CVPRW 2024;
  repo mvrl/VLPL (models.py: softmax over classes of the global similarity at temperature T, a positive
  pseudo-label where it exceeds `vlpl_threshold`; losses.py `loss_EM_PL`: observed positive −log p, pseudo-positive
  β·(0.9·(−log p) + 0.1·(−log(1 − p))), other unobserved entries EM's −α·H(p); α = `em_alpha` per dataset as in
  main_clip.py, β = 0.7, threshold 0.3, T = 0.01; negative pseudo-labels are off there (`partial` 0)).
- "aevlp": Tran et al., "Adaptive and Explainable Vision-Language Pseudo-Labels" (AEVLP), ICCV 2025; repo
  Fsoft-AIC/AEVLP (utils.py `get_pseudo_labels`: global and local softmax scores, a local score counts as the max
  over regions where that exceeds η' = min(η, global score of the observed class), else the min; final score
  ½(global + local); positives: the top-k classes whose final score ≥ threshold. losses.py `GPR_loss`: GR's loss
  on the unobserved entries, pseudo-positives (1 − V')·(ρ·(−log p) + (1 − ρ)·(−log(1 − p))) with V clipped to
  [1 − λ1, 1 − λ2], plus `reg`·EPR; configs/*.json per dataset). The repo also "negates" the lowest-scored
  classes by writing 0 into labels that are already 0, which changes nothing, so no negative pseudo-labels here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .baselines import expected_positive_penalty, negative_entropy, option, reduce_entries
from .registry import LossContext, known_negatives, register_base_loss
from .robust import generalized_robust_negatives, gr_schedule

PSEUDO_LABEL_DEFAULTS: dict[str, float | tuple[float, ...]] = {
    "clip_temperature": 0.01,  # VLPL main_clip.py --temp, AEVLP configs temp (cub 0.1)
    "vlpl_threshold": 0.3,  # VLPL main_clip.py --threshold
    "vlpl_beta": 0.7,  # VLPL main_clip.py P['beta_pos']
    "aevlp_k_schedule": (0.0, 10.0, -2.0, -8.0),  # AEVLP configs beta (pascal: 0 2 -2 -2)
    "aevlp_q": (0.01, 1.0),  # AEVLP configs q2q3 (cub: 0.01 1.5)
    "aevlp_lambda": (0.7, 0.5),  # AEVLP configs lam (λ1, λ2)
    "aevlp_rho": 0.9,  # AEVLP configs rho
    "aevlp_reg": 0.001,  # AEVLP configs reg (weight of EPR)
    "aevlp_eta": 0.3,  # AEVLP configs eta
    "aevlp_threshold": 0.5,  # AEVLP configs threshold
    "aevlp_top_k": 3,  # AEVLP config.py _LOOKUP['top_k']
}
PSEUDO_LABEL_DATASET_DEFAULTS: dict[str, dict[str, float | tuple[float, ...]]] = {
    "coco": {},
    "voc": {"aevlp_k_schedule": (0.0, 2.0, -2.0, -2.0), "aevlp_lambda": (0.7, 0.4), "aevlp_reg": 0.05,
            "aevlp_eta": 0.0},
    "nuswide": {"aevlp_threshold": 0.6},
    "cub": {"clip_temperature": 0.1, "aevlp_q": (0.01, 1.5), "aevlp_lambda": (0.8, 0.2), "aevlp_reg": 0.01,
            "aevlp_eta": 0.005, "aevlp_threshold": 0.005, "aevlp_top_k": 32},
}


def pseudo_option(ctx: LossContext, name: str):
    return ctx.options.get(name, PSEUDO_LABEL_DEFAULTS[name])


def region_scores(similarities: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, R, C) cosine similarities → softmax over classes per region at `temperature`."""
    if similarities.dim() == 2:
        similarities = similarities[:, None]
    return F.softmax(similarities.float() / temperature, dim=-1)


def vlpl_pseudo_positives(similarities: torch.Tensor, targets: torch.Tensor, temperature: float,
                          threshold: float) -> torch.Tensor:
    """VLPL: unobserved classes whose whole-image score exceeds the threshold."""
    return (region_scores(similarities, temperature)[:, 0] > threshold) & (targets < 0.5)


def aevlp_pseudo_positives(similarities: torch.Tensor, targets: torch.Tensor, temperature: float, eta: float,
                           threshold: float, top_k: int) -> torch.Tensor:
    """AEVLP: adaptive global + local scores, top-k classes at or above the threshold, unobserved ones only."""
    scores = region_scores(similarities, temperature)
    whole, local = scores[:, 0], scores[:, 1:] if scores.shape[1] > 1 else scores[:, :1]
    highest, lowest = local.max(dim=1).values, local.min(dim=1).values
    observed_score = (whole * targets).max(dim=1).values
    adaptive_eta = torch.clamp(observed_score, max=eta)[:, None]
    final = 0.5 * (whole + torch.where(highest > adaptive_eta, highest, lowest))
    values, indices = final.topk(min(int(top_k), final.shape[1]), dim=1)
    chosen = torch.zeros_like(final, dtype=torch.bool).scatter_(1, indices, values >= threshold)
    return chosen & (targets < 0.5)


def require_pseudo_labels(ctx: LossContext, name: str) -> torch.Tensor:
    if ctx.pseudo_labels is None:
        raise ValueError(f"{name} needs the training set's CLIP score column (ctx.pseudo_labels): build it with "
                         "scl_hf.data.add_clip_scores and name it in SCLConfig.pseudo_label_column")
    return ctx.pseudo_labels


@register_base_loss("vlpl", pseudo_labels=True, crop_negative_mask=False)
def vision_language_pseudo_labels(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """VLPL (CVPRW 2024): EM on the unobserved entries, a weighted soft positive on the CLIP pseudo-positives."""
    pseudo = vlpl_pseudo_positives(require_pseudo_labels(ctx, "vlpl"), targets, pseudo_option(ctx, "clip_temperature"),
                                   pseudo_option(ctx, "vlpl_threshold"))
    if ctx.observed_negatives is not None:  # CLIP never overrules a label that says "absent"
        pseudo = pseudo & ~ctx.observed_negatives.bool()
    soft_positive = pseudo_option(ctx, "vlpl_beta") * (0.9 * F.softplus(-logits) + 0.1 * F.softplus(logits))
    unknown = torch.where(pseudo, soft_positive, option(ctx, "em_alpha") * negative_entropy(logits))
    values = torch.where(targets > 0.5, F.softplus(-logits), unknown)
    return reduce_entries(known_negatives(values, logits, ctx), ctx, ignore)


@register_base_loss("aevlp", pseudo_labels=True, crop_negative_mask=False)
def adaptive_explainable_pseudo_labels(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """AEVLP's GPR loss (ICCV 2025): GR on the unobserved entries, V-weighted positives on the CLIP
    pseudo-positives, plus `aevlp_reg` × the expected-positives penalty."""
    pseudo = aevlp_pseudo_positives(
        require_pseudo_labels(ctx, "aevlp"), targets, pseudo_option(ctx, "clip_temperature"),
        pseudo_option(ctx, "aevlp_eta"), pseudo_option(ctx, "aevlp_threshold"), pseudo_option(ctx, "aevlp_top_k"),
    )
    if ctx.observed_negatives is not None:  # CLIP never overrules a label that says "absent"
        pseudo = pseudo & ~ctx.observed_negatives.bool()
    schedule_ctx = LossContext(epoch=ctx.epoch, options={**ctx.options, "gr_k_schedule": pseudo_option(
        ctx, "aevlp_k_schedule")})
    w, b, mu, sigma = gr_schedule(schedule_ctx)
    q2, q3 = pseudo_option(ctx, "aevlp_q")
    probs = torch.sigmoid(logits)
    negatives = generalized_robust_negatives(probs, w, b, mu, sigma, q2, q3)
    lam1, lam2 = pseudo_option(ctx, "aevlp_lambda")
    weight = torch.exp(-0.5 * ((probs.detach() - mu) / sigma) ** 2).clamp(1 - lam1, 1 - lam2)
    rho = pseudo_option(ctx, "aevlp_rho")
    positives = (1 - weight) * (rho * F.softplus(-logits) + (1 - rho) * F.softplus(logits))
    values = torch.where(targets > 0.5, F.softplus(-logits), torch.where(pseudo, positives, negatives))
    penalty = expected_positive_penalty(probs, option(ctx, "expected_positives"))
    return reduce_entries(known_negatives(values, logits, ctx), ctx, ignore) + pseudo_option(ctx, "aevlp_reg") * penalty
