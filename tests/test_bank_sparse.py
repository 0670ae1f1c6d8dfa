"""Sparse (top-k + observed) heatmap bank: same interface and losses as dense, slot replacement, sizes."""

from __future__ import annotations

import os
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from scl_hf.bank import (
    BankHeader,
    SCLBank,
    SparseSCLBank,
    assign_slots,
    bank_nbytes,
    check_free_space,
    header_nbytes,
    open_bank,
)
from scl_hf.losses import spatial_consistency_loss
from scl_hf.visualize import plot_bank_heatmaps, stored_heatmaps

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from tiny_run import tiny_trainer  # noqa: E402

N, C, S = 12, 5, 6
FULL = [0.0, 0.0, 1.0, 1.0]


def header(layout: str = "sparse", top_k: int = 2, **overrides) -> BankHeader:
    values = dict(num_rows=N, num_classes=C, size=S, with_heatmaps=True, dataset_fingerprint="d",
                  config_fingerprint="c", layout=layout, top_k=top_k)
    return BankHeader(**(values | overrides))


def random_step(gen: torch.Generator, count: int, out: int = 3):
    rows = torch.randperm(N, generator=gen)[:count]
    x0y0 = torch.rand(count, 2, generator=gen) * 0.6
    boxes = torch.cat([x0y0, x0y0 + 0.4 + 0.2 * torch.rand(count, 1, generator=gen)], 1).clamp(max=1.0)
    flips = torch.rand(count, generator=gen) < 0.5
    return rows, torch.rand(count, C, generator=gen), boxes, flips, torch.rand(count, C, out, out, generator=gen)


@pytest.mark.parametrize("cell_offset", [0.0, -15.5 / 32])  # centred cells; a padded CNN's (models.CellGrid)
def test_sparse_with_every_class_gives_the_dense_targets_and_losses(tmp_path, cell_offset):
    dense = open_bank(tmp_path / "dense", header("dense"), writable=True, create=True)
    sparse = open_bank(tmp_path / "sparse", header("sparse", top_k=C - 1), writable=True, create=True)
    assert isinstance(sparse, SparseSCLBank) and sparse.heatmaps.shape == (N, C, S, S)
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(N) % C
    for step in range(6):
        rows, probs, boxes, flips, maps = random_step(gen, 7)
        if step >= 2:  # read before writing, as the trainer does
            logits = torch.randn(len(rows), C, 3, 3, generator=gen)
            read = [bank.read_spatial(rows, boxes, flips, (3, 3), device=device, cell_offset=cell_offset)
                    for bank, device in ((dense, None), (sparse, torch.device("cpu")))]
            if cell_offset:  # the offset reaches both layouts' cut
                for bank in (dense, sparse):
                    assert not torch.allclose(bank.read_spatial(rows, boxes, flips, (3, 3))[0], read[0][0], atol=1e-3)
            torch.testing.assert_close(read[1][0], read[0][0], atol=1e-6, rtol=0)
            torch.testing.assert_close(read[1][1], read[0][1], atol=1e-6, rtol=0)
            losses = [spatial_consistency_loss(logits, target, weight) for target, weight in read]
            torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=0)
            assert read[0][1].sum() > 0 and losses[0] > 0
        for bank in (dense, sparse):
            bank.update(rows, probs, 0.8, boxes=boxes, flips=flips, map_probs=maps, heatmap_momentum=0.6,
                        labels=labels[rows], cell_offset=cell_offset)
    np.testing.assert_array_equal(sparse.predictions, dense.predictions)
    np.testing.assert_array_equal(sparse.coverage, dense.coverage)
    for row in range(N):
        np.testing.assert_allclose(sparse.dense_heatmaps(row), dense.heatmaps[row].astype(np.float32), atol=1e-3)
        # the plotting path reads the files on its own, for either layout
        np.testing.assert_allclose(stored_heatmaps(tmp_path / "sparse", [row])[0], sparse.dense_heatmaps(row))
        np.testing.assert_array_equal(stored_heatmaps(tmp_path / "dense", [row])[0], dense.heatmaps[row].astype(np.float32))


def test_heatmap_picture_of_a_sparse_bank_shows_zero_for_classes_without_a_slot(tmp_path):
    from PIL import Image

    bank = open_bank(tmp_path / "bank", header("sparse", top_k=1), writable=True, create=True)
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(N) % C
    for _ in range(3):
        rows, probs, boxes, flips, maps = random_step(gen, 7)
        bank.update(rows, probs, 0.8, boxes=boxes, flips=flips, map_probs=maps, heatmap_momentum=0.6,
                    labels=labels[rows])
    bank.flush()
    row = int(np.flatnonzero(bank.slots[:, 1] >= 0)[0])
    heat = stored_heatmaps(tmp_path / "bank", [row])[0]
    held = set(bank.slots[row].tolist()) - {-1}
    assert held and heat[list(held)].any()
    assert not heat[[c for c in range(C) if c not in held]].any()
    images = [{"image": Image.new("RGB", (24, 24), (200, 40, 40)), "label": int(labels[i])} for i in range(N)]
    picture = plot_bank_heatmaps(tmp_path / "bank", images, tmp_path / "heat.png", rows=[row], labels_column=None)
    assert picture.stat().st_size > 1000


def test_heatmap_picture_marks_every_observed_label_of_a_partial_label_row(tmp_path):
    import matplotlib.pyplot as plt
    from datasets import Dataset, Features, Image, Sequence, Value
    from PIL import Image as PILImage

    bank = open_bank(tmp_path / "bank", header("dense"), writable=True, create=True)
    gen = torch.Generator().manual_seed(2)
    rows, probs, boxes, flips, maps = random_step(gen, N)
    bank.update(rows, probs, 0.8, boxes=boxes, flips=flips, map_probs=maps, heatmap_momentum=0.6)
    bank.flush()
    features = Features({"image": Image(), "label": Sequence(Value("int64")), "labels": Sequence(Value("int64"))})
    data = Dataset.from_list([{"image": PILImage.new("RGB", (24, 24)), "label": [1, 3], "labels": [0, 1, 3]}] * N,
                             features=features)
    titles = []
    original = plt.Axes.set_title
    plt.Axes.set_title = lambda ax, text, **kw: (titles.append(text), original(ax, text, **kw))[1]
    try:
        plot_bank_heatmaps(tmp_path / "bank", data, tmp_path / "heat.png", rows=[0], max_classes=3)
    finally:
        plt.Axes.set_title = original
    marked = sorted(int(t.split("*")[0]) for t in titles if "*" in t)
    assert marked == [1, 3]  # both observed labels, and the hidden positive 0 shown unmarked
    assert any(t.startswith("0 ") for t in titles)


def test_trainer_losses_are_the_same_for_both_layouts_when_k_covers_every_class(tmp_path):
    histories = []
    for layout in ("dense", "sparse"):
        trainer = tiny_trainer(str(tmp_path / layout), num_train=16, bank_layout=layout, bank_top_k=4)
        trainer.train()
        histories.append([(h["loss"], h.get("loss_scl")) for h in trainer.state.log_history if "loss" in h])
        assert type(trainer.bank.store).__name__ == ("SparseSCLBank" if layout == "sparse" else "SCLBank")
    assert any(scl is not None for _, scl in histories[0])
    np.testing.assert_allclose(np.array(histories[1], dtype=float), np.array(histories[0], dtype=float), rtol=1e-6)


def test_a_class_entering_the_top_k_starts_fresh_and_one_leaving_reads_zero(tmp_path):
    bank = SCLBank.create(tmp_path, header(top_k=2))  # 3 slots: observed class 0 + two others
    row, label = torch.tensor([4]), torch.tensor([0])
    left = torch.tensor([[0.0, 0.0, 0.5, 1.0]])  # left half of the image: bank columns 0..2
    no_flip = torch.tensor([False])
    probs = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.05]])  # top two besides the label: classes 1, 2
    bank.update(row, probs, 0.5, boxes=torch.tensor([FULL]), flips=no_flip, map_probs=torch.full((1, C, S, S), 0.4),
                labels=label)
    assert bank.slots[4].tolist() == [0, 1, 2]
    # class 4 overtakes class 2 (running average 0.5·0.05 + 0.5·0.95 > 0.5·0.7 + 0.5·0.1)
    probs = torch.tensor([[0.9, 0.8, 0.1, 0.1, 0.95]])
    bank.update(row, probs, 0.5, boxes=left, flips=no_flip, map_probs=torch.full((1, C, 2, 2), 0.8), labels=label)
    assert bank.slots[4].tolist() == [0, 1, 4]  # class 4 took the freed slot; class 1 kept its own
    heat = bank.heatmaps[4].astype(np.float32)
    np.testing.assert_allclose(heat[1, :, :3], 0.5 * 0.4 + 0.5 * 0.8, atol=1e-3)  # kept: EMA inside the box
    np.testing.assert_allclose(heat[1, :, 3:], 0.4, atol=1e-3)  # kept: untouched outside
    np.testing.assert_allclose(heat[2, :, :3], 0.8, atol=1e-3)  # fresh: first observation inside the box
    np.testing.assert_allclose(heat[2, :, 3:], 0.0, atol=0)  # fresh: 0 (what it read as before) outside
    target, weight = bank.read_spatial(row, torch.tensor([FULL]), no_flip, (S, S))
    assert weight.eq(1).all()
    assert target[0, 2].eq(0).all() and target[0, 3].eq(0).all()  # classes without a slot read 0
    np.testing.assert_allclose(target[0, 4, :, :3].numpy(), 0.8, atol=1e-3)


def slow_assign(old: list[int], running: np.ndarray, label: int, num_slots: int) -> list[int]:
    order = sorted((c for c in range(len(running)) if c != label), key=lambda c: (-running[c], c))
    wanted = order[: num_slots - 1]
    others = [c if c in wanted else None for c in old[1:]]
    entering = [c for c in wanted if c not in others]
    for i, c in enumerate(others):
        if c is None:
            others[i] = entering.pop(0)
    return [label, *others]


def test_assign_slots_matches_a_plain_loop():
    gen = torch.Generator().manual_seed(5)
    classes, slots, batch = 9, 4, 64
    running = torch.rand(batch, classes, generator=gen).round(decimals=1)  # ties happen
    labels = torch.randint(0, classes, (batch,), generator=gen)
    old = torch.stack([torch.randperm(classes, generator=gen)[:slots] for _ in range(batch)])
    old[:, 0] = labels
    old[:5] = -1  # never observed rows
    new, fresh = assign_slots(old, running, labels, slots)
    for b in range(batch):
        expected = slow_assign(old[b].tolist(), running[b].numpy(), int(labels[b]), slots)
        assert new[b].tolist() == expected, b
        assert fresh[b].tolist() == [n != o for n, o in zip(expected, old[b].tolist())]
    assert fresh[:5].all()


def test_update_without_labels_is_refused_before_writing(tmp_path):
    bank = SCLBank.create(tmp_path, header())
    with pytest.raises(ValueError, match="labels="):
        bank.update(torch.tensor([0]), torch.rand(1, C), 0.8, boxes=torch.tensor([FULL]), flips=torch.tensor([False]),
                    map_probs=torch.rand(1, C, 2, 2))
    assert not bank.seen.any() and not bank.header.dirty


@pytest.mark.parametrize("top_k", [1, 3, 10])
def test_sparse_sizes_match_the_formula_and_the_files(tmp_path, top_k):
    SCLBank.create(tmp_path, header(top_k=top_k))
    slots = min(top_k + 1, C)
    by_hand = N * (4 * C + 4) + N * (2 * slots * S * S + 4 * slots + S * S)
    assert bank_nbytes(N, C, S, True, layout="sparse", top_k=top_k) == by_hand == header_nbytes(header(top_k=top_k))
    data = 0
    for path in tmp_path.glob("*.npy"):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(f)
            data += path.stat().st_size - f.tell()
    assert data == by_hand
    # ImageNet: 1.28M images, 1000 classes, 14×14, k=5 -> 8.4 GB sparse vs 508 GB dense
    assert bank_nbytes(1_281_167, 1000, 14, True, "sparse", 5) / 1e9 == pytest.approx(8.42, abs=0.01)
    assert bank_nbytes(1_281_167, 1000, 14, True) / 1e9 == pytest.approx(507.6, abs=0.01)


def test_free_space_check_counts_the_layout_and_one_snapshot(tmp_path, monkeypatch):
    imagenet = header(num_rows=1_281_167, num_classes=1000, size=14, top_k=5)
    Stat = namedtuple("Stat", "f_bavail f_frsize")
    monkeypatch.setattr(os, "statvfs", lambda path: Stat(15_000_000, 1000))  # 15 GB free
    check_free_space(tmp_path / "bank", imagenet)  # 8.4 GB fits
    with pytest.raises(OSError, match=r"sparse layout\) needs 16.8\d GB"):  # bank + one snapshot, one disk
        check_free_space(tmp_path / "bank", imagenet, snapshot_folder=tmp_path / "out")
    with pytest.raises(OSError, match=r"dense layout\) needs 50\d.\d\d GB.*bank_layout='sparse'"):
        check_free_space(tmp_path / "bank", header("dense", num_rows=1_281_167, num_classes=1000, size=14))
