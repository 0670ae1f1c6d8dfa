"""GPU-proxy setting on a CPU: the bank's time on the training step's critical path, per process.

Why: on a GPU the backbone is fast (resnet50, 448 px, batch 64, bf16: ~80 ms a step on an H200), so what the
training thread waits for in the bank — reading rows, the collective, the barrier, the writer — decides
SCL/AN. This runs the real `SharedBank` (real memmaps, a COCO-size bank of 82,081 rows × 80 classes × 14 × 14,
real gloo collectives under `accelerate launch`) with everything else of the step replaced by what a GPU
step leaves the host: the batch's logits and class maps are given, and the backward is a sleep of
`--backward-ms` (the host is idle while the device runs; the GIL is free, so the writer thread can store).
The forward is a sleep of `--forward-ms` too, after the batch is known: with the read-ahead (the default;
`--no-readahead` measures the path without it) `SharedBank.prefetch` starts reading the batch's rows on a
thread before it, as the trainer does, and `read` takes them.

Per step it times, on the training thread:
    prefetch    SharedBank.prefetch (starting the read-ahead thread; 0 with --no-readahead)
    read        SharedBank.read   (settle: join of the last writer + barrier; row reads or the prefetched rows,
                                   re-reading those a later write touched; the cut)
    write       SharedBank.write  (new rows: EMA + paste-back; one packed all-gather; start of the writer)
and, inside them, the geometry (`spatial_targets` and `paste_crop`): device work on a GPU, where it is
queued kernels (not host time). "host critical path" = prefetch + read + write − geometry: what the step waits for on
a GPU host, the figure of the issue's target (≤ 4 ms per step per process, no more with 2 processes than 1).
On a shared machine the wall time includes other jobs' time slices; "host CPU" is the training thread's own
CPU time in the same span (waits excluded), and the minimum is the least disturbed step.

Run (one process, then two, one after the other, with and without `--no-readahead`; each run replaces
the result of the same processes and read-ahead setting):
    python benchmarks/bank_critical_path.py
    accelerate launch --multi_gpu --num_processes 2 --mixed_precision no --dynamo_backend no \\
        benchmarks/bank_critical_path.py        # with no GPU: gloo on the CPU (MULTI_CPU)
Writes bank_critical_path.json and .md into `--output-dir` (default benchmarks/results). On a shared machine,
run the settings in alternating rounds, each into its own `--output-dir`, and collect them with
`bank_critical_path_rounds.py` (into bank_critical_path_rounds.md, which the .md then points to).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import fill_bank, load_average, machine_description  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class GeometryClock:
    """Time spent in the geometry functions by the training thread (the writer thread is not counted)."""

    def __init__(self):
        self.seconds = self.cpu_seconds = 0.0
        self.main = threading.get_ident()

    def wrap(self, module, name: str) -> None:
        original = getattr(module, name)

        def timed(*args, **kwargs):
            if threading.get_ident() != self.main:
                return original(*args, **kwargs)
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.cpu_seconds += time.thread_time() - cpu

        setattr(module, name, timed)


def make_inputs(order: np.ndarray, step: int, process: int, processes: int, batch: int, classes: int,
                size: int, gen: torch.Generator) -> tuple[dict, torch.Tensor, torch.Tensor]:
    start = (step * processes + process) * batch
    index = torch.from_numpy(order[start:start + batch].astype(np.int64))
    x0y0 = torch.rand(batch, 2, generator=gen) * 0.4
    inputs = {"index": index, "boxes": torch.cat([x0y0, x0y0 + 0.4 + 0.2 * torch.rand(batch, 2, generator=gen)], 1),
              "flips": torch.rand(batch, generator=gen) < 0.5, "label": torch.randint(0, classes, (batch,), generator=gen)}
    return inputs, torch.randn(batch, classes, generator=gen), torch.randn(batch, classes, size, size, generator=gen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=82_081)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--size", type=int, default=14)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--backward-ms", type=float, default=55.0)
    parser.add_argument("--forward-ms", type=float, default=25.0, help="the forward pass's sleep, after the batch is known")
    parser.add_argument("--no-readahead", action="store_true", help="read the rows in `read` (the path before the read-ahead)")
    parser.add_argument("--sync", choices=("epoch", "step"), default="epoch",
                        help="SharedBank's sync: a barrier at an epoch's first and last step, or at every step")
    parser.add_argument("--bank-dir", type=Path, default=Path(tempfile.gettempdir()) / "scl_bank_critical_path")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from accelerate import Accelerator

    from scl_hf.bank import BankHeader, SharedBank, dense

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    processes, rank = accelerator.num_processes, accelerator.process_index
    header = BankHeader(args.rows, args.classes, args.size, True, "proxy", "proxy")
    steps_per_epoch = -(-args.rows // (args.batch * processes))  # the steps run here are inside one epoch
    bank = SharedBank.setup(accelerator, args.bank_dir, header, momentum=0.9, heatmap_momentum=0.9, sync=args.sync,
                            steps_per_epoch=steps_per_epoch)
    if accelerator.is_local_main_process:
        fill_bank(bank.store)
    accelerator.wait_for_everyone()
    clock = GeometryClock()
    clock.wrap(dense, "spatial_targets")
    clock.wrap(dense, "paste_crop")

    order = np.random.default_rng(0).permutation(args.rows)
    gen = torch.Generator().manual_seed(rank)
    device = accelerator.device
    readahead = not args.no_readahead
    times = {"prefetch": [], "read": [], "write": [], "geometry": [], "host": [], "host_cpu": []}
    for step in range(args.warmup + args.steps):
        inputs, logits, maps = make_inputs(order, step, rank, processes, args.batch, args.classes, args.size, gen)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        inputs["index_host"] = inputs["index"].cpu()  # as SCLTrainer._prepare_inputs keeps it
        logits, maps = logits.to(device), maps.to(device)
        clock.seconds = clock.cpu_seconds = 0.0
        call, call_cpu = time.perf_counter(), time.thread_time()
        if readahead:
            bank.prefetch(inputs, epoch=3)
        call, call_cpu = time.perf_counter() - call, time.thread_time() - call_cpu
        time.sleep(args.forward_ms / 1000)  # the forward on the device: the read-ahead thread reads the rows
        start, cpu = time.perf_counter(), time.thread_time()
        read = bank.read(inputs, epoch=3, out_size=(args.size, args.size), device=device)
        middle = time.perf_counter()
        bank.write(inputs, logits, maps, read, epoch=3)
        end, cpu_end = time.perf_counter(), time.thread_time()
        time.sleep(args.backward_ms / 1000)  # the backward on the device: the host waits, the writer stores
        if step >= args.warmup:
            times["prefetch"].append(call * 1000)
            times["read"].append((middle - start) * 1000)
            times["write"].append((end - middle) * 1000)
            times["geometry"].append(clock.seconds * 1000)
            times["host"].append((call + end - start - clock.seconds) * 1000)
            times["host_cpu"].append((call_cpu + cpu_end - cpu - clock.cpu_seconds) * 1000)
    bank.close(epoch=3, global_step=args.warmup + args.steps)

    summary = {k: {"median": statistics.median(v), "q1": float(np.percentile(v, 25)), "q3": float(np.percentile(v, 75)),
                   "min": min(v), "max": max(v)} for k, v in times.items()}
    gathered = accelerator.gather(torch.tensor([[summary[k]["median"] for k in times]], device=device)).cpu().tolist()
    if accelerator.is_main_process:
        record = {"processes": processes, "readahead": readahead, "sync": args.sync, "batch_per_process": args.batch, "rows": args.rows,
                  "classes": args.classes, "size": args.size, "steps": args.steps, "backward_ms": args.backward_ms,
                  "forward_ms": args.forward_ms,
                  "per_process_medians_ms": [dict(zip(times, row, strict=True)) for row in gathered],
                  "rank0": summary, "load_average": load_average(), "machine": machine_description()}
        args.output_dir.mkdir(parents=True, exist_ok=True)
        path = args.output_dir / "bank_critical_path.json"
        report = json.loads(path.read_text()) if path.exists() else {"runs": []}
        setting = lambda r: (r["processes"], r.get("readahead", False), r.get("sync", "step"))  # noqa: E731  (older runs had none)
        report["runs"] = [r for r in report["runs"] if setting(r) != setting(record)] + [record]
        report["runs"].sort(key=setting)
        path.write_text(json.dumps(report, indent=2) + "\n")
        (args.output_dir / "bank_critical_path.md").write_text(markdown(report, args.output_dir))
        print(markdown(report, args.output_dir))
    if processes > 1:
        accelerator.wait_for_everyone()
        time.sleep(0.5)  # let gloo's workers drain before exit (docs/bank.md, "Ending a launched script")
        torch.distributed.destroy_process_group()


def markdown(report: dict, folder: Path | None = None) -> str:
    """The table of `report`'s runs; a pointer to the rounds (bank_critical_path_rounds.py) when `folder` has them."""
    lines = ["# The bank on the critical path: GPU-proxy setting on a CPU", "",
             "`benchmarks/bank_critical_path.py`: the real SharedBank (COCO-size dense bank, real memmaps, gloo), "
             "the backward replaced by a sleep (the host idles while a GPU runs it). Milliseconds per step and "
             "process, rank 0's median [quartiles]; *host critical path* = prefetch + read + write − geometry (the "
             "geometry is device work on a GPU). *read-ahead*: the batch's rows read on a thread during the forward "
             "(`SharedBank.prefetch`). *sync*: the barrier that orders writes before reads, at every step or at an "
             "epoch's first and last step (`SCLConfig.bank_sync`; the steps here lie inside one epoch). "
             "Target: host critical path ≤ 4 ms, no higher with 2 processes than 1.", "",
             "| processes | read-ahead | sync | batch / process | prefetch (call) | read | write | geometry (device on a GPU) | "
             "host critical path | its minimum | host CPU | host critical path, every rank's median |",
             "|---:|:---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for run in report["runs"]:
        cell = lambda k, s=run["rank0"]: f"{s[k]['median']:.2f} [{s[k]['q1']:.2f}–{s[k]['q3']:.2f}]" if k in s else "–"  # noqa: E731
        ranks = ", ".join(f"{r['host']:.2f}" for r in run["per_process_medians_ms"])
        ahead = {True: "on", False: "off"}[run.get("readahead", False)]
        lines.append(f"| {run['processes']} | {ahead} | {run.get('sync', 'step')} | {run['batch_per_process']} | {cell('prefetch')} | {cell('read')} | {cell('write')} | "
                     f"{cell('geometry')} | {cell('host')} | {run['rank0']['host']['min']:.2f} | {cell('host_cpu')} | {ranks} |")
    machine = report["runs"][-1]["machine"]
    lines += ["", f"Machine: {machine['cpu_model']}, {machine['cpus_usable']} usable CPUs (shared with other jobs; "
              f"load average {report['runs'][-1]['load_average']}), torch {machine['versions']['torch']}, "
              f"{report['runs'][-1]['steps']} steps after warm-up, backward sleep {report['runs'][-1]['backward_ms']} ms, "
              f"forward sleep {report['runs'][-1].get('forward_ms', 0)} ms.",
              ""]
    if folder is not None and (folder / "bank_critical_path_rounds.md").exists():
        lines += ["Each row is one run, one sample of the machine's load; every round of the settings, run "
                  "alternately: [bank_critical_path_rounds.md](bank_critical_path_rounds.md).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
