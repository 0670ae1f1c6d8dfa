"""The read-ahead (SharedBank.prefetch): reads with it equal reads without it, on real memmaps.

The hard case is a prefetch that reads rows before the previous step's write has stored them: the batch of
step t+1 shares rows with the batch of step t, and its prefetch runs to completion before step t's write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from scl_hf.bank import BankHeader, SharedBank

N, C, S, B = 40, 6, 5, 8


def make_bank(folder: Path, layout: str) -> SharedBank:
    header = BankHeader(N, C, S, True, "data", "cfg", layout=layout, top_k=2 if layout == "sparse" else 0)
    return SharedBank.setup(Accelerator(), folder, header, momentum=0.7, heatmap_momentum=0.6)


def batches(steps: int) -> list[dict]:
    """Step t's rows overlap step t-1's (half of them) and the rest are new; each step is its own epoch, so
    the overlapping rows are fresh again and step t-1's write changes them."""
    gen = torch.Generator().manual_seed(0)
    out, previous = [], torch.randperm(N, generator=gen)[:B]
    for _ in range(steps):
        index = torch.cat([previous[: B // 2], torch.randperm(N, generator=gen)[: B // 2]])
        x0y0 = torch.rand(B, 2, generator=gen) * 0.4
        out.append({"index": index, "index_host": index.clone(),
                    "boxes": torch.cat([x0y0, x0y0 + 0.4 + 0.2 * torch.rand(B, 2, generator=gen)], 1),
                    "flips": torch.rand(B, generator=gen) < 0.5, "label": torch.randint(0, C, (B,), generator=gen),
                    "logits": torch.randn(B, C, generator=gen), "maps": torch.randn(B, C, S, S, generator=gen)})
        previous = index
    return out


def on(inputs: dict, device: torch.device) -> dict:
    return {k: v if k == "index_host" else v.to(device) for k, v in inputs.items()}


def assert_same_read(a, b) -> None:
    for name in ("fresh", "running", "seen", "targets", "weights"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, msg=name)
    assert sorted(a.rows) == sorted(b.rows)
    for name in a.rows:
        torch.testing.assert_close(a.rows[name], b.rows[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("layout", ["dense", "sparse"])
@pytest.mark.parametrize("order", ["before_write", "after_write"])
def test_prefetched_reads_equal_plain_reads_when_the_previous_write_changed_the_rows(tmp_path, layout, order):
    """Two banks in lockstep, one read ahead and one not: every read and the final files are equal.
    `before_write`: step t+1's rows are prefetched (to completion) before step t's write is issued — the
    prefetch holds stale copies of the shared rows, and the read must take them from the files again.
    `after_write`: the trainer's order (the prefetch overlaps the writer thread's store)."""
    ahead, plain = make_bank(tmp_path / "ahead", layout), make_bank(tmp_path / "plain", layout)
    device = ahead.accelerator.device
    steps = [on(inputs, device) for inputs in batches(6)]
    stale_rows = 0
    for t, inputs in enumerate(steps):
        reads = [bank.read(inputs, t, (S, S), device) for bank in (ahead, plain)]
        assert_same_read(*reads)
        following = steps[t + 1] if t + 1 < len(steps) else None
        if following is not None and order == "before_write":
            ahead.prefetch(following)
            early = {k: v.clone() for k, v in ahead._prefetch.result().items()}  # read before this step's write
        for bank, read in zip((ahead, plain), reads, strict=True):
            bank.write(inputs, inputs["logits"], inputs["maps"], read, t)
        if following is not None and order == "after_write":
            ahead.prefetch(following)
        if following is not None and order == "before_write":
            shared = torch.isin(following["index_host"], inputs["index_host"])
            fresh = ahead.read(following, t + 1, (S, S), device)  # then read again below, from a new prefetch
            plain_read = plain.read(following, t + 1, (S, S), device)
            assert_same_read(fresh, plain_read)
            stale_rows += int((early["predictions"][shared] != fresh.rows["predictions"].cpu()[shared]).any(1).sum())
            ahead.prefetch(following)  # the loop's read of step t+1 takes this one (nothing written in between)
    for bank in (ahead, plain):
        bank.close(len(steps), len(steps))
    for name in ahead.store.arrays:
        np.testing.assert_array_equal(np.load(tmp_path / "ahead" / f"{name}.npy"),
                                      np.load(tmp_path / "plain" / f"{name}.npy"), err_msg=name)
    if order == "before_write":
        assert stale_rows > 0  # the test did exercise prefetched rows that a later write changed


def test_a_prefetch_of_another_batch_is_not_used(tmp_path):
    ahead, plain = make_bank(tmp_path / "ahead", "dense"), make_bank(tmp_path / "plain", "dense")
    device = ahead.accelerator.device
    first, second = (on(inputs, device) for inputs in batches(2))
    for bank in (ahead, plain):
        bank.write(first, first["logits"], first["maps"], bank.read(first, 0, (S, S), device), 0)
    ahead.prefetch(first)  # but the next read is of `second`
    assert_same_read(ahead.read(second, 1, (S, S), device), plain.read(second, 1, (S, S), device))
    ahead.prefetch(second, spatial=False)  # the heatmaps are then read from the files by `read`
    assert_same_read(ahead.read(second, 1, (S, S), device), plain.read(second, 1, (S, S), device))
    for bank in (ahead, plain):
        bank.close(1, 2)


@pytest.mark.slow
def test_two_processes_read_ahead_exactly_rows_the_other_rank_wrote(tmp_path):
    """Rank 1 opens the bank read-only: it learns which rows rank 0 stored from the gathered global batch."""
    import subprocess

    from test_bank_distributed import ACCELERATE, free_port, run_env

    script = Path(__file__).parent / "scripts" / "readahead_two.py"
    command = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               str(script), str(tmp_path)]
    done = subprocess.run(command, env=run_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert "rank 0: reads equal" in done.stdout and "rank 1: reads equal" in done.stdout


def test_the_writer_and_reader_are_one_thread_each_and_end_at_close(tmp_path):
    """Every step's store runs on one long-lived daemon thread (no thread started per step), as does every
    prefetch; `close` ends both."""
    import threading

    bank = make_bank(tmp_path, "dense")
    device = bank.accelerator.device
    steps = [on(inputs, device) for inputs in batches(4)]
    idents = set()
    for t, inputs in enumerate(steps):
        bank.prefetch(inputs)
        read = bank.read(inputs, t, (S, S), device)
        bank.write(inputs, inputs["logits"], inputs["maps"], read, t)
        idents.add(bank._writer_thread._thread.ident)
        assert [th.name for th in threading.enumerate()].count("scl-bank-writer") == 1
    writer, reader = bank._writer_thread._thread, bank._reader._thread
    assert len(idents) == 1 and writer.daemon and reader.daemon and writer.is_alive() and reader.is_alive()
    bank.close(3, 4)
    assert not writer.is_alive() and not reader.is_alive()


def test_a_failed_store_is_raised_by_the_next_settle_and_the_bank_still_closes(tmp_path):
    bank = make_bank(tmp_path, "dense")
    device = bank.accelerator.device
    first, second = (on(inputs, device) for inputs in batches(2))
    bank.write(first, first["logits"], first["maps"], bank.read(first, 0, (S, S), device), 0)
    failure = OSError("disk full")

    def store_rows(*args, **kwargs):
        raise failure

    read = bank.read(second, 1, (S, S), device)  # the first write settled
    bank.store.store_rows = store_rows
    bank.write(second, second["logits"], second["maps"], read, 1)
    with pytest.raises(RuntimeError, match="writer thread failed; the bank is marked dirty") as raised:
        bank.settle()
    assert raised.value.__cause__ is failure
    bank.settle()  # raised once: the write is settled
    del bank.store.store_rows
    writer = bank._writer_thread._thread
    bank.write(second, second["logits"], second["maps"], bank.read(second, 1, (S, S), device), 1)
    read = bank.read(first, 2, (S, S), device)
    bank.store.store_rows = store_rows
    bank.write(first, first["logits"], first["maps"], read, 2)
    with pytest.raises(RuntimeError, match="writer thread failed"):
        bank.close(2, 3)  # the failure is raised, and the threads end all the same
    writer.join(timeout=30)
    assert not writer.is_alive() and bank._writer_thread is None


def test_a_crashed_run_exits_while_a_store_still_waits(tmp_path):
    """The bank's threads are daemons: an exception in the training thread ends the process even when a task
    never returns (a store whose copy waits for an all-gather that a dead process never joins)."""
    import subprocess
    import sys

    code = ("import threading\nfrom scl_hf.bank.worker import Worker\n"
            "Worker('scl-bank-writer').submit(threading.Event().wait)\nraise SystemExit('crash')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "crash" in done.stderr
