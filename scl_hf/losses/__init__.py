"""Loss functions of single-positive multi-label learning: pure functions, no state, no files.

registry.py: the method grammar ("ll-r+scl"), `register_base_loss` and `register_composition_defaults`; terms.py: the consistency terms;
baselines.py: the base losses up to 2022; pu.py: the non-negative PU risk; robust.py: GR, Hill, SPLC; boostlu.py: BoostLU;
pseudo_labels.py: VLPL and AEVLP on a CLIP score column (importing them registers them); defaults.py: every option's default and the published values per dataset.
"""

from . import baselines, boostlu, pseudo_labels, pu, robust  # noqa: F401  (registers the base losses)
from .baselines import (
    BASELINE_DEFAULTS,
    DATASET_DEFAULTS,
    assume_negative_loss,
    validate_options,
)
from .defaults import (
    DATASETS,
    LOSS_DEFAULTS,
    dataset_defaults,
    method_defaults,
    options_from_config,
    validate_recent_options,
)
from .registry import (
    BASE_LOSS_INFO,
    BASE_LOSSES,
    COMPOSITION_DEFAULTS,
    CONSISTENCY_TERMS,
    BaseLossInfo,
    LossContext,
    MethodSpec,
    known_negatives,
    masked_mean,
    observed_matrix,
    observed_one_hot,
    parse_method,
    register_base_loss,
    register_composition_defaults,
)
from .reliability import observed_positive_auc, reliability_gate
from .terms import (
    consistency_loss,
    crop_corrected_weights,
    expected_negatives_ignore,
    sharpen,
    spatial_consistency_loss,
)

__all__ = [
    "BASELINE_DEFAULTS", "BASE_LOSSES", "BASE_LOSS_INFO", "COMPOSITION_DEFAULTS", "CONSISTENCY_TERMS", "DATASETS", "DATASET_DEFAULTS",
    "LOSS_DEFAULTS", "BaseLossInfo", "LossContext", "MethodSpec", "assume_negative_loss", "consistency_loss",
    "crop_corrected_weights", "dataset_defaults", "expected_negatives_ignore", "known_negatives", "masked_mean", "method_defaults",
    "observed_matrix", "observed_one_hot", "observed_positive_auc", "options_from_config", "parse_method",
    "register_base_loss", "register_composition_defaults", "reliability_gate", "sharpen", "spatial_consistency_loss", "validate_options",
    "validate_recent_options",
]
