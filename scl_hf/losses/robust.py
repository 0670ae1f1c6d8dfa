"""Robust losses of the unobserved labels: GR (generalized robust loss), Hill and SPLC. Pure functions.

Each is `fn(logits, targets, ctx, ignore) -> scalar` with the registry's reduction (`reduce_entries`: a mean
over the B·C entries the EN / spatial mask leaves in). Positives use BCE on logits (`softplus(−z)`) where the
reference code takes `−log(σ(z) + ε)`; the difference is below 1e-6 relative for the tests' logits.

- "gr": Chen et al., "Boosting Single Positive Multi-label Classification with Generalized Robust Loss",
  IJCAI 2024; repo yan4xi1/GRLoss (losses.py `GR_loss`, models.py `KFunction` / `VFunction`, train.py
  schedules, config.py defaults). Unobserved entries: V(p)·[K(p)·(1 − p^q2)/q2 + (1 − K(p))·(1 − (1−p)^q3)/q3],
  K(p) = σ(w·p + b) (how likely the entry is a missed positive) and V(p) = exp(−(p − μ)²/2σ²), both on the
  detached prediction, with w, b, μ, σ moving linearly over the epochs.
- "hill", "splc": Zhang et al., "Simple and Robust Loss Design for Multi-Label Learning with Missing Labels",
  arXiv 2112.07368; repo xinyu1205/robust-loss-mlml (src/loss_functions/losses.py `Hill`, `SPLC`). Positives:
  focal loss with a margin, (1 − σ(z − m))^γ·(−log σ(z − m)). Hill's negatives: (λ − p)·p², flat near p = 1
  (a confident unobserved class is not pushed down). SPLC: from `splc_start_epoch` on, an unobserved entry
  with σ(z) > τ is trained as a positive (self-paced correction); the others: focal BCE p^γ·(−log(1 − p)).
  The repository sums over the batch; here the sum is divided by B·C like every other base loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .baselines import reduce_entries  # one reduction for every base loss
from .registry import LossContext, known_negatives, register_base_loss

# Defaults of the authors' code, the same for every dataset (neither repository sets them per dataset).
ROBUST_DEFAULTS: dict[str, float | tuple[float, ...]] = {
    "gr_k_schedule": (0.0, 2.0, -2.0, -2.0),  # GRLoss config.py --beta: (w⁰, wᵀ, b⁰, bᵀ)
    "gr_v_schedule": (0.5, 2.0, 0.8, 0.5),  # GRLoss config.py --alpha: (μ⁰, σ⁰, μᵀ, σᵀ)
    "gr_q": (0.01, 1.0),  # GRLoss config.py --q2q3: (q2, q3)
    "hill_lambda": 1.5,  # robust-loss-mlml Hill(lamb=1.5)
    "focal_margin": 1.0,  # Hill(margin=1.0), SPLC(margin=1.0)
    "focal_gamma": 2.0,  # Hill(gamma=2.0), SPLC(gamma=2.0)
    "splc_tau": 0.6,  # SPLC(tau=0.6)
    "splc_start_epoch": 1,  # SPLC(change_epoch=1); train.py counts epochs from 0
}


def robust_option(ctx: LossContext, name: str):
    return ctx.options.get(name, ROBUST_DEFAULTS[name])


def whole_epoch(ctx: LossContext) -> int:
    return math.floor(ctx.epoch + 1e-9)


def gr_schedule(ctx: LossContext) -> tuple[float, float, float, float]:
    """(w, b, μ, σ) at this epoch, as GRLoss train.py computes them with no linear initialisation: with the
    1-based epoch t of T, w and b move by (t − 1)/T and μ and σ by t/T (so μ, σ reach their end values)."""
    if "num_epochs" not in ctx.options:
        raise ValueError("gr needs ctx.options['num_epochs'] for its schedules (SCLTrainer passes it)")
    total = float(ctx.options["num_epochs"])
    t = whole_epoch(ctx) + 1
    w0, wt, b0, bt = robust_option(ctx, "gr_k_schedule")
    mu0, s0, mut, st = robust_option(ctx, "gr_v_schedule")
    k_step, v_step = max(t - 1, 0) / total, t / total
    return w0 + (wt - w0) * k_step, b0 + (bt - b0) * k_step, mu0 + (mut - mu0) * v_step, s0 + (st - s0) * v_step


def generalized_robust_negatives(probs: torch.Tensor, w: float, b: float, mu: float, sigma: float,
                                 q2: float, q3: float) -> torch.Tensor:
    """GR's loss of an unobserved entry: V·[K·(1 − p^q2)/q2 + (1 − K)·(1 − (1−p)^q3)/q3]; K, V on detached p."""
    detached = probs.detach()
    k = torch.sigmoid(w * detached + b)
    v = torch.exp(-0.5 * ((detached - mu) / sigma) ** 2)
    as_positive = (1 - probs.pow(q2)) / q2
    as_negative = (1 - (1 - probs).pow(q3)) / q3
    return v * (k * as_positive + (1 - k) * as_negative)


@register_base_loss("gr", crop_negative_mask=False)
def generalized_robust_loss(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """GR loss (IJCAI 2024): −log p on the observed positive; the unobserved entries weighted between "missed
    positive" and "true negative" by K and V (see the module docstring). Not a hard negative, so '+scl' leaves
    the unobserved classes in."""
    w, b, mu, sigma = gr_schedule(ctx)
    q2, q3 = robust_option(ctx, "gr_q")
    negatives = generalized_robust_negatives(torch.sigmoid(logits), w, b, mu, sigma, q2, q3)
    values = torch.where(targets > 0.5, F.softplus(-logits), negatives)
    return reduce_entries(known_negatives(values, logits, ctx), ctx, ignore)


def focal_margin_positive(logits: torch.Tensor, margin: float, gamma: float) -> torch.Tensor:
    """(1 − σ(z − m))^γ · (−log σ(z − m)): the positive loss of Hill and SPLC (the focal weight keeps its
    gradient, as in the reference)."""
    shifted = logits - margin
    return (1 - torch.sigmoid(shifted)).pow(gamma) * F.softplus(-shifted)


@register_base_loss("hill", crop_negative_mask=False)
def hill_loss(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """Hill (Zhang et al. 2021): focal-margin positives; unobserved entries (λ − p)·p², a hill whose gradient
    vanishes at p = 1, so a missed positive the network is sure of is left alone (not a hard negative)."""
    probs = torch.sigmoid(logits)
    negatives = (robust_option(ctx, "hill_lambda") - probs) * probs.pow(2)
    positives = focal_margin_positive(logits, robust_option(ctx, "focal_margin"), robust_option(ctx, "focal_gamma"))
    return reduce_entries(known_negatives(torch.where(targets > 0.5, positives, negatives), logits, ctx), ctx, ignore)


@register_base_loss("splc", crop_negative_mask=False)  # the mask lets the classes it frees drift past τ, and
# SPLC then trains them as positives: splc+scl collapsed with it (shapes, validation 66.19 vs 98.31; docs/method.md)
def self_paced_loss_correction(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """SPLC (Zhang et al. 2021): focal-margin positives, focal negatives p^γ·(−log(1 − p)); from epoch
    `splc_start_epoch` (0-based) an unobserved entry with σ(z) > τ becomes a positive for this step."""
    margin, gamma = robust_option(ctx, "focal_margin"), robust_option(ctx, "focal_gamma")
    positive = targets > 0.5
    if whole_epoch(ctx) >= int(robust_option(ctx, "splc_start_epoch")):
        positive = positive | (torch.sigmoid(logits.detach()) > robust_option(ctx, "splc_tau"))
    if ctx.observed_negatives is not None:  # a labelled negative is never corrected into a positive
        positive = positive & ~ctx.observed_negatives.bool()
    corrected = positive & (targets < 0.5)  # the reference leaves these logits unshifted by the margin
    positives = torch.where(corrected, torch.sigmoid(-logits).pow(gamma) * F.softplus(-logits),
                            focal_margin_positive(logits, margin, gamma))
    negatives = torch.sigmoid(logits).pow(gamma) * F.softplus(logits)
    return reduce_entries(known_negatives(torch.where(positive, positives, negatives), logits, ctx), ctx, ignore)
