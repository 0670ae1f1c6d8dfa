"""scl_hf: multi-label image classifiers from single-label annotations, for timm and Hugging Face.

Implements the consistency and spatial consistency losses of Verelst et al. (WACV 2023) as a
transformers Trainer with a memory-mapped per-image bank. Public names are imported lazily, so that
`import scl_hf.data` does not pay for torch/transformers start-up.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "SCLConfig": ".config",
    "SCLTrainer": ".trainer",
    "create_model": ".models",
    "attach_class_maps": ".models",
    "BASE_LOSSES": ".losses",
    "parse_method": ".losses",
    "make_compute_metrics": ".metrics",
    "mean_average_precision": ".metrics",
    "average_precision_per_class": ".metrics",
    "f1_at_threshold": ".metrics",
    "load_map_metric": ".metrics",
    "export": ".hub",
    "load_checkpoint": ".hub",
    "push": ".hub",
    "make_model_card": ".model_card",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'scl_hf' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_PUBLIC])
