"""Does the training data loader keep the model fed? Images/second of SCLTrainer's own dataloader alone,
against images/second of the training step it feeds, plus the data wait measured inside real training.

Why: SCL moves augmentation into the trainer (it must know every crop box), so decoding, random-resized
crop, flip and normalisation run in `TrainViews` inside dataloader workers. If those workers cannot
produce images as fast as the step consumes them, the step overhead we keep small elsewhere
(benchmarks/overhead.py) would not matter: training would wait for data.

Measured here, for 0, 1 and 2 workers:
1. loader alone: `trainer.get_train_dataloader()` (TrainViews + decode + crop + normalise + collate, exactly
   what `train()` iterates), images/second over one epoch after its first batch (worker start-up is
   reported separately);
2. the SCL training step alone (same model, image size and batch; pre-made batches; see overhead.py);
3. real `SCLTrainer.train()` for a few steps: the time between one step's end and the next step's begin
   (callbacks), i.e. how long the loop waited for its next batch — the direct answer to "does it keep up".
   The same run records which process touches the bank (it must only be the main training process:
   dataloader workers never read or write it).

Data: the embedded synthetic dataset (PNG bytes in Arrow, 128 px), and path-backed JPEG files generated in a
temp dir at COCO-like size (about 500x400, quality 90), read from disk and decoded per access.

Run:  .venv/bin/python benchmarks/loader_throughput.py [--images 300]
Writes benchmarks/results/loader_throughput.json and benchmarks/results/loader_throughput.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import (  # noqa: E402  (benchmarks/ is not a package)
    Setting,
    build_runner,
    load_average,
    machine_description,
    make_batches,
    placeholder_dataset,
    summarise,
    write_report,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NUM_CLASSES = 80


# ----------------------------------------------------------------------------- data
def make_jpeg_dataset(folder: Path, count: int, seed: int = 0):
    """`count` JPEG files of about 500x400 (sizes vary like COCO's) with smooth colour structure and noise,
    so that they compress to realistic sizes; a path-backed `datasets.Dataset` over them."""
    import datasets

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        width, height = int(rng.integers(460, 641)), int(rng.integers(360, 481))
        coarse = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 12, (height, width, 3)).astype(np.int16)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    labels = rng.integers(0, NUM_CLASSES, count).tolist()
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=NUM_CLASSES)}
    )
    dataset = datasets.Dataset.from_dict({"image": paths, "label": labels}, features=features)
    mean_kb = statistics.fmean(os.path.getsize(p) for p in paths) / 1024
    return dataset, mean_kb


def make_synthetic_dataset(count: int):
    """The embedded synthetic set (PNG bytes inside Arrow), relabelled onto the 80-class head of the model."""
    from scl_hf.data.synthetic import make_synthetic

    return make_synthetic(num_train=count, num_test=1, seed=0)["train"]


# ----------------------------------------------------------------------------- measurements
def build_trainer(dataset, setting: Setting, workers: int, output_dir: Path, **overrides):
    from scl_hf import SCLConfig, SCLTrainer, create_model

    args = SCLConfig(
        output_dir=str(output_dir),
        method="scl",
        image_size=setting.image_size,
        per_device_train_batch_size=setting.batch_size,
        dataloader_num_workers=workers,
        use_cpu=not torch.cuda.is_available(),
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        **overrides,
    )
    model = create_model(setting.model, num_labels=max(NUM_CLASSES, _num_labels(dataset)))
    return SCLTrainer(model=model, args=args, train_dataset=dataset)


def _num_labels(dataset) -> int:
    return len(dataset.features["label"].names)


def loader_alone(trainer) -> dict:
    """Images/second of the trainer's own training dataloader over one whole epoch, start-up included.

    Whole epochs, because a split "after the first batch" would be biased: accelerate's DataLoaderShard
    fetches one batch ahead and each worker prefetches two, so batches made during the start-up would be
    counted as if they had come for free. The first batch's latency is reported on its own."""
    loader = trainer.get_train_dataloader()
    images = 0
    start = time.perf_counter()
    iterator = iter(loader)
    batch = next(iterator)
    first_batch_s = time.perf_counter() - start
    images += len(batch["index"])
    for batch in iterator:
        images += len(batch["index"])
    seconds = time.perf_counter() - start
    return {
        "images_per_second": images / seconds,
        "first_batch_seconds": first_batch_s,
        "images": images,
        "epoch_seconds": seconds,
    }


def step_alone(setting: Setting, workdir: Path, steps: int) -> dict:
    """Images/second of the SCL training step alone (pre-made batches): what the loader has to match."""
    setting = Setting(**{**setting.__dict__, "bank_rows": 1024, "methods": ("scl",)})
    torch.manual_seed(0)
    from scl_hf import create_model

    state = create_model(setting.model, num_labels=setting.num_classes).state_dict()
    runner = build_runner("scl", setting, state, placeholder_dataset(1024, setting.num_classes), workdir)
    batches = make_batches(setting, count=steps + 1)
    runner.step(batches[0])  # warm-up
    seconds = [runner.step(batch) for batch in batches[1:]]
    return {
        "seconds_per_step": summarise(seconds),
        "images_per_second": setting.batch_size / statistics.median(seconds),
    }


def stage_split(dataset, image_size: int, count: int) -> dict:
    """Milliseconds per image of each stage of TrainTransform on the JPEG files, in one thread as in a worker:
    where a loader's time goes, and what a uint8 output (normalised on the device instead) would save."""
    from scl_hf.transforms import TrainTransform, crop_and_resize, to_normalised_tensor
    from scl_hf.views import TrainViews

    transform = TrainTransform(image_size)
    views = TrainViews(dataset, transform, torch.zeros(1, dtype=torch.long), "image", "label")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # dataloader workers run with one torch thread
    stages: dict[str, list[float]] = {
        "read + decode": [],
        "crop + resize + flip": [],
        "normalise to float32": [],
        "uint8 tensor instead": [],
        "TrainViews item, all included": [],
    }
    try:
        for i in range(count):
            start = time.perf_counter()
            image = dataset[i]["image"].convert("RGB")
            decoded = time.perf_counter()
            box = transform.box_for(*image.size, epoch=0, index=i)
            view = crop_and_resize(image, box, image_size)
            cropped = time.perf_counter()
            to_normalised_tensor(view, transform.mean, transform.std)
            normalised = time.perf_counter()
            torch.from_numpy(np.array(view)).permute(2, 0, 1).contiguous()
            as_uint8 = time.perf_counter()
            for name, seconds in zip(
                stages, (decoded - start, cropped - decoded, normalised - cropped, as_uint8 - normalised)
            ):
                stages[name].append(seconds)
            start = time.perf_counter()
            views[i]  # the dataset item as a worker makes it: row access, all stages, the item's tensors
            stages["TrainViews item, all included"].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {name: statistics.median(values) * 1e3 for name, values in stages.items()}


class StepClock(TrainerCallback):
    """Wall time of each step (begin → end) and of each wait for data (previous end → next begin)."""

    def __init__(self):
        self.step_s: list[float] = []
        self.wait_s: list[float] = []
        self._begin = self._end = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._end = time.perf_counter()  # the first "wait" includes the dataloader's start-up

    def on_step_begin(self, args, state, control, **kwargs):
        self._begin = time.perf_counter()
        self.wait_s.append(self._begin - self._end)

    def on_step_end(self, args, state, control, **kwargs):
        self._end = time.perf_counter()
        self.step_s.append(self._end - self._begin)


def bank_process_probe(trainer) -> dict[str, set[int]]:
    """Wrap the bank's read/update after setup_bank so that every call records the calling process id."""
    calls: dict[str, set[int]] = {"read": set(), "update": set()}
    setup = trainer.setup_bank

    def setup_and_probe(*args, **kwargs):
        bank = setup(*args, **kwargs).store
        for name, kind in (("read_spatial", "read"), ("read_predictions", "read"), ("update", "update")):
            original = getattr(bank, name)

            def probed(*a, _original=original, _kind=kind, **k):
                calls[_kind].add(os.getpid())
                return _original(*a, **k)

            setattr(bank, name, probed)
        return bank

    trainer.setup_bank = setup_and_probe
    return calls


def training_wait(dataset, setting: Setting, workers: int, output_dir: Path, steps: int) -> dict:
    """Real SCLTrainer.train() for `steps` steps with the consistency terms on from step 0 (warmup_epochs=0,
    so the bank is read and written as after the warm-up): data-wait fraction and who touched the bank."""
    trainer = build_trainer(
        dataset, setting, workers, output_dir, max_steps=steps, warmup_epochs=0.0, logging_steps=10_000
    )
    clock = StepClock()
    trainer.add_callback(clock)
    calls = bank_process_probe(trainer)
    trainer.train()
    waits, step_s = clock.wait_s[1:], clock.step_s[1:]  # step 1 waits for the workers' start-up
    return {
        "workers": workers,
        "steps": steps,
        "first_wait_seconds": clock.wait_s[0],
        "median_wait_seconds": statistics.median(waits),
        "median_step_seconds": statistics.median(step_s),
        "wait_fraction_after_first": sum(waits) / (sum(waits) + sum(step_s)),
        "bank_read_pids": sorted(calls["read"]),
        "bank_update_pids": sorted(calls["update"]),
        "main_pid": os.getpid(),
        "bank_touched_only_by_main_process": calls["read"] | calls["update"] == {os.getpid()},
    }


# ----------------------------------------------------------------------------- report
def markdown_report(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# Data loading vs training step (does the loader keep the model fed?)",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpus_usable']} usable CPU core(s), torch threads "
        f"{machine['torch_threads']}, GPU: {machine['gpu'] or 'none'}; load average {report['load_average_start']} "
        f"at the start, {report['load_average_end']} at the end. torch {machine['versions']['torch']}, "
        f"transformers {machine['versions']['transformers']}, Pillow {report['pillow']}. Generated "
        f"{report['generated_at']}.",
        "",
        "## Loader alone (SCLTrainer.get_train_dataloader: TrainViews + decode + crop + flip + normalise + collate)",
        "",
        "| data | view px | batch | workers | images/s | first batch s | SCL step images/s (same px, batch) "
        "| loader / step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["loader"]:
        step = report["step"].get(str(row["image_size"]))
        step_ips = step["images_per_second"] if step else None
        lines.append(
            f"| {row['data']} | {row['image_size']} | {row['batch_size']} | {row['workers']} | "
            f"{row['images_per_second']:.1f} | {row['first_batch_seconds']:.2f} | "
            + (
                f"{step_ips:.1f} | {row['images_per_second'] / step_ips:.1f}× |"
                if step_ips
                else "not measured | – |"
            )
        )
    lines += [
        "",
        "## Inside real training (SCLTrainer.train, consistency terms on, bank read and written every step)",
        "",
        "| data | view px | batch | workers | steps | first wait s | median wait s | median step s | "
        "wait fraction (after step 1) | bank touched only by the main process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["training"]:
        lines.append(
            f"| {row['data']} | {row['image_size']} | {row['batch_size']} | {row['workers']} | {row['steps']} | "
            f"{row['first_wait_seconds']:.2f} | {row['median_wait_seconds']:.3f} | {row['median_step_seconds']:.2f} | "
            f"{row['wait_fraction_after_first'] * 100:.1f}% | "
            f"{'yes' if row['bank_touched_only_by_main_process'] else 'NO'} (pids {row['bank_read_pids']}) |"
        )
    lines += [
        "",
        "## Where a worker's time goes (JPEG files, one thread, median ms per image)",
        "",
        "| view px | " + " | ".join(next(iter(report["stages"].values()))) + " |",
        "|---:|" + "---:|" * len(next(iter(report["stages"].values()))),
    ]
    for size, stages in report["stages"].items():
        lines.append(f"| {size} | " + " | ".join(f"{v:.2f}" for v in stages.values()) + " |")
    lines += ["", report["notes"], ""]
    return "\n".join(lines)


NOTES = """Notes.
- *images/s* of the loader alone is measured over one whole epoch, start-up included (a lower bound of the
  steady rate); *first batch* is the start-up latency (workers forked, first decode). Workers are not
  persistent (the Trainer default), so every epoch pays the start-up once.
- The loader and the step share this machine's cores: in training, workers take CPU from the step. The
  *loader / step* column says how much faster than the step the loader is alone; the training table shows
  the wait that remains when both run together.
- The bank is opened, read and written only by the main training process (`SCLTrainer.compute_loss` →
  `bank.read_spatial` / `update_bank`); `TrainViews` and the transforms hold no reference to it
  (scl_hf/views.py, scl_hf/transforms.py), and the probe in the training runs recorded the process id of
  every bank read and update.
- GPU (resnet50, 448 px, batch 64, bf16): not measured here. The 448 px loader rows give images/s per worker
  on this CPU; a GPU run needs about (GPU step images/s) / (images/s per worker) workers."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=320, help="images per dataset (JPEG files and synthetic)"
    )
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--step-repeats", type=int, default=4)
    parser.add_argument(
        "--loader-repeats", type=int, default=3, help="epochs timed per (data, size, workers)"
    )
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    import PIL

    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "pillow": PIL.__version__,
        "load_average_start": load_average(),
        "loader": [],
        "step": {},
        "stages": {},
        "training": [],
        "notes": NOTES,
    }
    workers = [int(w) for w in args.workers.split(",")]
    cpu = Setting("cpu resnet18 224px b32", "resnet18", 224, 32, "cpu", None, pairs=0, warmup_steps=1)
    gpu_views = Setting("gpu-size views 448px b64", "resnet50", 448, 64, "cpu", None, pairs=0, warmup_steps=1)
    with tempfile.TemporaryDirectory(prefix="scl_loader_") as tmp:
        tmp = Path(tmp)
        jpegs, mean_kb = make_jpeg_dataset(tmp / "jpeg", args.images)
        report["jpeg_mean_kb"] = mean_kb
        data = {
            "jpeg 500x400 (files)": jpegs,
            "synthetic 128px (PNG in Arrow)": make_synthetic_dataset(args.images),
        }
        for dataset in data.values():  # warm-up: page cache, decoders, first-call costs
            loader_alone(build_trainer(dataset.select(range(64)), cpu, 0, tmp / "warm"))
        for setting in (cpu, gpu_views):
            for name, dataset in data.items():
                runs: dict[int, list[dict]] = {w: [] for w in workers}
                for r in range(args.loader_repeats):  # alternated order: load drift spreads over all counts
                    for w in workers if r % 2 == 0 else list(reversed(workers)):
                        runs[w].append(loader_alone(build_trainer(dataset, setting, w, tmp / "loader")))
                for w, measured in runs.items():
                    ips = [m["images_per_second"] for m in measured]
                    row = {
                        "data": name,
                        "image_size": setting.image_size,
                        "batch_size": setting.batch_size,
                        "workers": w,
                        "images_per_second": statistics.median(ips),
                        "images_per_second_all": ips,
                        "first_batch_seconds": statistics.median(m["first_batch_seconds"] for m in measured),
                        "images_per_epoch": measured[0]["images"],
                    }
                    report["loader"].append(row)
                    print(
                        f"loader {name} {setting.image_size}px w={w}: {row['images_per_second']:.1f} img/s",
                        flush=True,
                    )
            report["stages"][str(setting.image_size)] = stage_split(jpegs, setting.image_size, count=48)
        step = step_alone(cpu, tmp / "step", args.step_repeats)
        report["step"][str(cpu.image_size)] = step
        print(f"SCL step {cpu.name}: {step['images_per_second']:.2f} img/s", flush=True)
        for w in workers:
            row = training_wait(jpegs, cpu, w, tmp / f"train{w}", args.train_steps)
            row.update(data="jpeg 500x400 (files)", image_size=cpu.image_size, batch_size=cpu.batch_size)
            report["training"].append(row)
            print(f"training jpeg w={w}: wait {row['wait_fraction_after_first'] * 100:.1f}%", flush=True)
    report["load_average_end"] = load_average()
    write_report(report, markdown_report(report), args.output_dir, "loader_throughput")


if __name__ == "__main__":
    main()
