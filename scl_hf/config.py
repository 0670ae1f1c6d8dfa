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
from .losses import BASELINE_DEFAULTS, options_from_config, parse_method, validate_options


@dataclass
class SCLConfig(TrainingArguments):
    # ----- method
    method: str = field(
        default="scl",
        metadata={
            "help": "Loss: a base loss (an, ...) and/or consistency terms joined by '+': 'an', 'cl', 'en', 'scl', "
            "'cl+scl', 'll-r+scl'. A lone term means 'an' + that term."
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
    # ----- baseline losses (scl_hf/baselines.py; COCO defaults, VOC ones in baselines.DATASET_DEFAULTS)
    ls_coefficient: float = field(
        default=BASELINE_DEFAULTS["ls_coefficient"],
        metadata={"help": "ε of 'an-ls': targets 1-ε / ε (Cole et al. 2021, ls_coef)."},
    )
    expected_positives: float = field(
        default=BASELINE_DEFAULTS["expected_positives"],
        metadata={"help": "k of 'epr' and 'role': the dataset's average positives per image (COCO 2.9, VOC 1.5; "
                  "Cole et al. 2021)."},
    )
    role_lr_multiplier: float = field(
        default=BASELINE_DEFAULTS["role_lr_multiplier"],
        metadata={"help": "'role': learning rate of the per-image label estimates / learning_rate (Cole et al.: 10)."},
    )
    ll_delta_rel: float = field(
        default=BASELINE_DEFAULTS["ll_delta_rel"],
        metadata={"help": "Δrel of 'll-r'/'ll-ct'/'ll-cp' in % per epoch (Kim et al. 2022 try 0.1…0.5)."},
    )
    em_alpha: float = field(
        default=BASELINE_DEFAULTS["em_alpha"],
        metadata={"help": "α of 'em'/'em-apl': weight of the entropy of unobserved labels (Zhou et al. 2022, coco)."},
    )
    apl_beta: float = field(
        default=BASELINE_DEFAULTS["apl_beta"], metadata={"help": "β of 'em-apl': weight of the soft pseudo-negatives."}
    )
    apl_warmup_epochs: int = field(
        default=int(BASELINE_DEFAULTS["apl_warmup_epochs"]),
        metadata={"help": "'em-apl': epochs of EM alone before pseudo-negatives are chosen (Zhou et al., coco: 5)."},
    )
    apl_negative_proportion: float = field(
        default=BASELINE_DEFAULTS["apl_negative_proportion"],
        metadata={"help": "θ of 'em-apl': share of each class's unobserved labels made pseudo-negative by the end."},
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

    def __post_init__(self):
        self.method_spec = parse_method(self.method)
        validate_options(options_from_config(self))
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.spatial_loss not in ("bce", "mse"):
            raise ValueError(f"spatial_loss must be 'bce' or 'mse', got {self.spatial_loss!r}")
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ValueError("need 0 < crop_scale_min <= crop_scale_max <= 1")
        if self.bank_layout not in ("dense", "sparse"):
            raise ValueError(f"bank_layout must be 'dense' or 'sparse', got {self.bank_layout!r}")
        if not 0.0 <= self.reliability_low < self.reliability_high <= 1.0:
            raise ValueError("need 0 <= reliability_low < reliability_high <= 1 (AUC values)")
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
