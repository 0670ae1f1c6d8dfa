"""Bank files: the header, the arrays' specification, and the integrity checks. No torch, no processes.

Files in one bank folder (normally `<output_dir>/scl_bank`, always on node-local disk):
- `predictions.npy`  float32 (N, C): running average of σ(logits) per training image (the CL/EN target);
- `seen.npy`         uint16  (N,):   how many times each image was observed;
- `stamps.npy`       uint16  (N,):   1 + the epoch of each image's last write (0: never), which tells a
                     padded repeat of a row (accelerate's last step) from its first write in the epoch;
- `heatmaps.npy`     float16 (N, C, S, S) dense, or (N, K+1, S, S) sparse: running-average class maps in the
                     original image's frame;
- `slots.npy`        int32   (N, K+1), sparse layout only: the class id held by each heatmap slot (-1: none);
- `coverage.npy`     uint8   (N, S, S): how often each bank cell was inside a crop (saturates at 255);
- `header.json`      shape, layout, fingerprints of the training set and config, last step written, and a
                     `dirty` flag that is set (durably) before the first write after a clean point.

A bank is only ever reused for the data and config it was built for, and never when it may be half
written: `check_compatible` compares the header's fingerprints, `check_files` checks every file's size
against the header and refuses a dirty bank, each time with a message that says what is wrong and how to
recover. `file_checksum` is what checkpoint snapshots record for every file (snapshots.py).
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

BANK_FORMAT_VERSION = 2  # 2: stamps.npy
HEADER_NAME = "header.json"
LAYOUT_NAMES = ("dense", "sparse")
CHECKSUM_CHUNK = 1 << 24  # 16 MiB reads: zlib.crc32 runs at GB/s, the page cache feeds it
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
        if self.layout not in LAYOUT_NAMES:
            raise ValueError(f"bank layout must be one of {LAYOUT_NAMES}, got {self.layout!r}")
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
    specs = {"predictions": ((n, c), np.dtype(np.float32)), "seen": ((n,), np.dtype(np.uint16)),
             "stamps": ((n,), np.dtype(np.uint16))}
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
    """Disk size: N·(4C + 4) plus, with heatmaps, N·(2·C·S² + S²) dense or N·(2·K'·S² + 4·K' + S²) sparse,
    K' = min(top_k + 1, C)."""
    header = BankHeader(num_rows, num_classes, size, with_heatmaps, "", "", layout=layout, top_k=top_k)
    return header_nbytes(header)


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


def file_checksum(path: str | os.PathLike) -> str:
    """CRC-32 of a whole file plus its size, e.g. "crc32:1a2b3c4d:4096": catches truncation and damaged bytes
    (not tampering) at the speed of a sequential read."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHECKSUM_CHUNK):
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return f"crc32:{crc:08x}:{size}"
