"""SCLBank: memmap files on disk, EMA updates, header checks, sizes."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scl_hf.bank import (
    HEADER_NAME,
    BankHeader,
    BankMismatchError,
    SCLBank,
    bank_nbytes,
    check_compatible,
    first_occurrence,
    open_bank,
    read_header,
)

N, C, S = 5, 3, 4
FULL = [0.0, 0.0, 1.0, 1.0]


def make_header(**overrides) -> BankHeader:
    values = dict(
        num_rows=N,
        num_classes=C,
        size=S,
        with_heatmaps=True,
        dataset_fingerprint="data-aaa",
        config_fingerprint="cfg-111",
    )
    values.update(overrides)
    return BankHeader(**values)


def f16(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float16).astype(np.float64)


def npy_data_offset(path) -> int:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        reader = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        reader(f)
        return f.tell()


# ----------------------------------------------------------------------------- round trip


def test_update_then_reopen_from_disk(tmp_path):
    folder = tmp_path / "bank"
    bank = SCLBank.create(folder, make_header())
    gen = torch.Generator().manual_seed(0)
    p1, p2 = torch.rand(2, C, generator=gen), torch.rand(2, C, generator=gen)
    m1, m2 = torch.rand(2, C, S, S, generator=gen), torch.rand(2, C, S, S, generator=gen)
    momentum, heat_momentum = 0.8, 0.5

    # step 1: rows 3 and 1, row 1 seen flipped; step 2: rows 1 (again) and 4
    bank.update(
        torch.tensor([3, 1]),
        p1,
        momentum,
        boxes=torch.tensor([FULL, FULL]),
        flips=torch.tensor([False, True]),
        map_probs=m1,
        heatmap_momentum=heat_momentum,
    )
    bank.update(
        torch.tensor([1, 4]),
        p2,
        momentum,
        boxes=torch.tensor([FULL, FULL]),
        flips=torch.tensor([False, False]),
        map_probs=m2,
        heatmap_momentum=heat_momentum,
    )
    bank.mark(epoch=1.5, global_step=7)
    del bank

    # --- predictions / seen, by hand
    expected = np.zeros((N, C))
    expected[3] = p1[0].numpy()
    expected[1] = momentum * p1[1].numpy() + (1 - momentum) * p2[0].numpy()
    expected[4] = p2[1].numpy()
    # --- heatmaps: full box at the bank's own size is an exact paste; fp16 storage between the steps
    heat = np.zeros((N, C, S, S))
    heat[3] = m1[0].numpy()
    heat[1] = heat_momentum * f16(m1[1].numpy()[..., ::-1]) + (1 - heat_momentum) * m2[0].numpy()
    heat[4] = m2[1].numpy()
    coverage = np.zeros((N, S, S))
    coverage[[3, 4]] = 1
    coverage[1] = 2

    # a new object over the files (read-only), and the raw files themselves
    reopened = open_bank(folder, make_header(), writable=False, create=False)
    assert reopened.header.epoch == 1.5 and reopened.header.global_step == 7
    raw = {name: np.load(folder / f"{name}.npy") for name in ("predictions", "seen", "heatmaps", "coverage")}
    for arrays in (raw, vars(reopened)):
        assert arrays["predictions"].dtype == np.float32 and arrays["predictions"].shape == (N, C)
        assert arrays["seen"].dtype == np.uint16 and arrays["seen"].shape == (N,)
        assert arrays["heatmaps"].dtype == np.float16 and arrays["heatmaps"].shape == (N, C, S, S)
        assert arrays["coverage"].dtype == np.uint8 and arrays["coverage"].shape == (N, S, S)
        np.testing.assert_allclose(arrays["predictions"], expected, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(arrays["seen"], [0, 2, 0, 1, 1])
        np.testing.assert_allclose(arrays["heatmaps"].astype(np.float64), heat, atol=1e-3, rtol=0)
        np.testing.assert_array_equal(arrays["coverage"], coverage)

    probs, seen = reopened.read_predictions(torch.tensor([4, 1, 0]))
    assert seen.dtype == torch.int64 and seen.tolist() == [1, 2, 0]
    torch.testing.assert_close(
        probs, torch.tensor(expected[[4, 1, 0]], dtype=torch.float32), atol=1e-6, rtol=0
    )

    target, weight = reopened.read_spatial(
        torch.tensor([3, 0]), torch.tensor([FULL, FULL]), torch.tensor([False, False]), (S, S)
    )
    torch.testing.assert_close(target[0], torch.tensor(heat[3], dtype=torch.float32), atol=1e-3, rtol=0)
    assert weight[0].eq(1).all() and weight[1].eq(0).all()  # row 0 was never observed


def test_update_pastes_under_the_box_and_saturates_counts(tmp_path):
    bank = SCLBank.create(tmp_path, make_header())
    bank.seen[2] = np.iinfo(np.uint16).max
    bank.coverage[2, 0, 0] = 255
    maps = torch.full((2, C, 2, 2), 0.75)
    left_half = [0.0, 0.0, 0.5, 1.0]
    bank.update(
        torch.tensor([0, 2]),
        torch.rand(2, C),
        0.9,
        boxes=torch.tensor([left_half, FULL]),
        flips=torch.tensor([False, False]),
        map_probs=maps,
    )
    bank.flush()
    coverage, heat = np.load(tmp_path / "coverage.npy"), np.load(tmp_path / "heatmaps.npy")
    expected = np.zeros((S, S))
    expected[:, : S // 2] = 1
    np.testing.assert_array_equal(coverage[0], expected)
    assert (heat[0][:, :, : S // 2] == 0.75).all() and (heat[0][:, :, S // 2 :] == 0).all()
    assert coverage[2, 0, 0] == 255 and coverage[2, 0, 1] == 1
    assert np.load(tmp_path / "seen.npy")[2] == np.iinfo(np.uint16).max


def test_predictions_only_bank_has_no_heatmap_files(tmp_path):
    bank = SCLBank.create(tmp_path, make_header(with_heatmaps=False))
    bank.update(torch.tensor([0]), torch.full((1, C), 0.25), 0.9)
    bank.update(torch.tensor([0]), torch.full((1, C), 0.75), 0.9)
    assert bank.heatmaps is None and not (tmp_path / "heatmaps.npy").exists()
    reopened = SCLBank(tmp_path, read_header(tmp_path), writable=False)
    np.testing.assert_allclose(reopened.predictions[0], 0.9 * 0.25 + 0.1 * 0.75, atol=1e-6)
    assert reopened.seen[0] == 2


def test_update_refuses_duplicate_indices_and_writes_nothing(tmp_path):
    bank = SCLBank.create(tmp_path, make_header(with_heatmaps=False))
    with pytest.raises(ValueError, match="unique"):
        bank.update(torch.tensor([2, 0, 2]), torch.rand(3, C), 0.9)
    assert not bank.seen.any() and not bank.predictions.any()


def test_read_only_bank_refuses_update(tmp_path):
    SCLBank.create(tmp_path, make_header())
    bank = open_bank(tmp_path, make_header(), writable=False, create=False)
    with pytest.raises(RuntimeError, match="read-only"):
        bank.update(torch.tensor([0]), torch.rand(1, C), 0.9)
    with pytest.raises(ValueError):
        bank.predictions[0] = 1.0  # the memmap itself is read-only too
    assert not np.load(tmp_path / "seen.npy").any()


# ----------------------------------------------------------------------------- first_occurrence


def test_first_occurrence_with_repeats():
    indices = torch.tensor([5, 3, 5, 1, 3, 3, 7])
    positions = first_occurrence(indices)
    assert sorted(positions.tolist()) == [0, 1, 3, 6]
    kept = indices[positions]
    assert sorted(kept.tolist()) == [1, 3, 5, 7]  # each distinct index exactly once
    for p in positions.tolist():
        assert indices[p].item() not in indices[:p].tolist()  # ... at its first position


def test_first_occurrence_without_repeats_and_empty():
    indices = torch.tensor([4, 0, 9, 2])
    assert sorted(first_occurrence(indices).tolist()) == [0, 1, 2, 3]
    assert first_occurrence(torch.tensor([], dtype=torch.long)).numel() == 0


# ----------------------------------------------------------------------------- header checks


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(dataset_fingerprint="data-bbb"), ["data-aaa", "data-bbb", "training set"]),
        (dict(config_fingerprint="cfg-222"), ["cfg-111", "cfg-222", "config"]),
        (dict(num_classes=C + 1), ["layout", "'num_classes': 3", "'num_classes': 4"]),
        (dict(size=S * 2), ["layout", "'size': 4", "'size': 8"]),
        (dict(with_heatmaps=False), ["layout", "with_heatmaps"]),
    ],
)
@pytest.mark.parametrize("create", [False, True])
def test_open_bank_refuses_another_run(tmp_path, change, words, create):
    bank = SCLBank.create(tmp_path, make_header())
    bank.update(torch.tensor([1]), torch.full((1, C), 0.5), 0.9)
    bank.flush()
    del bank
    with pytest.raises(BankMismatchError) as info:
        open_bank(tmp_path, make_header(**change), writable=True, create=create)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    assert str(tmp_path) in message
    assert "delete" in message and "output_dir" in message  # how to recover
    # nothing was overwritten
    assert read_header(tmp_path) == make_header()
    assert np.load(tmp_path / "seen.npy")[1] == 1


def test_open_bank_reports_every_difference():
    folder_header = make_header()
    expected = dataclasses.replace(folder_header, size=S * 2, dataset_fingerprint="x", config_fingerprint="y")
    with pytest.raises(BankMismatchError) as info:
        check_compatible(folder_header, expected, folder=Path("/some/bank"))
    message = str(info.value)
    assert all(word in message for word in ("/some/bank", "layout", "data-aaa", "cfg-111")), message


def test_missing_header_names_the_file(tmp_path):
    with pytest.raises(BankMismatchError) as info:
        open_bank(tmp_path, make_header(), writable=False, create=False)
    assert str(tmp_path / HEADER_NAME) in str(info.value) and "delete" in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        '{"num_rows": 5, "num_cl',
        "[1, 2, 3]",
        '{"num_rows": 5}',
        json.dumps({**dataclasses.asdict(make_header()), "unknown_field": 1}),
    ],
    ids=["truncated", "not-an-object", "missing-fields", "unknown-field"],
)
def test_garbled_header_names_the_file(tmp_path, content):
    SCLBank.create(tmp_path, make_header())
    (tmp_path / HEADER_NAME).write_text(content)
    with pytest.raises(BankMismatchError) as info:
        open_bank(tmp_path, make_header(), writable=True, create=False)
    assert str(tmp_path / HEADER_NAME) in str(info.value)


def test_binary_garbage_header_names_the_file(tmp_path):
    SCLBank.create(tmp_path, make_header())
    (tmp_path / HEADER_NAME).write_bytes(b"\xff\xfe\x00\x9c garbage")
    with pytest.raises(BankMismatchError) as info:
        open_bank(tmp_path, make_header(), writable=True, create=False)
    assert str(tmp_path / HEADER_NAME) in str(info.value)


def test_create_over_a_compatible_bank_keeps_its_rows(tmp_path):
    bank = open_bank(tmp_path, make_header(), writable=True, create=True)
    bank.update(torch.tensor([2]), torch.full((1, C), 0.5), 0.9)
    bank.mark(epoch=1.0, global_step=3)
    del bank
    again = open_bank(tmp_path, make_header(), writable=True, create=True)
    assert again.seen[2] == 1 and again.header.global_step == 3


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("with_heatmaps", [True, False])
def test_bank_nbytes_matches_the_files(tmp_path, with_heatmaps):
    num_rows, num_classes, size = 7, 5, 6
    header = make_header(num_rows=num_rows, num_classes=num_classes, size=size, with_heatmaps=with_heatmaps)
    SCLBank.create(tmp_path, header)
    files = sorted(tmp_path.glob("*.npy"))
    assert len(files) == (5 if with_heatmaps else 3)  # predictions, seen, stamps (+ heatmaps, coverage)
    data_bytes = sum(f.stat().st_size - npy_data_offset(f) for f in files)
    predicted = bank_nbytes(num_rows, num_classes, size, with_heatmaps)
    assert data_bytes == predicted
    by_hand = num_rows * num_classes * 4 + num_rows * 2 * 2  # seen and stamps: uint16 each
    if with_heatmaps:
        by_hand += num_rows * num_classes * size * size * 2 + num_rows * size * size
    assert predicted == by_hand


def test_row_gradient_mean_equals_the_dense_all_reduce_mean():
    """ROLE's table gradient averaged from the batch rows only equals the mean of the dense (N, C) gradients,
    with a row twice in one process's batch and a row in both processes' batches. The all-gather is played by
    recording process 1's sends and handing them to process 0 (the order a real gather concatenates)."""
    from scl_hf.bank import row_gradient_mean

    gen = torch.Generator().manual_seed(0)
    n, c = 12, 3
    batches = [torch.tensor([1, 4, 4, 7]), torch.tensor([7, 2, 9, 0])]
    grads = []
    for idx in batches:  # autograd's dense gradient of table[idx]: the rows' contributions summed
        grad = torch.zeros(n, c)
        grad.index_add_(0, idx, torch.randn(len(idx), c, generator=gen))
        grads.append(grad)
    sent = []
    row_gradient_mean(grads[1], batches[1], lambda t: sent.append(t) or torch.cat([t, t]))
    received = iter(sent)
    mean = row_gradient_mean(grads[0], batches[0], lambda t: torch.cat([t, next(received)]))
    torch.testing.assert_close(mean, (grads[0] + grads[1]) / 2, rtol=0, atol=1e-6)


def test_packed_rows_round_trip_every_dtype():
    """The one collective of a bank write carries every tensor as bytes: unpacking gives them back exactly."""
    from scl_hf.bank import pack_rows, unpack_rows

    gen = torch.Generator().manual_seed(0)
    rows = {"predictions": torch.rand(5, 3, generator=gen), "heatmaps": torch.rand(5, 3, 2, 2, generator=gen).half(),
            "coverage": torch.randint(0, 255, (5, 2, 2), generator=gen).to(torch.uint8),
            "indices": torch.arange(5) * 10**10, "fresh": torch.tensor([True, False, True, True, False]),
            "seen": torch.randint(0, 9, (5,), generator=gen).to(torch.int32)}
    packed, layout = pack_rows(rows)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 12 + 24 + 4 + 8 + 1 + 4)
    twice = unpack_rows(torch.cat([packed, packed]), layout)  # what a 2-process gather returns
    for name, tensor in rows.items():
        assert twice[name].dtype == tensor.dtype
        assert torch.equal(twice[name], torch.cat([tensor, tensor])), name
