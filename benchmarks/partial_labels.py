"""Partial labels on the synthetic benchmark: 2 observed positives per training image against 1.

    nice -n 5 .venv/bin/python benchmarks/partial_labels.py --jobs 2              # an and scl × seeds 0 1 2 × 1, 2
    .venv/bin/python benchmarks/partial_labels.py --tiny --seeds 0 --jobs 1       # smoke run

Same budget, data and evaluation as benchmarks/compare_methods.py (scl_hf.recipes.SyntheticBudget). The one
observed positive of the benchmark (`label`, Cole et al.'s draw) is kept, and a second one is drawn uniformly
from the image's other true classes with `RandomState(1200 + seed)` into a column `observed` (a list of class
ids; an image with a single object keeps one). Training reads `label_column="observed"`; the test set and its
full labels are the benchmark's. Writes <output>.json and <output>.md; reruns skip runs already in the JSON.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from compare_methods import RESULTS, SYNTHETIC_OPTIONS, load_previous, make_budget

from scl_hf.recipes import budget_dict, run_method, save_runs, summarise, synthetic_data


def add_observed(train, positives: int, seed: int):
    """`observed`: the benchmark's single positive plus up to positives−1 more of the image's true classes."""
    rs = np.random.RandomState(1200 + seed)
    observed = []
    for label, labels in zip(train["label"], train["labels"]):
        others = [c for c in labels if c != label]
        extra = rs.choice(others, size=min(positives - 1, len(others)), replace=False).tolist() if others else []
        observed.append([int(label), *map(int, extra)])
    return train.add_column("observed", observed)


def scaled_budget(args: argparse.Namespace):
    """The benchmark's budget, scaled down where a shared machine cannot afford it (recorded in the JSON)."""
    budget = make_budget(args)
    budget.num_train = args.num_train or budget.num_train
    budget.num_test = args.num_test or budget.num_test
    if args.final_eval_only:
        budget.extra["eval_strategy"] = "no"
    return budget


def train_one(method: str, seed: int, positives: int, budget, work_dir: str) -> tuple[dict, float]:
    started = time.perf_counter()
    data = synthetic_data(budget, seed=seed)
    data["train"] = add_observed(data["train"], positives, seed)
    budget.extra = {**budget.extra, "label_column": "observed"}
    work = Path(work_dir) / f"{method}-{positives}pos-seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    run = run_method(method, seed, data, budget, work)
    run.pop("trainer")
    shutil.rmtree(work, ignore_errors=True)
    mean_observed = float(np.mean([len(v) for v in data["train"]["observed"]]))
    return {**run, "method": f"{method} ({positives} pos)", "positives": positives,
            "observed_per_image": mean_observed}, time.perf_counter() - started


def write(runs: list[dict], stem: Path, meta: dict) -> str:
    save_runs(runs, stem.with_suffix(".json"), **meta)
    table = summarise(runs)
    lines = ["# Partial labels: 2 observed positives per training image against 1 (synthetic benchmark)", "",
             f"Budget {meta['budget']}; seeds {sorted({r['seed'] for r in runs})}; test mAP on the full labels, "
             "mean ± sample std. Written by benchmarks/partial_labels.py on "
             f"{meta['machine']}, torch {meta['torch']}, {meta['threads']} thread(s) per run, {meta['written']}.", "",
             "| method (observed positives) | test mAP | min – max | runs | observed positives per image |",
             "|---|---|---|---|---|"]
    for name, row in sorted(table.items()):
        per_image = np.mean([r["observed_per_image"] for r in runs if r["method"] == name])
        lines.append(f"| {name} | {row['mAP_mean']:.2f} ± {row['mAP_std']:.2f} | {row['mAP_min']:.2f} – "
                     f"{row['mAP_max']:.2f} | {row['runs']} | {per_image:.2f} |")
    lines += ["", "Per seed: " + "; ".join(f"{r['method']} seed {r['seed']} {r['mAP']:.2f}"
                                           for r in sorted(runs, key=lambda r: (r['method'], r['seed']))), ""]
    stem.with_suffix(".md").write_text("\n".join(lines))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["an", "scl"])
    parser.add_argument("--positives", nargs="+", type=int, default=[2, 1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--num_train", type=int, default=None, help="training images (default: the benchmark's 1000)")
    parser.add_argument("--num_test", type=int, default=None, help="test images (default: the benchmark's 300)")
    parser.add_argument("--final_eval_only", action="store_true", help="evaluate once at the end, not every epoch")
    parser.add_argument("--output", default=None)
    parser.add_argument("--work_dir", default="runs/partial_labels")
    args = parser.parse_args(argv)
    budget = scaled_budget(args)
    stem = Path(args.output) if args.output else (
        Path("runs/partial_labels_tiny/partial_labels") if args.tiny else RESULTS / "partial_labels")
    stem.parent.mkdir(parents=True, exist_ok=True)
    runs = load_previous(stem.with_suffix(".json"), budget_dict(budget))
    done = {(r["method"], r["seed"]) for r in runs}
    todo = [(m, s, p) for s in args.seeds for p in args.positives for m in args.methods  # whole seeds first
            if (f"{m} ({p} pos)", s) not in done]
    threads = max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    import platform

    meta = {"budget": budget_dict(budget), "machine": platform.platform(), "torch": torch.__version__,
            "threads": threads, "options": SYNTHETIC_OPTIONS}
    with ProcessPoolExecutor(max(args.jobs, 1), mp_context=get_context("spawn"), initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(train_one, m, s, p, scaled_budget(args), args.work_dir) for m, s, p in todo]
        for future in as_completed(futures):
            run, seconds = future.result()
            runs.append(run)
            meta["written"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            write(runs, stem, meta)
            print(f"seed {run['seed']} {run['method']}: test mAP {run['mAP']:.2f} ({seconds:.0f} s)", flush=True)
    if runs:
        print(write(runs, stem, meta))


if __name__ == "__main__":
    main()
