"""The embedded default: AN, SCL and the default method on the built-in synthetic multi-object dataset, on CPU.

    python examples/train_synthetic.py                       # AN, SCL, role+scl, seed 0, ~8 minutes on 2 CPU cores
    python examples/train_synthetic.py --seeds 0 1 2         # the 3-seed benchmark of the README
    python examples/train_synthetic.py --tiny                # a smoke run (seconds)

Prints a table of test mAP, writes results JSON, a PNG of the stored heatmaps beside their images (from the
default method's bank) and a PNG of the mAP curves under --output_dir. `scl` is the paper's method on "assume
negative"; `role+scl`, the package default, adds it to ROLE's per-image label estimates (docs/method.md).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from scl_hf import SCLConfig
from scl_hf.recipes import (
    SyntheticBudget,
    markdown_table,
    run_method,
    save_runs,
    summarise,
    synthetic_data,
)
from scl_hf.visualize import plot_bank_heatmaps, plot_map_curves

DEFAULT_METHOD = SCLConfig.__dataclass_fields__["method"].default


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["an", "scl", DEFAULT_METHOD],
                        help="methods to compare (see SCLConfig.method)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per seed and method")
    parser.add_argument("--output_dir", default="runs/synthetic", help="where runs, JSON and PNGs go")
    parser.add_argument("--model", default=SyntheticBudget.model_name, help="any timm model name")
    parser.add_argument("--epochs", type=int, default=SyntheticBudget.epochs)
    parser.add_argument("--num_train", type=int, default=SyntheticBudget.num_train)
    parser.add_argument("--num_test", type=int, default=SyntheticBudget.num_test)
    parser.add_argument("--image_size", type=int, default=SyntheticBudget.image_size)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="extra SCLConfig fields, e.g. --set spatial_weight=2 momentum=0.9")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (tests use it)")
    parser.add_argument("--progress", action="store_true", help="show the Trainer's progress bars")
    return parser.parse_args(argv)


def parse_overrides(pairs: list[str]) -> dict:
    extra = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    return extra


def main(argv=None) -> dict:
    args = parse_args(argv)
    budget = SyntheticBudget(model_name=args.model, epochs=args.epochs, num_train=args.num_train,
                             num_test=args.num_test, image_size=args.image_size)
    budget.extra.update(parse_overrides(args.set))  # over the synthetic set's own options
    if args.tiny:
        budget.num_train, budget.num_test, budget.epochs, budget.image_size = 48, 24, 2, 64
        budget.batch_size, budget.source_size, budget.bank_size = 16, 96, 4
        budget.extra.setdefault("warmup_epochs", 1.0)  # else two epochs end before the consistency terms start
    out = Path(args.output_dir)
    runs = []
    for seed in args.seeds:
        data = synthetic_data(budget, seed=seed)
        for method in args.methods:
            run = run_method(method, seed, data, budget, out / f"{method}-seed{seed}", quiet=not args.progress)
            print(f"seed {seed} {method:>8}: test mAP {run['mAP']:.2f}  ({run['seconds_per_step'] * 1e3:.0f} ms/step)",
                  flush=True)
            runs.append(run)
    table = summarise(runs)
    print("\n" + markdown_table(table, reference="an" if "an" in args.methods else None))
    meta = {"budget": budget.__dict__, "machine": platform.platform(), "processor": platform.processor(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    save_runs(runs, out / "results.json", **meta)
    plot_map_curves({f"{r['method']} seed {r['seed']}": r["history"] for r in runs}, out / "map_curves.png")
    spatial = sorted((r for r in runs if r["bank_dir"] and "scl" in r["method"].split("+")),
                     key=lambda r: r["method"] != DEFAULT_METHOD)  # the default method's bank first
    if spatial:
        run = spatial[0]
        train = synthetic_data(budget, seed=run["seed"])["train"]
        picture = plot_bank_heatmaps(run["bank_dir"], train, out / "heatmaps.png",
                                     class_names=train.features["label"].names)
        print(f"heatmaps ({run['method']} seed {run['seed']}): {picture}")
    print(f"results: {out / 'results.json'}")
    return table


if __name__ == "__main__":
    main()
