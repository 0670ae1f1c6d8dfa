"""When reads wait for writes (SharedBank's `sync`), on real memmaps.

With sync='epoch' (the default) a step's read waits only at an epoch's first step (for the epochs before it)
and at its last (accelerate pads it with rows the epoch already wrote); in between the writer may fall
behind. With sync='step' every read waits. Both must store the same bank: within an epoch every image
appears once, so no read of a fresh row can depend on a write of its own epoch.
"""

from __future__ import annotations

import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from scl_hf import SCLConfig
from scl_hf.bank import BankHeader, SharedBank
from scl_hf.bank.shared import MAX_PENDING_WRITES, REPEAT_WARNING

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from tiny_run import tiny_trainer  # noqa: E402

N, C, S, B = 24, 5, 4, 4
STEPS = N // B  # steps per epoch: every row once


def make_bank(folder: Path, sync: str, steps_per_epoch: int | None = STEPS) -> SharedBank:
    header = BankHeader(N, C, S, True, "data", "cfg")
    return SharedBank.setup(Accelerator(), folder, header, momentum=0.7, heatmap_momentum=0.6, sync=sync,
                            steps_per_epoch=steps_per_epoch)


def batch(index: torch.Tensor, gen: torch.Generator) -> dict:
    n = len(index)
    x0y0 = torch.rand(n, 2, generator=gen) * 0.4
    return {"index": index, "index_host": index.clone(),
            "boxes": torch.cat([x0y0, x0y0 + 0.4 + 0.2 * torch.rand(n, 2, generator=gen)], 1),
            "flips": torch.rand(n, generator=gen) < 0.5, "label": torch.randint(0, C, (n,), generator=gen),
            "logits": torch.randn(n, C, generator=gen), "maps": torch.randn(n, C, S, S, generator=gen)}


def epochs(count: int, pad: bool) -> list[list[dict]]:
    """Each epoch a permutation of the rows in STEPS batches; with `pad`, of all rows but the last two, its last
    batch filled up with two rows of its first (accelerate's padding of an uneven last step)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        order = torch.randperm(N - 2 if pad else N, generator=gen)
        steps = [order[i * B:(i + 1) * B] for i in range(STEPS)]
        if pad:
            steps[-1] = torch.cat([steps[-1], steps[0][:2]])
        out.append([batch(index, gen) for index in steps])
    return out


class HeldStore:
    """Holds the writer thread before each store of the real memmap bank until released."""

    def __init__(self, bank: SharedBank):
        self.release = threading.Event()
        self.stores = 0
        store_rows = bank.store.store_rows

        def held(*args, **kwargs):
            self.release.wait(timeout=30)
            self.stores += 1
            return store_rows(*args, **kwargs)

        bank.store.store_rows = held


def in_thread(call) -> tuple[threading.Thread, threading.Event]:
    """Run `call()` on a thread; the event is set when it returned."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (call(), done.set()), daemon=True)
    thread.start()
    return thread, done


def step(bank: SharedBank, inputs: dict, epoch: int) -> None:
    read = bank.read(inputs, epoch, (S, S), torch.device("cpu"))
    bank.write(inputs, inputs["logits"], inputs["maps"], read, epoch)


def run(bank: SharedBank, schedule: list[list[dict]], prefetch: bool) -> list:
    reads = []
    for epoch, steps in enumerate(schedule):
        for inputs in steps:
            if prefetch:
                bank.prefetch(inputs, epoch=epoch)
            read = bank.read(inputs, epoch, (S, S), torch.device("cpu"))
            reads.append(read)
            bank.write(inputs, inputs["logits"], inputs["maps"], read, epoch)
    bank.close(len(schedule), len(schedule) * STEPS)
    return reads


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("prefetch", [False, True])
def test_epoch_and_step_sync_store_the_same_bank(tmp_path, pad, prefetch):
    """Three epochs, each row once per epoch (and with `pad`, two rows again in the last step): the fresh rows
    read the same values and the files end bit-identical; padded rows are not fresh in either mode."""
    schedule = epochs(3, pad)
    by_epoch = run(make_bank(tmp_path / "epoch", "epoch"), schedule, prefetch)
    by_step = run(make_bank(tmp_path / "step", "step"), schedule, prefetch)
    for a, b in zip(by_epoch, by_step, strict=True):
        torch.testing.assert_close(a.fresh, b.fresh, rtol=0, atol=0)
        fresh = a.fresh
        for name in ("running", "seen", "targets", "weights"):
            torch.testing.assert_close(getattr(a, name)[fresh], getattr(b, name)[fresh], rtol=0, atol=0, msg=name)
    assert sum(int((~r.fresh).sum()) for r in by_epoch) == (2 * 3 if pad else 0)
    for name in ("predictions", "seen", "stamps", "heatmaps", "coverage"):
        np.testing.assert_array_equal(np.load(tmp_path / "epoch" / f"{name}.npy"),
                                      np.load(tmp_path / "step" / f"{name}.npy"), err_msg=name)
    used = N - 2 if pad else N
    assert (np.load(tmp_path / "epoch" / "seen.npy")[:used] == 3).all()  # every image once per epoch, padded or not


def test_epoch_sync_steps_run_ahead_of_a_held_writer_up_to_the_bound_and_the_last_step_waits(tmp_path):
    """The writer thread is held before its first store. With sync='epoch' the epoch's first
    MAX_PENDING_WRITES steps read and write without waiting; the next write waits for the oldest store;
    released, every store lands in order and the epoch's last read comes after them."""
    bank = make_bank(tmp_path / "bank", "epoch")
    held = HeldStore(bank)
    steps = epochs(1, pad=False)[0]
    for t in range(MAX_PENDING_WRITES):
        thread, done = in_thread(lambda t=t: step(bank, steps[t], 0))
        assert done.wait(10), f"step {t} waited for the held writer"
        thread.join()
    assert held.stores == 0 and len(bank._pending) == MAX_PENDING_WRITES
    thread, done = in_thread(lambda: step(bank, steps[MAX_PENDING_WRITES], 0))
    assert not done.wait(1.0), "a write beyond MAX_PENDING_WRITES did not wait for the oldest store"
    held.release.set()
    assert done.wait(30)
    thread.join()
    for inputs in steps[MAX_PENDING_WRITES + 1:]:
        step(bank, inputs, 0)
    bank.close(1, STEPS)
    assert held.stores == STEPS
    assert (np.load(tmp_path / "bank" / "seen.npy") == 1).all()


def test_step_sync_waits_for_the_writer_at_every_read(tmp_path):
    bank = make_bank(tmp_path / "bank", "step")
    held = HeldStore(bank)
    steps = epochs(1, pad=False)[0]
    step(bank, steps[0], 0)
    thread, done = in_thread(lambda: bank.read(steps[1], 0, (S, S), torch.device("cpu")))
    assert not done.wait(1.0), "sync='step': the read did not wait for the previous step's store"
    held.release.set()
    assert done.wait(30)
    thread.join()
    bank.close(1, 1)


def test_a_row_repeated_within_an_epoch_before_its_store_is_stored_once_with_a_warning(tmp_path):
    """A sampler that repeats an image within the epoch breaks sync='epoch''s premise: the repeat may be read as
    fresh before its first write lands. The writer notices (its stamp says this epoch), keeps the first write,
    and warns with the fix."""
    bank = make_bank(tmp_path / "bank", "epoch", steps_per_epoch=10)
    held = HeldStore(bank)
    gen = torch.Generator().manual_seed(1)
    first = batch(torch.tensor([0, 1, 2, 3]), gen)
    repeat = batch(torch.tensor([3, 4, 5, 6]), gen)  # row 3 again, same epoch
    step(bank, first, 0)
    read = bank.read(repeat, 0, (S, S), torch.device("cpu"))
    assert bool(read.fresh[0])  # not stored yet: taken for fresh
    bank.write(repeat, repeat["logits"], repeat["maps"], read, 0)
    held.release.set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bank.settle()
    assert any(REPEAT_WARNING in str(w.message) for w in caught)
    bank.close(1, 2)
    seen = np.load(tmp_path / "bank" / "seen.npy")
    assert seen[3] == 1 and seen[:7].tolist() == [1] * 7


def test_an_epoch_of_unexpected_length_falls_back_to_step_sync(tmp_path):
    """steps_per_epoch says 8 but the epoch had 6 steps (a sampler of another length): the last step was not
    settled where the bank expected it, so it warns and settles every step from then on."""
    bank = make_bank(tmp_path / "bank", "epoch", steps_per_epoch=8)
    schedule = epochs(2, pad=False)
    for inputs in schedule[0]:
        step(bank, inputs, 0)
    with pytest.warns(UserWarning, match="steps per epoch"):
        step(bank, schedule[1][0], 1)
    assert bank.sync == "step"
    bank.close(2, 7)


def test_several_processes_need_the_epoch_length(tmp_path):
    class TwoProcesses:
        num_processes = 2

    with pytest.raises(ValueError, match="steps_per_epoch"):
        SharedBank(TwoProcesses(), None, None, 0.5, 0.5, sync="epoch", steps_per_epoch=None)
    with pytest.raises(ValueError, match="bank sync"):
        SharedBank(TwoProcesses(), None, None, 0.5, 0.5, sync="never")
    with pytest.raises(ValueError, match="bank_sync"):
        SCLConfig(output_dir=str(tmp_path), bank_sync="never")


def test_a_training_run_stores_the_same_bank_with_either_sync(tmp_path):
    """The trainer end to end (1 process, an epoch length that does not divide the batch, read-ahead on):
    bank_sync='epoch' and 'step' give bit-identical banks and weights."""
    runs = {}
    for sync in ("epoch", "step"):
        trainer = tiny_trainer(str(tmp_path / sync), num_train=30, bank_sync=sync, dataloader_drop_last=False,
                               num_train_epochs=3)
        trainer.train()
        runs[sync] = trainer
    for name in ("predictions", "seen", "stamps", "heatmaps", "coverage"):
        np.testing.assert_array_equal(np.load(Path(runs["epoch"].bank_dir) / f"{name}.npy"),
                                      np.load(Path(runs["step"].bank_dir) / f"{name}.npy"), err_msg=name)
    assert (np.load(Path(runs["epoch"].bank_dir) / "seen.npy") == 3).all()  # it records from epoch w − 1 = 0: every epoch
    for (name, a), b in zip(runs["epoch"].model.state_dict().items(), runs["step"].model.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
