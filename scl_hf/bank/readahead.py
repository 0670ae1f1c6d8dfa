"""Read-ahead of a batch's bank rows: the memmap reads of a step, moved off its critical path.

`SharedBank.prefetch(inputs)` starts reading the batch's rows from the files on a thread as soon as the batch
is known (before the forward pass), and the step's `read` takes them instead of reading the files. A prefetch
may start before earlier writes are stored: `WriteLog` numbers every write and keeps the row indices each one
wrote (the whole gathered global batch, on every process), so that after `settle` the read re-reads from the
files exactly the prefetched rows that a write not yet settled when the prefetch began could have changed.
The read therefore returns what it would have read without the prefetch (docs/bank.md).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch


class WriteLog:
    """Sequence numbers of the bank's writes and the rows each one wrote, as far as a prefetch needs them.

    `issued`: writes issued so far (every process issues the same writes: `write` is collective); `settled`:
    the last write that every process sees (after `settle`'s join and barrier). `rows[s]`: the row indices of
    write s, or absent when it was not recorded (issued before the read-ahead began)."""

    def __init__(self):
        self.issued = 0
        self.settled = 0
        self.rows: dict[int, np.ndarray] = {}

    def issue(self) -> int:
        self.issued += 1
        return self.issued

    def record(self, seq: int, indices: torch.Tensor) -> None:
        """On a writer or log thread: the rows write `seq` touches (a superset is exact too)."""
        self.rows[seq] = indices.cpu().numpy().astype(np.int64, copy=False)

    def written_since(self, seq: int) -> np.ndarray | None:
        """The rows of every write after `seq`, or None when one of them was not recorded (then any row may be stale)."""
        if any(s not in self.rows for s in range(seq + 1, self.issued + 1)):
            return None
        parts = [self.rows[s] for s in range(seq + 1, self.issued + 1)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def forget_until(self, seq: int) -> None:
        """Drop the rows of writes ≤ `seq`: no prefetch will ask for them (a prefetch starts after `settled`)."""
        for s in [s for s in self.rows if s <= seq]:
            del self.rows[s]


@dataclass
class Prefetch:
    """One batch's rows being read on a thread: host tensors, pinned when they go to a GPU."""

    indices: torch.Tensor  # (B,) host row indices
    names: tuple[str, ...]  # the arrays read
    after: int  # the last write settled when the prefetch began: later writes may be missing from `rows`
    thread: threading.Thread | None = None
    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    error: BaseException | None = None

    @classmethod
    def start(cls, store, indices: torch.Tensor, names: tuple[str, ...], after: int, pin: bool) -> Prefetch:
        prefetch = cls(indices, names, after)
        prefetch.thread = threading.Thread(target=prefetch._run, args=(store, pin), name="scl-bank-readahead",
                                           daemon=True)
        prefetch.thread.start()
        return prefetch

    def _run(self, store, pin: bool) -> None:
        try:
            self.rows = store.host_rows(self.indices, self.names, pin=pin)
        except BaseException as err:  # re-raised by the training thread in result()
            self.error = err

    def result(self) -> dict[str, torch.Tensor]:
        """The rows read (waiting for the thread if it has not finished)."""
        self.thread.join()
        if self.error is not None:
            raise RuntimeError("the bank's read-ahead thread failed") from self.error
        return self.rows


def refresh_stale(store, prefetch: Prefetch, written: np.ndarray) -> int:
    """Re-read from the files the prefetched rows that a later write touched (after `settle`: its values are
    stored). Returns how many rows were re-read."""
    stale = np.flatnonzero(np.isin(prefetch.indices.numpy(), written))
    if len(stale):
        positions = torch.from_numpy(stale)
        fresh = store.host_rows(prefetch.indices[positions], prefetch.names)
        for name, rows in prefetch.rows.items():
            rows[positions] = fresh[name]
    return len(stale)
