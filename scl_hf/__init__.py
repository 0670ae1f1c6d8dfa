"""scl_hf: multi-label image classifiers from single-label annotations, for timm and Hugging Face.

Implements the consistency and spatial consistency losses of Verelst et al. (WACV 2023) as a
transformers Trainer with a memory-mapped per-image bank.
"""

from .config import SCLConfig
from .losses import BASE_LOSSES, parse_method
from .metrics import make_compute_metrics, mean_average_precision
from .models import attach_class_maps, create_model
from .trainer import SCLTrainer

__version__ = "0.1.0"

__all__ = [
    "BASE_LOSSES",
    "SCLConfig",
    "SCLTrainer",
    "attach_class_maps",
    "create_model",
    "make_compute_metrics",
    "mean_average_precision",
    "parse_method",
]
