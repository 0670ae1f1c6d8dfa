"""Speed and agreement of scl_hf's vectorised mAP against scikit-learn and torchmetrics.

Problem size: the COCO-2014 validation set used as test set (40,137 images x 80 classes), with about 3%
positive labels (COCO averages 2.9 labels per image). The scores are float32 sigmoid outputs, as a model
would produce them; float32 rounding creates some tied scores, which exercises the tie handling.

Run:  .venv/bin/python benchmarks/metric_speed.py  [--repeats 7]
Writes benchmarks/results/metric_speed.json and benchmarks/results/metric_speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import sklearn
from machine import cpu_name  # benchmarks/machine.py, beside this script
from sklearn.metrics import average_precision_score

from scl_hf.metrics import average_precision_per_class

NUM_SAMPLES = 40_137
NUM_CLASSES = 80
PREVALENCE = 0.03
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def make_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Multi-hot targets and float32 probabilities that rank positives higher (AP around 0.3-0.5)."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((NUM_SAMPLES, NUM_CLASSES)) < PREVALENCE).astype(np.int64)
    logits = rng.standard_normal((NUM_SAMPLES, NUM_CLASSES)) - 2.0 + 2.0 * targets
    probs = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    return probs, targets


def sklearn_per_class(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.array([average_precision_score(targets[:, c], probs[:, c]) for c in range(targets.shape[1])])


def make_torchmetrics_per_class() -> tuple[Callable | None, str]:
    """Return (function, version) or (None, reason) when torchmetrics cannot be imported."""
    try:
        import torch
        import torchmetrics
        from torchmetrics.classification import MultilabelAveragePrecision
    except ImportError as error:
        return None, f"not available ({error})"

    torch.set_num_threads(1)  # like numpy's sort and scikit-learn: one core, and stable on a shared machine

    def torchmetrics_per_class(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        metric = MultilabelAveragePrecision(num_labels=targets.shape[1], average=None, thresholds=None)
        return metric(torch.from_numpy(probs), torch.from_numpy(targets)).numpy().astype(np.float64)

    return torchmetrics_per_class, torchmetrics.__version__


def time_round_robin(
    functions: dict[str, Callable], arguments: tuple, repeats: int
) -> dict[str, list[float]]:
    """Wall-clock seconds of `repeats` calls of each function (after one warm-up call each).

    The calls are interleaved (A, B, C, A, B, C, ...) so that load from other processes on a shared
    machine spreads over all implementations instead of biasing one of them.
    """
    for function in functions.values():
        function(*arguments)
    seconds = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function(*arguments)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def summarise(seconds: list[float]) -> dict:
    quartiles = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [seconds[0]] * 3
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "iqr_s": quartiles[2] - quartiles[0],
        "repeats": len(seconds),
        "all_s": seconds,
    }


def machine_description() -> dict:
    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }
    try:
        import torch

        versions["torch"] = torch.__version__
        torch_threads = torch.get_num_threads()
    except ImportError:
        torch_threads = None
    try:
        import torchmetrics

        versions["torchmetrics"] = torchmetrics.__version__
    except ImportError:
        versions["torchmetrics"] = None
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_default_threads": torch_threads,
        "load_average_1_5_15_min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions,
    }


def markdown_report(report: dict) -> str:
    problem, machine = report["problem"], report["machine"]
    lines = [
        "# mAP speed: scl_hf vs scikit-learn vs torchmetrics",
        "",
        f"{problem['num_samples']:,} samples x {problem['num_classes']} classes, "
        f"{problem['positive_fraction'] * 100:.2f}% positives, float32 scores "
        f"({problem['tied_score_fraction'] * 100:.1f}% of scores tied with another of their class).",
        f"Machine: {machine['cpu_model']}, {machine['cpus_usable']} usable CPU(s), {machine['platform']}, "
        f"load average {machine['load_average_1_5_15_min'][0]:.2f} at the start; "
        f"generated {report['generated_at']}.",
        "",
        "| implementation | median (ms) | min-max (ms) | IQR (ms) | repeats | speed-up vs sklearn (median / best) | max abs diff vs sklearn |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, result in report["implementations"].items():
        if "median_s" not in result:
            lines.append(f"| {name} | {result['status']} | | | | | |")
            continue
        lines.append(
            f"| {name} | {result['median_s'] * 1e3:.1f} | {result['min_s'] * 1e3:.1f}-{result['max_s'] * 1e3:.1f} "
            f"| {result['iqr_s'] * 1e3:.1f} | {result['repeats']} | {result['speedup_vs_sklearn']:.1f}x / {result['speedup_vs_sklearn_best']:.1f}x "
            f"| {result['max_abs_diff_vs_sklearn']:.2e} |"
        )
    lines += [
        "",
        f"mAP (sklearn): {report['map_sklearn']:.4f}. Target: >= 5x faster than sklearn. Timings are interleaved "
        "round-robin on a machine shared with other jobs; torch runs on one thread. torchmetrics computes in "
        "float32, hence its ~1e-7 difference.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed calls per implementation (after a warm-up)"
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    machine = machine_description()  # before the timings, so that the load average is other jobs' load
    probs, targets = make_problem()
    sorted_probs = np.sort(probs, axis=0)
    tied_fraction = float(((np.diff(sorted_probs, axis=0) == 0).sum()) / probs.size)

    sklearn_name = "scikit-learn (loop over classes)"
    functions = {
        sklearn_name: sklearn_per_class,
        "scl_hf.metrics (vectorised numpy)": average_precision_per_class,
    }
    statuses = {name: "ok" for name in functions}
    torchmetrics_name = "torchmetrics MultilabelAveragePrecision"
    torchmetrics_function, torchmetrics_status = make_torchmetrics_per_class()
    if torchmetrics_function is None:
        print(f"torchmetrics {torchmetrics_status}: skipped")
        statuses[torchmetrics_name] = torchmetrics_status
    else:
        functions[torchmetrics_name] = torchmetrics_function
        statuses[torchmetrics_name] = f"ok (torchmetrics {torchmetrics_status}, 1 torch thread)"

    sklearn_ap = sklearn_per_class(probs, targets)
    seconds = time_round_robin(functions, (probs, targets), args.repeats)
    implementations = {name: {"status": status} for name, status in statuses.items()}
    for name, function in functions.items():
        implementations[name].update(summarise(seconds[name]))
        max_abs_diff = np.max(np.abs(function(probs, targets) - sklearn_ap))
        implementations[name]["max_abs_diff_vs_sklearn"] = float(max_abs_diff)
        implementations[name]["speedup_vs_sklearn"] = (
            statistics.median(seconds[sklearn_name]) / implementations[name]["median_s"]
        )
        # Ratio of the fastest runs: the least disturbed by other jobs on a shared machine.
        implementations[name]["speedup_vs_sklearn_best"] = min(seconds[sklearn_name]) / min(seconds[name])

    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "problem": {
            "num_samples": NUM_SAMPLES,
            "num_classes": NUM_CLASSES,
            "positive_fraction": float(targets.mean()),
            "tied_score_fraction": tied_fraction,
            "score_dtype": str(probs.dtype),
        },
        "map_sklearn": float(sklearn_ap.mean() * 100.0),
        "implementations": implementations,
        "machine": machine,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "metric_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = markdown_report(report)
    (args.output_dir / "metric_speed.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
