"""Heatmap bank I/O: read + update throughput, resident memory, and the cost of checkpoint snapshots.

Problem sizes:
- dense COCO-2014 train: 82,081 images × 80 classes × 14 × 14 fp16 (≈2.6 GB), class maps 14 × 14 (ResNet-50
  at 448 px), random rows, batches of 16/32/64/128 — what the writer does per step: read_predictions +
  read_spatial (its own batch) and update (the gathered batch);
- sparse ImageNet-1k train: 1,281,167 × 1000 classes, k = 5 (6 slots × 14 × 14 fp16, plus the dense N × C
  float32 predictions: ≈8.4 GB in all); scaled down (and said so) when the disk is short;
- snapshots: full copy of the COCO bank (copy_file_range vs shutil.copyfile) vs a delta of the rows written
  since the last checkpoint, and the restore.

Banks are made (and deleted) under a temporary folder (`--dir`, default: the system temp dir). Timings take
the median and the best of interleaved repeats on one torch thread; the machine may be shared, so its load
average is recorded. Run:  .venv/bin/python benchmarks/bank_io.py  [--quick]
Writes benchmarks/results/bank_io.json and benchmarks/results/bank_io.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # benchmarks/machine.py, beside this script

from scl_hf.bank import BankHeader, SCLBank, header_nbytes, open_bank, restore_snapshot, save_snapshot

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BATCHES = (16, 32, 64, 128)
COCO = dict(num_rows=82_081, num_classes=80, size=14)
IMAGENET = dict(num_rows=1_281_167, num_classes=1000, size=14)


# --------------------------------------------------------------------------- machine and memory
def machine(folder: Path) -> dict:
    import accelerate
    import torchvision
    import transformers

    mem = {line.split(":")[0]: line.split(":")[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()}
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    fs = max((m for m in mounts if str(folder.resolve()).startswith(m[1])), key=lambda m: len(m[1]), default=["?"] * 3)
    return {
        "cpu": cpu_name(), "usable_cpus": len(os.sched_getaffinity(0)), "ram_total": mem.get("MemTotal"),
        "ram_available": mem.get("MemAvailable"), "disk_free_gb": round(shutil.disk_usage(folder).free / 1e9, 1),
        "filesystem": f"{fs[2]} on {fs[1]}", "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "transformers": transformers.__version__, "accelerate": accelerate.__version__,
        "torch_threads": torch.get_num_threads(), "load_average_start": round(os.getloadavg()[0], 2),
    }


def memory() -> dict[str, float]:
    """Resident memory in MB: total, anonymous (heap: ours), file-backed (memmap pages touched), peak."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def growth(now: dict, base: dict) -> dict:
    return {k: round(now[k] - base[k], 1) for k in ("VmRSS", "RssAnon", "RssFile")}


# --------------------------------------------------------------------------- banks
def fill(folder: Path, header: BankHeader, seed: int = 0) -> float:
    """Write realistic contents through a throw-away mapping (so that the bank's own pages start untouched)."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for name in ("predictions", "heatmaps", "coverage", "seen", "slots"):
        path = folder / f"{name}.npy"
        if not path.exists():
            continue
        array = np.lib.format.open_memmap(path, mode="r+")
        chunk = max(1, (64 << 20) // max(array[0].nbytes, 1))
        for start in range(0, len(array), chunk):
            rows = array[start:start + chunk]
            if name == "slots":
                rows[:] = np.argsort(rng.random((len(rows), header.num_classes)), axis=1)[:, : rows.shape[1]]
            elif name in ("coverage", "seen"):
                rows[:] = 1
            else:
                rows[:] = rng.random(rows.shape, dtype=np.float32).astype(rows.dtype)
        array.flush()
        del array
    return time.perf_counter() - started


def drop_cache(folder: Path) -> None:
    """Evict the bank's pages from the page cache (only these files; pages still mapped are not evicted, so
    every mapping of the bank must be closed first), to time reads from disk."""
    for path in folder.glob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def make_batch(gen: torch.Generator, bank: SCLBank, size: int) -> dict:
    header = bank.header
    rows = torch.randperm(header.num_rows, generator=gen)[:size]
    corner = torch.rand(size, 2, generator=gen) * 0.5
    side = 0.5 + 0.5 * torch.rand(size, 1, generator=gen)
    return dict(
        rows=rows, boxes=torch.cat([corner, (corner + side).clamp(max=1.0)], 1),
        flips=torch.rand(size, generator=gen) < 0.5, probs=torch.rand(size, header.num_classes, generator=gen),
        maps=torch.rand(size, header.num_classes, 14, 14, generator=gen).half(),
        labels=torch.randint(0, header.num_classes, (size,), generator=gen),
    )


def step(bank: SCLBank, batch: dict, device: str | None = None) -> tuple[float, float, float]:
    """One writer step: read this batch's rows (predictions + spatial targets), then update them.

    Returns wall seconds of the read and of the update, and the CPU seconds of the whole step on this thread
    (what the step costs on an uncontended core: a shared machine inflates wall time, not CPU time)."""
    started, cpu = time.perf_counter(), time.thread_time()
    bank.read_predictions(batch["rows"])
    bank.read_spatial(batch["rows"], batch["boxes"], batch["flips"], (14, 14), device=device)
    read = time.perf_counter()
    bank.update(batch["rows"], batch["probs"], 0.8, boxes=batch["boxes"], flips=batch["flips"], map_probs=batch["maps"],
                labels=batch["labels"])
    return read - started, time.perf_counter() - read, time.thread_time() - cpu


def throughput(bank: SCLBank, repeats: int, seed: int = 1, device: str | None = None) -> list[dict]:
    """Interleaved over batch sizes, so that load changes of a shared machine hit all of them alike."""
    gen = torch.Generator().manual_seed(seed)
    step(bank, make_batch(gen, bank, 8))  # the first write after a clean point sets the dirty flag (fsync)
    times: dict[int, list[tuple[float, float, float]]] = {size: [] for size in BATCHES}
    for _ in range(repeats):
        for size in BATCHES:
            times[size].append(step(bank, make_batch(gen, bank, size), device))
    rows = []
    for size in BATCHES:
        total = [r + u for r, u, _ in times[size]]
        cpu = statistics.median(c for _, _, c in times[size])
        rows.append({
            "batch": size, "median_ms": round(1e3 * statistics.median(total), 2), "best_ms": round(1e3 * min(total), 2),
            "read_median_ms": round(1e3 * statistics.median(r for r, _, _ in times[size]), 2),
            "update_median_ms": round(1e3 * statistics.median(u for _, u, _ in times[size]), 2),
            "cpu_median_ms": round(1e3 * cpu, 2), "rows_per_cpu_s": round(size / cpu),
            "rows_per_s_median": round(size / statistics.median(total)), "rows_per_s_best": round(size / min(total)),
        })
    return rows


def epoch_pass(bank: SCLBank, size: int = 64, seed: int = 2) -> dict:
    """Every row once in random order, as an epoch does: realistic locality, and RSS once all pages were touched."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(bank.header.num_rows, generator=gen)
    template = make_batch(gen, bank, size)
    started, cpu = time.perf_counter(), time.thread_time()
    for start in range(0, len(order) - size + 1, size):
        step(bank, dict(template, rows=order[start:start + size]))
    seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
    rows = len(order) // size * size
    return {"rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds),
            "cpu_seconds": round(cpu, 1), "rows_per_cpu_s": round(rows / cpu)}


def dense_coco(folder: Path, repeats: int, quick: bool, scale: float = 1.0) -> dict:
    header = BankHeader(with_heatmaps=True, dataset_fingerprint="bench", config_fingerprint="bench",
                        **dict(COCO, num_rows=int(COCO["num_rows"] * scale)))
    result: dict = {"bank_gb": round(header_nbytes(header) / 1e9, 3)}
    SCLBank.create(folder, header)
    result["fill_s"] = round(fill(folder, header), 1)
    base = memory()
    bank = SCLBank(folder, header, writable=True)
    result["warm"] = throughput(bank, repeats)
    result["memory_after_batches"] = growth(memory(), base)
    bank.flush()
    del bank
    drop_cache(folder)
    bank = SCLBank(folder, header, writable=True, prefetch=False)
    result["cold_random"] = throughput(bank, 2, seed=3)
    bank.flush()
    del bank
    drop_cache(folder)
    started = time.perf_counter()
    buffer = bytearray(64 << 20)
    for path in folder.glob("*.npy"):  # what SCLBank.prefetch asks the kernel for, done here synchronously
        with open(path, "rb") as f:
            while f.readinto(buffer):
                pass
    result["sequential_prefetch_s"] = round(time.perf_counter() - started, 1)
    bank = SCLBank(folder, header, writable=True)
    base = memory()
    if not quick:
        result["epoch"] = epoch_pass(bank)
        result["memory_after_epoch"] = growth(memory(), base)
    bank.flush()
    bank.release_pages()  # what mark() does at every checkpoint
    result["memory_after_release"] = growth(memory(), base)
    result["snapshot"] = snapshots(bank, folder.parent / "checkpoints")
    del bank
    return result


def copy_file_range(source: Path, target: Path) -> None:
    """The other in-kernel copy, for comparison with shutil.copyfile (which SCLBank snapshots use)."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        remaining = os.fstat(src.fileno()).st_size
        while remaining > 0:
            remaining -= os.copy_file_range(src.fileno(), dst.fileno(), min(remaining, 1 << 30))


def fsync_tree(folder: Path) -> None:
    """fsync this snapshot's own files (os.sync would also flush every other process's writes)."""
    for path in [folder] if folder.is_file() else folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def timed(action, written: Path) -> tuple[float, float]:
    """Seconds until `action` returns (what blocks training) and until its files are on disk."""
    started = time.perf_counter()
    action()
    returned = time.perf_counter() - started
    fsync_tree(written)
    return returned, time.perf_counter() - started


def snapshots(bank: SCLBank, root: Path, repeats: int = 3) -> dict:
    """Full copy (two ways) vs the delta of the rows written since the last checkpoint, and the restores.

    Interleaved repeats; each checkpoint folder is deleted after its timing. Deltas of 5/10/25 % of the rows
    are checkpoints every 20/10/4 steps per epoch-worth of rows."""
    root.mkdir(parents=True, exist_ok=True)
    fsync_tree(bank.folder)
    times: dict[str, list[tuple[float, float]]] = {}
    rng = np.random.default_rng(0)
    bank.mark(epoch=1.0, global_step=1)
    base = save_snapshot(bank, root / "checkpoint-base", None)
    fsync_tree(root / "checkpoint-base")
    for _ in range(repeats):
        for name, copy in (("os.copy_file_range", copy_file_range), ("shutil.copyfile (sendfile)", shutil.copyfile)):
            target = root / "heatmaps-copy.npy"
            times.setdefault(f"heatmaps.npy alone, {name}", []).append(
                timed(lambda c=copy, t=target: c(bank.folder / "heatmaps.npy", t), target))
            target.unlink()
        folder = root / "checkpoint-full"
        times.setdefault("full snapshot (new base)", []).append(
            timed(lambda f=folder: save_snapshot(bank, f, None), folder))
        shutil.rmtree(folder)
        for fraction in (0.05, 0.10, 0.25):
            bank.written_rows[rng.choice(bank.header.num_rows, int(fraction * bank.header.num_rows), replace=False)] = True
            folder = root / "checkpoint-delta"
            times.setdefault(f"delta snapshot, {fraction:.0%} of rows", []).append(
                timed(lambda f=folder: save_snapshot(bank, f, base), folder))
            shutil.rmtree(folder)
    out = {name: {"return_s": round(statistics.median(r for r, _ in v), 2),
                  "on_disk_s": round(statistics.median(d for _, d in v), 2)} for name, v in times.items()}
    bank.written_rows[rng.choice(bank.header.num_rows, bank.header.num_rows // 10, replace=False)] = True
    second = save_snapshot(bank, root / "checkpoint-2", base)
    bank.written_rows[rng.choice(bank.header.num_rows, bank.header.num_rows // 10, replace=False)] = True
    save_snapshot(bank, root / "checkpoint-3", second)
    out["delta_10pct_mb"] = round(sum(p.stat().st_size for p in (root / "checkpoint-2/scl_bank").glob("delta-*")) / 1e6, 1)
    out["restore (base + 2 deltas of 10 %)"] = {"return_s": round(timed(
        lambda: restore_snapshot(root / "checkpoint-3", root / "restored", bank.header), root / "restored")[0], 2)}
    shutil.rmtree(root)
    return out


def sparse_imagenet(folder: Path, repeats: int, scale: float = 1.0) -> dict:
    header = BankHeader(with_heatmaps=True, dataset_fingerprint="bench", config_fingerprint="bench", layout="sparse",
                        top_k=5, **IMAGENET)
    full = header_nbytes(header)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    disk_scale = 1.0 if full < 0.5 * free else 0.5 * free / full
    reason = "short disk" if disk_scale < scale else "--scale"
    scale = min(scale, disk_scale)
    header.num_rows = int(IMAGENET["num_rows"] * scale)
    result: dict = {"bank_gb_full_size": round(full / 1e9, 2), "rows": header.num_rows,
                    "scaled_down": scale < 1.0, "scale": round(scale, 4), "reason": reason if scale < 1.0 else "", "bank_gb": round(header_nbytes(header) / 1e9, 2)}
    SCLBank.create(folder, header)
    result["fill_s"] = round(fill(folder, header), 1)
    base = memory()
    bank = open_bank(folder, header, writable=True, create=False)
    result["warm"] = throughput(bank, repeats)
    result["memory_after_batches"] = growth(memory(), base)
    # CPU-side work when the trainer builds the dense targets on a GPU: "meta" tensors allocate nothing
    result["warm_targets_elsewhere"] = throughput(bank, repeats, seed=4, device="meta")
    del bank
    return result


# --------------------------------------------------------------------------- barrier
def barrier_cost(count: int = 300) -> dict:
    """Latency of the per-step barrier (gloo, 2 processes on this machine), in microseconds."""
    code = (
        "import os, time, torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        f"[dist.barrier() for _ in range(20)]\nt = time.perf_counter()\n[dist.barrier() for _ in range({count})]\n"
        f"print((time.perf_counter() - t) / {count} * 1e6) if dist.get_rank() == 0 else None\n"
        "dist.destroy_process_group()\n"
    )
    torchrun = str(Path(os.sys.executable).with_name("torchrun"))
    done = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29571", "--no-python",
                           os.sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        return {"gloo_2_processes_us": round(float(done.stdout.strip().splitlines()[-1]), 1)}
    except (ValueError, IndexError):
        return {"error": done.stderr[-500:]}


# --------------------------------------------------------------------------- report
def table(rows: list[dict]) -> list[str]:
    lines = ["| batch | CPU ms (median) | rows per CPU-second | wall ms median (read + update) | wall best | "
             "rows/s wall median | rows/s wall best |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['cpu_median_ms']} | {r['rows_per_cpu_s']:,} | {r['median_ms']} "
                     f"({r['read_median_ms']} + {r['update_median_ms']}) | {r['best_ms']} | "
                     f"{r['rows_per_s_median']:,} | {r['rows_per_s_best']:,} |")
    return lines


def report(result: dict) -> str:
    m, coco, sparse, snap = result["machine"], result["dense_coco"], result["sparse_imagenet"], result["dense_coco"]["snapshot"]
    lines = [
        "# Heatmap bank I/O", "",
        f"Machine: {m['cpu']}, {m['usable_cpus']} usable CPU(s), RAM {m['ram_total']} ({m['ram_available']} available), "
        f"{m['disk_free_gb']} GB free on {m['filesystem']}; {m['platform']}; Python {m['python']}, numpy {m['numpy']}, "
        f"torch {m['torch']}, torchvision {m['torchvision']}, transformers {m['transformers']}, accelerate "
        f"{m['accelerate']}; torch threads {m['torch_threads']}. Load average {m['load_average_start']} at the start, "
        f"{result['load_average_end']} at the end (the machine is shared). Generated {result['generated']}.", "",
        f"## Dense COCO bank: 82,081 × 80 × 14 × 14 fp16 ({coco['bank_gb']} GB), random rows, page cache warm", "",
        *table(coco["warm"]), "",
        "Targets: ≥ 10,000 rows/s and a batch of 64 under 7 ms on one CPU process. CPU ms is the step's CPU time on "
        "its thread (the cost on an uncontended core); wall times include waiting for the shared CPUs.", "",
        "Cold: the bank's pages evicted from the page cache first, no prefetch (every row a disk read):", "",
        *table(coco["cold_random"]), "",
        f"Reading the whole bank sequentially into the page cache instead (what SCLBank.prefetch asks the kernel "
        f"for at open): {coco['sequential_prefetch_s']} s.", "",
    ]
    if "epoch" in coco:
        e = coco["epoch"]
        lines += [f"One epoch (every row once, random order, batches of 64): {e['rows']:,} rows in {e['seconds']} s = "
                  f"{e['rows_per_s']:,} rows/s wall; {e['cpu_seconds']} CPU-seconds = {e['rows_per_cpu_s']:,} rows per "
                  "CPU-second.", ""]
    lines += ["Resident memory growth (MB) over the baseline taken after the bank was filled:", "",
              "| after | VmRSS | RssAnon | RssFile |", "|---|---:|---:|---:|"]
    for key in ("memory_after_batches", "memory_after_epoch", "memory_after_release"):
        if key in coco:
            g = coco[key]
            lines.append(f"| {key.removeprefix('memory_after_')} | {g['VmRSS']} | {g['RssAnon']} | {g['RssFile']} |")
    lines += ["", "## Checkpoint snapshot of the COCO bank (median of interleaved repeats)", "",
              "| operation | seconds until it returns | seconds until its files are on disk (fsync) |",
              "|---|---:|---:|"]
    lines += [f"| {k} | {v['return_s']} | {v.get('on_disk_s', '')} |" for k, v in snap.items() if isinstance(v, dict)]
    lines += ["", f"A delta of 10 % of the rows: {snap['delta_10pct_mb']} MB."]
    lines += ["", f"## Sparse ImageNet bank: {sparse['rows']:,} × 1000 classes, k = 5 ({sparse['bank_gb']} GB"
              f"{', scaled down: ' + sparse['reason'] if sparse['scaled_down'] else ''}; full size {sparse['bank_gb_full_size']} GB)",
              "", *table(sparse["warm"]), "",
              "Targets built on the CPU (`device=None`, CPU training): filling the dense (B, 1000, 14, 14) target "
              "tensor is most of the read; with `device=` a GPU the trainer builds it there. The CPU-side work "
              "of that case (measured with device='meta', which allocates nothing):", "",
              *table(sparse["warm_targets_elsewhere"]), "",
              f"Memory growth after the batches (MB): {sparse['memory_after_batches']}.", "",
              f"## Per-step barrier: {result['barrier']}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=None, help="where the temporary banks go (default: the system temp dir)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no epoch pass")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real row counts (smoke tests)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats = 4 if args.quick else args.repeats
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bank_io-") as tmp:
        root = Path(tmp)
        result = {"machine": machine(root), "generated": datetime.now(UTC).isoformat(timespec="seconds")}
        result["dense_coco"] = dense_coco(root / "coco" / "bank", repeats, args.quick, args.scale)
        shutil.rmtree(root / "coco")
        result["sparse_imagenet"] = sparse_imagenet(root / "imagenet" / "bank", repeats, args.scale)
        shutil.rmtree(root / "imagenet")
    result["barrier"] = barrier_cost()
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    RESULTS_DIR.mkdir(exist_ok=True)
    if args.scale == 1.0:
        (RESULTS_DIR / "bank_io.json").write_text(json.dumps(result, indent=2))
        (RESULTS_DIR / "bank_io.md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
