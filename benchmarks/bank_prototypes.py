"""Is there a cheaper bank read/update than scl_hf's? Prototypes timed against the current code.

Why: issue 7 asks to remove what the spatial term does not need. Each variant here (plain gather instead of
the argsort round trip, one fp32 buffer, no fp16 round trip before blending, rows gathered once for read and
update) is first checked against the current code on identical state, then timed ALTERNATELY with it on
the same inputs; *min* is the least disturbed run, the fairest comparison of intrinsic cost on a shared
machine. Also timed: the bare memmap gather and scatter of the rows — the host-side floor.

Run:  .venv/bin/python benchmarks/bank_prototypes.py          # writes results/bank_prototypes.{json,md}
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import (  # noqa: E402  (benchmarks/ is not a package)
    RESULTS_DIR,
    SETTINGS,
    Setting,
    fill_bank,
    load_average,
    machine_description,
    summarise,
    write_report,
)


def bank_prototypes(setting: Setting, workdir: Path, repeats: int, log: Callable[[str], None]) -> dict:
    """Time the current bank read/update against cheaper variants, alternately, on identical inputs.

    Each variant is checked against the current code before it is timed. Also timed: the bare memmap gather
    and scatter of the rows — the host-side floor that remains if RoIAlign and the paste-back ran on a device.
    """
    from torchvision.ops import roi_align

    from scl_hf import geometry
    from scl_hf.bank import BankHeader, SCLBank, first_occurrence
    from scl_hf.transforms import sample_crop_box

    n, c, s, b = setting.bank_rows, setting.num_classes, setting.bank_size, setting.batch_size
    grid = setting.image_size // 32
    bank = SCLBank.create(workdir / "proto_bank", BankHeader(n, c, s, True, "proto", "proto"))
    fill_bank(bank)

    def make_inputs(seed: int) -> tuple[torch.Tensor, ...]:
        local = np.random.default_rng(seed)
        idx = torch.from_numpy(local.choice(n, b, replace=False))
        boxes = [sample_crop_box(local, 640, 480) for _ in range(b)]
        return (
            idx,
            torch.stack([x.as_tensor() for x in boxes]),
            torch.tensor([x.flip for x in boxes]),
            torch.rand(b, c),
            torch.randn(b, c, grid, grid),
        )

    # --- read variants
    def read_current(idx, boxes, flips, *_):
        return bank.read_spatial(idx, boxes, flips, (grid, grid))

    def read_lean(idx, boxes, flips, *_):
        """Plain fancy indexing (no argsort round trip: rows of a page-cached memmap have no locality to win),
        and one fp32 buffer filled in place instead of heat.float() * observed then torch.cat. heat·observed
        == heat in a dense bank: it is zero-filled and paste_crop only writes cells it also marks covered."""
        i = idx.numpy()
        stacked = torch.empty(b, c + 1, s, s)
        stacked[:, :c] = torch.from_numpy(bank.heatmaps[i])
        stacked[:, c] = torch.from_numpy(bank.coverage[i] > 0)
        scale = torch.tensor([s, s, s, s], dtype=torch.float32)
        rois = torch.cat([torch.arange(b, dtype=torch.float32)[:, None], boxes.float() * scale], 1)
        cut = roi_align(
            stacked,
            rois,
            output_size=(grid, grid),
            spatial_scale=1.0,
            sampling_ratio=geometry.ROI_SAMPLING_RATIO,
            aligned=True,
        )
        cut = torch.where(flips.view(-1, 1, 1, 1).bool(), cut.flip(-1), cut)
        summed, weight = cut[:, :-1], cut[:, -1:]
        return (summed / weight.clamp_min(1e-6)).clamp(0.0, 1.0), weight[:, 0]

    # --- update variants
    def update_current(idx, boxes, flips, probs, maps):
        """What SCLTrainer.update_bank + SCLBank.update do in one process."""
        payload_maps = torch.sigmoid(maps).half()
        keep = first_occurrence(idx)
        bank.update(
            idx[keep],
            probs[keep],
            0.8,
            boxes=boxes[keep],
            flips=flips[keep].bool(),
            map_probs=payload_maps[keep],
            heatmap_momentum=0.8,
        )

    def update_lean(idx, boxes, flips, probs, maps, rows=None):
        """One process: no de-dup pass (one sampler: unique rows), fp32 maps (no fp16 round trip), no argsort,
        the rows of this step's read reused when given, fp16 conversion by torch instead of numpy astype."""
        i = idx.numpy()
        heat = torch.from_numpy(bank.heatmaps[i]) if rows is None else rows[0]
        coverage = torch.from_numpy(bank.coverage[i]) if rows is None else rows[1]
        new_rows, new_cov = geometry.paste_crop(heat, coverage, torch.sigmoid(maps), boxes, flips, 0.8)
        bank.heatmaps[i] = new_rows.half().numpy()
        bank.coverage[i] = new_cov.numpy()
        bank._update_predictions(i, probs, 0.8)

    def read_update_current(*a):
        read_current(*a)
        update_current(*a)

    def read_update_lean(*a):
        i = a[0].numpy()
        rows = torch.from_numpy(bank.heatmaps[i]), torch.from_numpy(bank.coverage[i])
        read_lean(*a)  # (reads the rows again; a shared-rows API would save that too)
        update_lean(*a, rows=rows)

    def gather_only(idx, *_):
        i = idx.numpy()
        return bank.heatmaps[i], bank.coverage[i], bank.predictions[i]

    def scatter_only(idx, *_):
        i = idx.numpy()
        bank.heatmaps[i] = bank.heatmaps[i]
        bank.coverage[i] = bank.coverage[i]

    # correctness of the prototypes against the current code, on identical state
    check = make_inputs(0)
    t_cur, w_cur = read_current(*check)
    t_new, w_new = read_lean(*check)
    torch.testing.assert_close(t_new, t_cur, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w_new, w_cur)
    i = check[0].numpy()
    saved = [
        bank.heatmaps[i].copy(),
        bank.coverage[i].copy(),
        bank.predictions[i].copy(),
        bank.seen[i].copy(),
    ]
    update_current(*check)
    after_current = bank.heatmaps[i].astype(np.float32)
    bank.heatmaps[i], bank.coverage[i], bank.predictions[i], bank.seen[i] = saved
    update_lean(*check)
    # the current code rounds the maps to fp16 before blending, the lean one only the result
    max_diff = float(np.abs(bank.heatmaps[i].astype(np.float32) - after_current).max())

    variants: dict[str, Callable[..., object]] = {
        "read: current (argsort gather, heat*observed, cat, RoIAlign)": read_current,
        "read: lean (plain gather, one fp32 buffer, RoIAlign)": read_lean,
        "update: current (de-dup, fp16 maps, argsort gather, paste, numpy astype, scatter)": update_current,
        "update: lean (no de-dup, fp32 maps, plain gather, paste, torch .half(), scatter)": update_lean,
        "read+update: current": read_update_current,
        "read+update: lean, rows gathered once": read_update_lean,
        "floor: memmap gather of the rows only": gather_only,
        "floor: memmap scatter of the rows only": scatter_only,
    }
    inputs = [make_inputs(1000 + r) for r in range(repeats + 3)]
    for r in range(3):  # warm-up: page cache, allocator, first-call costs
        for fn in variants.values():
            fn(*inputs[r])
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
            start = time.perf_counter()
            variants[name](*inputs[3 + r])
            timings[name].append(time.perf_counter() - start)
    summary = {name: {**summarise(v), "median_ms": statistics.median(v) * 1e3} for name, v in timings.items()}
    log("  bank prototypes: " + "; ".join(f"{k} {v['median_ms']:.2f} ms" for k, v in summary.items()))
    return {
        "batch": b,
        "classes": c,
        "bank_size": s,
        "grid": grid,
        "rows": n,
        "repeats": repeats,
        "lean_update_max_abs_diff_vs_current": max_diff,
        "milliseconds": summary,
    }


def markdown_report(report: dict) -> str:
    proto, machine = report["prototypes"], report["machine"]
    lines = [
        "# Bank read/update: current code vs cheaper prototypes",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpus_usable']} usable CPU core(s), torch threads "
        f"{machine['torch_threads']}; load average {report['load_average_start']} → {report['load_average_end']}. "
        f"Generated {report['generated_at']}.",
        "",
        f"Batch {proto['batch']}, {proto['classes']} classes, bank {proto['bank_size']}×{proto['bank_size']}, "
        f"class-map grid {proto['grid']}×{proto['grid']}, {proto['rows']} rows, {proto['repeats']} alternated repeats.",
        "",
        "| variant | median ms | IQR ms | min ms |",
        "|---|---:|---:|---:|",
    ]
    for name, v in proto["milliseconds"].items():
        lines.append(f"| {name} | {v['median_ms']:.2f} | {(v['q3'] - v['q1']) * 1e3:.2f} | {v['min'] * 1e3:.2f} |")
    lines += [
        "",
        f"Lean update vs current, max |Δ| of the stored fp16 heatmaps: {proto['lean_update_max_abs_diff_vs_current']:.2e} "
        "(the current code rounds maps to fp16 before blending).",
        "",
        "*min* is the least disturbed of the alternated runs: on a shared machine 2-thread torch ops are sometimes "
        "descheduled for a whole time slice, which is what the medians' outliers are.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    report = {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine_description(),
              "load_average_start": load_average()}
    with tempfile.TemporaryDirectory(prefix="scl_bank_proto_") as tmp:
        report["prototypes"] = bank_prototypes(SETTINGS["cpu"], Path(tmp), args.repeats, print)
    report["load_average_end"] = load_average()
    write_report(report, markdown_report(report), args.output_dir, "bank_prototypes")


if __name__ == "__main__":
    main()
