"""Where each backbone's class-map cells are centred: the stated CellGrid against the input-gradient centroid.

For every model, the cells (i, i) of the diagonal: the centroid (x and y) of the input gradient of the cell's
summed class maps (scl_hf.receptive.gradient_centroids, |gradient| above a quarter of its peak), over
random initialisations and random N(0, 1) inputs, at ImageNet-like view sizes. The offset of a cell is its
centroid minus (i + 0.5)·stride, the old assumption; the table gives the mean over the inner cells (a
quarter of the cells on each side, at least one, are left out: the image border cuts their gradient and pulls
the centroid inwards, for efficientnet's squeeze-excitation up to 3 cells of 14) and the worst inner cell.
No pretrained weights can be downloaded here: these are random initialisations.

Run:  PYTHONPATH=. .venv/bin/python benchmarks/cell_centres.py [--seeds 2] [--only resnet50,vit_tiny]
(--only updates those rows of the last table.) Writes benchmarks/results/cell_centres.json and benchmarks/results/cell_centres.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from scl_hf.models import attach_class_maps, create_model
from scl_hf.receptive import gradient_centroids

RESULTS_DIR = Path(__file__).resolve().parent / "results"


WIDE_REACH = 2  # models whose squeeze-excitation reaches the whole image: this many times the seeds (noisier)


def timm(name: str, **kwargs):
    return lambda: create_model(name, num_labels=10, **kwargs)


# label → (family, model factory, view side[, seed multiplier])
MODELS = {
    "resnet50": ("resnet", timm("resnet50"), 448),
    "resnet18": ("resnet", timm("resnet18"), 224),
    "resnet10t (timm init)": ("resnet-d", timm("resnet10t"), 224),
    "resnet10t (live residuals)": ("resnet-d", timm("resnet10t", zero_init_last=False), 224),
    # squeeze-excitation reaches the whole image: a wider view keeps more cells clear of the border's pull
    "efficientnet_b0": ("efficientnet", timm("efficientnet_b0"), 448, WIDE_REACH),
    "tf_efficientnet_b0": ("efficientnet (TF SAME)", timm("tf_efficientnet_b0"), 448, WIDE_REACH),
    "regnetx_002": ("regnet", timm("regnetx_002"), 224),
    "convnext_atto": ("convnext", timm("convnext_atto"), 224),
    "vit_tiny_patch16_224": ("vit", timm("vit_tiny_patch16_224"), 224),
    "swin_tiny_patch4_window7_224": ("swin", timm("swin_tiny_patch4_window7_224"), 224),
    "transformers ResNet (resnet-18 layout)": ("resnet (transformers)", lambda: ResNetForImageClassification(
        ResNetConfig(hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic", num_labels=10)), 224),
    "transformers ConvNext (tiny, 1 block/stage)": ("convnext (transformers)", lambda: ConvNextForImageClassification(
        ConvNextConfig(depths=[1, 1, 1, 1], num_labels=10)), 224),
    "transformers ViT (4 layers)": ("vit (transformers)", lambda: ViTForImageClassification(
        ViTConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768, num_labels=10)),
        224),
}


def measure(factory, side: int, seeds: int) -> dict:
    total, grid, stated = None, None, None
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = factory()
        hook = attach_class_maps(model)
        centroids, grid = gradient_centroids(model, hook, side, trials=1, seed=seed, peak=0.25)
        hook.remove()
        total = centroids if total is None else total + centroids
        stated = hook.grid
    centroids = total / seeds
    stride = side / grid[1]
    offsets_px = centroids - (torch.arange(len(centroids), dtype=torch.float64)[:, None] + 0.5) * stride
    margin = max(1, len(centroids) // 4)  # border cells are pulled inwards (for efficientnet up to 3 of 14)
    inner = offsets_px[margin:-margin]
    return {
        "seeds": seeds,
        "view_px": side,
        "cells": list(grid),
        "inner_cells": [margin, len(centroids) - margin - 1],
        "stride_px": stride,
        "stated_offset_px": stated.offset_px,
        "measured_offset_px": [round(v, 2) for v in inner.mean(0).tolist()],  # x, y
        "inner_cell_spread_px": [round(v, 2) for v in inner.std(0).tolist()],
        "worst_inner_error_px": round(float((inner - stated.offset_px).abs().max()), 2),
        "centroids_x_px": [round(v, 1) for v in centroids[:, 0].tolist()],
    }


def markdown(results: dict, meta: dict) -> str:
    lines = [
        "# Where class-map cells are centred (input-gradient centroid)",
        "",
        f"{meta['date']}, {meta['machine']}, torch {meta['torch']}, timm {meta['timm']}; `seeds` random "
        "initialisations × 1 random input each; offsets in pixels of the view, relative to the old assumption "
        "(i + 0.5)·stride; measured = mean over the inner diagonal cells (x, y; a quarter of the cells, at least "
        "one, left out on each side); spread = their std.",
        "",
        "| model | family | view | cells | stride | seeds | stated offset | measured x / y | spread x / y | worst inner |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in results.items():
        mx, my = row["measured_offset_px"]
        sx, sy = row["inner_cell_spread_px"]
        lines.append(
            f"| {label} | {row['family']} | {row['view_px']} | {row['cells'][1]} | {row['stride_px']:g} | "
            f"{row['seeds']} | {row['stated_offset_px']:+.1f} | {mx:+.1f} / {my:+.1f} | {sx:.1f} / {sy:.1f} | "
            f"{row['worst_inner_error_px']:.1f} |"
        )
    if "resnet50" in results:
        xs = results["resnet50"]["centroids_x_px"]
        lines += ["", f"resnet50 at 448 px, x centroid of cells 0 / 7 / 13: {xs[0]} / {xs[7]} / {xs[13]} px "
                  "(old assumption 16 / 240 / 432, stated 0.5 / 224.5 / 416.5)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="random initialisations per model (efficientnets: twice)")
    parser.add_argument("--only", default="", help="comma-separated substrings of model labels")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wanted = [w for w in args.only.split(",") if w]
    results = {}
    for label, (family, factory, side, *multiplier) in MODELS.items():
        if wanted and not any(w in label for w in wanted):
            continue
        start = time.perf_counter()
        results[label] = {"family": family, **measure(factory, side, args.seeds * (multiplier or [1])[0])}
        results[label]["seconds"] = round(time.perf_counter() - start, 1)
        row = results[label]
        print(f"{label:45s} stated {row['stated_offset_px']:+6.1f}  measured {row['measured_offset_px']}  "
              f"worst {row['worst_inner_error_px']:5.1f}  ({row['seconds']} s)", flush=True)
    import timm as timm_module

    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "timm": timm_module.__version__,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    previous = RESULTS_DIR / "cell_centres.json"
    if wanted and previous.exists():  # a partial run updates its rows of the last full table
        kept = json.loads(previous.read_text())["results"]
        results = {label: results.get(label, kept.get(label)) for label in MODELS if label in results or label in kept}
    (RESULTS_DIR / "cell_centres.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    (RESULTS_DIR / "cell_centres.md").write_text(markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
