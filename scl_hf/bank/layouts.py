"""The registry of bank layouts: a layout is a bank class, chosen by the header's `layout` name.

`dense.py` registers "dense" (every class's heatmap), `sparse.py` "sparse" (observed class + top k). A new
layout is one class with the dense bank's `read_*`/`update` interface and one `@register_layout` line.
`create_bank` and `open_bank` pick the class from the header. Imports: files ← layouts ← dense ← sparse, no
cycle; the package's `__init__` imports every layout, so the registry is full once `scl_hf.bank` is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .files import (
    HEADER_NAME,
    BankHeader,
    array_specs,
    check_compatible,
    check_files,
    read_header,
    write_header,
)

LAYOUTS: dict[str, type] = {}


def register_layout(name: str):
    """Class decorator: `@register_layout("sparse")` makes the class the bank of headers with that layout."""

    def register(cls: type) -> type:
        LAYOUTS[name] = cls
        cls.layout_name = name
        return cls

    return register


def layout_class(name: str) -> type:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ValueError(f"unknown bank layout {name!r}; known layouts: {sorted(LAYOUTS)}") from None


def create_bank(folder: str | os.PathLike, header: BankHeader):
    """Fresh zero-filled files (sparse on disk until written), opened for writing; replaces any bank there."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cls = layout_class(header.layout)
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
    return cls(folder, header, writable=True)


def open_bank(folder: str | os.PathLike, expected: BankHeader, writable: bool, create: bool,
              reset: bool = False) :
    """Open this run's bank, checking that it belongs to this run and that it is whole.

    `create`: make the files when the folder holds no bank. `reset`: start the rows over (a fresh training
    run), keeping the refusal of another run's bank and of a dirty one. Without `reset` an existing bank is
    opened as it is.
    """
    folder = Path(folder)
    if create and not (folder / HEADER_NAME).exists():
        return create_bank(folder, expected)
    found = read_header(folder)
    check_compatible(found, expected, folder)
    check_files(folder, found)
    if reset:
        return create_bank(folder, expected)
    return layout_class(found.layout)(folder, found, writable=writable)
