"""The method across regimes nobody tuned it on: validation mAP to choose, test mAP to report.

    .venv/bin/python benchmarks/regimes.py --regimes clutter --methods an scl --seeds 0 1 2
    .venv/bin/python benchmarks/regimes.py --regimes shapes clutter digits-pretrained --jobs 2
    .venv/bin/python benchmarks/regimes.py --tiny --regimes clutter --methods an scl --seeds 0   # smoke run

Regimes (each with its own fully labelled validation split, kept apart from test):
- `shapes`: the embedded synthetic set (12 colour-coded shapes, 10 classes used), resnet18 from scratch,
  64 px, 20 epochs, cosine lr 1e-3 — a network that learns fast; the regime the first defaults came from.
- `clutter`: 48 conjunction classes (shape × colour family), long-tailed and co-occurring, small occluding
  objects among distractors on photographs; resnet10t from scratch, 96 px, AdamW lr 2e-3, weight decay 1e-4,
  batch 32, 15 epochs, linear schedule, every other option at its default — a budget in which AN is far
  from converged (the recipe of the project's held-out check).
- `clutter10`: the clutter generator with 10 classes (ten shapes of one colour family among distractors of
  the same shapes in other colours: colour, not shape, tells a class from a distractor), objects 0.14–0.26 of
  the image, up to 4 per scene; the held-out check's recipe as it is (resnet10t from scratch, 96 px, AdamW lr
  2e-3, 15 epochs, every other option at its default). AN ends near the held-out check's level (45 test mAP,
  training loss 0.22 against 0.33 for a constant prediction): a network that learns, slowly, on few classes.
- `digits`: real handwritten digits (UCI, shipped with scikit-learn; 0.24–0.4 of the image, up to 4 per scene,
  0–2 clutter strokes) composed over photographs, 10 classes, 1,200 single-positive training images; resnet10t
  from scratch, 96 px, AdamW lr 2e-3, weight decay 1e-4, batch 32, 15 epochs, every other option at its
  default — real (not rendered) objects, few classes, and a network that barely learns them in this budget
  (AN ends near the mAP of a constant prediction): the recipe of the project's held-out check, in its
  hardest form.
- `digits-pretrained`: the same digit scenes; resnet10t pretrained on a disjoint pretext task (the clutter
  classes with full labels, benchmarks/pretext.py) and fine-tuned with the protocol's optimiser: Adam,
  constant lr 1e-4, 10 epochs, 128 px — what a user with a pretrained backbone does.

Every (regime, method, seed) run writes val and test mAP into <output>.json; <output>.md holds one table per
regime. Runs already in the JSON are skipped, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("SCL_HF_CACHE", Path.home() / ".cache" / "scl_hf"))


@dataclass
class Regime:
    """One regime: its data, backbone, budget and optimiser; `extra` goes to SCLConfig as it is."""

    data: str
    model_name: str
    image_size: int
    epochs: int
    learning_rate: float
    batch_size: int = 32
    lr_scheduler_type: str = "linear"
    weight_decay: float = 1e-4
    warmup_steps: float = 0.0
    init: str | None = None  # "pretext": the weights of benchmarks/pretext.py
    model_kwargs: dict = field(default_factory=dict)
    data_kwargs: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    # which rules made the data: results of another version are refused, not merged (2: digit validation scans
    # apart from training's, scl_hf.data.scenes.SCENES_VERSION 2)
    data_version: int = 1


DIGIT_LAYOUT = {"object_size": (0.24, 0.4), "max_objects": 4, "distractors": (0, 2)}
TEN_CLASS_LAYOUT = {"num_classes": 10, "object_size": (0.14, 0.26), "max_objects": 4}
REGIMES: dict[str, Regime] = {
    "shapes": Regime("shapes", "resnet18", 64, 20, 1e-3, lr_scheduler_type="cosine", warmup_steps=0.05,
                     model_kwargs={"output_stride": 16}, data_kwargs={"source_size": 96},
                     extra={"bank_size": 8, "expected_positives": 2.5}),
    "clutter": Regime("clutter", "resnet10t", 96, 15, 2e-3, extra={"expected_positives": 2.0}),
    "digits": Regime("digits", "resnet10t", 96, 15, 2e-3, data_kwargs=DIGIT_LAYOUT, data_version=2),
    "clutter10": Regime("clutter", "resnet10t", 96, 15, 2e-3, data_kwargs=TEN_CLASS_LAYOUT),
    "digits-pretrained": Regime("digits", "resnet10t", 128, 10, 1e-4, batch_size=16, lr_scheduler_type="constant",
                                weight_decay=0.0, init="pretext", data_kwargs=DIGIT_LAYOUT,
                                extra={"expected_positives": 2.0}, data_version=2),
}
TINY = {"epochs": 2, "num_train": 48, "num_validation": 24, "num_test": 24}
SIZES = {"shapes": (1000, 300, 300), "clutter": (1500, 400, 600), "digits": (1200, 400, 600)}


def regime_data(regime: Regime, seed: int, tiny: bool = False):
    from scl_hf.data.scenes import CLUTTER_SPEC, DIGIT_SPEC, make_clutter_scenes, make_digit_scenes
    from scl_hf.data.synthetic import make_synthetic

    n_train, n_val, n_test = (TINY["num_train"], TINY["num_validation"], TINY["num_test"]) if tiny else SIZES[regime.data]
    cache = str(CACHE / "datasets")
    if regime.data == "shapes":
        return make_synthetic(num_train=n_train, num_validation=n_val, num_test=n_test,
                              image_size=regime.data_kwargs.get("source_size", 96), seed=seed, cache_dir=cache)
    make, default_spec = {"clutter": (make_clutter_scenes, CLUTTER_SPEC), "digits": (make_digit_scenes, DIGIT_SPEC)}[regime.data]
    spec = replace(default_spec, **regime.data_kwargs)  # the regime's own scene layout over the generator's default
    return make(num_train=n_train, num_validation=n_val, num_test=n_test, spec=spec, seed=seed, cache_dir=cache)


def build_model(regime: Regime, names: list[str]):
    from scl_hf import create_model

    kwargs = dict(regime.model_kwargs)
    if regime.init == "pretext":
        from pretext import pretext_weights  # benchmarks/pretext.py

        path, num_classes = pretext_weights(regime.model_name)
        kwargs["pretrained_cfg_overlay"] = {"file": str(path), "num_classes": num_classes}
        return create_model(regime.model_name, num_labels=len(names), id2label=names, pretrained=True, **kwargs)
    return create_model(regime.model_name, num_labels=len(names), id2label=names, pretrained=False, **kwargs)


def run_one(regime_name: str, method: str, seed: int, work_dir: str, tiny: bool = False,
            overrides: dict | None = None) -> dict:
    """Train one (regime, method, seed) from the same initial weights as every other method of that seed."""
    from scl_hf import SCLConfig, SCLTrainer

    regime = REGIMES[regime_name]
    data = regime_data(regime, seed, tiny)
    names = data["train"].features["label"].names
    torch.manual_seed(seed)
    model = build_model(regime, names)
    work = Path(work_dir) / f"{regime_name}-{method}-seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    args = SCLConfig(
        output_dir=str(work), method=method, image_size=regime.image_size,
        num_train_epochs=TINY["epochs"] if tiny else regime.epochs, per_device_train_batch_size=regime.batch_size,
        per_device_eval_batch_size=128, learning_rate=regime.learning_rate, weight_decay=regime.weight_decay,
        lr_scheduler_type=regime.lr_scheduler_type, warmup_steps=regime.warmup_steps, use_cpu=True, seed=seed,
        data_seed=seed, eval_strategy="no", save_strategy="no", logging_steps=50, report_to="none",
        disable_tqdm=True, **{**regime.extra, **(overrides or {})},
    )
    trainer = SCLTrainer(model=model, args=args, train_dataset=data["train"])
    started = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - started
    val = trainer.evaluate(data["validation"], metric_key_prefix="val")["val_mAP"]
    test = trainer.evaluate(data["test"], metric_key_prefix="test")["test_mAP"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    auc = [(h["epoch"], h["bank_auc"], h["bank_gate"]) for h in trainer.state.log_history if "bank_auc" in h]
    shutil.rmtree(work, ignore_errors=True)
    return {"regime": regime_name, "method": method, "seed": seed, "overrides": overrides or {}, "val_mAP": val,
            "test_mAP": test, "train_seconds": seconds, "steps": result.global_step,
            "final_train_loss": losses[-1] if losses else None, "bank_auc": auc}


def run_key(run: dict) -> tuple:
    return run["regime"], run["method"], run["seed"], json.dumps(run.get("overrides", {}), sort_keys=True)


def label(run: dict) -> str:
    extra = ",".join(f"{k}={v}" for k, v in sorted(run.get("overrides", {}).items()))
    return run["method"] + (f" [{extra}]" if extra else "")


def gap_share(group: list[dict], an: dict, full: dict) -> str:
    """(method − AN) / (full − AN) of the test mAP, per seed where both bounds ran, as the mean over those seeds:
    how much of what full labels would add the method recovers from single positives."""
    shares = [(r["test_mAP"] - an[r["seed"]]) / (full[r["seed"]] - an[r["seed"]]) for r in group
              if r["seed"] in an and r["seed"] in full and full[r["seed"]] != an[r["seed"]]]
    if not shares:
        return ""
    return f"{100 * statistics.fmean(shares):.0f} % (seeds {[r['seed'] for r in group if r['seed'] in full]})"


def tables(runs: list[dict]) -> str:
    lines = []
    for regime in dict.fromkeys(r["regime"] for r in runs):
        rows = [r for r in runs if r["regime"] == regime]
        spec = asdict(REGIMES[regime])
        lines += [f"## {regime}", "", f"{spec}", "",
                  "| method | val mAP | test mAP (mean ± std) | per seed (test) | test − AN (per seed) | share of the AN → full "
                  "gap |", "|---|---|---|---|---|---|"]
        an, full = ({r["seed"]: r["test_mAP"] for r in rows if r["method"] == name and not r.get("overrides")}
                    for name in ("an", "full"))
        for name in dict.fromkeys(label(r) for r in rows):
            group = sorted((r for r in rows if label(r) == name), key=lambda r: r["seed"])
            tests = [r["test_mAP"] for r in group]
            vals = [r["val_mAP"] for r in group]
            std = statistics.stdev(tests) if len(tests) > 1 else 0.0
            deltas = " / ".join(f"{r['test_mAP'] - an[r['seed']]:+.2f}" for r in group if r["seed"] in an)
            lines.append(f"| {name} | {statistics.fmean(vals):.2f} | {statistics.fmean(tests):.2f} ± {std:.2f} | "
                         f"{' / '.join(f'{t:.2f}' for t in tests)} (seeds {[r['seed'] for r in group]}) | {deltas} | "
                         f"{gap_share(group, an, full)} |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    parser.add_argument("--methods", nargs="+", default=["an", "scl"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="SCLConfig overrides for every run (an ablation), e.g. --set crop_negative_threshold=0")
    parser.add_argument("--output", default=str(RESULTS / "regimes"))
    parser.add_argument("--work_dir", default="runs/regimes")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--merge", nargs="*", default=[], metavar="JSON",
                        help="first add the runs of these result files (other invocations' --output .json)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: the cores divided by --jobs; 1 when two invocations share the cores)")
    return parser.parse_args(argv)


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _job(regime, method, seed, work_dir, tiny, overrides, threads):
    torch.set_num_threads(threads)
    return run_one(regime, method, seed, work_dir, tiny, overrides)


def load_runs(path: Path, definitions: dict) -> list[dict]:
    """The runs saved in `path` (none if it does not exist), refused if a regime they ran was defined otherwise."""
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    runs = saved.get("runs", [])
    changed = sorted({r["regime"] for r in runs if saved["meta"]["regimes"].get(r["regime"]) != definitions[r["regime"]]})
    if changed:
        raise SystemExit(f"{path} holds runs of other definitions of the regimes {changed}; choose another --output")
    return runs


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    stem = Path(args.output)
    stem.parent.mkdir(parents=True, exist_ok=True)
    definitions = json.loads(json.dumps({k: asdict(v) for k, v in REGIMES.items()}))  # tuples as JSON lists
    runs = load_runs(stem.with_suffix(".json"), definitions)
    for other in args.merge:  # runs of invocations that shared the cores, each into its own file
        known = {run_key(r) for r in runs}
        runs += [r for r in load_runs(Path(other), definitions) if run_key(r) not in known]
    overrides = parse_overrides(args.set)
    done = {run_key(r) for r in runs}
    todo = [(g, m, s) for s in args.seeds for g in args.regimes for m in args.methods
            if (g, m, s, json.dumps(overrides, sort_keys=True)) not in done]
    from machine import cpu_name  # benchmarks/machine.py; loaded where a run needs it, not at --help

    meta = {"regimes": definitions, "machine": platform.platform(),
            "processor": cpu_name(), "torch": torch.__version__, "tiny": args.tiny}

    def write() -> None:
        meta["written"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
        stem.with_suffix(".md").write_text(
            "# The method across regimes (val chooses, test reports)\n\n"
            f"Written by benchmarks/regimes.py on {meta['machine']} ({meta['processor']}), torch {meta['torch']}, "
            f"{meta['written']}.\n\n"
            + tables(runs))

    def finished(run: dict) -> None:
        runs.append(run)
        write()
        print(f"{run['regime']:>17} seed {run['seed']} {label(run):>30}: val {run['val_mAP']:.2f} "
              f"test {run['test_mAP']:.2f} ({run['train_seconds']:.0f} s, loss {run['final_train_loss']})", flush=True)

    if args.merge:
        write()
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    if args.jobs <= 1:
        for job in todo:
            finished(_job(*job, args.work_dir, args.tiny, overrides, threads))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [pool.submit(_job, *job, args.work_dir, args.tiny, overrides, threads) for job in todo]
            for future in as_completed(futures):
                finished(future.result())
    print(tables(runs))
    return runs


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
