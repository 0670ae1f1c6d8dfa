"""Loss functions of single-positive multi-label learning: pure functions, no state, no files.

registry.py: the method grammar ("ll-r+scl") and `register_base_loss`; terms.py: the consistency terms;
baselines.py: the base losses (importing it registers them).
"""

from . import baselines  # noqa: F401  (registers the base losses)
from .baselines import (
    BASELINE_DEFAULTS,
    DATASET_DEFAULTS,
    assume_negative_loss,
    options_from_config,
    validate_options,
)
from .registry import (
    BASE_LOSS_INFO,
    BASE_LOSSES,
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
    "BASELINE_DEFAULTS", "BASE_LOSSES", "assume_negative_loss", "BASE_LOSS_INFO", "CONSISTENCY_TERMS", "DATASET_DEFAULTS", "BaseLossInfo",
    "LossContext", "MethodSpec", "known_negatives", "observed_matrix", "consistency_loss", "crop_corrected_weights",
    "expected_negatives_ignore", "masked_mean", "observed_one_hot", "observed_positive_auc", "reliability_gate",
    "options_from_config", "parse_method", "register_base_loss", "sharpen",
    "spatial_consistency_loss", "validate_options",
]
