"""Every single-positive method on the embedded synthetic benchmark: same backbone, data, budget and evaluation.

    .venv/bin/python benchmarks/compare_methods.py                      # all methods × seeds 0 1 2 (hours on CPU)
    .venv/bin/python benchmarks/compare_methods.py --methods an ll-r scl --seeds 0
    .venv/bin/python benchmarks/compare_methods.py --tiny --methods an role --seeds 0   # smoke run (a minute)
    .venv/bin/python benchmarks/compare_methods.py --jobs 2             # two runs at a time, the cores split

Each (method, seed) run trains from scratch with scl_hf.recipes.run_method under SyntheticBudget's defaults
(scl_hf/recipes.py: resnet18 from scratch on the 10-class synthetic set) and reports test mAP on the full labels.
The JSON is rewritten after every run and runs already in it are skipped, so an interrupted benchmark
continues where it stopped; a JSON written under another budget is refused rather than mixed in.

Writes <output>.json (runs, per-method summary, budget, machine), <output>.md (mean ± std table) and
<output>.png (bar chart with ±1 std error bars). "full" trains on the full labels: an upper bound.
`vlpl` / `aevlp` read CLIP scores of the training images: from --clip_model, else from the stand-in that
benchmarks/pretext_clip.py trains once (no CLIP checkpoint can be downloaded here).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path

import torch
from machine import cpu_name  # benchmarks/machine.py, beside this script

from scl_hf.data import add_clip_scores
from scl_hf.losses import BASE_LOSS_INFO, BASE_LOSSES, parse_method
from scl_hf.recipes import (
    SyntheticBudget,
    budget_dict,
    gap_closed,
    markdown_table,
    run_method,
    save_runs,
    summarise,
    synthetic_data,
)

RESULTS = Path(__file__).resolve().parent / "results"
# Every base loss alone, the consistency terms on AN, and compositions of baselines with a consistency term.
# VLPL / AEVLP read a CLIP score column: from --clip_model, or the stand-in of benchmarks/pretext_clip.py.
DEFAULT_METHODS = ["full", *sorted(n for n in BASE_LOSSES if n != "full"),
                   "cl", "en", "scl",
                   "an-ls+scl", "wan+scl", "ll-r+scl", "em-apl+scl", "role+scl", "gr+scl", "hill+scl", "splc+scl",
                   "boostlu+scl", "vlpl+scl", "aevlp+scl"]
CLIP_GRID = {"vlpl": 0, "aevlp": 4}  # regions each method reads: VLPL the whole image, AEVLP also a 4×4 grid


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, help="SCLConfig.method values")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed and method")
    parser.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {SyntheticBudget.epochs})")
    parser.add_argument("--output", default=None,
                        help="path stem of the .json/.md/.png (default benchmarks/results/compare_methods; "
                             "with --tiny runs/compare_methods_tiny/compare_methods)")
    parser.add_argument("--work_dir", default="runs/compare_methods", help="training output folders (removed after each run)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-per-run smoke budget; never mix with real results")
    parser.add_argument("--progress", action="store_true", help="show the Trainer's progress bars")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time, each in its own process with cores/jobs torch threads (results do not "
                             "depend on it beyond float summation order)")
    parser.add_argument("--clip_model", default=None,
                        help="CLIPModel folder or hub name scoring the training images for vlpl / aevlp (default: the "
                             "stand-in of benchmarks/pretext_clip.py, trained on first use)")
    return parser.parse_args(argv)


def make_budget(args: argparse.Namespace) -> SyntheticBudget:
    budget = SyntheticBudget()  # its extra holds SYNTHETIC_OPTIONS
    if args.tiny:  # the smoke budget of examples/train_synthetic.py --tiny; EM-APL's pseudo-labels start at once
        budget.num_train, budget.num_test, budget.epochs, budget.image_size = 48, 24, 2, 64
        budget.batch_size, budget.source_size, budget.bank_size = 16, 96, 4
        budget.extra["apl_warmup_epochs"] = 1
    if args.epochs is not None:
        budget.epochs = args.epochs
    return budget


def load_previous(path: Path, budget: dict) -> list[dict]:
    """Runs already done under the same budget; a file from another budget is an error, not a silent mix."""
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    if saved.get("meta", {}).get("budget") != budget:
        raise SystemExit(f"{path} holds runs of another budget ({saved.get('meta', {}).get('budget')}); "
                         "choose another --output or delete it")
    return saved["runs"]


def plot(table: dict[str, dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    means = [table[n]["mAP_mean"] for n in names]
    stds = [table[n]["mAP_std"] for n in names]
    colours = ["0.6" if n == "full" else ("tab:orange" if any(t in n.split("+") for t in ("cl", "en", "scl"))
                                           else "tab:blue") for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names) + 2), 4.2))
    ax.bar(range(len(names)), means, yerr=stds, capsize=3, color=colours)
    if "an" in table:
        ax.axhline(table["an"]["mAP_mean"], color="k", lw=0.8, ls="--", label="AN (assume negative)")
        ax.legend(loc="lower right")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("test mAP (mean ± std over seeds)")
    low = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0.0, low - 5.0), min(100.0, max(m + s for m, s in zip(means, stds)) + 3.0))
    ax.set_title(title, fontsize=9)
    ax.text(0.01, 0.98, "grey: full labels (upper bound); orange: with consistency terms", transform=ax.transAxes,
            va="top", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def target_check(table: dict[str, dict], rivals: tuple[str, ...] = ("ll-r", "em-apl")) -> list[str]:
    """The benchmark's target for every row with the spatial term: at least half of the AN → full-label gap
    closed, and a higher mean than each of `rivals`. Empty when AN, full or a rival is missing."""
    if gap_closed(table, "an") is None or any(r not in table for r in rivals):
        return []
    scores = ", ".join(f"{r} {table[r]['mAP_mean']:.2f}" for r in rivals)
    half = (table["an"]["mAP_mean"] + table["full"]["mAP_mean"]) / 2
    lines = [f"Target: SCL alone or on a baseline closes ≥ 50 % of the AN → full gap (mAP ≥ {half:.2f}) and is ahead "
             f"of {' and '.join(rivals)} ({scores}).", ""]
    for method, row in table.items():
        if "scl" not in method.split("+"):
            continue
        share = gap_closed(table, method)
        ahead = all(row["mAP_mean"] > table[r]["mAP_mean"] for r in rivals)
        verdict = "met" if share >= 0.5 and ahead else "not met"
        lines.append(f"- {method}: {row['mAP_mean']:.2f}, {share:.1%} of the gap, "
                     f"{'ahead of' if ahead else 'not ahead of'} both → **{verdict}**")
    return lines


def clip_lines(runs: list[dict]) -> list[str]:
    """One line per CLIP checkpoint the pseudo-label rows used, with its zero-shot quality where known."""
    lines = []
    for name in dict.fromkeys(r["clip_model"] for r in runs if "clip_model" in r):
        quality = next((r.get("clip_zero_shot_mAP") for r in runs if r.get("clip_model") == name), None)
        said = (f" (zero-shot mAP of its scores on held-out scenes: whole image {quality['whole_image']:.2f}, "
                f"best 4×4 grid cell {quality['best_cell']:.2f})") if quality else ""
        lines.append(f"VLPL / AEVLP pseudo-labels from {name}{said}.")
    return lines


def write_outputs(runs: list[dict], stem: Path, meta: dict, methods: list[str]) -> dict[str, dict]:
    save_runs(runs, stem.with_suffix(".json"), **meta)
    order = [m for m in methods if any(r["method"] == m for r in runs)]
    order += [m for m in dict.fromkeys(r["method"] for r in runs) if m not in order]
    table = {m: summarise(runs)[m] for m in order}
    budget = meta["budget"]
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        "# Single-positive methods on the synthetic benchmark",
        "",
        f"{budget['model_name']} from scratch, {budget['num_train']} training / {budget['num_test']} test images, "
        f"{budget['epochs']} epochs, batch {budget['batch_size']}, lr {budget['learning_rate']}, {budget['image_size']} px; "
        f"seeds {seeds}; options {budget['extra']}. Test mAP on the full labels (mean ± sample std over seeds).",
        "`full` trains on every true label: an upper bound, not single-positive learning.",
        "s/step is each run's wall time per step with other runs sharing the cores (rows ran at different loads);"
        " the cost of the terms is measured alternately in one process by benchmarks/overhead.py.",
        f"Written by benchmarks/compare_methods.py on {meta['machine']} ({meta.get('processor') or '?'}), "
        f"torch {meta['torch']}, {meta['written']}.",
        *clip_lines(runs),
        "",
        markdown_table(table, reference="an" if "an" in table else None),
        "",
        *target_check(table),
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    plot(table, stem.with_suffix(".png"), f"synthetic benchmark, {budget['epochs']} epochs, seeds {seeds}")
    return table


def needs_clip(method: str) -> str | None:
    """The pseudo-label base loss of `method` (vlpl, aevlp), if it has one."""
    base = parse_method(method).base
    return base if BASE_LOSS_INFO[base].pseudo_labels else None


def clip_model_for(methods: list[str], requested: str | None) -> tuple[str | None, dict]:
    """The CLIP checkpoint the pseudo-label methods read, and what the meta records about it."""
    if not any(needs_clip(m) for m in methods):
        return None, {}
    if requested:
        return requested, {"clip_model": requested}
    from pretext_clip import clip_stand_in  # benchmarks/pretext_clip.py, beside this script

    folder = clip_stand_in()
    report = json.loads((folder / "report.json").read_text())
    return str(folder), {"clip_model": f"benchmarks/pretext_clip.py v{report['version']}",
                         "clip_zero_shot_mAP": report["zero_shot_mAP_held_out"]}


def train_one(method: str, seed: int, budget: SyntheticBudget, work_dir: str, quiet: bool,
              clip_model: str | None = None) -> tuple[dict, float]:
    """One (method, seed) run from scratch in its own folder, removed afterwards; picklable for --jobs."""
    started = time.perf_counter()
    work = Path(work_dir) / f"{method}-seed{seed}"
    shutil.rmtree(work, ignore_errors=True)  # a folder left by an interrupted run holds a stale bank
    data = synthetic_data(budget, seed=seed)
    base = needs_clip(method)
    if base:  # the pseudo-labels are an input of training, computed once per image like the single positive
        names = data["train"].features["label"].names
        data["train"] = add_clip_scores(data["train"], names, clip_model, grid_size=CLIP_GRID[base])
    run = run_method(method, seed, data, budget, work, quiet=quiet)
    run.pop("trainer")
    shutil.rmtree(work, ignore_errors=True)
    return run, time.perf_counter() - started


def main(argv=None) -> dict[str, dict]:
    args = parse_args(argv)
    budget = make_budget(args)
    stem = Path(args.output) if args.output else (
        Path("runs/compare_methods_tiny/compare_methods") if args.tiny else RESULTS / "compare_methods")
    stem.parent.mkdir(parents=True, exist_ok=True)
    runs = load_previous(stem.with_suffix(".json"), budget_dict(budget))
    row_order = list(dict.fromkeys([*DEFAULT_METHODS, *args.methods]))  # a partial rerun keeps the table's order
    done = {(r["method"], r["seed"]) for r in runs}
    meta = {"budget": budget_dict(budget), "machine": platform.platform(), "processor": cpu_name(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    todo = [(m, seed) for seed in args.seeds for m in args.methods if (m, seed) not in done]
    clip_model, clip_meta = clip_model_for([m for m, _ in todo], args.clip_model)

    def finished(run: dict, seconds: float) -> None:
        if needs_clip(run["method"]):
            run.update(clip_meta)  # each run names the CLIP that scored its images
        runs.append(run)
        meta["written"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        write_outputs(runs, stem, meta, row_order)  # after every run: an interruption loses one run at most
        print(f"seed {run['seed']} {run['method']:>11}: test mAP {run['mAP']:.2f}  ({seconds:.0f} s)", flush=True)

    if args.jobs <= 1:
        for method, seed in todo:
            finished(*train_one(method, seed, budget, args.work_dir, not args.progress, clip_model))
    else:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        meta["threads"] = threads
        context = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=torch.set_num_threads,
                                 initargs=(threads,)) as pool:
            futures = [pool.submit(train_one, m, s, budget, args.work_dir, True, clip_model) for m, s in todo]
            for future in as_completed(futures):
                finished(*future.result())
    if not runs:
        raise SystemExit("nothing to report")
    meta["written"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = write_outputs(runs, stem, meta, row_order)
    print("\n" + markdown_table(table, reference="an" if "an" in table else None))
    print(f"results: {stem.with_suffix('.json')}, {stem.with_suffix('.md')}, {stem.with_suffix('.png')}")
    return table


if __name__ == "__main__":
    main()
