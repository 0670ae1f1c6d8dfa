"""Read-ahead of a batch's bank rows: the memmap reads of a step, moved off its critical path.

`SharedBank.prefetch(inputs)` starts reading the batch's rows from the files on a thread as soon as the batch
is known (before the forward pass), and the step's `read` takes them instead of reading the files. A prefetch
may start before earlier writes are stored: `WriteLog` numbers every write and keeps the row indices each one
wrote (the whole gathered global batch, on every process), so that after `settle` the read re-reads from the
files exactly the prefetched rows that a write not yet settled when the prefetch began could have changed.
The read therefore returns what it would have read without the prefetch (docs/bank.md).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

import torch

from .worker import Worker


class WriteLog:
    """Sequence numbers of the bank's writes and the rows each one wrote, as far as a prefetch needs them.

    `issued`: writes issued so far (every process issues the same writes: `write` is collective); `settled`:
    the last write that every process sees (after `settle`'s join and barrier). `rows[s]`: the row indices of
    write s, or absent when it was not recorded (issued before the read-ahead began)."""

    def __init__(self):
        self.issued = 0
        self.settled = 0
        self.rows: dict[int, set[int]] = {}

    def issue(self) -> int:
        self.issued += 1
        return self.issued

    def record(self, seq: int, indices: torch.Tensor) -> None:
        """On a writer or log thread: the rows write `seq` touches (a superset is exact too), as a set: the
        training thread's look-up is then a few µs, where numpy's isin costs ~0.3 ms with cold caches."""
        self.rows[seq] = set(indices.cpu().tolist())

    def written_since(self, seq: int) -> set[int] | None:
        """The rows of every write after `seq`, or None when one of them was not recorded (then any row may be stale)."""
        if any(s not in self.rows for s in range(seq + 1, self.issued + 1)):
            return None
        parts = [self.rows[s] for s in range(seq + 1, self.issued + 1)]
        return parts[0] if len(parts) == 1 else set().union(*parts)

    def forget_until(self, seq: int) -> None:
        """Drop the rows of writes ≤ `seq`: no prefetch will ask for them (a prefetch starts after `settled`)."""
        for s in [s for s in self.rows if s <= seq]:
            del self.rows[s]


def reader() -> Worker:
    """The read-ahead's one long-lived thread (worker.py: a thread per prefetch would cost the training thread
    a GIL hand-over, 4 ms a step measured; handing a task to a waiting thread returns at once)."""
    return Worker("scl-bank-readahead")


@dataclass
class Prefetch:
    """One batch's rows being read on the reader thread: host tensors, pinned when they go to a GPU."""

    indices: torch.Tensor  # (B,) host row indices
    names: tuple[str, ...]  # the arrays read
    after: int  # the last write settled when the prefetch began: later writes may be missing from its rows
    future: Future | None = None

    @classmethod
    def start(cls, executor: Worker, store, indices: torch.Tensor, names: tuple[str, ...], after: int,
              pin: bool) -> Prefetch:
        prefetch = cls(indices, names, after)
        prefetch.future = executor.submit(store.host_rows, indices, names, pin)
        return prefetch

    def result(self) -> dict[str, torch.Tensor]:
        """The rows read (waiting for the reader if it has not finished; its error, if any, is raised here)."""
        return self.future.result()


def refresh_stale(store, prefetch: Prefetch, rows: list[int], written: set[int]) -> int:
    """Re-read from the files the prefetched rows (`rows`: their indices) that a later write touched (after
    `settle`: its values are stored). Returns how many rows were re-read."""
    stale = [i for i, row in enumerate(rows) if row in written]
    if stale:
        positions = torch.tensor(stale)
        fresh = store.host_rows(prefetch.indices[positions], prefetch.names)
        for name, rows in prefetch.result().items():
            rows[positions] = fresh[name]
    return len(stale)
