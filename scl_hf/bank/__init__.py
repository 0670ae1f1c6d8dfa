"""The per-image memory of the consistency losses (docs/bank.md).

- `files.py`      header, array specification, integrity checks, checksums (no torch, no processes);
- `layouts.py`    the layout registry, `create_bank` / `open_bank`;
- `dense.py`      the dense layout (`SCLBank`), `sparse.py` the top-k layout (`SparseSCLBank`);
- `geometry.py`   RoIAlign cut and paste-back between a crop's frame and the image's frame;
- `snapshots.py`  checkpoint snapshots (checksummed, no file shared between checkpoints);
- `readahead.py`  a batch's rows read on a thread ahead of its `read` (the write log that keeps it exact);
- `shared.py`     `SharedBank`: the bank across processes — set up or resume, prefetch, read, write, save, close.
"""

from .collectives import first_occurrence, gather_packed, pack_rows, row_gradient_mean, unpack_rows
from .dense import SCLBank
from .files import (
    BANK_FORMAT_VERSION,
    HEADER_NAME,
    RECOVERY,
    BankCorruptError,
    BankHeader,
    BankMismatchError,
    array_specs,
    bank_nbytes,
    check_compatible,
    check_files,
    check_free_space,
    file_checksum,
    header_nbytes,
    npy_layout,
    read_header,
    write_header,
)
from .layouts import LAYOUTS, create_bank, layout_class, open_bank, register_layout
from .shared import BankRead, SharedBank
from .snapshots import MANIFEST_NAME, SNAPSHOT_DIR, Snapshot, restore_snapshot, save_snapshot, verify_snapshot
from .sparse import SparseSCLBank, assign_slots, slots_to_dense

__all__ = [
    "BANK_FORMAT_VERSION", "HEADER_NAME", "LAYOUTS", "MANIFEST_NAME", "RECOVERY", "SNAPSHOT_DIR", "BankCorruptError",
    "BankHeader", "BankMismatchError", "BankRead", "SCLBank", "SharedBank", "Snapshot", "SparseSCLBank",
    "array_specs", "assign_slots", "bank_nbytes", "check_compatible", "check_files", "check_free_space",
    "create_bank", "file_checksum", "first_occurrence", "gather_packed", "pack_rows", "unpack_rows", "header_nbytes", "layout_class", "npy_layout", "open_bank",
    "read_header", "register_layout", "restore_snapshot", "row_gradient_mean", "save_snapshot", "slots_to_dense",
    "verify_snapshot", "write_header",
]
