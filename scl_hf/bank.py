"""The per-image memory of the consistency losses, kept in memory-mapped files.

Files in one folder (normally `<output_dir>/scl_bank`):
- `predictions.npy`  float32 (N, C): running average of σ(logits) per training image (the CL/EN target);
- `seen.npy`         uint16  (N,):   how many times each image was observed;
- `heatmaps.npy`     float16 (N, C, S, S): running-average class maps in the original image's frame;
- `coverage.npy`     uint8   (N, S, S): how often each bank cell was inside a crop (saturates at 255);
- `header.json`      shape, dtypes and fingerprints of the training set and config, last step written.

A bank is only ever reused for the data and config it was built for: `open_bank` compares the header's
fingerprints and refuses a mismatch with a message that says what differs. Rows are addressed by the
training set's row position. Nothing here knows about losses; `gather_unique` is the only piece that
knows about processes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .geometry import paste_crop, spatial_targets

BANK_FORMAT_VERSION = 1
HEADER_NAME = "header.json"


class BankMismatchError(ValueError):
    """The bank on disk belongs to another dataset, config or layout."""


@dataclass
class BankHeader:
    num_rows: int
    num_classes: int
    size: int
    with_heatmaps: bool
    dataset_fingerprint: str
    config_fingerprint: str
    format_version: int = BANK_FORMAT_VERSION
    heatmap_dtype: str = "float16"
    epoch: float = 0.0
    global_step: int = 0
    extra: dict = field(default_factory=dict)

    def layout_key(self) -> dict:
        keys = ("num_rows", "num_classes", "size", "with_heatmaps", "format_version", "heatmap_dtype")
        return {k: getattr(self, k) for k in keys}


def bank_nbytes(num_rows: int, num_classes: int, size: int, with_heatmaps: bool = True) -> int:
    """Disk size of a dense bank: N·C·4 + N·2 (+ N·C·S²·2 + N·S² with heatmaps)."""
    total = num_rows * num_classes * 4 + num_rows * 2
    if with_heatmaps:
        total += num_rows * num_classes * size * size * 2 + num_rows * size * size
    return total


class SCLBank:
    """Per-image running averages of predictions and class heatmaps, backed by np.memmap files."""

    def __init__(self, folder: str | os.PathLike, header: BankHeader, writable: bool):
        self.folder = Path(folder)
        self.header = header
        self.writable = writable
        mode = "r+" if writable else "r"
        self.predictions = np.lib.format.open_memmap(self.folder / "predictions.npy", mode=mode)
        self.seen = np.lib.format.open_memmap(self.folder / "seen.npy", mode=mode)
        self.heatmaps = self.coverage = None
        if header.with_heatmaps:
            self.heatmaps = np.lib.format.open_memmap(self.folder / "heatmaps.npy", mode=mode)
            self.coverage = np.lib.format.open_memmap(self.folder / "coverage.npy", mode=mode)

    # ----------------------------------------------------------------- creation / opening
    @classmethod
    def create(cls, folder: str | os.PathLike, header: BankHeader) -> SCLBank:
        """Fresh zero-filled files (sparse on disk until written)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        n, c, s = header.num_rows, header.num_classes, header.size
        arrays = {"predictions.npy": ((n, c), np.float32), "seen.npy": ((n,), np.uint16)}
        if header.with_heatmaps:
            arrays |= {"heatmaps.npy": ((n, c, s, s), np.float16), "coverage.npy": ((n, s, s), np.uint8)}
        for name, (shape, dtype) in arrays.items():
            memmap = np.lib.format.open_memmap(folder / name, mode="w+", dtype=dtype, shape=shape)
            memmap.flush()
            del memmap
        write_header(folder, header)
        return cls(folder, header, writable=True)

    # ----------------------------------------------------------------- reading
    def read_predictions(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Running-average probabilities (B, C) and observation counts (B,) of these rows."""
        idx = indices.cpu().numpy()
        return torch.from_numpy(self.predictions[idx]), torch.from_numpy(self.seen[idx].astype(np.int64))

    def read_spatial(
        self, indices: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, out_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored heatmaps cut under each view's crop: targets (B, C, h, w) and weights (B, h, w)."""
        idx = indices.cpu().numpy()
        heat = torch.from_numpy(self.heatmaps[idx].astype(np.float32))
        coverage = torch.from_numpy(self.coverage[idx])
        return spatial_targets(heat, coverage, boxes.cpu(), flips.cpu(), out_size)

    # ----------------------------------------------------------------- writing
    def update(
        self,
        indices: torch.Tensor,
        probs: torch.Tensor,
        momentum: float,
        boxes: torch.Tensor | None = None,
        flips: torch.Tensor | None = None,
        map_probs: torch.Tensor | None = None,
        heatmap_momentum: float | None = None,
    ) -> None:
        """EMA update of the rows in `indices` (unique) with this step's probabilities and class maps."""
        if not self.writable:
            raise RuntimeError("this process opened the bank read-only; only the local main process writes")
        idx = indices.cpu().numpy()
        if len(np.unique(idx)) != len(idx):
            raise ValueError("bank update needs unique row indices; de-duplicate gathered rows first")
        old = self.predictions[idx]
        seen = self.seen[idx]
        new = probs.detach().float().cpu().numpy()
        blended = np.where((seen == 0)[:, None], new, momentum * old + (1.0 - momentum) * new)
        self.predictions[idx] = blended.astype(np.float32)
        self.seen[idx] = np.minimum(seen.astype(np.int64) + 1, np.iinfo(np.uint16).max).astype(np.uint16)
        if map_probs is not None and self.heatmaps is not None:
            rows, coverage = paste_crop(
                torch.from_numpy(self.heatmaps[idx]),
                torch.from_numpy(self.coverage[idx]),
                map_probs.detach().cpu(),
                boxes.cpu(),
                flips.cpu(),
                momentum if heatmap_momentum is None else heatmap_momentum,
            )
            self.heatmaps[idx] = rows.numpy().astype(np.float16)
            self.coverage[idx] = coverage.numpy()

    def mark(self, epoch: float, global_step: int) -> None:
        """Flush the maps and record how far training got (the header is what a resume checks)."""
        self.flush()
        self.header.epoch, self.header.global_step = float(epoch), int(global_step)
        write_header(self.folder, self.header)

    def flush(self) -> None:
        for array in (self.predictions, self.seen, self.heatmaps, self.coverage):
            if array is not None and self.writable:
                array.flush()


def write_header(folder: Path, header: BankHeader) -> None:
    """Atomic header write: a crash leaves the old header or the new one, never half of one."""
    tmp = folder / (HEADER_NAME + ".tmp")
    tmp.write_text(json.dumps(asdict(header), indent=2))
    os.replace(tmp, folder / HEADER_NAME)


def read_header(folder: str | os.PathLike) -> BankHeader:
    path = Path(folder) / HEADER_NAME
    try:
        return BankHeader(**json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise BankMismatchError(
            f"cannot read the bank header {path} ({err}). The bank folder is incomplete or damaged: delete "
            f"{Path(folder)} to start a new bank, or resume from the last checkpoint, which carries a copy."
        ) from err


def check_compatible(found: BankHeader, expected: BankHeader, folder: Path) -> None:
    """Refuse a bank built for other data, another config or another layout, saying which and why."""
    problems = []
    if found.layout_key() != expected.layout_key():
        problems.append(f"layout {found.layout_key()} but this run needs {expected.layout_key()}")
    if found.dataset_fingerprint != expected.dataset_fingerprint:
        problems.append(
            f"built for training set {found.dataset_fingerprint}, this run trains on {expected.dataset_fingerprint}"
        )
    if found.config_fingerprint != expected.config_fingerprint:
        problems.append(f"built with config {found.config_fingerprint}, this run has {expected.config_fingerprint}")
    if problems:
        raise BankMismatchError(
            f"the bank in {folder} belongs to another run: " + "; ".join(problems) + ". It is never reused "
            "silently: pick another output_dir, or delete that folder to start a fresh bank."
        )


def open_bank(folder: str | os.PathLike, expected: BankHeader, writable: bool, create: bool) -> SCLBank:
    """Create (when asked and allowed) or open a bank, checking that it belongs to this run."""
    folder = Path(folder)
    if create:
        if (folder / HEADER_NAME).exists():
            check_compatible(read_header(folder), expected, folder)
        return SCLBank.create(folder, expected)
    found = read_header(folder)
    check_compatible(found, expected, folder)
    return SCLBank(folder, found, writable=writable)


def first_occurrence(indices: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct index (padding repeats rows across processes)."""
    _, inverse = torch.unique(indices, return_inverse=True)
    positions = torch.arange(len(indices), device=indices.device)
    first = torch.full((int(inverse.max()) + 1 if len(indices) else 0,), len(indices), device=indices.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return first
