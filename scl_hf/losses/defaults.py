"""Every loss option's default, and the published defaults per dataset that a run applies by name.

`SCLConfig(dataset_defaults="voc")` (the VOC / NUS-WIDE / CUB examples and `scl-hf train voc` set it) fills
each loss option the user left unset with its dataset's value; an explicit value always wins, and the run's
training_args.json records the values used. Without a dataset the COCO values apply (the headline protocol).
"""

from __future__ import annotations

from collections.abc import Sequence

from .baselines import BASELINE_DEFAULTS, DATASET_DEFAULTS
from .boostlu import BOOSTLU_DEFAULTS
from .pseudo_labels import PSEUDO_LABEL_DATASET_DEFAULTS, PSEUDO_LABEL_DEFAULTS
from .registry import parse_method
from .robust import ROBUST_DEFAULTS

LOSS_DEFAULTS: dict[str, float | tuple[float, ...]] = {
    **BASELINE_DEFAULTS, **ROBUST_DEFAULTS, **BOOSTLU_DEFAULTS, **PSEUDO_LABEL_DEFAULTS
}
DATASETS = ("coco", "voc", "nuswide", "cub")
# per-dataset values of the losses of other modules (baselines.py keeps its own in DATASET_DEFAULTS)
EXTRA_DATASET_DEFAULTS: dict[str, dict[str, float | tuple[float, ...]]] = PSEUDO_LABEL_DATASET_DEFAULTS


def dataset_defaults(dataset: str | None) -> dict[str, float | tuple[float, ...]]:
    """Every loss option's value for `dataset` (None: the package defaults, which are COCO's)."""
    if dataset is None:
        return dict(LOSS_DEFAULTS)
    key = dataset.lower().replace("-", "").replace("_", "")
    key = {"pascal": "voc", "nus": "nuswide", "cub200": "cub", "cub2002011": "cub"}.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"no published loss defaults for dataset {dataset!r}; choose one of {list(DATASETS)} "
                         "or leave dataset_defaults unset (COCO's values)")
    return {**LOSS_DEFAULTS, **DATASET_DEFAULTS.get(key, {}), **EXTRA_DATASET_DEFAULTS.get(key, {})}


def method_defaults(dataset: str | None, method: str | None) -> dict[str, float | tuple[float, ...]]:
    """Every loss option's default for `method` on `dataset`: its composition's (registry.register_composition_defaults)
    over the dataset's over the package's. The one place that ranks them."""
    defaults = dataset_defaults(dataset)
    if method:
        defaults.update(parse_method(method).composition_defaults)
    return defaults


def _as_option(value) -> float | tuple[float, ...]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(float(v) for v in value)
    return float(value)


def check_option_names(options: dict) -> None:
    unknown = sorted(set(options) - set(LOSS_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown loss option(s) {unknown} in loss_options; known: {sorted(LOSS_DEFAULTS)}")


def options_from_config(config) -> dict:
    """The loss options of an SCLConfig (any object with those attributes; missing or None ones take the
    defaults of its method's composition, then of its `dataset_defaults`; its `loss_options` dict sets any option
    by name), plus its seed."""
    defaults = method_defaults(getattr(config, "dataset_defaults", None), getattr(config, "method", None))
    extra = getattr(config, "loss_options", None) or {}
    check_option_names(extra)
    found = {}
    for name, default in defaults.items():
        value = extra.get(name, getattr(config, name, None))
        found[name] = _as_option(default if value is None else value)
    found["seed"] = int(getattr(config, "seed", 0))
    return found


SEQUENCE_LENGTHS = {"gr_k_schedule": 4, "gr_v_schedule": 4, "gr_q": 2, "aevlp_k_schedule": 4, "aevlp_q": 2,
                    "aevlp_lambda": 2}


def validate_recent_options(options: dict) -> None:
    """Fail at configuration time on options of the losses since 2022 that cannot work."""
    for name, length in SEQUENCE_LENGTHS.items():
        value = options[name]
        if not isinstance(value, tuple) or len(value) != length:
            raise ValueError(f"{name} takes {length} numbers, got {value!r}")
    if options["gr_v_schedule"][1] <= 0 or options["gr_v_schedule"][3] <= 0:
        raise ValueError(f"gr_v_schedule's σ⁰ and σᵀ must be positive, got {options['gr_v_schedule']}")
    if min(options["gr_q"] + options["aevlp_q"]) <= 0:
        raise ValueError("gr_q / aevlp_q must be positive (they divide)")
    for name in ("splc_tau", "vlpl_threshold", "aevlp_rho"):
        if not 0.0 <= options[name] <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {options[name]}")
    lam1, lam2 = options["aevlp_lambda"]
    if not 0.0 <= lam2 <= lam1 <= 1.0:
        raise ValueError(f"aevlp_lambda (λ1, λ2) needs 0 ≤ λ2 ≤ λ1 ≤ 1, got {options['aevlp_lambda']}")
    if options["clip_temperature"] <= 0 or options["aevlp_top_k"] < 1 or options["boostlu_alpha"] <= 0:
        raise ValueError("clip_temperature and boostlu_alpha must be positive and aevlp_top_k at least 1")
