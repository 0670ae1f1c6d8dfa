"""Exact resume and crash safety of the bank: checkpoint snapshots, restore, dirty and truncated banks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from scl_hf.bank import (
    MANIFEST_NAME,
    SNAPSHOT_DIR,
    BankCorruptError,
    BankHeader,
    SCLBank,
    open_bank,
    read_header,
    restore_snapshot,
    save_snapshot,
    snapshots,
)
from scl_hf.trainer import _EpochSync

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from tiny_run import tiny_trainer  # noqa: E402

ARRAYS = ("predictions", "seen", "stamps", "heatmaps", "coverage")


def bank_arrays(folder) -> dict[str, np.ndarray]:
    return {name: np.load(Path(folder) / f"{name}.npy") for name in ARRAYS}


def assert_same_bank(a, b) -> None:
    for name, array in bank_arrays(a).items():
        np.testing.assert_array_equal(array, np.load(Path(b) / f"{name}.npy"), err_msg=name)


# ----------------------------------------------------------------------------- exact resume, end to end


def test_resume_mid_epoch_continues_exactly(tmp_path):
    """Stopped at step 7 (last checkpoint at 6, mid-epoch), resumed: bank and weights equal an uninterrupted run."""
    common = dict(save_strategy="steps", save_steps=3)  # 32 images, batch 8: 4 steps per epoch, 8 in all
    straight = tiny_trainer(str(tmp_path / "straight"), save_total_limit=1, **common)
    straight.train()

    stopped = tiny_trainer(str(tmp_path / "resumed"), stop_at=7, **common)
    stopped.train()
    assert read_header(stopped.bank_dir).global_step == 7  # the live bank went past the checkpoint
    resumed = tiny_trainer(str(tmp_path / "resumed"), **common)
    resumed.train(resume_from_checkpoint=True)  # the last checkpoint: checkpoint-6, epoch 1.5

    assert resumed.state.global_step == straight.state.global_step == 8
    assert_same_bank(straight.bank_dir, resumed.bank_dir)
    weights, resumed_weights = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)
    header = read_header(resumed.bank_dir)
    assert not header.dirty and header.global_step == 8

    # checkpoint-6 shares no file with checkpoint-3 (a damaged file cannot spread), and checksums all of its own
    snapshot = tmp_path / "resumed" / "checkpoint-6" / SNAPSHOT_DIR
    manifest = json.loads((snapshot / MANIFEST_NAME).read_text())
    older = {os.stat(p).st_ino for p in (tmp_path / "resumed/checkpoint-3" / SNAPSHOT_DIR).iterdir()}
    files = [p for p in snapshot.iterdir() if p.name != MANIFEST_NAME]
    assert files and not older & {os.stat(p).st_ino for p in files}
    assert sorted(manifest["checksums"]) == sorted(p.name for p in files)

    # rotation (save_total_limit=1) left only the final checkpoint of the straight run; it restores whole
    assert sorted(p.name for p in (tmp_path / "straight").glob("checkpoint-*")) == ["checkpoint-8"]
    restored, _ = restore_snapshot(tmp_path / "straight/checkpoint-8", tmp_path / "bank", straight.expected_bank_header())
    assert restored.header.global_step == 8
    assert_same_bank(tmp_path / "bank", straight.bank_dir)


def test_fresh_run_over_a_dirty_bank_is_refused_and_resume_repairs_it(tmp_path):
    common = dict(save_strategy="steps", save_steps=2, num_train_epochs=1, num_train=16)
    tiny_trainer(str(tmp_path / "run"), **common).train()
    bank_dir = tmp_path / "run" / "scl_bank"
    header = read_header(bank_dir)
    header.dirty = True  # what a run killed in the middle of a bank write leaves
    (bank_dir / "header.json").write_text(json.dumps(header.__dict__))
    with pytest.raises(BankCorruptError, match="resume_from_checkpoint=True"):
        tiny_trainer(str(tmp_path / "run"), **common).train()
    resumed = tiny_trainer(str(tmp_path / "run"), **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert not read_header(bank_dir).dirty and resumed.state.global_step == 2


def test_epoch_published_to_workers_on_a_mid_epoch_resume_is_exact_for_long_epochs():
    epoch_ref = torch.zeros(1, dtype=torch.long)
    sync = _EpochSync(epoch_ref)
    steps = 2_000_000  # e.g. ImageNet at one image per step: e + (n-1)/n must not round up to e + 1
    for epoch, expected in ((3 + (steps - 1) / steps, 3), (3.0, 3), (1 + 1 / steps, 1), (0.0, 0), (None, 0)):
        sync.on_epoch_begin(None, SimpleNamespace(epoch=epoch), None)
        assert epoch_ref.item() == expected, epoch


# ----------------------------------------------------------------------------- snapshot chains


def small_header() -> BankHeader:
    return BankHeader(num_rows=40, num_classes=3, size=4, with_heatmaps=True, dataset_fingerprint="d",
                      config_fingerprint="c")


def random_update(bank: SCLBank, gen: torch.Generator, count: int) -> None:
    rows = torch.randperm(bank.header.num_rows, generator=gen)[:count]
    x0y0 = torch.rand(count, 2, generator=gen) * 0.5
    bank.update(rows, torch.rand(count, 3, generator=gen), 0.7, boxes=torch.cat([x0y0, x0y0 + 0.5], 1),
                flips=torch.rand(count, generator=gen) < 0.5, map_probs=torch.rand(count, 3, 2, 2, generator=gen))


def copy_as_clone(source, target) -> bool:
    """What a reflink gives, for file systems without one (ext4 here): an independent copy of the file."""
    shutil.copyfile(source, target)
    return True


def test_snapshot_chain_restores_every_checkpoint_and_starts_a_new_base_when_deltas_grow(tmp_path, monkeypatch):
    """The chain of a file system that clones (XFS, Btrfs); cloning is stood in for by copying."""
    monkeypatch.setattr(snapshots, "clone_file", copy_as_clone)
    bank = SCLBank.create(tmp_path / "live", small_header())
    gen = torch.Generator().manual_seed(0)
    previous, states, kinds = None, {}, []
    for step, count in enumerate([40, 8, 8, 16, 16, 4], start=1):
        random_update(bank, gen, count)
        bank.mark(epoch=step, global_step=step)
        previous = save_snapshot(bank, tmp_path / f"checkpoint-{step}", previous)
        kinds.append((previous.manifest["base"][:14], len(previous.manifest["deltas"])))
        states[step] = {name: np.array(array) for name, array in bank.arrays.items()}
    # 8/40 + 8/40 + 16/40 rows fit under one base; the next 16 rows would exceed it: a new base
    assert kinds == [("base-000000001", 0), ("base-000000001", 1), ("base-000000001", 2), ("base-000000001", 3),
                     ("base-000000005", 0), ("base-000000005", 1)]
    for step in (6, 2, 4):  # rotation-like deletions of the oldest folders must not matter
        restored, _ = restore_snapshot(tmp_path / f"checkpoint-{step}", tmp_path / f"restored-{step}", small_header())
        assert restored.header.global_step == step and not restored.header.dirty
        for name, array in states[step].items():
            np.testing.assert_array_equal(restored.arrays[name], array, err_msg=f"{name} at {step}")
        if step == 2:
            shutil.rmtree(tmp_path / "checkpoint-1")
    # saving twice at one step never rewrites a file of another checkpoint
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoint-6" / SNAPSHOT_DIR).iterdir()}
    random_update(bank, gen, 3)
    again = save_snapshot(bank, tmp_path / "checkpoint-6b", previous)
    save_snapshot(bank, tmp_path / "checkpoint-6", again)  # over the folder its files are linked from
    assert all((tmp_path / "checkpoint-6b" / SNAPSHOT_DIR / name).read_bytes() == data
               for name, data in before.items() if name != MANIFEST_NAME)
    restored, _ = restore_snapshot(tmp_path / "checkpoint-6", tmp_path / "restored-again", small_header())
    for name, array in bank.arrays.items():
        np.testing.assert_array_equal(restored.arrays[name], array, err_msg=name)


def test_without_clones_every_snapshot_is_a_new_base_of_its_own(tmp_path):
    bank = SCLBank.create(tmp_path / "live", small_header())
    gen = torch.Generator().manual_seed(0)
    previous = None
    for step in (1, 2):
        random_update(bank, gen, 8)
        bank.mark(epoch=step, global_step=step)
        previous = save_snapshot(bank, tmp_path / f"checkpoint-{step}", previous)
        if snapshots.clone_file(bank.folder / "seen.npy", tmp_path / "probe"):
            pytest.skip("this file system clones files: the chain is used")
        assert previous.manifest["base"].startswith(f"base-{step:09d}-") and previous.manifest["deltas"] == []
    inodes = [{os.stat(p).st_ino for p in (tmp_path / f"checkpoint-{s}" / SNAPSHOT_DIR).iterdir()} for s in (1, 2)]
    assert not inodes[0] & inodes[1]


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # one flipped byte in the middle: same size, so only the checksum can tell
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(data)


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("chained", [False, True])
def test_a_damaged_snapshot_is_refused_and_stays_in_its_checkpoint(tmp_path, monkeypatch, how, chained):
    if chained:
        monkeypatch.setattr(snapshots, "clone_file", copy_as_clone)
    bank = SCLBank.create(tmp_path / "live", small_header())
    gen = torch.Generator().manual_seed(0)
    previous, states = None, {}
    for step in (1, 2, 3):
        random_update(bank, gen, 8)
        bank.mark(epoch=step, global_step=step)
        previous = save_snapshot(bank, tmp_path / f"checkpoint-{step}", previous)
        states[step] = {name: np.array(array) for name, array in bank.arrays.items()}
    manifest = json.loads((tmp_path / "checkpoint-2" / SNAPSHOT_DIR / MANIFEST_NAME).read_text())
    assert len(manifest["deltas"]) == (1 if chained else 0)
    damage(tmp_path / "checkpoint-2" / SNAPSHOT_DIR / f"{manifest['base']}.heatmaps.npy", how)
    live_before = np.array(bank.arrays["heatmaps"])
    with pytest.raises(BankCorruptError, match=r"heatmaps.npy does not match its checksum.*checkpoint-3"):
        restore_snapshot(tmp_path / "checkpoint-2", tmp_path / "live", small_header())
    np.testing.assert_array_equal(np.load(tmp_path / "live" / "heatmaps.npy"), live_before)  # nothing restored
    for step in (1, 3):  # the other checkpoints restore whole
        restored, _ = restore_snapshot(tmp_path / f"checkpoint-{step}", tmp_path / f"restored-{step}", small_header())
        for name, array in states[step].items():
            np.testing.assert_array_equal(restored.arrays[name], array, err_msg=f"{name} at {step}")


def test_resume_from_a_damaged_checkpoint_fails_before_training(tmp_path):
    """A real run with checkpoints, its newest snapshot truncated: the resumed launch exits non-zero, names the
    damaged file and the checkpoint to use instead, and leaves the live bank alone."""
    out = tmp_path / "run"
    tiny_trainer(str(out), save_strategy="steps", save_steps=1, num_train_epochs=1, num_train=16).train()
    snapshot = out / "checkpoint-2" / SNAPSHOT_DIR
    manifest = json.loads((snapshot / MANIFEST_NAME).read_text())
    damage(snapshot / f"{manifest['base']}.heatmaps.npy", "truncate")
    config = dict(output_dir=str(out), save_strategy="steps", save_steps=1, num_train_epochs=2, num_train=16,
                  resume=str(out / "checkpoint-2"))
    done = subprocess.run([sys.executable, str(SCRIPTS / "tiny_run.py"), json.dumps(config)], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
    assert done.returncode != 0
    assert "heatmaps.npy does not match its checksum" in done.stderr and "checkpoint-1" in done.stderr, done.stderr[-3000:]
    assert "'epoch'" not in done.stdout  # refused before any training step


def test_resume_from_a_checkpoint_without_snapshot_says_why(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(ValueError, match="holds no bank snapshot"):
        restore_snapshot(tmp_path / "checkpoint-5", tmp_path / "bank", small_header())


# ----------------------------------------------------------------------------- crash safety


@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_a_writer_killed_mid_write_leaves_a_bank_that_is_refused(tmp_path, layout):
    from kill_writer import header

    folder = tmp_path / "bank"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    writer = subprocess.Popen([sys.executable, str(SCRIPTS / "kill_writer.py"), str(folder), layout],
                              stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    with pytest.raises(BankCorruptError) as info:
        open_bank(folder, header(layout), writable=False, create=False)
    message = str(info.value)
    assert "dirty" in message and "resume_from_checkpoint=True" in message and str(folder) in message
    with pytest.raises(BankCorruptError):  # a fresh run refuses it too, rather than guessing
        open_bank(folder, header(layout), writable=True, create=True, reset=True)


@pytest.mark.parametrize("name", ARRAYS)
def test_truncated_or_missing_files_are_refused(tmp_path, name):
    bank = SCLBank.create(tmp_path, small_header())
    random_update(bank, torch.Generator().manual_seed(1), 5)
    bank.flush()
    del bank
    path = tmp_path / f"{name}.npy"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 1)
    with pytest.raises(BankCorruptError, match=rf"{name}.npy has {size - 1} bytes instead of {size} \(truncated\)"):
        open_bank(tmp_path, small_header(), writable=False, create=False)
    path.unlink()
    with pytest.raises(BankCorruptError, match=rf"{name}.npy is missing.*resume_from_checkpoint=True"):
        open_bank(tmp_path, small_header(), writable=False, create=False)


def test_clean_points_clear_the_dirty_flag(tmp_path):
    bank = SCLBank.create(tmp_path, small_header())
    assert not read_header(tmp_path).dirty
    random_update(bank, torch.Generator().manual_seed(2), 3)
    assert read_header(tmp_path).dirty  # set before the first write after a clean point
    bank.mark(epoch=0.5, global_step=1)
    header = read_header(tmp_path)
    assert not header.dirty and header.global_step == 1
    assert open_bank(tmp_path, small_header(), writable=False, create=False).header.global_step == 1
