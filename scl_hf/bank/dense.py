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
        device: torch.device | str | None = None, cache: dict | None = None, cell_offset: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored heatmaps cut under each view's crop: targets (B, C, h, w) and weights (B, h, w), on `device`
        (default: CPU). The rows travel to the device (pinned, non-blocking) and are cut there. `cell_offset`:
        where the model's cells are centred (`ClassMapHook.grid.offset_cells`, see geometry.py)."""
        heat, coverage = self.rows_on(device, indices, "heatmaps", "coverage", cache=cache)
        boxes, flips = boxes.to(heat.device, non_blocking=True), flips.to(heat.device, non_blocking=True)
        return spatial_targets(heat, coverage, boxes, flips, out_size, cell_offset)

    def rows_on(self, device: torch.device | str | None, indices: torch.Tensor, *names: str,
                 cache: dict | None = None) -> list[torch.Tensor]:
        """These rows of these arrays as tensors on `device`: through pinned memory when it is a GPU. `cache`
        (a dict for one batch's rows): rows read once serve the step's read and its write."""
        cache = {} if cache is None else cache
        missing = [name for name in names if name not in cache]
        if missing:
            cache.update(rows_to_device(self.host_rows(indices, missing, pin=pins_for(device)), device))
        return [cache[name] for name in names]

    def host_rows(self, indices: torch.Tensor, names, pin: bool = False) -> dict[str, torch.Tensor]:
        """These rows of these arrays read from the memmaps into host tensors (`pin`: page-locked, for a
        non-blocking copy to a GPU): the only part of a read that touches the files, so the read-ahead
        (shared.py) can run it on a thread."""
        idx = indices.cpu().numpy()
        rows = {name: torch.from_numpy(_as_torch_dtype(_take_rows(self.arrays[name], idx))) for name in names}
        return {name: row.pin_memory() for name, row in rows.items()} if pin else rows

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
        cell_offset: float = 0.0,
    ) -> None:
        """EMA update of the rows in `indices` (unique) with this step's probabilities and class maps:
        `new_rows` then `store_rows`, in one process.

        `labels` (the observed class of each row) is only needed by the sparse layout, which always keeps it.
        `epoch` is stamped on the rows (stamps.npy), so that a repeat of a row later in the epoch can be told.
        `cell_offset`: where the model's cells are centred, as for `read_spatial`.
        """
        self._check_writable(indices, mark=False)
        rows = self.new_rows(indices, probs, momentum, boxes, flips, map_probs, heatmap_momentum, labels,
                             cell_offset=cell_offset)
        self.store_rows(indices, rows, epoch)

    @torch.no_grad()
    def new_rows(
        self,
        indices: torch.Tensor,
        probs: torch.Tensor,
        momentum: float,
        boxes: torch.Tensor | None = None,
        flips: torch.Tensor | None = None,
        map_probs: torch.Tensor | None = None,
        heatmap_momentum: float | None = None,
        labels: torch.Tensor | None = None,
        cache: dict | None = None,
        cell_offset: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """The rows' values after this step's update, computed on the device of `probs` and not stored:
        any process can compute them for its own rows (shared.py), and the writer only stores them.

        P̄ ← m·P̄ + (1−m)·p (first observation: p), the count + 1, and the class maps pasted into the heatmaps
        under each crop (geometry.paste_crop), in cache-sized chunks of rows on the CPU."""
        device = probs.device
        old, seen = self.rows_on(device, indices, "predictions", "seen", cache=cache)
        seen = seen.long()
        new = probs.detach().float()
        rows = {"predictions": torch.where((seen == 0)[:, None], new, momentum * old + (1.0 - momentum) * new),
                "seen": (seen + 1).clamp_max(np.iinfo(np.uint16).max).to(torch.int32)}
        if map_probs is not None and self.heatmaps is not None:
            rows.update(self._pasted(indices, boxes, flips, map_probs.detach(),
                                     momentum if heatmap_momentum is None else heatmap_momentum, cache,
                                     cell_offset))
        return rows

    def _pasted(self, indices, boxes, flips, maps, momentum, cache=None, cell_offset=0.0) -> dict[str, torch.Tensor]:
        heat, coverage = self.rows_on(maps.device, indices, "heatmaps", "coverage", cache=cache)
        boxes, flips = boxes.to(maps.device), flips.to(maps.device)
        step = UPDATE_CHUNK if maps.device.type == "cpu" else len(indices)  # 128 rows at once cost 2.3x 64 on a CPU
        pieces = [paste_crop(heat[i:i + step], coverage[i:i + step], maps[i:i + step], boxes[i:i + step],
                             flips[i:i + step].bool(), momentum, cell_offset=cell_offset)
                  for i in range(0, len(indices), step)]
        return {"heatmaps": torch.cat([rows.half() for rows, _ in pieces]),  # torch's fp16 conversion: ~20x numpy's
                "coverage": torch.cat([cov for _, cov in pieces])}

    def store_rows(self, indices: torch.Tensor, rows: dict[str, torch.Tensor], epoch: int | None = None) -> None:
        """Write values computed by `new_rows` (of these unique rows) into the files; stamp them with `epoch`."""
        idx = self._check_writable(indices)
        for name, values in rows.items():
            array = self.arrays[name]
            array[idx] = values.cpu().numpy().astype(array.dtype, copy=False)
        if epoch is not None:
            self.arrays["stamps"][idx] = epoch + 1

    def _check_writable(self, indices: torch.Tensor, mark: bool = True) -> np.ndarray:
        """Validate before touching anything, then (`mark`) mark the bank dirty (once per clean period)."""
        if not self.writable:
            raise RuntimeError("this process opened the bank read-only; only the local main process writes")
        idx = indices.cpu().numpy().astype(np.int64, copy=False)
        if len(np.unique(idx)) != len(idx):
            raise ValueError("bank update needs unique row indices; de-duplicate gathered rows first")
        if not mark:
            return idx
        if self._clean:
            self.header.dirty = True
            write_header(self.folder, self.header, durable=True)
            self._clean = False
        self.written_rows[idx] = True
        return idx

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


def pins_for(device: torch.device | str | None) -> bool:
    """Host rows bound for `device` go through pinned memory when it is an accelerator and CUDA is there."""
    return device is not None and torch.device(device).type != "cpu" and torch.cuda.is_available()


def rows_to_device(rows: dict[str, torch.Tensor], device: torch.device | str | None) -> dict[str, torch.Tensor]:
    """Host rows on `device` (non-blocking: from pinned memory the copy overlaps the host's next work)."""
    if device is None or torch.device(device).type == "cpu":
        return rows
    return {name: row.to(device, non_blocking=True) for name, row in rows.items()}


def _take_rows(array: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """array[idx] read in ascending row order (memmap locality), returned in the order asked."""
    if len(idx) < 2:
        return array[idx]
    order = np.argsort(idx, kind="stable")
    rows = array[idx[order]]
    out = np.empty_like(rows)
    out[order] = rows
    return out


def _as_torch_dtype(array: np.ndarray) -> np.ndarray:
    """uint16 (counts, stamps) as int32: torch has few uint16 kernels."""
    return array.astype(np.int32) if array.dtype == np.uint16 else array
