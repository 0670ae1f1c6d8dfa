"""Bank state inside checkpoints, so that `train(resume_from_checkpoint=...)` continues exactly.

Every `checkpoint-N/` gets a `scl_bank/` folder that is self-contained (it can be copied elsewhere, and
Trainer's `save_total_limit` rotation deletes it together with its checkpoint) yet does not copy the whole
bank each time:

- `base-<step>.<array>.npy`: a full copy of every bank file at some earlier checkpoint (in-kernel `sendfile`);
- `delta-<step>.rows`: the rows written between two consecutive checkpoints, as they were at the later one;
- `manifest.json`: the bank header, the base, and the ordered list of deltas to apply on top of it.

Checkpoint N+1 hard-links the base and the deltas of checkpoint N (no data copied, and deleting N later only
drops names) and adds one delta with the rows written since N. When the deltas of a chain would outweigh
the base, or N is gone, a new full base is written instead: the total cost is then about two bank copies
per chain, whatever the number of checkpoints (docs/bank.md has the measurements). Restoring copies the base
into the live bank folder and replays the deltas in order.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .bank import (
    HEADER_NAME,
    BankCorruptError,
    BankHeader,
    BankMismatchError,
    SCLBank,
    _bank_class,
    array_specs,
    check_compatible,
    header_nbytes,
    read_header,
    write_header,
)

SNAPSHOT_DIR = "scl_bank"
MANIFEST_NAME = "manifest.json"
SNAPSHOT_FORMAT = 1
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


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link (free, and each checkpoint stays whole on its own), or a copy where links are refused."""
    try:
        os.link(source, target)
    except OSError:
        copy_file(source, target)


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
        if usable and chain + len(rows) * row_bytes <= MAX_CHAIN_RATIO * base_bytes:
            for name in previous.files():
                link_or_copy(previous.folder / name, tmp / name)
            delta = f"delta-{step:09d}-{token}.rows"
            _write_rows(tmp / delta, bank, rows)
            manifest = dict(previous.manifest, deltas=[*previous.manifest["deltas"], delta],
                            delta_bytes=chain + len(rows) * row_bytes)
        else:
            base = f"base-{step:09d}-{token}"
            for name in bank.arrays:
                copy_file(bank.folder / f"{name}.npy", tmp / f"{base}.{name}.npy")
            manifest = dict(format=SNAPSHOT_FORMAT, lineage=uuid.uuid4().hex, base=base, deltas=[], delta_bytes=0,
                            arrays=list(bank.arrays))
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
    bank = _bank_class(saved)(folder, saved, writable=True)
    bank._clean = False
    for delta in manifest["deltas"]:
        with open(source / delta, "rb") as f:
            rows = np.load(f)
            for name in manifest["arrays"]:
                bank.arrays[name][rows] = np.load(f)
    bank.flush()
    bank.written_rows[:] = False
    return bank, Snapshot(source, manifest)
