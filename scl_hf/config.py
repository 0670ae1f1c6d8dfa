"""SCLConfig: the training arguments of the consistency and spatial consistency losses.

Extends `transformers.TrainingArguments` (as TRL's configs do), so every Trainer option still works and
`HfArgumentParser(SCLConfig)` gives a command line. Each default says where it comes from; the method
defaults were chosen by the ablation in benchmarks/compare_methods.py (see docs/method.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .labels import LABEL_FORMATS
from .losses import (
    method_defaults,
    options_from_config,
    parse_method,
    validate_options,
    validate_recent_options,
)


@dataclass
class SCLConfig(TrainingArguments):
    # ----- method
    method: str = field(
        default="role+scl",
        metadata={
            "help": "Loss: a base loss (an, role, ...) and/or consistency terms joined by '+': 'an', 'cl', 'en', "
            "'scl', 'cl+scl', 'role+scl'. A lone term means 'an' + that term. Default 'role+scl': ROLE's per-image "
            "label estimates, started flat at ½ (role_init_spread), with the gated spatial term; chosen on the "
            "validation splits of four from-scratch regimes (docs/method.md). 'scl' is the paper's method on "
            "'assume negative' and keeps no N×C table (ImageNet-size data)."
        },
    )
    consistency_weight: float = field(
        default=1.0, metadata={"help": "λ_c, weight of the image-level consistency term 'cl'."}
    )
    spatial_weight: float = field(
        default=0.5,
        metadata={"help": "λ_s, weight of the spatial consistency term 'scl' (0.5 vs 1 over 3 seeds: scl +0.7, role+scl +0.9; see docs)."},
    )
    momentum: float = field(
        default=0.5,
        metadata={"help": "EMA momentum m of the running averages: P̄ ← m·P̄ + (1−m)·σ(z). Each image is seen once per "
                  "epoch, so m=0.5 averages over roughly the last two epochs (ablation: 0.8 lags a fast-improving "
                  "model, docs/method.md)."},
    )
    heatmap_momentum: float | None = field(
        default=None, metadata={"help": "EMA momentum of the heatmaps (default: same as `momentum`)."}
    )
    warmup_epochs: float = field(
        default=2.0,
        metadata={"help": "Epochs of the base loss alone before the consistency terms start; the bank records from "
                  "the last of them, so its first averages come from a network that has learnt something "
                  "(ablation: 2 beats 1 and 3, docs/method.md)."},
    )
    consistency_rampup_epochs: float = field(
        default=0.0,
        metadata={"help": "After the warm-up, the consistency weights grow linearly from 0 to λ over this many "
                  "epochs (temporal-ensembling practice), so early averages do not freeze the model."},
    )
    expected_negative_threshold: float = field(
        default=0.3,
        metadata={"help": "τ of 'en': unobserved classes with running average ≥ τ are not penalised. Single-positive "
                  "training keeps unlabelled objects' scores well below 0.5, so 0.5 leaves nearly every "
                  "unobserved class a negative (ablation, docs/method.md)."},
    )
    crop_corrected_positive: bool = field(
        default=False,
        metadata={"help": "With 'scl': weight the observed class's image-level positive by its peak stored heat "
                  "inside the crop, so a crop that cut the labelled object out does not ask for a positive."},
    )
    crop_negative_threshold: float | None = field(
        default=0.3,
        metadata={"help": "With 'scl': leave out of the base loss the unobserved classes whose peak stored heat "
                  "inside the crop reaches this value (an unlabelled object in view): the spatial form of "
                  "expected negatives. 0 or None: off, every unobserved class stays a negative (ablation: 0.3 best of "
                  "0.1–0.4, docs/method.md)."},
    )
    reliability_gate: bool = field(
        default=True,
        metadata={"help": "With 'scl': once per epoch, score each class's stored averages by how well they rank the "
                  "images observed with that class (ROC AUC) and scale the class's spatial term by a gate in [0, 1]; "
                  "the crop-negative mask acts only on classes whose gate is at least crop_negative_min_gate. A bank "
                  "written by a network that has not learnt yet then changes nothing (docs/method.md)."},
    )
    reliability_low: float = field(
        default=0.7, metadata={"help": "Reliability gate: AUC at which a class's gate opens (0 below)."}
    )
    reliability_high: float = field(
        default=0.9, metadata={"help": "Reliability gate: AUC from which a class's gate is fully open (1)."}
    )
    spatial_reliability_low: float | None = field(
        default=0.85,
        metadata={"help": "Reliability gate of the spatial term alone: the AUC at which it opens (None: reliability_low). "
                  "The spatial term adds targets where the mask only removes negatives, so it asks for a more "
                  "reliable bank (validation, 4 regimes: docs/method.md)."},
    )
    spatial_reliability_high: float | None = field(
        default=0.95,
        metadata={"help": "The AUC from which the spatial term is fully on (None: reliability_high)."},
    )
    crop_negative_min_gate: float = field(
        default=0.5, metadata={"help": "Reliability gate: the crop-negative mask acts on classes with a gate ≥ this."}
    )
    spatial_target_temperature: float = field(
        default=1.0, metadata={"help": "Sharpen the stored heatmaps before they become targets (T < 1 sharpens)."}
    )
    spatial_loss: str = field(
        default="mse",
        metadata={"help": "Per-cell loss of 'scl': 'mse' (squared error of σ(F); its gradient fades on confident "
                  "cells) or 'bce' (pulls confident cells back towards the softer averages; ablation)."},
    )
    spatial_observed_classes: bool = field(
        default=True,
        metadata={"help": "With 'scl': the spatial term also covers each row's observed classes. False: only the "
                  "unobserved ones, so a lagging stored heatmap never pulls the one labelled class's map down "
                  "(the base loss trains it)."},
    )
    bank_size: int = field(
        default=14,
        metadata={"help": "S, side of the heatmap bank grid over the original image (14 = ResNet-50's grid at 448 px)."},
    )
    bank_dir: str | None = field(
        default=None, metadata={"help": "Folder of the memory-mapped bank (default: <output_dir>/scl_bank). Node-local."}
    )
    bank_layout: str = field(
        default="dense",
        metadata={"help": "Heatmap bank layout: 'dense' keeps every class's map (N·C·S²·2 bytes); 'sparse' keeps the "
                  "observed class and the bank_top_k likeliest others per image, for ImageNet-size runs (docs/bank.md)."},
    )
    bank_top_k: int = field(
        default=5, metadata={"help": "Sparse layout: classes with the highest running average kept besides the observed one."}
    )
    bank_sync: str = field(
        default="epoch",
        metadata={"help": "When reads wait for the bank's writes: 'epoch' (every read of an epoch sees every write of "
                  "the epochs before it; one barrier at an epoch's first and last step) or 'step' (every write of "
                  "the steps before it; a barrier every step, for samplers that repeat images within an epoch)."},
    )
    # ----- base-loss options (scl_hf/losses/; None: the value of `dataset_defaults`, COCO's when that is unset)
    dataset_defaults: str | None = field(
        default=None,
        metadata={"help": "Dataset whose published loss hyperparameters fill every loss option left unset: coco, "
                  "voc, nuswide, cub (losses/defaults.py). None: COCO's. An explicit option always wins."},
    )
    ls_coefficient: float | None = field(
        default=None, metadata={"help": "ε of 'an-ls': targets 1-ε / ε (Cole et al. 2021, ls_coef 0.1)."}
    )
    expected_positives: float | None = field(
        default=None,
        metadata={"help": "k of 'epr' and 'role': the dataset's average positives per image (COCO 2.9, VOC 1.5, "
                  "NUS-WIDE 1.9, CUB 31.4; Cole et al. 2021)."},
    )
    role_lr_multiplier: float | None = field(
        default=None,
        metadata={"help": "'role': learning rate of the per-image label estimates / learning_rate (Cole et al.: 10)."},
    )
    role_init_spread: float | None = field(
        default=None,
        metadata={"help": "'role': half-width, in logits, of the uniform draw that starts each unobserved estimate. "
                  "None: 0 (every estimate starts at ½; the composition default registered in baselines.py) when ROLE is "
                  "composed with '+scl', as in the default method "
                  "(validation of four regimes, docs/method.md 'Honest validation on digits, and a flat start for "
                  "ROLE'); Cole et al.'s logit(0.6) for 'role' alone, so that the baseline stays theirs."},
    )
    ll_delta_rel: float | None = field(
        default=None,
        metadata={"help": "Δrel of 'll-r'/'ll-ct'/'ll-cp' in % per epoch (default 0.2; Kim et al. 2022 try 0.1…0.5)."},
    )
    em_alpha: float | None = field(
        default=None,
        metadata={"help": "α of 'em'/'em-apl': weight of the entropy of unobserved labels (Zhou et al. 2022: COCO "
                  "0.1, VOC 0.2, NUS 0.1, CUB 0.01)."},
    )
    apl_beta: float | None = field(
        default=None, metadata={"help": "β of 'em-apl': weight of the soft pseudo-negatives (COCO 0.9, VOC 0.02)."}
    )
    apl_warmup_epochs: int | None = field(
        default=None,
        metadata={"help": "'em-apl': epochs of EM alone before pseudo-negatives are chosen (Zhou et al., coco: 5)."},
    )
    apl_negative_proportion: float | None = field(
        default=None,
        metadata={"help": "θ of 'em-apl': share of each class's unobserved labels made pseudo-negative by the end (0.9)."},
    )
    gr_k_schedule: list[float] | None = field(
        default=None, metadata={"help": "'gr': w⁰ wᵀ b⁰ bᵀ of K(p) = σ(w·p + b) (GRLoss --beta: 0 2 -2 -2)."}
    )
    gr_v_schedule: list[float] | None = field(
        default=None, metadata={"help": "'gr': μ⁰ σ⁰ μᵀ σᵀ of V(p) = exp(−(p−μ)²/2σ²) (GRLoss --alpha: 0.5 2 0.8 0.5)."}
    )
    gr_q: list[float] | None = field(default=None, metadata={"help": "'gr': q2 q3 (GRLoss --q2q3: 0.01 1)."})
    hill_lambda: float | None = field(default=None, metadata={"help": "λ of 'hill': negatives (λ − p)·p² (1.5)."})
    focal_margin: float | None = field(
        default=None, metadata={"help": "'hill'/'splc': margin m of the focal positive loss (1.0)."}
    )
    focal_gamma: float | None = field(default=None, metadata={"help": "'hill'/'splc': focal exponent γ (2.0)."})
    splc_tau: float | None = field(
        default=None, metadata={"help": "τ of 'splc': an unobserved entry with σ(z) > τ is trained as a positive (0.6)."}
    )
    splc_start_epoch: int | None = field(
        default=None, metadata={"help": "'splc': first epoch (0-based) of the correction (1)."}
    )
    boostlu_alpha: float | None = field(
        default=None, metadata={"help": "α of 'boostlu': positive class-map cells × α before pooling (Kim et al. 2023: 5)."}
    )
    boostlu_delta_rel: float | None = field(
        default=None, metadata={"help": "'boostlu': LL-R's Δrel in % per epoch (Kim et al. 2023: 0.5)."}
    )
    loss_options: dict | str | None = field(
        default=None,
        metadata={"help": "Any loss option by name, as a dict or JSON string, e.g. '{\"vlpl_threshold\": 0.25}' "
                  "(every name and default: scl_hf.losses.LOSS_DEFAULTS); wins over the fields above."},
    )
    pseudo_label_column: str = field(
        default="clip_scores",
        metadata={"help": "'vlpl'/'aevlp': training column of CLIP region-class similarities "
                  "(scl_hf.data.add_clip_scores). Read for those base losses only."},
    )
    # ----- augmentation
    image_size: int = field(default=448, metadata={"help": "Side of the square training/eval views (protocol: 448)."})
    crop_scale_min: float = field(
        default=0.25, metadata={"help": "Smallest crop area as a fraction of the image (random-resized crop)."}
    )
    crop_scale_max: float = field(default=1.0, metadata={"help": "Largest crop area fraction."})
    crop_ratio_min: float = field(default=3 / 4, metadata={"help": "Smallest crop aspect ratio (torchvision's)."})
    crop_ratio_max: float = field(default=4 / 3, metadata={"help": "Largest crop aspect ratio."})
    flip_prob: float = field(default=0.5, metadata={"help": "Probability of a horizontal flip."})
    # ----- data columns
    image_column: str = field(default="image", metadata={"help": "Image column of train and eval datasets."})
    label_column: str = field(
        default="label",
        metadata={"help": "Observed labels of the train set: one class id or name per row, or several (partial labels)."},
    )
    labels_column: str = field(
        default="labels", metadata={"help": "List of all positive class ids of the eval set (never used for training)."}
    )
    label_format: str = field(
        default="auto",
        metadata={"help": "How to read label_column: 'auto' (from the features), 'id', 'name', 'ids', 'names' or "
                  "'multihot' (0/1 per class; -1 marks an observed negative). Several ids per row are partial labels "
                  "(scl_hf/labels.py)."},
    )
    labels_format: str = field(
        default="auto", metadata={"help": "How to read labels_column of the eval set: as label_format (no -1)."}
    )
    log_per_class_ap: bool = field(
        default=False, metadata={"help": "Also log AP/<class> for every class at each evaluation (80 keys on COCO)."}
    )
    empty_class_policy: str = field(
        default="zero", metadata={"help": "AP of a class with no positive in the eval set: 'zero' or 'skip'."}
    )
    # ----- Trainer defaults this package needs
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the trainer reads the image column itself."}
    )
    label_names: list[str] | None = field(default_factory=lambda: ["labels"])

    @property
    def spatial_gate_thresholds(self) -> tuple[float, float]:
        """The AUCs at which the spatial term's gate opens and is full (the mask's own where unset)."""
        low = self.reliability_low if self.spatial_reliability_low is None else self.spatial_reliability_low
        high = self.reliability_high if self.spatial_reliability_high is None else self.spatial_reliability_high
        return low, high

    def __post_init__(self):
        self.method_spec = parse_method(self.method)
        if isinstance(self.loss_options, str):
            self.loss_options = json.loads(self.loss_options)
        self.apply_defaults()
        options = options_from_config(self)
        validate_options(options)
        validate_recent_options(options)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.spatial_loss not in ("bce", "mse"):
            raise ValueError(f"spatial_loss must be 'bce' or 'mse', got {self.spatial_loss!r}")
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ValueError("need 0 < crop_scale_min <= crop_scale_max <= 1")
        if self.bank_layout not in ("dense", "sparse"):
            raise ValueError(f"bank_layout must be 'dense' or 'sparse', got {self.bank_layout!r}")
        spatial_low, spatial_high = self.spatial_gate_thresholds
        if not 0.0 <= spatial_low < spatial_high <= 1.0:
            raise ValueError("need 0 <= spatial_reliability_low < spatial_reliability_high <= 1 (AUC values)")
        if not 0.0 <= self.reliability_low < self.reliability_high <= 1.0:
            raise ValueError("need 0 <= reliability_low < reliability_high <= 1 (AUC values)")
        if self.bank_sync not in ("epoch", "step"):
            raise ValueError(f"bank_sync must be 'epoch' or 'step', got {self.bank_sync!r}")
        if self.bank_top_k < 1:
            raise ValueError(f"bank_top_k must be at least 1, got {self.bank_top_k}")
        for name in ("label_format", "labels_format"):
            if getattr(self, name) not in LABEL_FORMATS:
                raise ValueError(f"{name} must be one of {LABEL_FORMATS}, got {getattr(self, name)!r}")
        if self.empty_class_policy not in ("zero", "skip"):
            raise ValueError("empty_class_policy must be 'zero' or 'skip'")
        if self.remove_unused_columns:
            raise ValueError("SCLTrainer needs remove_unused_columns=False: it reads the image column itself")
        super().__post_init__()

    def apply_defaults(self) -> None:
        """Fill each loss option left unset (None) with its default, so that the run's training_args.json records
        the values used: the method's composition defaults (registry.register_composition_defaults) over
        `dataset_defaults`' values over the package's; an explicit value is kept. Options without a field of their
        own (the pseudo-label losses') are written into `loss_options` when the method uses them."""
        unfielded = {}
        for name, value in method_defaults(self.dataset_defaults, self.method).items():
            if isinstance(value, tuple):
                value = list(value)
            elif name in ("apl_warmup_epochs", "splc_start_epoch", "aevlp_top_k"):
                value = int(value)
            if name not in self.__dataclass_fields__:
                unfielded[name] = value
            elif getattr(self, name) is None:
                setattr(self, name, value)
        if self.method_spec.info.pseudo_labels:
            self.loss_options = {**unfielded, **(self.loss_options or {})}

    @property
    def crop_scale(self) -> tuple[float, float]:
        return self.crop_scale_min, self.crop_scale_max

    @property
    def crop_ratio(self) -> tuple[float, float]:
        return self.crop_ratio_min, self.crop_ratio_max

    def bank_fingerprint(self, num_labels: int) -> str:
        """What makes a bank's content mean something: a bank is reused only under the same values."""
        keys = {
            "method": self.method_spec.name,
            "num_labels": num_labels,
            "bank_size": self.bank_size,
            "momentum": self.momentum,
            "heatmap_momentum": self.heatmap_momentum,
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]
