"""Multi-label mean average precision as a Hugging Face ``evaluate`` metric.

Load it with ``scl_hf.metrics.load_map_metric()`` or ``evaluate.load("/abs/path/to/scl_hf/evaluate_map.py")``.
``evaluate`` copies this script into its modules cache and imports it from there, so it works offline;
the computation itself comes from ``scl_hf.metrics`` so that both entry points give the same numbers.
Only ``import x`` / ``from x import y`` of installed libraries may appear here: ``evaluate`` checks them.
"""

import datasets
import evaluate
import numpy as np

from scl_hf.metrics import average_precision_per_class

_DESCRIPTION = """
Mean average precision (mAP) over the classes of a multi-label problem, on a 0-100 scale.
The AP of each class equals scikit-learn's `average_precision_score` (tied scores form one threshold).
A class without any positive reference gets AP 0 (`empty_class="zero"`) or is left out of the mean
(`empty_class="skip"`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one score per class for every sample (logits or probabilities).
    references (`list` of `list` of `int`): multi-hot ground truth, 0 or 1 for every class.
    empty_class (`str`, defaults to `"zero"`): `"zero"` or `"skip"`, for classes without positives.
Returns:
    mAP (`float`): mean average precision, 0-100.
    AP_per_class (`list` of `float`): AP of every class, 0-100 (NaN for skipped empty classes).
Examples:
    >>> metric = evaluate.load("scl_hf/evaluate_map.py")
    >>> metric.compute(predictions=[[0.9, 0.2], [0.1, 0.8]], references=[[1, 0], [0, 1]])
    {'mAP': 100.0, 'AP_per_class': [100.0, 100.0]}
"""

_CITATION = """
@inproceedings{verelst2023spatial,
  title={Spatial Consistency Loss for Training Multi-Label Classifiers from Single-Label Annotations},
  author={Verelst, Thomas and Rubenstein, Paul K. and Eichner, Marcin and Tuytelaars, Tinne and Berman, Maxim},
  booktitle={WACV},
  year={2023}
}
"""


class MultilabelMeanAveragePrecision(evaluate.Metric):
    """mAP of multi-hot references given per-class scores; see ``scl_hf.metrics``."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    # float64 so that storing the scores cannot merge close values into ties
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
            ),
        )

    def _compute(self, predictions, references, empty_class: str = "zero") -> dict:
        scores = np.asarray(predictions, dtype=np.float64)
        targets = np.asarray(references)
        ap_percent = average_precision_per_class(scores, targets, empty_class=empty_class) * 100.0
        counted = ap_percent[~np.isnan(ap_percent)]  # with "skip", empty classes are NaN
        return {
            "mAP": float(counted.mean()) if counted.size else float("nan"),
            "AP_per_class": ap_percent.tolist(),
        }
