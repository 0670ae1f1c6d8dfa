"""Non-negative positive-unlabelled risk ("nnpu"): assume negative, minus what the hidden positives add to it.

Why: "assume negative" trains every unobserved entry towards 0, so a class's hidden positives are pushed down
with its true negatives. Per class, the unobserved entries are a mixture: a share π_c of hidden positives,
assumed to look like the observed ones (selected completely at random), and true negatives. The risk a fully
labelled set would give can then be estimated from single labels (du Plessis et al. 2015; Kiryo et al., NeurIPS
2017, "Positive-Unlabeled Learning with Non-Negative Risk Estimator"), per class c over a batch:

    R_c = Σ_P ℓ⁺ + π_c·|U|·mean_P ℓ⁺ + max(0, Σ_U ℓ⁻ − π_c·|U|·mean_P ℓ⁻)

P: the batch's observed positives of c, U: its unobserved entries of c, ℓ± = BCE towards 1 / 0. The second term
trains the hidden positives as positives; the third is AN's negative sum with the hidden positives' share taken
out, clamped at 0 (no gradient there) once the network scores the unobserved entries below what the positives
imply, which is where AN starts to fit its false negatives. While the network tells nothing apart (the unobserved
score like the positives) it is AN's loss with the negatives scaled by 1 − π_c. A class with no observed positive in
the batch takes that form: (1 − π_c)·Σ_U ℓ⁻.

π_c comes from the training labels and `expected_positives` k: the observed label is one of the image's positives,
so P(observed c) ≈ prevalence_c / k, and among the rows that do not observe c the positives of c are
π_c = q_c (k − 1) / (1 − q_c), q_c the observed frequency of c (clamped to [0, 0.95]). The sum over classes is
divided by the entries the crop-negative mask leaves in (B·C without it), AN's reduction; observed negatives stay plain BCE towards 0, as in every base loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .baselines import BASELINE_DEFAULTS, LossState
from .registry import LossContext, observed_matrix, register_base_loss

MAX_HIDDEN_SHARE = 0.95


def hidden_positive_share(observed: torch.Tensor, expected_positives: float) -> torch.Tensor:
    """Per class, the share of hidden positives among the rows that do not observe it: q (k − 1) / (1 − q)."""
    frequency = observed.float().mean(dim=0)
    share = frequency * max(expected_positives - 1.0, 0.0) / (1.0 - frequency).clamp_min(1e-6)
    return share.clamp(0.0, MAX_HIDDEN_SHARE)


class HiddenPositiveShares(LossState):
    """π_c of every class, fixed at the start from the training set's observed labels."""

    def __init__(self, labels: torch.Tensor, num_classes: int, options: dict):
        super().__init__()
        expected = float(options.get("expected_positives", BASELINE_DEFAULTS["expected_positives"]))
        self.register_buffer("share", hidden_positive_share(observed_matrix(labels, num_classes), expected))


@register_base_loss("nnpu", make_state=HiddenPositiveShares)
def non_negative_pu_loss(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """Kiryo et al.'s non-negative PU risk per class, on top of AN (module docstring)."""
    positive_loss, negative_loss = F.softplus(-logits), F.softplus(logits)
    if ctx.element_weights is not None:
        weights = ctx.element_weights.to(logits.dtype)
        positive_loss, negative_loss = positive_loss * weights, negative_loss * weights
    observed = targets > 0.5
    known_negative = ctx.observed_negatives.bool() if ctx.observed_negatives is not None else torch.zeros_like(observed)
    unobserved = ~observed & ~known_negative
    if ignore is not None:
        unobserved = unobserved & ~ignore
    share = ctx.state.share.to(logits.dtype)
    positives = observed.sum(dim=0)
    hidden = share * unobserved.sum(dim=0)  # expected hidden positives per class in the batch
    mean_positive = (positive_loss * observed).sum(0) / positives.clamp_min(1)
    mean_negative_of_positives = (negative_loss * observed).sum(0) / positives.clamp_min(1)
    unobserved_negative = (negative_loss * unobserved).sum(0)
    corrected = torch.where(
        positives > 0,
        (unobserved_negative - hidden * mean_negative_of_positives).clamp_min(0.0),
        (1.0 - share) * unobserved_negative,
    )
    per_class = (positive_loss * observed).sum(0) + hidden * mean_positive * (positives > 0) + corrected
    per_class = per_class + (negative_loss * known_negative).sum(0)
    entries = logits.numel() if ignore is None else int((~ignore).sum().clamp_min(1))
    return per_class.sum() / entries
