"""Bank state inside checkpoints, so that `train(resume_from_checkpoint=...)` continues exactly.

Every `checkpoint-N/` gets a `scl_bank/` folder that is self-contained (it can be copied elsewhere, and
Trainer's `save_total_limit` rotation deletes it together with its checkpoint) and owns its files:

- `base-<step>-<token>.<array>.npy`: a full copy of every bank file (in-kernel `sendfile`);
- `delta-<step>-<token>.rows`: the rows written between two consecutive checkpoints, as they were at the later one;
- `manifest.json`: the bank header, the base, the ordered deltas, and a checksum of every file.

No file is shared between checkpoints (formerly the base was hard-linked into every later checkpoint, so
one damaged file damaged them all). Where the file system can clone (reflink: XFS, Btrfs, ...), checkpoint
N+1 clones the base and deltas of N — free, copy-on-write, so damage to one copy stays in it — and adds one
delta; elsewhere (ext4) it writes a new base, as cheap as copying the old one. A resume checks every file
against the manifest's checksum before it touches the live bank, and refuses a damaged snapshot with the
checkpoints to resume from instead.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .dense import SCLBank
from .files import (
    HEADER_NAME,
    BankCorruptError,
    BankHeader,
    BankMismatchError,
    array_specs,
    check_compatible,
    file_checksum,
    header_nbytes,
    read_header,
    write_header,
)
from .layouts import layout_class

SNAPSHOT_DIR = "scl_bank"
MANIFEST_NAME = "manifest.json"
SNAPSHOT_FORMAT = 2  # 2: checksums of every file, no hard links
FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int), a reflink of a whole file
MAX_CHAIN_RATIO = 1.0  # a chain's deltas may add up to this fraction of the base before a new base is taken


@dataclass
class Snapshot:
    """Where the last snapshot of this bank lives, and what it holds (the next one links to it)."""

    folder: Path
    manifest: dict

    def files(self) -> list[str]:
        names = [f"{self.manifest['base']}.{name}.npy" for name in self.manifest["arrays"]]
        return names + list(self.manifest["deltas"])


def copy_file(source: Path, target: Path) -> None:
    """In-kernel copy: shutil.copyfile uses sendfile on Linux. Measured on the COCO bank's 2.4 GB heatmaps
    (ext4, kernel 6.18): sendfile 0.7-1.2 s, os.copy_file_range 2.3-3.1 s (benchmarks/results/bank_io.md)."""
    shutil.copyfile(source, target)
    if os.path.getsize(target) != os.path.getsize(source):
        raise OSError(f"short copy of {source} to {target}")


def clone_file(source: Path, target: Path) -> bool:
    """A reflink (copy-on-write clone) of `source`: True when done, False where the file system cannot."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        try:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
            return True
        except OSError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM):
                pass
            else:
                raise
    target.unlink(missing_ok=True)
    return False


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
        BankHeader(**manifest["header"])
        return manifest
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise BankCorruptError(
            f"the checkpoint's bank snapshot {path} is missing or unreadable ({err}). Resume from another "
            "checkpoint (a checkpoint without a bank snapshot cannot continue a consistency run exactly)."
        ) from err


def _write_rows(path: Path, bank: SCLBank, rows: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, rows)
        for name in bank.arrays:
            np.save(f, np.ascontiguousarray(bank.arrays[name][rows]))


def save_snapshot(bank: SCLBank, checkpoint_dir: str | os.PathLike, previous: Snapshot | None) -> Snapshot:
    """Write `<checkpoint_dir>/scl_bank` for the bank as it is now (call at a clean point: after bank.mark)."""
    if not bank.writable:
        raise RuntimeError("only the process that writes the bank can snapshot it")
    bank.flush()
    target = Path(checkpoint_dir) / SNAPSHOT_DIR
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{SNAPSHOT_DIR}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    step = int(bank.header.global_step)
    # unique names: a file is never written under a name that may be a hard link of an older checkpoint's
    # file (opening it for writing would rewrite that checkpoint too), e.g. when one step is saved twice
    token = uuid.uuid4().hex[:8]
    rows = np.flatnonzero(bank.written_rows)
    row_bytes = header_nbytes(bank.header) // max(bank.header.num_rows, 1)
    base_bytes = header_nbytes(bank.header)
    usable = previous is not None and _still_there(previous)
    chain = previous.manifest["delta_bytes"] if usable else 0
    try:
        manifest = None
        if usable and chain + len(rows) * row_bytes <= MAX_CHAIN_RATIO * base_bytes \
                and _clone_all(previous, tmp):
            delta = f"delta-{step:09d}-{token}.rows"
            _write_rows(tmp / delta, bank, rows)
            manifest = dict(previous.manifest, deltas=[*previous.manifest["deltas"], delta],
                            delta_bytes=chain + len(rows) * row_bytes,
                            checksums={**previous.manifest.get("checksums", {}), delta: file_checksum(tmp / delta)})
        if manifest is None:  # a new base: no clones here, a new chain, or the chain outweighs its base
            for name in tmp.iterdir():
                name.unlink()
            base = f"base-{step:09d}-{token}"
            for name in bank.arrays:
                copy_file(bank.folder / f"{name}.npy", tmp / f"{base}.{name}.npy")
            manifest = dict(format=SNAPSHOT_FORMAT, lineage=uuid.uuid4().hex, base=base, deltas=[], delta_bytes=0,
                            arrays=list(bank.arrays))
            manifest["checksums"] = {f.name: file_checksum(f) for f in sorted(tmp.iterdir())}
        manifest["header"] = asdict(bank.header)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bank.written_rows[:] = False
    return Snapshot(target, manifest)


def _clone_all(previous: Snapshot, tmp: Path) -> bool:
    """Clone every file of the previous snapshot into `tmp`; False (nothing kept) where clones are refused."""
    for name in previous.files():
        if not clone_file(previous.folder / name, tmp / name):
            return False
    return True


def verify_snapshot(folder: Path, manifest: dict) -> None:
    """Every file of the snapshot against the manifest's checksum (format 1, without checksums: sizes only
    through the restore's own checks); a damaged snapshot is refused with the checkpoints to use instead."""
    checksums = manifest.get("checksums", {})
    problems = []
    for name in [f"{manifest['base']}.{array}.npy" for array in manifest["arrays"]] + list(manifest["deltas"]):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif name in checksums and file_checksum(path) != checksums[name]:
            problems.append(f"{name} does not match its checksum (truncated or damaged)")
    if problems:
        raise BankCorruptError(
            f"the checkpoint's bank snapshot {folder} is damaged: " + "; ".join(problems) + ". Nothing was "
            f"restored. {_other_checkpoints(folder)}"
        )


def _other_checkpoints(folder: Path) -> str:
    """How to recover from a damaged snapshot: the other checkpoints next to it, or a fresh start."""
    checkpoint = Path(folder).parent
    others = sorted((p for p in checkpoint.parent.glob("checkpoint-*") if p != checkpoint and (p / SNAPSHOT_DIR).is_dir()),
                    key=lambda p: int(p.name.rsplit("-", 1)[-1]) if p.name.rsplit("-", 1)[-1].isdigit() else -1)
    if others:
        return (f"Resume from another checkpoint instead, e.g. trainer.train(resume_from_checkpoint='{others[-1]}') "
                f"(checkpoints with a bank snapshot: {', '.join(p.name for p in others)}), or start a fresh run.")
    return "No other checkpoint with a bank snapshot is there: start a fresh run (resume_from_checkpoint=None)."


def _still_there(snapshot: Snapshot) -> bool:
    """The previous snapshot is usable when it still exists unchanged (a user may have removed or replaced it)."""
    try:
        found = read_manifest(snapshot.folder)
    except BankCorruptError:
        return False
    return found.get("lineage") == snapshot.manifest["lineage"] and found["deltas"] == snapshot.manifest["deltas"] \
        and all((snapshot.folder / name).exists() for name in snapshot.files())


def restore_snapshot(checkpoint_dir: str | os.PathLike, bank_dir: str | os.PathLike,
                     expected: BankHeader) -> tuple[SCLBank, Snapshot]:
    """Replace the live bank in `bank_dir` with the state saved in `checkpoint_dir` and open it for writing.

    A dirty, truncated or missing live bank is exactly what this repairs; a live bank of another run (other
    data or config) is refused rather than overwritten.
    """
    source = Path(checkpoint_dir) / SNAPSHOT_DIR
    if not source.is_dir():
        raise BankMismatchError(
            f"the checkpoint {checkpoint_dir} holds no bank snapshot ({SNAPSHOT_DIR}/), so this consistency run "
            "cannot continue exactly from it. Resume from a checkpoint written by SCLTrainer with this method, "
            "or start a fresh run."
        )
    manifest = read_manifest(source)
    saved = BankHeader(**manifest["header"])
    check_compatible(saved, expected, source)
    verify_snapshot(source, manifest)
    folder = Path(bank_dir)
    if (folder / HEADER_NAME).exists():
        try:
            live = read_header(folder)
        except BankMismatchError:
            live = None  # unreadable: a damaged bank, which the restore replaces
        if live is not None:
            check_compatible(live, expected, folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved.dirty = True
    write_header(folder, saved, durable=True)  # until every file is back, the live bank is refused
    for name in array_specs(saved):
        tmp = folder / f"{name}.npy.restore"
        copy_file(source / f"{manifest['base']}.{name}.npy", tmp)
        os.replace(tmp, folder / f"{name}.npy")
    bank = layout_class(saved.layout)(folder, saved, writable=True)
    bank._clean = False
    for delta in manifest["deltas"]:
        with open(source / delta, "rb") as f:
            rows = np.load(f)
            for name in manifest["arrays"]:
                bank.arrays[name][rows] = np.load(f)
    bank.flush()
    bank.written_rows[:] = False
    return bank, Snapshot(source, manifest)
