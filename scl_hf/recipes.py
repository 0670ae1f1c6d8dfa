"""Ready-made runs: the embedded synthetic benchmark, used by the example, the CLI and the benchmarks.

`run_method` trains one method on one seed and returns its test mAP and step time; `compare_methods`
runs several methods × seeds with the same backbone, data and budget, so their numbers are comparable.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .config import SCLConfig
from .models import create_model
from .trainer import SCLTrainer

# The synthetic generator draws 1–4 objects per image uniformly: 2.5 positives per image on average. This is
# the dataset statistic EPR and ROLE assume known (as Cole et al. take 2.9 for COCO), not read from any label.
SYNTHETIC_OPTIONS = {"expected_positives": 2.5}


@dataclass
class SyntheticBudget:
    """The synthetic benchmark's defaults: a small CNN from scratch that learns in minutes on 2 CPU cores."""

    model_name: str = "resnet18"
    num_train: int = 1000
    num_test: int = 300
    source_size: int = 96
    image_size: int = 64
    epochs: int = 20  # at 10 every method's curve still rises (benchmarks/results/compare_methods_10ep.md)
    bank_size: int = 8
    batch_size: int = 32
    learning_rate: float = 1e-3
    dataloader_workers: int = 0
    model_kwargs: dict = field(default_factory=lambda: {"output_stride": 16})  # a 4×4 class-map grid at 64 px
    extra: dict = field(default_factory=lambda: dict(SYNTHETIC_OPTIONS))  # any SCLConfig field, e.g. {"spatial_weight": 2.0}


def synthetic_data(budget: SyntheticBudget, seed: int = 0):
    from .data.synthetic import make_synthetic

    return make_synthetic(num_train=budget.num_train, num_test=budget.num_test, image_size=budget.source_size,
                          seed=seed)


def run_method(method: str, seed: int, data, budget: SyntheticBudget, output_dir: str | Path,
               quiet: bool = True) -> dict:
    """Train one method from scratch; return test mAP, per-step time and the trainer's history."""
    names = data["train"].features["label"].names
    torch.manual_seed(seed)
    model = create_model(budget.model_name, num_labels=len(names), id2label=names, pretrained=False,
                         **budget.model_kwargs)
    settings = dict(
        output_dir=str(output_dir), method=method, image_size=budget.image_size, num_train_epochs=budget.epochs,
        per_device_train_batch_size=budget.batch_size, per_device_eval_batch_size=128,
        learning_rate=budget.learning_rate, weight_decay=1e-4, lr_scheduler_type="cosine", warmup_steps=0.05,
        use_cpu=not torch.cuda.is_available(), seed=seed, data_seed=seed, eval_strategy="epoch",
        save_strategy="no", logging_steps=20, report_to="none", disable_tqdm=quiet,
        dataloader_num_workers=budget.dataloader_workers, bank_size=budget.bank_size,
    )
    args = SCLConfig(**{**settings, **budget.extra})  # extra may override any of these (eval_strategy, label_column)
    trainer = SCLTrainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["test"])
    started = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - started
    final = trainer.evaluate()
    return {
        "method": method, "seed": seed, "mAP": final["eval_mAP"], "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / max(result.global_step, 1), "steps": result.global_step,
        "history": trainer.state.log_history, "bank_dir": str(trainer.bank_dir) if trainer.bank else None,
        "trainer": trainer,
    }


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Mean, sample standard deviation, min and max of test mAP per method."""
    table: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        values = [r["mAP"] for r in runs if r["method"] == method]
        steps = [r["seconds_per_step"] for r in runs if r["method"] == method]
        table[method] = {
            "mAP_mean": statistics.fmean(values), "mAP_std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "mAP_min": min(values), "mAP_max": max(values), "runs": len(values),
            "seconds_per_step": statistics.median(steps),
        }
    return table


def gap_closed(table: dict[str, dict], method: str, low: str = "an", high: str = "full") -> float | None:
    """Share of the `low` → `high` gap in mean mAP that `method` closes (0 at AN, 1 at full labels), or None."""
    if low not in table or high not in table or method not in table:
        return None
    gap = table[high]["mAP_mean"] - table[low]["mAP_mean"]
    return (table[method]["mAP_mean"] - table[low]["mAP_mean"]) / gap if gap > 0 else None


def markdown_table(table: dict[str, dict], reference: str | None = "an") -> str:
    """Mean ± std per method; with both "an" and "full" in the table, also the share of their gap each closes."""
    with_gap = gap_closed(table, "an") is not None
    header = "| method | test mAP (mean ± std) | min – max | runs |" + (" AN → full gap closed |" if with_gap else "")
    lines = [header + " s/step | step time vs AN |", "|---" * (6 + with_gap) + "|"]
    base = table.get(reference, {}).get("seconds_per_step") if reference else None
    for method, row in table.items():
        ratio = f"{row['seconds_per_step'] / base:.2f}" if base else "–"
        share = gap_closed(table, method)
        gap = (f" {share:.1%} |" if method != "full" else " – |") if with_gap else ""
        lines.append(
            f"| {method} | {row['mAP_mean']:.2f} ± {row['mAP_std']:.2f} | {row['mAP_min']:.2f} – {row['mAP_max']:.2f}"
            f" | {row['runs']} |{gap} {row['seconds_per_step']:.3f} | {ratio} |"
        )
    return "\n".join(lines)


def save_runs(runs: list[dict], path: str | Path, **meta) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = [{k: v for k, v in r.items() if k != "trainer"} for r in runs]
    path.write_text(json.dumps({"meta": meta, "summary": summarise(runs), "runs": clean}, indent=2, default=str))
    return path


def budget_dict(budget: SyntheticBudget) -> dict:
    return asdict(budget)
