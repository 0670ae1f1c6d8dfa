"""The single-positive base losses ("an" and the baselines), registered in registry.py.

Each is `fn(logits, targets, ctx, ignore) -> scalar`, selected by `SCLConfig.method` and composable with the
consistency terms ("ll-r+scl", "em-apl+cl"). Every loss builds a per-entry loss matrix (B, C) and reduces it
as `reduce_entries` does: a mean over the entries the EN mask `ignore` leaves in, each multiplied by
`ctx.element_weights` (crop correction) when given. With nothing ignored that is Cole et al.'s reduction
(sum of the matrix / (B·C), losses.py `compute_batch_loss` in both reference repositories). Batch-level
regularisers (EPR, ROLE) are added unweighted: they count expected positives over all classes.

Differences from the reference code, all deliberate: BCE on logits (`softplus`) instead of `-log(p + 1e-5)`
(no clipping bias, same optimum); LL ranks exactly k entries (the reference's `<` / `>` against the k-th value
treats the k-th entry inconsistently) and never more than there are unobserved entries; EM-APL ranks the
predictions recorded during the epoch's own training steps instead of a second, eval-mode pass over the
training set (which costs one extra inference epoch per epoch).

Partial labels: `targets` is the (B, C) multi-hot matrix of observed positives (one-hot for single-positive rows),
so every loss takes several positives as it takes one; observed negatives (`ctx.observed_negatives`) become plain
BCE towards 0 in every loss (`known_negatives`) and are never ranked, corrected or pseudo-labelled.

Stateful losses (ROLE, LL-Cp, EM-APL) declare `make_state(labels, num_classes, options) -> LossState` at
registration, `labels` the (N, C) observed-positive matrix ((N,) single ids are accepted too). The trainer
builds the state once (N rows), puts its
parameters into the optimizer as their own group (learning rate × `lr_multiplier`), passes it as `ctx.state`,
saves it next to each checkpoint and restores it on resume; it is never part of the exported model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .registry import (
    LossContext,
    known_negatives,
    masked_mean,
    observed_matrix,
    register_base_loss,
    register_composition_defaults,
)

# Defaults for COCO, the headline protocol (Cole et al. 2021); other datasets' in DATASET_DEFAULTS, applied by
# SCLConfig(dataset_defaults=...) through defaults.py. SCLConfig
# exposes each under the same name; `ctx.options` carries them to the losses.
BASELINE_DEFAULTS: dict[str, float] = {
    "ls_coefficient": 0.1,  # Cole et al. train.py P['ls_coef']
    "expected_positives": 2.9,  # Cole et al. train.py lookup['expected_num_pos']['coco']
    "role_lr_multiplier": 10.0,  # Cole et al. train.py P['lr_mult']
    "role_init_spread": math.log(0.6 / 0.4),  # Cole et al. models.py LabelEstimator: unobserved in ±logit(0.6)
    "ll_delta_rel": 0.2,  # Kim et al. README: Δrel ∈ {0.1, …, 0.5} (%); config.py's 0 would switch LL off
    "em_alpha": 0.1,  # Zhou et al. main.py, coco: P['alpha']
    "apl_beta": 0.9,  # Zhou et al. main.py, coco: P['beta']
    "apl_warmup_epochs": 5,  # Zhou et al. main.py, coco: P['warmup_epoch']
    "apl_negative_proportion": 0.9,  # Zhou et al. main.py: P['neg_proportion']
}
DATASET_DEFAULTS: dict[str, dict[str, float]] = {
    "coco": {"expected_positives": 2.9, "em_alpha": 0.1, "apl_beta": 0.9, "apl_warmup_epochs": 5},
    "voc": {"expected_positives": 1.5, "em_alpha": 0.2, "apl_beta": 0.02, "apl_warmup_epochs": 5},
    "nuswide": {"expected_positives": 1.9, "em_alpha": 0.1, "apl_beta": 0.2, "apl_warmup_epochs": 4},
    # Cole et al. train.py lookup['expected_num_pos']['cub']; Zhou et al. main.py, cub
    "cub": {"expected_positives": 31.4, "em_alpha": 0.01, "apl_beta": 0.4, "apl_warmup_epochs": 3},
}


@register_base_loss("an")
def assume_negative_loss(
    logits: torch.Tensor, targets: torch.Tensor, ctx: LossContext, ignore: torch.Tensor | None = None
) -> torch.Tensor:
    """"Assume negative": BCE with every unobserved class as a negative (Cole et al. 2021 baseline)."""
    values = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # observed negatives: BCE to 0 already
    if ctx.element_weights is not None:
        values = values * ctx.element_weights
    return masked_mean(values, None if ignore is None else ~ignore)



def option(ctx: LossContext, name: str) -> float:
    return float(ctx.options.get(name, BASELINE_DEFAULTS[name]))


def validate_options(options: dict) -> None:
    """Fail at configuration time, not after an epoch of training."""
    if not 0.0 <= options["ls_coefficient"] < 0.5:
        raise ValueError(f"ls_coefficient must be in [0, 0.5), got {options['ls_coefficient']}")
    if options["expected_positives"] <= 0:
        raise ValueError(f"expected_positives must be positive, got {options['expected_positives']}")
    if not 0.0 <= options["ll_delta_rel"] <= 100.0:
        raise ValueError(f"ll_delta_rel is a percentage per epoch, got {options['ll_delta_rel']}")
    if not 0.0 <= options["apl_negative_proportion"] <= 1.0:
        raise ValueError(f"apl_negative_proportion must be in [0, 1], got {options['apl_negative_proportion']}")
    if options["role_lr_multiplier"] <= 0 or options["apl_warmup_epochs"] < 0:
        raise ValueError("role_lr_multiplier must be positive and apl_warmup_epochs non-negative")
    if options["role_init_spread"] < 0:
        raise ValueError(f"role_init_spread is a logit half-width, at least 0, got {options['role_init_spread']}")


def reduce_entries(values: torch.Tensor, ctx: LossContext, ignore: torch.Tensor | None) -> torch.Tensor:
    if ctx.element_weights is not None:
        values = values * ctx.element_weights.to(values.dtype)
    return masked_mean(values, None if ignore is None else ~ignore)


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """−H(σ(z)) = z·σ(z) − softplus(z), stable for large |z|."""
    return logits * torch.sigmoid(logits) - F.softplus(logits)


def expected_positive_penalty(probs: torch.Tensor, expected: float) -> torch.Tensor:
    """Cole et al. Eq. 6 (R_k with the squared norm) / C², as losses.py `loss_epr` scales it."""
    return (probs.sum(dim=1).mean() - expected) ** 2 / probs.shape[1] ** 2


# ----------------------------------------------------------------------------- stateless


@register_base_loss("an-ls")
def assume_negative_label_smoothing(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """AN with label smoothing: targets 1 → 1−ε, 0 → ε (ε = `ls_coefficient`, default 0.1).

    Cole et al., "Multi-Label Learning from Single Positive Labels", CVPR 2021, Sec. 3 (L_AN-LS);
    repo elijahcole/single-positive-multi-label, losses.py `loss_an_ls`, train.py `ls_coef = 0.1`.
    """
    eps = option(ctx, "ls_coefficient")
    smoothed = targets * (1.0 - eps) + (1.0 - targets) * eps
    values = F.binary_cross_entropy_with_logits(logits, smoothed, reduction="none")
    return reduce_entries(known_negatives(values, logits, ctx), ctx, ignore)


@register_base_loss("wan", crop_negative_mask=False)
def weak_assume_negative(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """Weak AN: assumed negatives weighted by γ = 1/(C−1), so that together they weigh about one positive.

    Cole et al. CVPR 2021, Sec. 3 (L_WAN); losses.py `loss_wan`.
    '+scl' does not apply the spatial expected-negative mask: the negatives are already too weak to suppress an
    unlabelled object, and removing them leaves nothing that keeps the scores of absent classes down — wan+scl
    with the mask ran away to 56.0 mAP (seed 0), without it 86.3 (WAN alone 82.5).
    """
    values = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    gamma = 1.0 / max(logits.shape[1] - 1, 1)
    return reduce_entries(known_negatives(torch.where(targets > 0.5, values, gamma * values), logits, ctx), ctx, ignore)


@register_base_loss("epr", crop_negative_mask=False)
def expected_positive_regularization(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """EPR: BCE on the observed positives only, plus (mean_n Σ_c σ(z_nc) − k)² / C².

    k = `expected_positives`, the dataset's average number of positives per image (COCO 2.9, VOC 1.5): a known
    statistic, not read from any label of the batch. Cole et al. CVPR 2021, Sec. 3, Eq. 6 (L_EPR);
    losses.py `loss_epr` and `expected_positive_regularizer`; train.py `lookup['expected_num_pos']`.
    The EN mask has no negative entry to drop here; the regulariser counts every class. No assumed negatives, so
    the spatial expected-negative mask of '+scl' is not applied.
    """
    values = targets * F.softplus(-logits)
    penalty = expected_positive_penalty(torch.sigmoid(logits), option(ctx, "expected_positives"))
    return reduce_entries(known_negatives(values, logits, ctx), ctx, ignore) + penalty


@register_base_loss("em", crop_negative_mask=False)
def entropy_maximization(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """EM: BCE on the observed positives; −α·H(σ(z)) on the unobserved entries (their entropy is maximised).

    Zhou et al., "Acknowledging the Unknown for Multi-label Learning with Single Positive Labels", ECCV 2022,
    Sec. 3.2 Eq. 4; repo Correr-Zhou/SPML-AckTheUnknown, losses.py `loss_EM`; α = `em_alpha` (coco 0.1).
    """
    values = torch.where(targets > 0.5, F.softplus(-logits), option(ctx, "em_alpha") * negative_entropy(logits))
    return reduce_entries(known_negatives(values, logits, ctx), ctx, ignore)


@register_base_loss("full", full_labels=True, crop_negative_mask=False)
def full_label_bce(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """The upper bound: BCE against every true label (`ctx.full_labels`), as Cole et al.'s "full labels" row.

    Not single-positive learning. SCLTrainer reads the full-label column for this base only, and warns.
    """
    if ctx.full_labels is None:
        raise ValueError("method 'full' needs ctx.full_labels (SCLTrainer passes them for method='full' only)")
    full = torch.maximum(ctx.full_labels.to(logits.dtype), targets)
    return reduce_entries(F.binary_cross_entropy_with_logits(logits, full, reduction="none"), ctx, ignore)


# ----------------------------------------------------------------------------- large loss (Kim et al.)


def large_loss_count(epoch: float, num_entries: int, delta_rel: float, permanent: bool = False) -> int:
    """How many of a batch's B·C entries LL modifies at `epoch` (0-based; whole epochs count).

    Kim et al., "Large Loss Matters in Weakly Supervised Multi-Label Classification", CVPR 2022, Sec. 3.2:
    the rejection rate grows by Δrel per epoch and is 0 in the first epoch, k = ⌈B·C·e·Δrel⌉; LL-Cp
    corrects k = ⌈B·C·Δrel⌉ per batch from the second epoch on. Repo snucml/LargeLossMatters, losses.py
    `compute_batch_loss`, train.py `llr_rel -= delta_rel` after each epoch, config.py (Δrel in %, /100).
    """
    whole = math.floor(epoch + 1e-9)
    if whole < 1 or delta_rel <= 0:
        return 0
    fraction = delta_rel / 100.0 * (1 if permanent else whole)
    return math.ceil(num_entries * fraction - 1e-9)  # tolerance: 40 · 0.025 is 1.0000000000000002


def large_loss(logits, targets, ctx: LossContext, ignore, scheme: str) -> torch.Tensor:
    """AN, with the k largest losses among the unobserved entries rejected (loss 0, LL-R) or corrected
    (BCE towards 1: LL-Ct this step, LL-Cp from now on, as the repo's train.py rewrites the label matrix)."""
    state = ctx.state if scheme == "ll-cp" else None
    if state is not None:
        targets = torch.maximum(targets, state.corrected[ctx.indices].to(targets.dtype))
    values = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    candidates = targets < 0.5
    if ignore is not None:
        candidates &= ~ignore
    if ctx.observed_negatives is not None:  # a labelled negative is not a noisy guess: never rejected or corrected
        candidates &= ~ctx.observed_negatives.bool()
    k = large_loss_count(ctx.epoch, targets.numel(), option(ctx, "ll_delta_rel"), permanent=scheme == "ll-cp")
    k = min(k, int(candidates.sum()))
    if k > 0:
        ranked = torch.where(candidates, values.detach(), torch.full_like(values, -math.inf))
        chosen = torch.zeros_like(candidates)
        chosen.view(-1)[ranked.flatten().topk(k).indices] = True
        if scheme == "ll-r":
            values = torch.where(chosen, torch.zeros_like(values), values)
        else:
            values = torch.where(chosen, F.softplus(-logits), values)
        if state is not None:
            state.correct(ctx.indices, chosen)
    return reduce_entries(known_negatives(values, logits, ctx), ctx, ignore)


class LossState(nn.Module):
    """Per-image tables of a stateful base loss, kept out of the model.

    `gather` is set by the trainer under several processes (accelerate's gather): table writes are then made
    with every process's rows, so that each process keeps an identical copy, as the bank does.
    """

    lr_multiplier: float = 1.0

    def __init__(self):
        super().__init__()
        self.gather: Callable[[torch.Tensor], torch.Tensor] | None = None

    def shared(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.gather is None:
            return tensors
        return tuple(self.gather(t.contiguous()) for t in tensors)


class PermanentCorrections(LossState):
    """LL-Cp: the unobserved labels turned positive so far, N×C."""

    def __init__(self, labels: torch.Tensor, num_classes: int, options: dict):
        super().__init__()
        self.register_buffer("corrected", torch.zeros(len(labels), num_classes, dtype=torch.bool))

    @torch.no_grad()
    def correct(self, indices: torch.Tensor, chosen: torch.Tensor) -> None:
        indices, chosen = self.shared(indices, chosen)
        rows, cols = chosen.nonzero(as_tuple=True)
        self.corrected.index_put_((indices[rows].long(), cols), torch.ones_like(cols, dtype=torch.bool))


@register_base_loss("ll-r")
def large_loss_rejection(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """LL-R (Kim et al. CVPR 2022, Sec. 3.2, Eq. 5): the largest unobserved losses are rejected. Δrel =
    `ll_delta_rel` in % per epoch (default 0.2)."""
    return large_loss(logits, targets, ctx, ignore, "ll-r")


@register_base_loss("ll-ct")
def large_loss_temporary_correction(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """LL-Ct (Kim et al. CVPR 2022, Sec. 3.2, Eq. 6): the largest unobserved losses are taken as positives,
    for this step only."""
    return large_loss(logits, targets, ctx, ignore, "ll-ct")


@register_base_loss("ll-cp", make_state=PermanentCorrections)
def large_loss_permanent_correction(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """LL-Cp (Kim et al. CVPR 2022, Sec. 3.2): ⌈B·C·Δrel⌉ largest unobserved losses per batch become
    positives for the rest of training (`ctx.state.corrected`)."""
    return large_loss(logits, targets, ctx, ignore, "ll-cp")


# ----------------------------------------------------------------------------- ROLE (Cole et al.)


class LabelEstimates(LossState):
    """ROLE's label estimator: a learned logit per image and class, trained with the classifier.

    Initialisation as Cole et al.'s models.py `LabelEstimator`: unobserved entries uniform in
    ±logit(0.6), the observed positive at logit(0.995); drawn from a generator seeded with the run's seed.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, options: dict):
        super().__init__()
        generator = torch.Generator().manual_seed(int(options.get("seed", 0)))
        spread = float(options.get("role_init_spread", BASELINE_DEFAULTS["role_init_spread"]))
        table = spread * (2.0 * torch.rand(len(labels), num_classes, generator=generator) - 1.0)
        table[observed_matrix(labels, num_classes)] = math.log(0.995 / 0.005)
        self.logits = nn.Parameter(table)
        self.lr_multiplier = float(options.get("role_lr_multiplier", BASELINE_DEFAULTS["role_lr_multiplier"]))

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.logits[indices.long()]


@register_base_loss("role", make_state=LabelEstimates, crop_negative_mask=False)
def regularized_online_label_estimation(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """ROLE: classifier f and per-image label estimates g = σ(table[n]) trained jointly, each against the
    other's detached output, both on the observed positive and both under the expected-positives penalty:

        ½[−log f_y − log g_y] + ½[BCE(f, sg(g)) + BCE(g, sg(f))] (mean over B·C) + ½[R(f) + R(g)].

    Cole et al. CVPR 2021, Sec. 3.3 (Eq. 7–8); losses.py `loss_role`, models.py `LabelEstimator`, train.py
    (Adam group of the estimates at lr × `lr_mult` = 10). The EN mask drops the cross terms of ignored entries.
    The unobserved entries are pulled towards the estimates, not assumed negative, so '+scl' leaves them in: with
    the spatial expected-negative mask role+scl fell to 75.0 mAP (seed 0), without it 87.3 (ROLE alone 86.1).
    """
    estimates = ctx.state(ctx.indices)
    probs = torch.sigmoid(logits)
    positives = targets * (F.softplus(-logits) + F.softplus(-estimates))
    cross = F.binary_cross_entropy_with_logits(logits, torch.sigmoid(estimates).detach(), reduction="none")
    cross = cross + F.binary_cross_entropy_with_logits(estimates, probs.detach(), reduction="none")
    if ignore is not None:
        cross = cross.masked_fill(ignore, 0.0)
    expected = option(ctx, "expected_positives")
    penalty = expected_positive_penalty(probs, expected) + expected_positive_penalty(torch.sigmoid(estimates), expected)
    return reduce_entries(known_negatives(0.5 * (positives + cross), logits, ctx), ctx, ignore) + 0.5 * penalty


# ROLE under '+scl' starts every unobserved estimate at ½: Cole et al.'s random 0.4–0.6 is per-image noise that a
# slowly learning network fits (validation of four regimes, docs/method.md "Honest validation on digits, and a flat
# start for ROLE"); 'role' alone keeps their start, so that the baseline stays theirs.
register_composition_defaults("role", "scl", role_init_spread=0.0)


# ----------------------------------------------------------------------------- EM + APL (Zhou et al.)


class PseudoNegatives(LossState):
    """EM-APL: the predictions recorded during the current epoch and the soft pseudo-negatives chosen so far.

    `soft_negatives[n, c]` is NaN until the entry is pseudo-labelled, then the prediction it had then (the
    repo stores −p in its label matrix). `labelled_epoch`: the last epoch whose labelling round has run.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, options: dict):
        super().__init__()
        rows = len(labels)
        self.register_buffer("observed", observed_matrix(labels, num_classes))
        self.register_buffer("probs", torch.zeros(rows, num_classes))
        self.register_buffer("recorded", torch.zeros(rows, dtype=torch.bool))
        self.register_buffer("soft_negatives", torch.full((rows, num_classes), math.nan))
        self.register_buffer("labelled_epoch", torch.tensor(-1, dtype=torch.long))

    @torch.no_grad()
    def record(self, indices: torch.Tensor, probs: torch.Tensor) -> None:
        indices, probs = self.shared(indices, probs)
        self.probs[indices.long()] = probs.to(self.probs.dtype)
        self.recorded[indices.long()] = True

    @torch.no_grad()
    def label_round(self, proportion: float, rounds: int) -> torch.Tensor:
        """Per class c, the ⌊θ·U_c/rounds⌋ lowest recorded predictions among still-unlabelled unobserved
        entries become soft negatives (U_c: the class's unobserved count; Zhou et al. main.py
        `aysmmetric_pseudo_labeling`). Returns the newly chosen entries."""
        unobserved = ~self.observed
        quota = torch.floor(proportion * unobserved.sum(dim=0).double() / rounds).long()
        candidates = unobserved & self.recorded[:, None] & torch.isnan(self.soft_negatives)
        scores = torch.where(candidates, self.probs, torch.full_like(self.probs, math.inf))
        order = scores.argsort(dim=0, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(0, order, torch.arange(len(order), device=order.device)[:, None].expand_as(order))
        chosen = candidates & (rank < quota[None, :])
        self.soft_negatives[chosen] = self.probs[chosen]
        return chosen


@register_base_loss("em-apl", make_state=PseudoNegatives, crop_negative_mask=False)
def entropy_maximization_asymmetric_pseudo_labels(logits, targets, ctx: LossContext, ignore=None) -> torch.Tensor:
    """EM + asymmetric pseudo-labelling: EM until `apl_warmup_epochs` epochs are done; then at the start of
    every epoch the entries each class predicts least likely become soft negatives, a share
    θ/(E − warm-up) of the class's unobserved entries per round (θ = `apl_negative_proportion` 0.9, E the
    number of training epochs), trained with β·BCE(σ(z), p_then) (β = `apl_beta`).

    Zhou et al. ECCV 2022, Sec. 3.3 (Eq. 6–7); losses.py `loss_EM_APL`, main.py `aysmmetric_pseudo_labeling`
    (coco: α 0.1, β 0.9, warm-up 5, θ 0.9). Needs `ctx.options['num_epochs']` (the trainer passes it).
    """
    state: PseudoNegatives = ctx.state
    warmup = int(option(ctx, "apl_warmup_epochs"))
    epoch = math.floor(ctx.epoch + 1e-9)
    if epoch >= warmup and int(state.labelled_epoch) < epoch:
        if "num_epochs" not in ctx.options:
            raise ValueError("em-apl needs ctx.options['num_epochs'] to spread its pseudo-labels over the epochs")
        rounds = math.ceil(ctx.options["num_epochs"]) - warmup
        if rounds > 0:
            state.label_round(option(ctx, "apl_negative_proportion"), rounds)
        state.labelled_epoch.fill_(epoch)
    soft = state.soft_negatives[ctx.indices.long()].to(logits.dtype)
    pseudo = ~torch.isnan(soft) & (targets < 0.5)
    pseudo_loss = option(ctx, "apl_beta") * F.binary_cross_entropy_with_logits(
        logits, torch.nan_to_num(soft), reduction="none"
    )
    unknown = torch.where(pseudo, pseudo_loss, option(ctx, "em_alpha") * negative_entropy(logits))
    values = torch.where(targets > 0.5, F.softplus(-logits), unknown)
    state.record(ctx.indices, torch.sigmoid(logits.detach()))
    return reduce_entries(known_negatives(values, logits, ctx), ctx, ignore)
