"""SharedBank: the bank as the training processes see it — one object, six calls.

`SharedBank.setup` (fresh or resumed) → per step `prefetch` (optional: the batch's rows read ahead, during
the forward), `read` (a batch → its targets) and `write` (the batch's predictions and maps) → `save` (into a
checkpoint) → `close`. It owns everything that involves processes:
the node-local check, who writes (each node's local main process; the others open the files read-only),
the gather of the global batch, the de-duplication (within a step, and across steps: accelerate pads the
last step of an epoch with rows of the first), the barriers that order writes before the reads that need them
(`sync`: once per epoch, or every step), and the per-process weights that make DDP's gradient average equal
one process training on the global batch. The layouts (dense.py, sparse.py) know none of this. The protocol:
docs/bank.md.
"""

from __future__ import annotations

import uuid
import warnings
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from .collectives import first_occurrence, gather_group, pack_rows, unpack_rows
from .dense import pins_for, rows_to_device
from .files import BankHeader, check_free_space
from .layouts import open_bank
from .readahead import Prefetch, WriteLog, reader, refresh_stale
from .snapshots import Snapshot, restore_snapshot, save_snapshot
from .worker import Worker

ROW_ARRAYS = ("predictions", "seen", "stamps")  # every read; the layout's other arrays serve the spatial term
SYNC_MODES = ("epoch", "step")
MAX_PENDING_WRITES = 2  # writes a process may have in flight before its training thread waits for the oldest
REPEAT_WARNING = (
    "an image came back in the same epoch before its earlier write of that epoch was stored (a sampler that "
    "repeats images?): with bank_sync='epoch' each image may appear once per epoch. Its second copy is not "
    "stored; set bank_sync='step' for samplers that repeat images."
)


@dataclass
class BankRead:
    """What the bank holds for one process's batch, on the batch's device.

    `fresh` (B,) is False for a row already written in this epoch (accelerate's padding of the last step):
    its losses are left out and it is not written again, so every image counts once per epoch."""

    fresh: torch.Tensor
    running: torch.Tensor | None = None  # (B, C) running-average predictions P̄
    seen: torch.Tensor | None = None  # (B,) observations so far
    targets: torch.Tensor | None = None  # (B, C, h, w) stored heatmaps cut under the crop
    weights: torch.Tensor | None = None  # (B, h, w) observed fraction of each cell
    rows: dict | None = None  # the raw bank rows read for this batch, on its device: `write` starts from them


class SharedBank:
    """The bank of one run across the processes of `accelerator` (see the module docstring)."""

    def __init__(self, accelerator, store, header: BankHeader, momentum: float, heatmap_momentum: float,
                 snapshot: Snapshot | None = None, group=None, sync: str = "step", steps_per_epoch: int | None = None):
        if sync not in SYNC_MODES:
            raise ValueError(f"bank sync must be one of {SYNC_MODES}, got {sync!r}")
        if sync == "epoch" and accelerator.num_processes > 1 and not steps_per_epoch:
            raise ValueError("sync='epoch' with several processes needs steps_per_epoch (its last step is settled)")
        self.accelerator = accelerator
        self.sync = sync  # "epoch": settle at each epoch's first and last step; "step": before every read
        self.steps_per_epoch = steps_per_epoch  # reads (micro-batches) per epoch and process
        self._epoch: int | None = None  # the epoch of the last read
        self._reads = 0  # reads in that epoch so far
        self._partial_epoch = snapshot is not None  # a resumed epoch: where it starts is not counted, so every step settles
        self.group = group  # the process group of the writes' all-gather, run on the writer thread (None: on this one)
        self.store = store  # the layout's bank object (SCLBank / SparseSCLBank), writable on the local main
        self.header = header
        self.momentum, self.heatmap_momentum = momentum, heatmap_momentum
        self.snapshot = snapshot
        self._pending: deque[Future] = deque()  # stores issued and not yet waited for, oldest first
        self._writer_thread: Worker | None = None  # the writer's one long-lived thread, started by the first write
        self._writer_error: BaseException | None = None
        self._unsettled = False  # a write was issued since the last barrier
        self._log = WriteLog()  # which rows each write touched: what a prefetch may have read too early
        self._readahead = False  # set by the first prefetch: from then on every write's rows are recorded
        self._prefetch: Prefetch | None = None  # the next batch's rows, being read on the reader thread
        self._reader = None  # the read-ahead's thread (an executor), started by the first prefetch
        self._recording: Future | None = None  # a reader process's record of this step's rows, on that thread
        self.cell_offset = 0.0  # where the model's class-map cells are centred, in cells (models.CellGrid)

    # ------------------------------------------------------------------ set up or resume
    @classmethod
    def setup(cls, accelerator, folder: str | Path, header: BankHeader, momentum: float, heatmap_momentum: float,
              resume_from: str | None = None, snapshot_dir: str | Path | None = None, sync: str = "step",
              steps_per_epoch: int | None = None) -> SharedBank:
        """The local main process of every node makes its own copy — fresh, or restored from the checkpoint
        being resumed (checked against its checksums first) — and the node's other processes open it
        read-only. `snapshot_dir`: where checkpoints go, counted in the free-space check. `sync`, `steps_per_epoch`:
        when reads wait for the writes (docs/bank.md, "Reads and writes")."""
        folder = Path(folder)
        check_node_local(accelerator, folder)
        snapshot = None
        if accelerator.is_local_main_process:
            check_free_space(folder, header, Path(snapshot_dir) if snapshot_dir is not None else None)
            if resume_from is not None:
                store, snapshot = restore_snapshot(resume_from, folder, header)
            else:  # a run from step 0 starts its bank over; a dirty bank (crashed run) is refused instead
                store = open_bank(folder, header, writable=True, create=True, reset=True)
        accelerator.wait_for_everyone()
        if not accelerator.is_local_main_process:
            store = open_bank(folder, header, writable=False, create=False)
        return cls(accelerator, store, header, momentum, heatmap_momentum, snapshot, gather_group(accelerator), sync,
                   steps_per_epoch)

    @property
    def writable(self) -> bool:
        return self.store.writable

    # ------------------------------------------------------------------ per step
    def prefetch(self, inputs: dict, spatial: bool = True, epoch: int | None = None) -> None:
        """Start reading this batch's rows from the files on a thread (read-ahead), so that the reads overlap
        the forward pass; the next `read` of the same rows takes them. `spatial`: also the heatmap arrays
        (when the step's read or write will need them). `epoch`: the step's epoch (with sync='epoch' a step that
        settles does it here, before the rows are read). Exact whatever the writes in between: with
        sync='step', a row that a write not yet settled now touches is read again after `settle` (readahead.py)."""
        self._drop_prefetch()
        if self.sync == "epoch" and epoch is not None and self._settles(epoch):
            self.settle()
        self._readahead = True
        self._reader = self._reader or reader()
        names = ROW_ARRAYS + (tuple(n for n in self.store.arrays if n not in ROW_ARRAYS) if spatial else ())
        indices = inputs.get("index_host", inputs["index"]).cpu()
        self._prefetch = Prefetch.start(self._reader, self.store, indices, names, self._log.settled,
                                        pins_for(inputs["index"].device))

    def _settles(self, epoch: int) -> bool:
        """Whether this step's read must wait for every earlier write (docs/bank.md, "Reads and writes"). With
        sync='epoch': at an epoch's first step (the epochs before it), at its last (accelerate pads it with rows the
        epoch already wrote: whether a row was written this epoch must not depend on timing), and at every step of
        a resumed epoch (its position is not counted). Identical on every process: the barrier is collective."""
        if self.sync == "step" or epoch != self._epoch or self._partial_epoch:
            return True
        return self._reads >= self.steps_per_epoch - 1 if self.steps_per_epoch else False

    def _count_read(self, epoch: int) -> None:
        """Count this read in its epoch; at an epoch change, check the finished epoch's length (a whole one)."""
        if epoch != self._epoch:
            if self._epoch is not None:  # an epoch ended: the next one starts at its first step
                whole = not self._partial_epoch
                self._partial_epoch = False
                if self.sync == "epoch" and whole and self.steps_per_epoch and self._reads != self.steps_per_epoch:
                    warnings.warn(f"the bank expected {self.steps_per_epoch} steps per epoch and saw {self._reads}: "
                                  "it settles every step from now on (bank_sync='step')", stacklevel=3)
                    self.sync = "step"
            self._epoch, self._reads = epoch, 0
        self._reads += 1

    def _take_prefetch(self, indices: torch.Tensor, device: torch.device) -> dict:
        """The prefetched rows of this batch, brought up to date and on `device`; {} when there are none (no
        prefetch, another batch's, or one that began before the writes' rows were recorded)."""
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is None:
            return {}
        rows, wanted = prefetch.result(), indices.tolist()
        # sync='epoch': a prefetch that could miss a write affecting its fresh rows began after a settle (prefetch)
        written = self._log.written_since(prefetch.after) if self.sync == "step" else set()
        if written is None or prefetch.indices.tolist() != wanted:
            return {}
        refresh_stale(self.store, prefetch, wanted, written)
        return rows_to_device(rows, device)

    def _drop_prefetch(self) -> None:
        """Forget an unused prefetch (after its reads end: the files may be closed or rewritten next)."""
        if self._prefetch is not None:
            self._prefetch.future.exception()  # waits; an error of rows nobody reads is not one
            self._prefetch = None

    @torch.no_grad()
    def read(self, inputs: dict, epoch: int, out_size: tuple[int, int] | None, device: torch.device) -> BankRead:
        """This process's rows: P̄ and counts, and (with `out_size`, the class maps' h × w) the heatmaps cut
        under each view's crop. With sync='step' every read sees every write of the steps before it; with
        'epoch', every write of the epochs before (docs/bank.md). Rows prefetched for this batch are used."""
        if self._settles(epoch):
            if self.sync == "epoch" and self._unsettled:  # a prefetch begun before these writes landed: not used
                self._drop_prefetch()
            self.settle()
        self._count_read(epoch)
        indices = inputs.get("index_host", inputs["index"])  # host indices: reading needs no sync
        cache = self._take_prefetch(indices, device)
        running, seen, stamps = self.store.rows_on(device, indices, "predictions", "seen", "stamps", cache=cache)
        fresh = stamps != epoch + 1
        targets = weights = None
        if out_size is not None and self.store.heatmaps is not None:
            targets, weights = self.store.read_spatial(indices, inputs["boxes"], inputs["flips"], out_size,
                                                       device=device, cache=cache, cell_offset=self.cell_offset)
        return BankRead(fresh, running, seen.long(), targets, weights, cache)

    @torch.no_grad()
    def write(self, inputs: dict, logits: torch.Tensor, class_maps: torch.Tensor | None, read: BankRead,
              epoch: int) -> None:
        """Gather this step's rows from every process, keep each image once (first copy in the step, and not
        at all when it was already written this epoch), and hand them to a writer thread on each node's
        local main: the store runs while the backward does. The next `read` (or `save`, `close`) waits for
        it and then for every process (`settle`), so the next step's reads see this step's writes. With a
        `group` (several CPU processes) the gather too runs on a writer thread, on every process."""
        probs = torch.sigmoid(logits.detach())
        maps = None if class_maps is None else torch.sigmoid(class_maps.detach())
        rows = self.store.new_rows(inputs.get("index_host", inputs["index"]), probs, self.momentum, inputs["boxes"],
                                   inputs["flips"], maps, self.heatmap_momentum, inputs["label"],
                                   cache=read.rows, cell_offset=self.cell_offset)  # this process's rows, on its device
        rows.update(indices=inputs["index"], fresh=read.fresh)
        seq = self._log.issue()
        seq = seq if self._readahead and self.sync == "step" else None  # record this write's rows for the read-ahead
        if self.group is not None:  # every process packs and gathers on its writer thread, in step order
            self._issued(self._writer_worker().submit(self._gather_store, rows, epoch, seq))
            return
        layout = None
        if self.accelerator.num_processes > 1:  # one collective for everything; only writers unpack (in the thread)
            packed, layout = pack_rows(rows)
            rows = self.accelerator.gather(packed)
        if self.store.writable:  # the de-dup and the device-to-host copy wait for the device: on the writer thread
            self._issued(self._writer_worker().submit(self._store, rows, layout, epoch, seq))
            return
        if seq is not None:  # a reader records the global batch's rows too, on the reader thread (a device copy)
            self._recording = self._reader.submit(self._record, rows, layout, seq)
        self._unsettled = True

    def _issued(self, store: Future) -> None:
        """A store is on its way; more than MAX_PENDING_WRITES in flight and the oldest is waited for (with
        sync='epoch' nothing else bounds how far the writer may fall behind)."""
        self._pending.append(store)
        self._unsettled = True
        while len(self._pending) > MAX_PENDING_WRITES:
            self._pending.popleft().result()
            self._raise_writer_error()

    def _writer_worker(self) -> Worker:
        """The writer's one long-lived thread, started by the first write."""
        self._writer_thread = self._writer_thread or Worker("scl-bank-writer")
        return self._writer_thread

    def _store(self, rows, layout: list | None, epoch: int, seq: int | None) -> None:
        """Keep each image once — its first copy in the step, and only when not written earlier in the epoch —
        and store the rows (on the writer thread; `layout`: the rows arrive packed by `pack_rows`). `seq`: the
        write's number in the write log, when the read-ahead needs its rows."""
        try:
            rows = unpack_rows(rows.cpu(), layout) if layout is not None else {k: v.cpu() for k, v in rows.items()}
            indices, fresh = rows.pop("indices"), rows.pop("fresh")
            if seq is not None:
                self._log.record(seq, indices)
            keep = first_occurrence(indices)
            keep = keep[fresh[keep].bool()]
            if self.sync == "epoch":  # with 'step' every read came after the epoch's earlier writes: fresh is exact
                stamps = self.store.arrays["stamps"][indices[keep].numpy()]
                again = torch.from_numpy(stamps.astype("int64")) == epoch + 1
                if again.any():  # read as fresh before its earlier write of the epoch was stored
                    warnings.warn(REPEAT_WARNING, stacklevel=1)
                    keep = keep[~again]
            self.store.store_rows(indices[keep], {k: v[keep] for k, v in rows.items()}, epoch)
        except BaseException as err:  # re-raised in the training thread by settle()
            self._writer_error = err

    def _gather_store(self, rows: dict, epoch: int, seq: int | None) -> None:
        """On the writer thread of every process: pack this process's rows, all-gather them over `self.group`
        (a group of its own: never interleaved with the training thread's collectives on the default group),
        then store them (a writer) or record their indices for the read-ahead (a reader)."""
        try:
            packed, layout = pack_rows(rows)
            del rows
            parts = [torch.empty_like(packed) for _ in range(self.accelerator.num_processes)]
            torch.distributed.all_gather(parts, packed, group=self.group)  # equal sizes: even_batches is required
            packed = torch.cat(parts)
        except BaseException as err:  # re-raised in the training thread by settle()
            self._writer_error = err
            return
        if self.store.writable:
            self._store(packed, layout, epoch, seq)
        elif seq is not None:
            self._record(packed, layout, seq)

    def _record(self, packed: torch.Tensor, layout: list, seq: int) -> None:
        """A process that does not write: the rows of write `seq` (every row of the global batch), for the read-ahead."""
        try:
            self._log.record(seq, unpack_rows(packed, layout, names=("indices",))["indices"])
        except BaseException as err:  # re-raised in the training thread by settle()
            self._writer_error = err

    def settle(self) -> None:
        """Wait for the last write (its store on the writer thread), then for every process: after this, every process
        reads what every earlier step wrote. A no-op when nothing was written since the last settle."""
        if not self._unsettled:
            return
        while self._pending:
            self._pending.popleft().result()  # _store keeps its error for the raise below
        if self._recording is not None:
            self._recording.result()
            self._recording = None
        self._unsettled = False
        self._log.settled = self._log.issued
        self._log.forget_until(self._log.settled if self._prefetch is None else self._prefetch.after)
        self._raise_writer_error()
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()

    def _raise_writer_error(self) -> None:
        if self._writer_error is not None:
            error, self._writer_error = self._writer_error, None
            raise RuntimeError("the bank's writer thread failed; the bank is marked dirty") from error

    def stored_predictions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's P̄ (N, C) and whether it was ever written (N,), after the last write: for statistics over
        the whole bank (the reliability gate), identical on every process."""
        self.settle()
        return (torch.from_numpy(np.asarray(self.store.predictions, dtype=np.float32)),
                torch.from_numpy(np.asarray(self.store.seen) > 0))

    def weight_share(self, weights: torch.Tensor) -> torch.Tensor:
        """P·Σw_local / Σw_all: turns this process's weighted mean into its share of the weighted mean over the
        global batch, so that DDP's gradient average equals one process training on the whole batch."""
        if self.accelerator.num_processes == 1:
            return torch.ones((), device=weights.device)
        local = weights.float().sum().detach()
        total = self.accelerator.reduce(local.clone(), reduction="sum")
        return local * self.accelerator.num_processes / total.clamp_min(1e-6)

    # ------------------------------------------------------------------ checkpoints and the end
    def save(self, checkpoint_dir: str | Path, epoch: float, global_step: int, should_save: bool) -> None:
        """A clean point on every node's writer; the process that saves the checkpoint snapshots the bank
        into `checkpoint_dir/scl_bank` (checksummed, sharing no file with other checkpoints)."""
        self.settle()
        if self.store.writable:
            self.store.mark(epoch, global_step)
            if should_save:
                self.snapshot = save_snapshot(self.store, checkpoint_dir, self.snapshot)

    def close(self, epoch: float, global_step: int) -> None:
        """The end of training: the last write done, data flushed, header clean, pages released."""
        ended = False
        try:
            self.settle()
            self._drop_prefetch()
            ended = True
        finally:  # the threads end here; after an error (a failed store, an interrupt) without waiting for them
            for thread in (self._reader, self._writer_thread):
                if thread is not None:
                    thread.shutdown(wait=ended)
            self._reader = self._writer_thread = None
        if self.store.writable:
            self.store.mark(epoch, global_step)


def check_node_local(accelerator, folder: Path) -> None:
    """Each node's local main writes its own copy: two nodes sharing one bank folder would interleave writes."""
    acc = accelerator
    if acc.num_processes == 1:
        return
    token = broadcast_object_list([uuid.uuid4().hex if acc.is_main_process else None])[0]
    marker = folder / f".writer-{token}-{acc.process_index}"
    if acc.is_local_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        marker.touch()
    acc.wait_for_everyone()
    writers = len(list(folder.glob(f".writer-{token}-*"))) if acc.is_local_main_process else 0
    shared = acc.reduce(torch.tensor([int(writers > 1)], device=acc.device), reduction="sum").item()
    marker.unlink(missing_ok=True)
    if shared:
        raise RuntimeError(
            f"bank_dir {folder} is shared by several nodes; each node must keep its own copy on "
            "node-local disk (docs/bank.md): set SCLConfig.bank_dir to a local path such as /tmp/scl_bank."
        )
