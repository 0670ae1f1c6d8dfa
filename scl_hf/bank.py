"""The per-image memory of the consistency losses, kept in memory-mapped files.

Files in one folder (normally `<output_dir>/scl_bank`, always on node-local disk):
- `predictions.npy`  float32 (N, C): running average of σ(logits) per training image (the CL/EN target);
- `seen.npy`         uint16  (N,):   how many times each image was observed;
- `heatmaps.npy`     float16 (N, C, S, S) dense, or (N, K+1, S, S) sparse: running-average class maps in the
                     original image's frame;
- `slots.npy`        int32   (N, K+1), sparse layout only: the class id held by each heatmap slot (-1: none);
- `coverage.npy`     uint8   (N, S, S): how often each bank cell was inside a crop (saturates at 255);
- `header.json`      shape, layout, fingerprints of the training set and config, last step written, and a
                     `dirty` flag that is set (durably) before the first write after a clean point.

A bank is only ever reused for the data and config it was built for, and never when it may be half
written: `open_bank` compares the header's fingerprints, checks every file's size against the header, and
refuses a dirty bank, each time with a message that says what is wrong and how to recover. Rows are
addressed by the training set's row position. Nothing here knows about losses or processes; see
docs/bank.md for the multi-process rules, the sparse layout and the checkpoint snapshots (bank_snapshot.py).
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .geometry import paste_crop, spatial_targets

BANK_FORMAT_VERSION = 1
HEADER_NAME = "header.json"
LAYOUTS = ("dense", "sparse")
UPDATE_CHUNK = 64  # rows pasted at once: the float32 temporaries of 64 COCO rows (~4 MB each) stay in cache
RECOVERY = (
    "Resume from the last checkpoint — trainer.train(resume_from_checkpoint=True) restores the bank from the "
    "copy every checkpoint carries — or delete {folder} to start the bank over (a fresh training run)."
)


class BankMismatchError(ValueError):
    """The bank on disk belongs to another dataset, config or layout."""


class BankCorruptError(BankMismatchError):
    """The bank on disk was being written when its run stopped, or its files are truncated or missing."""


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
    layout: str = "dense"
    top_k: int = 0
    dirty: bool = False

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"bank layout must be one of {LAYOUTS}, got {self.layout!r}")
        if not self.with_heatmaps or self.layout == "dense":  # the layout only concerns the heatmaps
            self.layout, self.top_k = "dense", 0

    def layout_key(self) -> dict:
        keys = ("num_rows", "num_classes", "size", "with_heatmaps", "format_version", "heatmap_dtype", "layout",
                "top_k")
        return {k: getattr(self, k) for k in keys}

    @property
    def num_slots(self) -> int:
        """Heatmaps kept per image: all C classes (dense), or the observed class plus the top k (sparse)."""
        return self.num_classes if self.layout == "dense" else min(self.top_k + 1, self.num_classes)


def array_specs(header: BankHeader) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every file of a bank with this header: name → (shape, dtype). The one place the layout is spelled out."""
    n, c, s = header.num_rows, header.num_classes, header.size
    specs = {"predictions": ((n, c), np.dtype(np.float32)), "seen": ((n,), np.dtype(np.uint16))}
    if header.with_heatmaps:
        specs["heatmaps"] = ((n, header.num_slots, s, s), np.dtype(np.float16))
        if header.layout == "sparse":
            specs["slots"] = ((n, header.num_slots), np.dtype(np.int32))
        specs["coverage"] = ((n, s, s), np.dtype(np.uint8))
    return specs


def header_nbytes(header: BankHeader) -> int:
    """Data bytes of a bank (what it takes on disk once every row was written)."""
    return sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in array_specs(header).values())


def bank_nbytes(num_rows: int, num_classes: int, size: int, with_heatmaps: bool = True, layout: str = "dense",
                top_k: int = 0) -> int:
    """Disk size: N·(4C + 2) plus, with heatmaps, N·(2·C·S² + S²) dense or N·(2·K'·S² + 4·K' + S²) sparse,
    K' = min(top_k + 1, C)."""
    header = BankHeader(num_rows, num_classes, size, with_heatmaps, "", "", layout=layout, top_k=top_k)
    return header_nbytes(header)


def _bank_class(header: BankHeader) -> type[SCLBank]:
    if header.layout == "sparse":
        from .bank_sparse import SparseSCLBank

        return SparseSCLBank
    return SCLBank


class SCLBank:
    """Per-image running averages of predictions and class heatmaps (dense: every class), backed by np.memmap.

    The writer keeps `written_rows`, the rows changed since the last checkpoint snapshot, so that a snapshot
    can store only those (bank_snapshot.py).
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
        """Fresh zero-filled files (sparse on disk until written); replaces any bank in the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        header.dirty = True  # a crash while the files are being made leaves a bank that is refused
        if (folder / HEADER_NAME).exists():
            write_header(folder, header, durable=True)
        for name, (shape, dtype) in array_specs(header).items():
            memmap = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
            if name == "slots":
                memmap[:] = -1  # sparse layout: no class in any slot yet
            memmap.flush()
            del memmap
        header.dirty = False
        write_header(folder, header, durable=True)
        return _bank_class(header)(folder, header, writable=True)

    # ----------------------------------------------------------------- reading
    def read_predictions(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Running-average probabilities (B, C) and observation counts (B,) of these rows."""
        idx = indices.cpu().numpy()
        return torch.from_numpy(self.predictions[idx]), torch.from_numpy(self.seen[idx].astype(np.int64))

    def read_spatial(
        self, indices: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, out_size: tuple[int, int],
        device: torch.device | str | None = None, cell_offset: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored heatmaps cut under each view's crop: targets (B, C, h, w) and weights (B, h, w), on `device`
        (default: CPU) — the sparse layout builds its dense targets there. `cell_offset`: where the model's
        cells are centred (`ClassMapHook.grid.offset_cells`, see geometry.py)."""
        idx = indices.cpu().numpy()
        heat = torch.from_numpy(_take_rows(self.heatmaps, idx))
        coverage = torch.from_numpy(_take_rows(self.coverage, idx))
        targets, weights = spatial_targets(heat, coverage, boxes.cpu(), flips.cpu(), out_size, cell_offset)
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
        cell_offset: float = 0.0,
    ) -> None:
        """EMA update of the rows in `indices` (unique) with this step's probabilities and class maps.

        `labels` (the observed class of each row) is only needed by the sparse layout, which always keeps it.
        `cell_offset`: where the model's cells are centred, as for `read_spatial`.
        """
        idx = self._check_writable(indices)
        self._update_predictions(idx, probs, momentum)
        if map_probs is not None and self.heatmaps is not None:
            maps, boxes, flips = map_probs.detach().cpu(), boxes.cpu(), flips.cpu()
            for start in range(0, len(idx), UPDATE_CHUNK):  # cache-sized pieces: 128 rows at once cost 2.3x 64
                part, rows_idx = slice(start, start + UPDATE_CHUNK), idx[start:start + UPDATE_CHUNK]
                rows, coverage = paste_crop(
                    torch.from_numpy(_take_rows(self.heatmaps, rows_idx)),
                    torch.from_numpy(_take_rows(self.coverage, rows_idx)),
                    maps[part], boxes[part], flips[part],
                    momentum if heatmap_momentum is None else heatmap_momentum,
                    cell_offset=cell_offset,
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

    def _update_predictions(self, idx: np.ndarray, probs: torch.Tensor, momentum: float) -> np.ndarray:
        """P̄ ← m·P̄ + (1−m)·p (first observation: p); returns the rows' previous observation counts."""
        old = self.predictions[idx]
        seen = self.seen[idx]
        new = probs.detach().float().cpu().numpy()
        blended = np.where((seen == 0)[:, None], new, momentum * old + (1.0 - momentum) * new)
        self.predictions[idx] = blended.astype(np.float32)
        self.seen[idx] = np.minimum(seen.astype(np.int64) + 1, np.iinfo(np.uint16).max).astype(np.uint16)
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


# --------------------------------------------------------------------- header and integrity
def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_header(folder: Path, header: BankHeader, durable: bool = False) -> None:
    """Atomic header write: a crash leaves the old header or the new one, never half of one.

    `durable` also fsyncs the file and the folder, so that the dirty flag reaches the disk before the data
    writes it announces (the order matters after a power loss, not only after a killed process)."""
    folder = Path(folder)
    tmp = folder / (HEADER_NAME + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(asdict(header), indent=2))
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, folder / HEADER_NAME)
    if durable:
        _fsync_path(folder, directory=True)


def read_header(folder: str | os.PathLike) -> BankHeader:
    path = Path(folder) / HEADER_NAME
    try:
        return BankHeader(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:  # ValueError covers JSON and UTF-8 decoding errors
        raise BankMismatchError(
            f"cannot read the bank header {path} ({err}). The bank folder is incomplete or damaged: delete "
            f"{Path(folder)} to start a new bank, or resume from the last checkpoint, which carries a copy."
        ) from err


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy file's own header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = reader(f)
        return tuple(shape), np.dtype(dtype), f.tell()


def check_files(folder: Path, header: BankHeader) -> None:
    """Refuse a dirty bank, or one whose files are missing, truncated or of another shape, saying how to recover."""
    folder = Path(folder)
    problems = ["it was being written when its run stopped (header.json says dirty)"] if header.dirty else []
    for name, (shape, dtype) in array_specs(header).items():
        path = folder / f"{name}.npy"
        try:
            found_shape, found_dtype, offset = npy_layout(path)
        except (OSError, ValueError) as err:
            problems.append(f"{path.name} is missing or unreadable ({err})")
            continue
        if found_shape != shape or found_dtype != dtype:
            problems.append(f"{path.name} holds {found_dtype}{list(found_shape)}, the header says {dtype}{list(shape)}")
            continue
        expected = offset + int(np.prod(shape)) * dtype.itemsize
        if path.stat().st_size != expected:
            problems.append(f"{path.name} has {path.stat().st_size} bytes instead of {expected} (truncated)")
    if problems:
        raise BankCorruptError(
            f"the bank in {folder} cannot be trusted: " + "; ".join(problems) + ". " + RECOVERY.format(folder=folder)
        )


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


def open_bank(folder: str | os.PathLike, expected: BankHeader, writable: bool, create: bool,
              reset: bool = False) -> SCLBank:
    """Open this run's bank, checking that it belongs to this run and that it is whole.

    `create`: make the files when the folder holds no bank. `reset`: start the rows over (a fresh training
    run), keeping the refusal of another run's bank and of a dirty one. Without `reset` an existing bank is
    opened as it is.
    """
    folder = Path(folder)
    if create and not (folder / HEADER_NAME).exists():
        return SCLBank.create(folder, expected)
    found = read_header(folder)
    check_compatible(found, expected, folder)
    check_files(folder, found)
    if reset:
        return SCLBank.create(folder, expected)
    return _bank_class(found)(folder, found, writable=writable)


def check_free_space(folder: Path, header: BankHeader, snapshot_folder: Path | None = None) -> None:
    """Fail before training when the bank (and one checkpoint snapshot of it) cannot fit, with the figures."""
    needed = {Path(folder): header_nbytes(header)}
    if snapshot_folder is not None:
        needed[Path(snapshot_folder)] = header_nbytes(header)
    by_device: dict[int, tuple[int, int, list[Path]]] = {}
    for path, size in needed.items():
        path.mkdir(parents=True, exist_ok=True)
        existing = sum(f.stat().st_size for f in path.glob("*.npy")) if path == Path(folder) else 0
        stats = os.statvfs(path)
        device = os.stat(path).st_dev
        total, free, paths = by_device.get(device, (0, stats.f_bavail * stats.f_frsize + existing, []))
        by_device[device] = (total + size, free, [*paths, path])
    for total, free, paths in by_device.values():
        if total > free:
            what = " and ".join(str(p) for p in paths)
            raise OSError(
                f"the bank ({header.layout} layout) needs {total / 1e9:.2f} GB in {what} but only {free / 1e9:.2f} "
                "GB are free. Point SCLConfig.bank_dir at a larger node-local disk, lower bank_size, or use "
                "bank_layout='sparse' with a small bank_top_k (docs/bank.md gives the formula)."
            )


def first_occurrence(indices: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct index (padding repeats rows across processes)."""
    _, inverse = torch.unique(indices, return_inverse=True)
    positions = torch.arange(len(indices), device=indices.device)
    first = torch.full((int(inverse.max()) + 1 if len(indices) else 0,), len(indices), device=indices.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return first
