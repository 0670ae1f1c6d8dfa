"""The dense bank layout: every class's heatmap per image, in memory-mapped files (files.py lists them).

`SCLBank` reads rows (running predictions, heatmaps cut under a crop) and writes them (EMA updates, the
paste-back), for one process and with no knowledge of losses or processes: `shared.py` decides who reads,
who writes and when; `sparse.py` derives the top-k layout from it.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import torch

from .files import BankHeader, array_specs, write_header
from .geometry import paste_crop, spatial_targets
from .layouts import create_bank, register_layout

UPDATE_CHUNK = 64  # rows pasted at once: the float32 temporaries of 64 COCO rows (~4 MB each) stay in cache


@register_layout("dense")
class SCLBank:
    """Per-image running averages of predictions and class heatmaps (dense: every class), backed by np.memmap.

    The writer keeps `written_rows`, the rows changed since the last checkpoint snapshot, so that a snapshot
    can store only those (snapshots.py).
    """

    def __init__(self, folder: str | os.PathLike, header: BankHeader, writable: bool, prefetch: bool = True):
        self.folder = Path(folder)
        self.header = header
        self.writable = writable
        mode = "r+" if writable else "r"
        self.arrays = {name: np.lib.format.open_memmap(self.folder / f"{name}.npy", mode=mode)
                       for name in array_specs(header)}
        self.predictions, self.seen = self.arrays["predictions"], self.arrays["seen"]
        self.heatmaps, self.coverage = self.arrays.get("heatmaps"), self.arrays.get("coverage")
        self.written_rows = np.zeros(header.num_rows, dtype=bool) if writable else None
        self._clean = not header.dirty
        if writable and prefetch:
            self.prefetch()

    def prefetch(self) -> None:
        """Ask the kernel to read the files into the page cache now, sequentially (it returns at once).

        Reading random rows of a bank that is not in the page cache costs a disk round trip per row (~5 ms on
        the benchmark's VM disk, docs/bank.md); a sequential read of the whole file is 100s of times cheaper per
        row. Holes of a fresh bank cost nothing."""
        for name in self.arrays:
            fd = os.open(self.folder / f"{name}.npy", os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    # ----------------------------------------------------------------- creation / opening
    @classmethod
    def create(cls, folder: str | os.PathLike, header: BankHeader) -> SCLBank:
        """Fresh zero-filled files of the header's layout (the class follows the header, not `cls`)."""
        return create_bank(folder, header)

    # ----------------------------------------------------------------- reading
    def read_predictions(self, indices: torch.Tensor, with_stamps: bool = False) -> tuple[torch.Tensor, ...]:
        """Running-average probabilities (B, C) and observation counts (B,) of these rows; with `with_stamps`
        also 1 + the epoch of each row's last write (B,) (0: never written)."""
        idx = indices.cpu().numpy()
        out = torch.from_numpy(self.predictions[idx]), torch.from_numpy(self.seen[idx].astype(np.int64))
        return (*out, torch.from_numpy(self.arrays["stamps"][idx].astype(np.int64))) if with_stamps else out

    def read_spatial(
        self, indices: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, out_size: tuple[int, int],
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored heatmaps cut under each view's crop: targets (B, C, h, w) and weights (B, h, w), on `device`
        (default: CPU) — the sparse layout builds its dense targets there."""
        idx = indices.cpu().numpy()
        heat = torch.from_numpy(_take_rows(self.heatmaps, idx))
        coverage = torch.from_numpy(_take_rows(self.coverage, idx))
        targets, weights = spatial_targets(heat, coverage, boxes.cpu(), flips.cpu(), out_size)
        return (targets.to(device), weights.to(device)) if device is not None else (targets, weights)

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
        labels: torch.Tensor | None = None,
        epoch: int | None = None,
    ) -> None:
        """EMA update of the rows in `indices` (unique) with this step's probabilities and class maps.

        `labels` (the observed class of each row) is only needed by the sparse layout, which always keeps it.
        `epoch` is stamped on the rows (stamps.npy), so that a repeat of a row later in the epoch can be told.
        """
        idx = self._check_writable(indices)
        self._update_predictions(idx, probs, momentum, epoch)
        if map_probs is not None and self.heatmaps is not None:
            maps, boxes, flips = map_probs.detach().cpu(), boxes.cpu(), flips.cpu()
            for start in range(0, len(idx), UPDATE_CHUNK):  # cache-sized pieces: 128 rows at once cost 2.3x 64
                part, rows_idx = slice(start, start + UPDATE_CHUNK), idx[start:start + UPDATE_CHUNK]
                rows, coverage = paste_crop(
                    torch.from_numpy(_take_rows(self.heatmaps, rows_idx)),
                    torch.from_numpy(_take_rows(self.coverage, rows_idx)),
                    maps[part], boxes[part], flips[part],
                    momentum if heatmap_momentum is None else heatmap_momentum,
                )
                self.heatmaps[rows_idx] = rows.half().numpy()  # torch converts to fp16 ~20x faster than numpy
                self.coverage[rows_idx] = coverage.numpy()

    def _check_writable(self, indices: torch.Tensor) -> np.ndarray:
        """Validate before touching anything, then mark the bank dirty (once per clean period)."""
        if not self.writable:
            raise RuntimeError("this process opened the bank read-only; only the local main process writes")
        idx = indices.cpu().numpy().astype(np.int64, copy=False)
        if len(np.unique(idx)) != len(idx):
            raise ValueError("bank update needs unique row indices; de-duplicate gathered rows first")
        if self._clean:
            self.header.dirty = True
            write_header(self.folder, self.header, durable=True)
            self._clean = False
        self.written_rows[idx] = True
        return idx

    def _update_predictions(self, idx: np.ndarray, probs: torch.Tensor, momentum: float,
                            epoch: int | None = None) -> np.ndarray:
        """P̄ ← m·P̄ + (1−m)·p (first observation: p); returns the rows' previous observation counts."""
        old = self.predictions[idx]
        seen = self.seen[idx]
        new = probs.detach().float().cpu().numpy()
        blended = np.where((seen == 0)[:, None], new, momentum * old + (1.0 - momentum) * new)
        self.predictions[idx] = blended.astype(np.float32)
        self.seen[idx] = np.minimum(seen.astype(np.int64) + 1, np.iinfo(np.uint16).max).astype(np.uint16)
        if epoch is not None:
            self.arrays["stamps"][idx] = epoch + 1
        return seen

    def mark(self, epoch: float, global_step: int) -> None:
        """Flush the maps and record how far training got (the header is what a resume checks)."""
        self.header.epoch, self.header.global_step = float(epoch), int(global_step)
        self._clean = False  # force the header write below even when nothing changed
        self.flush()
        self.release_pages()

    def release_pages(self) -> None:
        """Unmap the pages this process touched (they stay in the page cache and in the files).

        Touched memmap pages count in the process's RSS as RssFile — on recent kernels a fault maps a whole
        large folio, so a few thousand random rows map most of a COCO-size bank. That is shared, reclaimable
        page cache, not memory the process owns; this only makes RSS-based monitors see it go (docs/bank.md).
        """
        for array in self.arrays.values():
            mapping = getattr(array, "_mmap", None)
            if mapping is not None and hasattr(mapping, "madvise"):
                mapping.madvise(mmap.MADV_DONTNEED)

    def flush(self) -> None:
        """A clean point: data written back (msync), then the header's dirty flag cleared, in that order."""
        if not self.writable:
            return
        for array in self.arrays.values():
            array.flush()
        if not self._clean:
            self.header.dirty = False
            write_header(self.folder, self.header, durable=True)
            self._clean = True


def _take_rows(array: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """array[idx] read in ascending row order (memmap locality), returned in the order asked."""
    if len(idx) < 2:
        return array[idx]
    order = np.argsort(idx, kind="stable")
    rows = array[idx[order]]
    out = np.empty_like(rows)
    out[order] = rows
    return out
