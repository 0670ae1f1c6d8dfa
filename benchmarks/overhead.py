"""Training-step overhead of the spatial consistency loss (SCL) against plain BCE ("assume negative", AN).

Why: the issue's promise is that SCL costs at most a few percent over the baseline it improves on
(CPU: SCL/AN <= 1.10; GPU: <= 1.05). A step time measured once per method on a shared machine says little,
because other jobs' load drifts by more than the overhead we look for. So the two methods are timed
ALTERNATELY on the same model weights, data and batch — pair i runs AN then SCL (even i) or SCL then AN
(odd i), so drift and order effects cancel — and we report the ratio of each pair, its median and spread.

What is timed is exactly what `Trainer`'s inner loop does per optimisation step: `SCLTrainer.training_step`
(which calls the real `SCLTrainer.compute_loss`: forward with the class-map hook, bank read, losses, bank
update; then `accelerator.backward`), gradient clipping, `optimizer.step`, `optimizer.zero_grad`. The
phases are measured by wrapping the trainer's own methods at instance level (no copy of compute_loss):

    forward      model(pixel_values) (forward pre/post hooks on the model)
    class_maps   ClassMapHook.pop_maps (the head applied per location)
    bank_read    SharedBank.read (settle: writer join + barrier; memmap rows, RoIAlign)
    bank_update  SharedBank.write (new rows: EMA + paste-back; packed all-gather; writer thread start)
    loss         the rest of compute_loss (base loss, spatial loss)
    backward     accelerator.backward
    optimizer    clip_grad_norm_ + optimizer.step + zero_grad
    other        the rest of the step (input preparation, bookkeeping)

Batches are tensors made up front (random pixels, 80 classes, COCO-like crop boxes): the data loader is
benchmarked on its own in benchmarks/loader_throughput.py. The bank is a mid-training bank: every row
written (random heatmaps, full coverage), `num_rows` rows long, on local disk under a temp dir.

On CUDA the ratio steps synchronise only at step boundaries (so the overlap of host-side bank work and
device work is what it is in training); the phase split then comes from separate steps with a
synchronisation around every phase (which removes overlap, so those phases add up to more than a step).

Cheaper bank read/update paths are timed against the current code in benchmarks/bank_prototypes.py.

Run:  .venv/bin/python benchmarks/overhead.py                        # CPU settings of the issue (+ small)
      .venv/bin/python benchmarks/overhead.py --settings gpu         # on a machine with a GPU
Writes benchmarks/results/overhead.json and benchmarks/results/overhead.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # benchmarks/machine.py, beside this script

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NOTES = """Notes.
- *SCL/AN median, IQR, min – max*: over the per-pair ratios. *from phases*: 1 + (class maps + bank read + bank
  update + SCL's extra loss time, medians measured inside the SCL steps) / AN's median step — the SCL-only work,
  free of the backbone time that drifts with other jobs' load; the per-pair ratio is the end-to-end check.
  The */ min* figure uses each phase's least disturbed step and the fastest AN step: the intrinsic cost.
- On a CPU the phases are exact (no asynchronous queue). On CUDA the ratio steps synchronise only at step ends;
  the phase split comes from extra steps synchronised around every phase.
- The GPU setting (resnet50, 448 px, batch 64, bf16 autocast) runs only where CUDA is available; where the
  table says "not measured", it was not.
- Cheaper bank read/update variants: benchmarks/bank_prototypes.py (results/bank_prototypes.md)."""
PHASES = ("forward", "class_maps", "bank_read", "bank_update", "loss", "backward", "optimizer", "other")


@dataclass
class Setting:
    """One benchmark configuration: what the issue asks to compare, and how long to measure it."""

    name: str
    model: str
    image_size: int
    batch_size: int
    device: str  # "cpu" or "cuda"
    amp: str | None  # None (fp32), "bf16" or "fp16" (fp16 only on CUDA)
    pairs: int
    warmup_steps: int
    num_classes: int = 80  # COCO
    bank_size: int = 14  # SCLConfig's default (ResNet-50's grid at 448 px)
    bank_rows: int = 8192
    methods: tuple[str, ...] = ("scl",)
    target_ratio: float = 1.10


SETTINGS: dict[str, Setting] = {
    "cpu": Setting("cpu resnet18 224px b32 fp32", "resnet18", 224, 32, "cpu", None, pairs=12, warmup_steps=2),
    "cpu-small": Setting(
        "cpu resnet18 112px b16 fp32", "resnet18", 112, 16, "cpu", None, pairs=40, warmup_steps=3
    ),
    "gpu": Setting(
        "cuda resnet50 448px b64 bf16",
        "resnet50",
        448,
        64,
        "cuda",
        "bf16",
        pairs=40,
        warmup_steps=10,
        bank_rows=65_665,
        target_ratio=1.05,
    ),
}


# ----------------------------------------------------------------------------- machine
def machine_description() -> dict:
    """What the numbers were measured on: they mean little without the CPU, its load and the versions."""
    import accelerate
    import timm
    import torchvision
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": timm.__version__,
            "transformers": transformers.__version__,
            "accelerate": accelerate.__version__,
            "numpy": np.__version__,
        },
    }


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def write_report(report: dict, markdown: str, output_dir: Path, name: str) -> None:
    """`name`.json (every figure) and `name`.md (the tables) under `output_dir`; the markdown is printed too."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / f"{name}.md").write_text(markdown)
    print(markdown)


def summarise(values: list[float]) -> dict:
    """Median and spread (quartiles, min, max): a single number hides how noisy a shared machine is."""
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


# ----------------------------------------------------------------------------- timing of the trainer's phases
class PhaseClock:
    """Accumulates wall time per phase of one step, by wrapping the trainer's own callables.

    `sync` runs before and after each timed call: a no-op for the ratio steps (and on CPU, where it is
    not needed), `torch.cuda.synchronize` for the phase-split steps on a GPU.
    """

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.sync: Callable[[], None] = lambda: None

    def reset(self) -> None:
        self.seconds.clear()

    def wrap(self, name: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.sync()
                self.seconds[name] += time.perf_counter() - start

        return timed

    def hook_module(self, module: torch.nn.Module, name: str) -> None:
        starts: list[float] = []

        def before(*_):
            self.sync()
            starts.append(time.perf_counter())

        def after(*_):
            self.sync()
            self.seconds[name] += time.perf_counter() - starts.pop()

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def split(self, total: float) -> dict[str, float]:
        """Exclusive phase times: compute_loss minus what it contains is the loss; the step's rest is other."""
        s = self.seconds
        inner = s["forward"] + s["class_maps"] + s["bank_read"] + s["bank_update"]
        phases = {name: s[name] for name in ("forward", "class_maps", "bank_read", "bank_update")}
        phases["loss"] = max(s["compute_loss"] - inner, 0.0)
        phases["backward"] = s["backward"]
        phases["optimizer"] = s["optimizer"]
        phases["other"] = max(total - s["compute_loss"] - s["backward"] - s["optimizer"], 0.0)
        return phases


# ----------------------------------------------------------------------------- building the two trainers
def placeholder_dataset(num_rows: int, num_classes: int, seed: int = 0):
    """A training set of `num_rows` rows whose images are never decoded here (batches are made up front):
    it only sizes the bank and satisfies the trainer's column checks."""
    import datasets

    labels = np.random.default_rng(seed).integers(0, num_classes, num_rows).tolist()
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=num_classes)}
    )
    return datasets.Dataset.from_dict({"image": [None] * num_rows, "label": labels}, features=features)


def fill_bank(bank, seed: int = 0, chunk: int = 2048) -> None:
    """A mid-training bank: every row observed (random averages, full coverage), written to the memmap."""
    rng = np.random.default_rng(seed)
    n = len(bank.predictions)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        bank.predictions[start:stop] = rng.random((stop - start, bank.predictions.shape[1]), dtype=np.float32)
        if bank.heatmaps is not None:
            rows = rng.random((stop - start, *bank.heatmaps.shape[1:]), dtype=np.float32)
            bank.heatmaps[start:stop] = rows.astype(np.float16)
            bank.coverage[start:stop] = 3
    bank.seen[:] = 3
    bank.flush()


@dataclass
class Runner:
    """One method's trainer, prepared model and optimizer, and the clock wrapped around them."""

    method: str
    trainer: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    clock: PhaseClock

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One optimisation step as Trainer's inner loop does it; returns its wall time."""
        trainer, clock = self.trainer, self.clock
        clock.reset()
        device_sync()
        start = time.perf_counter()
        trainer.training_step(self.model, batch)
        opt_start = time.perf_counter()
        clock.sync()
        trainer.accelerator.clip_grad_norm_(self.model.parameters(), trainer.args.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        clock.sync()
        clock.seconds["optimizer"] += time.perf_counter() - opt_start
        device_sync()
        elapsed = time.perf_counter() - start
        trainer.state.global_step += 1
        trainer._loss_terms.clear()  # Trainer's log() would empty it; keep the benchmark's memory flat
        return elapsed


def device_sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_runner(method: str, setting: Setting, state_dict: dict, dataset, workdir: Path) -> Runner:
    from scl_hf import SCLConfig, SCLTrainer, create_model

    model = create_model(setting.model, num_labels=setting.num_classes)
    model.load_state_dict(state_dict)
    args = SCLConfig(
        output_dir=str(workdir / method.replace("+", "_")),
        method=method,
        image_size=setting.image_size,
        per_device_train_batch_size=setting.batch_size,
        learning_rate=1e-4,
        warmup_epochs=1.0,
        bank_size=setting.bank_size,
        use_cpu=setting.device == "cpu",
        bf16=setting.amp == "bf16",
        fp16=setting.amp == "fp16",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = SCLTrainer(model=model, args=args, train_dataset=dataset)
    if trainer.setup_bank() is not None:
        fill_bank(trainer.bank.store)
    trainer.state.epoch = args.warmup_epochs + 1.0  # consistency terms active, bank recording
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's inner loop, read by training_step
    trainer.create_optimizer()
    prepared, optimizer = trainer.accelerator.prepare(trainer.model, trainer.optimizer)
    trainer.model_wrapped = prepared

    clock = PhaseClock()
    clock.hook_module(trainer.model, "forward")
    trainer.compute_loss = clock.wrap("compute_loss", trainer.compute_loss)
    trainer.accelerator.backward = clock.wrap("backward", trainer.accelerator.backward)
    if trainer.map_hook is not None:
        trainer.map_hook.pop_maps = clock.wrap("class_maps", trainer.map_hook.pop_maps)
    if trainer.bank is not None:
        trainer.bank.read = clock.wrap("bank_read", trainer.bank.read)
        trainer.bank.write = clock.wrap("bank_update", trainer.bank.write)
    return Runner(method, trainer, prepared, optimizer, clock)


def make_batches(setting: Setting, count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Collated training batches as SCLTrainer's dataloader yields them (pixels, label, index, box, flip).

    Row indices walk through a permutation of the bank's rows, as an epoch does (no repeats)."""
    from scl_hf.transforms import sample_crop_box

    rng = np.random.default_rng(seed)
    order = rng.permutation(setting.bank_rows)
    batches = []
    for i in range(count):
        start = (i * setting.batch_size) % (setting.bank_rows - setting.batch_size)
        boxes = [sample_crop_box(rng, 640, 480) for _ in range(setting.batch_size)]
        batch = {
            "pixel_values": torch.randn(setting.batch_size, 3, setting.image_size, setting.image_size),
            "label": torch.from_numpy(rng.integers(0, setting.num_classes, setting.batch_size)),
            "index": torch.from_numpy(order[start : start + setting.batch_size].copy()),
            "boxes": torch.stack([b.as_tensor() for b in boxes]),
            "flips": torch.tensor([b.flip for b in boxes]),
        }
        if setting.device != "cpu":
            batch = {k: v.to(setting.device, non_blocking=True) for k, v in batch.items()}
        batches.append(batch)
    return batches


# ----------------------------------------------------------------------------- the alternated measurement
def run_setting(setting: Setting, workdir: Path, log: Callable[[str], None]) -> dict:
    """Warm up, then time `pairs` alternated (AN, method) step pairs per method; phase split per method."""
    from scl_hf import create_model

    torch.manual_seed(0)
    if setting.device == "cuda":
        torch.backends.cudnn.benchmark = True  # as a GPU training run would set it; same for both methods
    state_dict = create_model(setting.model, num_labels=setting.num_classes).state_dict()
    dataset = placeholder_dataset(setting.bank_rows, setting.num_classes)
    runners = {m: build_runner(m, setting, state_dict, dataset, workdir) for m in ("an", *setting.methods)}
    pool = make_batches(setting, count=4)
    index_batches = make_batches(setting, count=setting.pairs + setting.warmup_steps, seed=1)

    def batch_for(i: int) -> dict[str, torch.Tensor]:
        # pixels from a small pool (memory), fresh bank rows every step (as an epoch walks the bank)
        fresh = index_batches[i]
        return {
            **pool[i % len(pool)],
            "index": fresh["index"],
            "boxes": fresh["boxes"],
            "flips": fresh["flips"],
        }

    load_start = load_average()
    for i in range(setting.warmup_steps):
        for runner in runners.values():
            runner.step(batch_for(i))
    seconds: dict[str, list[float]] = {m: [] for m in runners}
    phases: dict[str, list[dict[str, float]]] = {m: [] for m in runners}
    on_cpu = setting.device == "cpu"
    started = time.perf_counter()
    for p in range(setting.pairs):
        batch = batch_for(setting.warmup_steps + p)
        order = list(runners) if p % 2 == 0 else list(reversed(runners))
        for method in order:
            elapsed = runners[method].step(batch)
            seconds[method].append(elapsed)
            if on_cpu:  # no device queue: the phases of the ratio steps are exact
                phases[method].append(runners[method].clock.split(elapsed))
        log(f"  pair {p + 1}/{setting.pairs}: " + ", ".join(f"{m} {seconds[m][-1]:.3f}s" for m in runners))
    if not on_cpu:  # separate synchronised steps for the phase split (see the module docstring)
        for p in range(min(setting.pairs, 10)):
            for method, runner in runners.items():
                runner.clock.sync = device_sync
                elapsed = runner.step(batch_for(p))
                phases[method].append(runner.clock.split(elapsed))
                runner.clock.sync = lambda: None
    result = {
        "setting": asdict(setting),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "measure_seconds": time.perf_counter() - started,
        "step_seconds": {m: summarise(v) for m, v in seconds.items()},
        "step_seconds_all": seconds,
        "images_per_second": {m: setting.batch_size / statistics.median(v) for m, v in seconds.items()},
        "ratios": {},
        "phases_median_seconds": {
            m: {name: statistics.median(step[name] for step in steps) for name in PHASES}
            for m, steps in phases.items()
        },
    }
    for method in setting.methods:
        per_pair = [s / a for s, a in zip(seconds[method], seconds["an"])]
        result["ratios"][method] = {
            **summarise(per_pair),
            "per_pair": per_pair,
            "ratio_of_min_steps": min(seconds[method]) / min(seconds["an"]),
            "target": setting.target_ratio,
            "meets_target": statistics.median(per_pair) <= setting.target_ratio,
        }
        # The SCL-only work, measured inside the SCL steps themselves: far less noisy than a step-time ratio on
        # a loaded machine, because it does not contain the (shared, drifting) backbone time.
        mine, base = result["phases_median_seconds"][method], result["phases_median_seconds"]["an"]
        extra = {name: mine[name] for name in ("class_maps", "bank_read", "bank_update")}
        extra["loss (beyond AN's)"] = max(mine["loss"] - base["loss"], 0.0)
        an_step = statistics.median(seconds["an"])
        result["ratios"][method]["scl_only_seconds"] = extra
        result["ratios"][method]["phase_ratio_estimate"] = 1.0 + sum(extra.values()) / an_step
        # the same from the least disturbed runs (minimum of each phase, minimum AN step): intrinsic cost
        least = {name: min(step[name] for step in phases[method]) for name in PHASES}
        least_an_loss = min(step["loss"] for step in phases["an"])
        extra_min = sum(least[name] for name in ("class_maps", "bank_read", "bank_update"))
        extra_min += max(least["loss"] - least_an_loss, 0.0)
        result["ratios"][method]["scl_only_seconds_min"] = extra_min
        result["ratios"][method]["phase_ratio_estimate_min"] = 1.0 + extra_min / min(seconds["an"])
    return result


# ----------------------------------------------------------------------------- report
def markdown_report(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# Training-step overhead: SCL vs AN (plain BCE)",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpus_usable']} usable CPU core(s), torch threads "
        f"{machine['torch_threads']}, GPU: {machine['gpu'] or 'none'}; {machine['platform']}. "
        f"torch {machine['versions']['torch']}, torchvision {machine['versions']['torchvision']}, "
        f"timm {machine['versions']['timm']}, transformers {machine['versions']['transformers']}, "
        f"accelerate {machine['versions']['accelerate']}. Generated {report['generated_at']}.",
        "",
        "Each pair times one AN step and one SCL step (same model weights, batch and optimizer), alternating "
        "the order; the ratio is SCL/AN per pair. A step is `training_step` (forward with the class-map hook, "
        "bank read, losses, bank update, backward) + clipping + optimizer step.",
        "",
        "| setting | method | pairs | SCL/AN median | IQR | min – max | from phases (median / min) | AN s/step | SCL s/step "
        "| target | met | load avg start → end |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for result in report["settings"].values():
        if "skipped" in result:
            continue
        st = result["setting"]
        for method, ratio in result["ratios"].items():
            lines.append(
                f"| {st['name']} | {method} | {ratio['n']} | {ratio['median']:.3f} | {ratio['q1']:.3f} – "
                f"{ratio['q3']:.3f} | {ratio['min']:.3f} – {ratio['max']:.3f} | {ratio['phase_ratio_estimate']:.4f} / {ratio['phase_ratio_estimate_min']:.4f} | "
                f"{result['step_seconds']['an']['median']:.3f} | {result['step_seconds'][method]['median']:.3f} | "
                f"≤ {ratio['target']:.2f} | {'yes' if ratio['meets_target'] else 'NO'} | "
                f"{result['load_average_start'][0]:.2f} → {result['load_average_end'][0]:.2f} |"
            )
    for key, result in report["settings"].items():
        if "skipped" in result:
            lines += ["", f"**{key}**: not measured — {result['skipped']}"]
    lines += [
        "",
        "## Phase split (median ms per step)",
        "",
        "| setting | method | " + " | ".join(PHASES) + " | step |",
        "|---|---|" + "---:|" * (len(PHASES) + 1),
    ]
    for result in report["settings"].values():
        if "skipped" in result:
            continue
        for method, ph in result["phases_median_seconds"].items():
            step = result["step_seconds"][method]["median"]
            lines.append(
                f"| {result['setting']['name']} | {method} | "
                + " | ".join(f"{ph[name] * 1e3:.1f}" for name in PHASES)
                + f" | {step * 1e3:.1f} |"
            )
    lines += ["", NOTES, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings",
        default="cpu,cpu-small",
        help=f"comma-separated, from {sorted(SETTINGS)}; 'gpu' is skipped without CUDA",
    )
    parser.add_argument("--pairs", type=int, default=None, help="override every setting's number of pairs")
    parser.add_argument(
        "--methods", default="scl", help="methods compared with 'an', comma-separated (e.g. scl,cl+scl)"
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--output-name", default="overhead")
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, flush=True)

    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "load_average_start": load_average(),
        "settings": {},
    }
    with tempfile.TemporaryDirectory(prefix="scl_overhead_") as tmp:
        for key in args.settings.split(","):
            setting = SETTINGS[key]
            setting.methods = tuple(args.methods.split(","))
            if args.pairs:
                setting.pairs = args.pairs
            if setting.device == "cuda" and not torch.cuda.is_available():
                report["settings"][key] = {
                    "skipped": "no CUDA device on this machine (GPU path written, not run)",
                    "setting": asdict(setting),
                }
                log(f"{setting.name}: skipped (no CUDA)")
                continue
            log(f"{setting.name}: {setting.pairs} pairs")
            report["settings"][key] = run_setting(setting, Path(tmp) / key, log)
            for method, ratio in report["settings"][key]["ratios"].items():
                log(f"  {method}/an median {ratio['median']:.3f} (IQR {ratio['q1']:.3f}–{ratio['q3']:.3f})")
    report["load_average_end"] = load_average()
    report["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    write_report(report, markdown_report(report), args.output_dir, args.output_name)


if __name__ == "__main__":
    main()
