"""How long does ``load_coco`` take on annotation files of the real COCO 2014 size, cold and cached?

Writes synthetic ``instances_train2014.json`` / ``instances_val2014.json`` with the real counts
(82,783 train images of which 82,081 annotated, 604,907 annotations; 40,504 val images of which
40,137 annotated, 291,875 annotations), real-looking fields and polygon segmentations (about the
real file sizes), then times: the cold build (parse + index with pycocotools, protocol draws, Arrow
write of train / validation / test), the cached reload in the same process and in a fresh one.
No image files are written: ``load_coco`` stores paths and opens no image unless asked to verify.

Usage: python benchmarks/coco_build.py [--work DIR] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from machine import cpu_name  # benchmarks/machine.py, beside this script

from scl_hf.data.coco import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, load_coco

REAL = {
    "train": {"images": 82_783, "annotated": 82_081, "annotations": 604_907},
    "val": {"images": 40_504, "annotated": 40_137, "annotations": 291_875},
}
RESULTS = Path(__file__).parent / "results"


def _annotation(rng: np.random.Generator, ann_id: int, image_id: int, cat: int, crowd: bool) -> dict:
    x, y = rng.uniform(0, 500, 2).round(2)
    w, h = rng.uniform(5, 200, 2).round(2)
    if crowd:
        seg = {"counts": rng.integers(0, 400, int(rng.integers(20, 200))).tolist(), "size": [480, 640]}
    else:  # COCO polygons: ~30 points on average, 2 decimals
        seg = [rng.uniform(0, 640, 2 * int(rng.integers(4, 56))).round(2).tolist()]
    bbox = [float(x), float(y), float(w), float(h)]
    return {
        "segmentation": seg,
        "area": round(float(w * h) * 0.6, 4),
        "iscrowd": int(crowd),
        "image_id": image_id,
        "bbox": bbox,
        "category_id": cat,
        "id": ann_id,
    }


def write_instances(path: Path, part: str, counts: dict, seed: int) -> None:
    """Stream a COCO instances file of the given size to disk (annotations written in chunks)."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 581_930), counts["images"], replace=False)
    annotated = ids[: counts["annotated"]]
    per_image = 1 + rng.multinomial(
        counts["annotations"] - len(annotated), [1 / len(annotated)] * len(annotated)
    )
    weights = np.r_[10.0, np.ones(79)]  # "person" is by far the most frequent class
    weights /= weights.sum()
    images = [
        {
            "license": 1,
            "file_name": f"COCO_{part}2014_{i:012d}.jpg",
            "coco_url": "",
            "height": 480,
            "width": 640,
            "date_captured": "2013-11-14 16:28:13",
            "flickr_url": "",
            "id": int(i),
        }
        for i in ids
    ]
    cats = [
        {"supercategory": "thing", "id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASS_NAMES)
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"info": {"description": "synthetic, real-size"}, "licenses": [], "images": ')
        f.write(json.dumps(images))
        f.write(', "annotations": [')
        ann_id, chunk, sep = 1, [], ""
        for last, (image_id, n) in enumerate(zip(annotated.tolist(), per_image.tolist()), 1 - len(annotated)):
            classes = rng.choice(80, size=min(n, 1 + rng.poisson(1.9)), replace=False, p=weights)
            for k in range(n):
                cat = COCO_CATEGORY_IDS[int(classes[k % len(classes)])]
                chunk.append(_annotation(rng, ann_id, image_id, cat, rng.random() < 0.009))
                ann_id += 1
            if len(chunk) > 20_000 or last == 0:
                f.write(sep + ", ".join(map(json.dumps, chunk)))
                chunk, sep = [], ", "
        f.write('], "categories": ' + json.dumps(cats) + "}")


def machine() -> dict:
    mem = next((line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")), "0")
    libs = ["datasets", "pyarrow", "numpy", "pycocotools", "Pillow"]
    return {
        "cpu": cpu_name(),
        "logical_cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(mem) / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {lib: version(lib) for lib in libs},
        "note": "shared machine: other developers' jobs were running on the same 2 cores",
    }


def fresh_process_reload(root: Path, cache: Path) -> dict:
    """Reload from the cache in a new interpreter: import time and load time separately."""
    code = (
        "import time; t0 = time.perf_counter(); from scl_hf.data.coco import load_coco; t1 = time.perf_counter();"
        f"d = load_coco({str(root)!r}, cache_dir={str(cache)!r}); t2 = time.perf_counter();"
        "print(t1 - t0, t2 - t1, sum(len(s) for s in d.values()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    imp, load, rows = out.split()
    return {"import_s": round(float(imp), 2), "load_s": round(float(load), 3), "rows": int(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed after)")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the real size (quick trials)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="coco_build_"))
    root, cache = work / "coco", work / "cache"
    sizes = {p: {k: int(v * args.scale) for k, v in c.items()} for p, c in REAL.items()}
    result: dict = {"machine": machine(), "sizes": sizes, "images_on_disk": False}
    try:
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        for seed, part in enumerate(("train", "val")):
            (root / f"{part}2014").mkdir(exist_ok=True)  # empty: images are not opened at build time
            write_instances(root / "annotations" / f"instances_{part}2014.json", part, sizes[part], seed)
        result["generate_s"] = round(time.perf_counter() - t, 1)
        result["annotation_mb"] = {
            p: round(os.path.getsize(root / "annotations" / f"instances_{p}2014.json") / 2**20, 1)
            for p in ("train", "val")
        }
        t = time.perf_counter()
        dd = load_coco(root, cache_dir=str(cache))
        result["cold_build_s"] = round(time.perf_counter() - t, 1)
        result["rows"] = {s: len(ds) for s, ds in dd.items()}
        result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        t = time.perf_counter()
        load_coco(root, cache_dir=str(cache))
        result["cached_reload_same_process_s"] = round(time.perf_counter() - t, 3)
        result["cached_reload_fresh_process"] = fresh_process_reload(root, cache)
        result["cache_mb"] = round(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20, 1)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "coco_build.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "coco_build.md").write_text(markdown(result))
    print(json.dumps(result, indent=2))


def markdown(r: dict) -> str:
    m, fresh = r["machine"], r["cached_reload_fresh_process"]
    rows = r["rows"]
    return "\n".join(
        [
            "# load_coco build time (COCO 2014, real-size synthetic annotation files)",
            "",
            f"Machine: {m['cpu']}, {m['affinity_cores']} cores available, {m['memory_gib']} GiB, Python "
            f"{m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()) + f". {m['note']}.",
            f"Annotation files: train {r['annotation_mb']['train']} MB, val {r['annotation_mb']['val']} MB "
            f"({r['sizes']['train']['annotations']:,} + {r['sizes']['val']['annotations']:,} annotations); "
            "no image files (paths are stored, not opened).",
            "",
            "| step | time |",
            "|---|---|",
            f"| cold build (parse + index both files, draws, Arrow write of 3 splits) | {r['cold_build_s']} s |",
            f"| cached reload, same process | {r['cached_reload_same_process_s']} s |",
            f"| cached reload, fresh process (load only) | {fresh['load_s']} s |",
            f"| fresh process: `import scl_hf.data.coco` | {fresh['import_s']} s |",
            "",
            f"Rows: train {rows['train']:,} / validation {rows['validation']:,} / test {rows['test']:,}. "
            f"Peak RSS during the cold build: {r['peak_rss_gib']} GiB. Arrow cache: {r['cache_mb']} MB.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
