"""cut_crop / paste_crop / spatial_targets against slow plain-Python references of their definitions."""

import math

import numpy as np
import pytest
import torch

from scl_hf.bank.geometry import cut_crop, paste_crop, spatial_targets

# ----------------------------------------------------------------------------- slow references


def tv_bilinear(image: np.ndarray, y: float, x: float) -> float:
    """torchvision RoIAlign's bilinear sample of a (H, W) array, with its border rules."""
    height, width = image.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * image[y_low, x_low]
        + hy * lx * image[y_low, x_high]
        + ly * hx * image[y_high, x_low]
        + ly * lx * image[y_high, x_high]
    )


def ref_roi_align(image: np.ndarray, box_px, out_size) -> np.ndarray:
    """RoIAlign(aligned=True, sampling_ratio=0) of a (K, H, W) array under one box in pixel units."""
    out_h, out_w = out_size
    f32 = np.float32
    x0, y0, x1, y1 = (f32(v) for v in box_px)
    start_w, start_h = f32(x0 - f32(0.5)), f32(y0 - f32(0.5))
    roi_w, roi_h = f32(f32(x1 - f32(0.5)) - start_w), f32(f32(y1 - f32(0.5)) - start_h)
    bin_w, bin_h = f32(roi_w / f32(out_w)), f32(roi_h / f32(out_h))
    grid_w, grid_h = math.ceil(roi_w / f32(out_w)), math.ceil(roi_h / f32(out_h))
    count = max(grid_w * grid_h, 1)
    out = np.zeros((image.shape[0], out_h, out_w))
    for k in range(image.shape[0]):
        for ph in range(out_h):
            for pw in range(out_w):
                total = 0.0
                for iy in range(grid_h):
                    y = float(start_h) + ph * float(bin_h) + (iy + 0.5) * float(bin_h) / grid_h
                    for ix in range(grid_w):
                        x = float(start_w) + pw * float(bin_w) + (ix + 0.5) * float(bin_w) / grid_w
                        total += tv_bilinear(image[k], y, x)
                out[k, ph, pw] = total / count
    return out


def ref_cut(bank: np.ndarray, boxes: np.ndarray, flips, out_size) -> np.ndarray:
    size_y, size_x = bank.shape[-2:]
    result = []
    for b in range(len(boxes)):
        x0, y0, x1, y1 = (float(v) for v in boxes[b])
        cut = ref_roi_align(bank[b], (x0 * size_x, y0 * size_y, x1 * size_x, y1 * size_y), out_size)
        result.append(cut[..., ::-1] if flips[b] else cut)
    return np.stack(result)


def border_bilinear(image: np.ndarray, py: float, px: float) -> float:
    """grid_sample(bilinear, padding border, align_corners=False) in pixel coordinates."""
    height, width = image.shape
    py, px = min(max(py, 0.0), height - 1.0), min(max(px, 0.0), width - 1.0)
    y_low, x_low = math.floor(py), math.floor(px)
    y_high, x_high = min(y_low + 1, height - 1), min(x_low + 1, width - 1)
    ly, lx = py - y_low, px - x_low
    return (
        (1 - ly) * (1 - lx) * image[y_low, x_low]
        + (1 - ly) * lx * image[y_low, x_high]
        + ly * (1 - lx) * image[y_high, x_low]
        + ly * lx * image[y_high, x_high]
    )


def ref_paste(bank, coverage, new_maps, boxes, flips, momentum):
    bank, coverage = bank.astype(np.float64).copy(), coverage.astype(np.int64).copy()
    num, channels, size, _ = bank.shape
    inside = np.zeros(coverage.shape, dtype=bool)
    map_h, map_w = new_maps.shape[-2:]
    for b in range(num):
        maps = new_maps[b, :, :, ::-1] if flips[b] else new_maps[b]
        x0, y0, x1, y1 = (float(v) for v in boxes[b])
        for i in range(size):
            for j in range(size):
                cx, cy = (j + 0.5) / size, (i + 0.5) / size
                if not (x0 <= cx < x1 and y0 <= cy < y1):
                    continue
                inside[b, i, j] = True
                u, v = (cx - x0) / (x1 - x0), (cy - y0) / (y1 - y0)
                for k in range(channels):
                    new = border_bilinear(maps[k], v * map_h - 0.5, u * map_w - 0.5)
                    old = bank[b, k, i, j]
                    bank[b, k, i, j] = (
                        new if coverage[b, i, j] == 0 else momentum * old + (1 - momentum) * new
                    )
                coverage[b, i, j] = min(coverage[b, i, j] + 1, 255)
    return bank, coverage, inside


# ----------------------------------------------------------------------------- boxes


def random_boxes(rng: np.random.Generator, count: int, size: int) -> list[list[float]]:
    """Random boxes whose edges stay clear of bank cell centres (the inside test is then unambiguous)."""
    centres = (np.arange(size) + 0.5) / size
    boxes = []
    while len(boxes) < count:
        x0, x1 = np.sort(rng.uniform(0, 1, 2))
        y0, y1 = np.sort(rng.uniform(0, 1, 2))
        edges = np.float32([x0, y0, x1, y1]).astype(np.float64)
        if min(x1 - x0, y1 - y0) < 0.05 or np.abs(edges[:, None] - centres[None]).min() < 1e-4:
            continue
        boxes.append([x0, y0, x1, y1])
    return boxes


SPECIAL_BOXES = [
    [0.0, 0.0, 1.0, 1.0],  # the whole image
    [0.0, 0.2, 0.6, 1.0],  # touching the left and bottom borders
    [0.35, 0.0, 1.0, 0.7],  # touching the top and right borders
    [0.0, 0.0, 1.0, 0.27],  # a full-width strip on the border
    [0.41, 0.52, 0.43, 0.55],  # tiny: smaller than a bank cell
    [0.97, 0.96, 1.0, 1.0],  # tiny, in the corner
    [0.3125, 0.0625, 0.8125, 0.5625],  # edges exactly on cell centres (S=8): x0 inside, x1 not
]


def all_boxes(seed: int, count: int, size: int) -> torch.Tensor:
    boxes = SPECIAL_BOXES + random_boxes(np.random.default_rng(seed), count, size)
    return torch.tensor(boxes, dtype=torch.float32)


# ----------------------------------------------------------------------------- cut_crop


@pytest.mark.parametrize("out_size", [(4, 4), (3, 5), (8, 8)])
def test_cut_crop_matches_slow_roi_align(out_size):
    size, channels = 8, 2
    boxes = all_boxes(1, 6, size)
    gen = torch.Generator().manual_seed(0)
    bank = torch.rand(len(boxes), channels, size, size, generator=gen)
    flips = torch.tensor([i % 2 == 1 for i in range(len(boxes))])
    cut = cut_crop(bank, boxes, flips, out_size)
    assert cut.shape == (len(boxes), channels, *out_size) and cut.dtype == torch.float32
    expected = ref_cut(bank.double().numpy(), boxes.double().numpy(), flips.tolist(), out_size)
    np.testing.assert_allclose(cut.numpy(), expected, atol=1e-5, rtol=0)


def test_cut_crop_non_square_bank_scales_each_axis():
    bank = torch.rand(2, 1, 6, 10, generator=torch.Generator().manual_seed(4))
    boxes = torch.tensor([[0.1, 0.2, 0.9, 0.7], [0.0, 0.5, 0.4, 1.0]])
    flips = torch.tensor([False, True])
    cut = cut_crop(bank, boxes, flips, (3, 4))
    expected = ref_cut(bank.double().numpy(), boxes.double().numpy(), flips.tolist(), (3, 4))
    np.testing.assert_allclose(cut.numpy(), expected, atol=1e-5, rtol=0)


def test_cut_crop_flip_mirrors_the_unflipped_cut():
    boxes = all_boxes(2, 4, 8)
    bank = torch.rand(len(boxes), 3, 8, 8, generator=torch.Generator().manual_seed(1))
    no_flip = torch.zeros(len(boxes), dtype=torch.bool)
    plain = cut_crop(bank, boxes, no_flip, (5, 6))
    flipped = cut_crop(bank, boxes, ~no_flip, (5, 6))
    assert torch.equal(flipped, plain.flip(-1))
    assert not torch.equal(flipped, plain)
    # mixed flags act per row
    mixed = cut_crop(bank, boxes, torch.arange(len(boxes)) % 2 == 0, (5, 6))
    assert torch.equal(mixed[0::2], flipped[0::2]) and torch.equal(mixed[1::2], plain[1::2])


def test_full_box_at_bank_resolution_reads_the_bank_exactly():
    bank = torch.rand(3, 4, 7, 7, generator=torch.Generator().manual_seed(2))
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3)
    out = cut_crop(bank, boxes, torch.zeros(3, dtype=torch.bool), (7, 7))
    assert torch.equal(out, bank)
    out = cut_crop(bank.half(), boxes, torch.ones(3, dtype=torch.bool), (7, 7))
    assert torch.equal(out, bank.half().float().flip(-1))


def test_cut_crop_of_a_constant_is_that_constant_inside_the_image():
    # every sample of a box inside [0, 1] lies in the bank (aligned=True), so the weights sum to one
    boxes = all_boxes(3, 5, 8)
    bank = torch.full((len(boxes), 1, 8, 8), 0.375)
    out = cut_crop(bank, boxes, torch.zeros(len(boxes), dtype=torch.bool), (4, 3))
    torch.testing.assert_close(out, torch.full_like(out, 0.375), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- paste_crop


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_paste_crop_matches_slow_loop(momentum):
    size, channels = 8, 2
    boxes = all_boxes(5, 5, size)
    num = len(boxes)
    gen = torch.Generator().manual_seed(3)
    bank = torch.rand(num, channels, size, size, generator=gen)
    coverage = torch.randint(0, 3, (num, size, size), generator=gen, dtype=torch.uint8)
    coverage[0, :2] = 255  # saturated cells stay at 255
    coverage[1, 3] = 254
    new_maps = torch.rand(num, channels, 4, 5, generator=gen)
    flips = torch.tensor([i % 3 == 1 for i in range(num)])
    rows, new_coverage = paste_crop(bank, coverage, new_maps, boxes, flips, momentum)
    expected_rows, expected_coverage, inside = ref_paste(
        bank.numpy(),
        coverage.numpy(),
        new_maps.double().numpy(),
        boxes.double().numpy(),
        flips.tolist(),
        momentum,
    )
    assert rows.dtype == torch.float32 and new_coverage.dtype == torch.uint8
    np.testing.assert_allclose(rows.numpy(), expected_rows, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(new_coverage.numpy(), expected_coverage)
    # cells outside every box are bit-identical
    outside = ~inside
    assert outside.any() and inside.any() and inside[0, :2].any()
    cells = (0, 2, 3, 1)
    np.testing.assert_array_equal(
        rows.numpy().transpose(cells)[outside], bank.numpy().transpose(cells)[outside]
    )
    assert new_coverage[0, :2].eq(255).all()


def test_paste_crop_half_open_box_edges():
    # S=8 centres are (j + 0.5) / 8: x in [0.3125, 0.8125) holds columns 2..5, y in [0.0625, 0.5625) rows 0..3
    bank = torch.zeros(1, 1, 8, 8)
    coverage = torch.zeros(1, 8, 8, dtype=torch.uint8)
    box = torch.tensor([[0.3125, 0.0625, 0.8125, 0.5625]])
    _, new_coverage = paste_crop(bank, coverage, torch.ones(1, 1, 2, 2), box, torch.tensor([False]), 0.5)
    expected = torch.zeros(8, 8, dtype=torch.uint8)
    expected[0:4, 2:6] = 1
    assert torch.equal(new_coverage[0], expected)


def test_paste_crop_flip_unmirrors_the_view():
    # a view whose left half is 0 and right half is 1: flipped, the bank gets 1 on the box's left side
    new_maps = torch.zeros(1, 1, 4, 4)
    new_maps[..., 2:] = 1.0
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    bank, coverage = torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.uint8)
    rows, _ = paste_crop(bank, coverage, new_maps, full, torch.tensor([True]), 0.0)
    assert torch.equal(rows[0, 0], new_maps[0, 0].flip(-1))
    assert rows[0, 0, :, :2].eq(1).all() and rows[0, 0, :, 2:].eq(0).all()


def test_paste_crop_first_observation_ignores_the_old_value():
    bank = torch.full((1, 1, 4, 4), 0.8)
    coverage = torch.zeros(1, 4, 4, dtype=torch.uint8)
    coverage[0, 0, 0] = 1
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    rows, new_coverage = paste_crop(
        bank, coverage, torch.full((1, 1, 4, 4), 0.2), full, torch.tensor([False]), 0.9
    )
    expected = torch.full((4, 4), 0.2)
    expected[0, 0] = 0.9 * 0.8 + 0.1 * 0.2
    torch.testing.assert_close(rows[0, 0], expected, atol=1e-6, rtol=0)
    assert new_coverage[0, 0, 0] == 2 and new_coverage[0, 1:].eq(1).all()


# ----------------------------------------------------------------------------- spatial_targets


def test_spatial_targets_with_full_coverage_equal_the_cut():
    boxes = all_boxes(6, 4, 8)
    gen = torch.Generator().manual_seed(5)
    heat = torch.rand(len(boxes), 3, 8, 8, generator=gen)
    coverage = torch.randint(1, 10, (len(boxes), 8, 8), generator=gen, dtype=torch.uint8)
    flips = torch.arange(len(boxes)) % 2 == 0
    target, weight = spatial_targets(heat, coverage, boxes, flips, (4, 4))
    assert target.shape == (len(boxes), 3, 4, 4) and weight.shape == (len(boxes), 4, 4)
    torch.testing.assert_close(target, cut_crop(heat, boxes, flips, (4, 4)), atol=1e-5, rtol=0)
    expected = ref_cut(heat.double().numpy(), boxes.double().numpy(), flips.tolist(), (4, 4))
    np.testing.assert_allclose(target.numpy(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(weight, torch.ones_like(weight), atol=1e-5, rtol=0)


def test_spatial_targets_with_half_covered_bank():
    size = 8
    gen = torch.Generator().manual_seed(6)
    heat = torch.rand(1, 2, size, size, generator=gen)
    coverage = torch.zeros(1, size, size, dtype=torch.uint8)
    coverage[0, :, : size // 2] = 3  # the left half of the image was seen, the right half never
    no_flip = torch.tensor([False])

    # whole image at bank resolution: observed cells keep their value with weight 1, the rest weight 0
    target, weight = spatial_targets(
        heat, coverage, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), no_flip, (size, size)
    )
    torch.testing.assert_close(target[..., :4], heat[..., :4], atol=1e-6, rtol=0)
    assert weight[0, :, :4].eq(1).all() and weight[0, :, 4:].eq(0).all()
    assert target[..., 4:].eq(0).all()

    # a crop inside the observed half: target = cut of the heatmaps, weight 1
    left = torch.tensor([[0.0, 0.1, 0.375, 0.9]])
    target, weight = spatial_targets(heat, coverage, left, no_flip, (3, 3))
    torch.testing.assert_close(target, cut_crop(heat, left, no_flip, (3, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(weight, torch.ones_like(weight), atol=1e-6, rtol=0)

    # a crop inside the unobserved half: weight 0 everywhere
    right = torch.tensor([[0.625, 0.0, 1.0, 1.0]])
    _, weight = spatial_targets(heat, coverage, right, torch.tensor([True]), (3, 3))
    assert weight.eq(0).all()

    # a crop across the seam: weight = observed fraction, target = average of the observed values only
    seam = torch.tensor([[0.2, 0.0, 0.8, 1.0]])
    target, weight = spatial_targets(heat, coverage, seam, no_flip, (4, 5))
    observed = (coverage > 0).double().numpy()
    ref_weight = ref_cut(observed[:, None], seam.double().numpy(), [False], (4, 5))[:, 0]
    ref_sum = ref_cut(heat.double().numpy() * observed[:, None], seam.double().numpy(), [False], (4, 5))
    np.testing.assert_allclose(weight.numpy(), ref_weight, atol=1e-5, rtol=0)
    assert (
        (ref_weight > 0.99).any()
        and (ref_weight < 0.01).any()
        and ((ref_weight > 0.1) & (ref_weight < 0.9)).any()
    )
    seen = ref_weight > 0.01
    np.testing.assert_allclose(
        target.numpy()[:, :, seen[0]],
        (ref_sum / np.maximum(ref_weight[:, None], 1e-12))[:, :, seen[0]],
        atol=1e-4,
    )


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("flip", [False, True])
def test_paste_then_cut_round_trip(flip):
    gen = torch.Generator().manual_seed(7)
    maps = torch.rand(2, 3, 6, 6, generator=gen)
    bank = torch.rand(2, 3, 6, 6, generator=gen)
    coverage = torch.randint(0, 4, (2, 6, 6), generator=gen, dtype=torch.uint8)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    flips = torch.tensor([flip, flip])
    rows, new_coverage = paste_crop(bank, coverage, maps, full, flips, 0.0)
    assert torch.equal(new_coverage, coverage + 1)
    torch.testing.assert_close(cut_crop(rows, full, flips, (6, 6)), maps, atol=1e-5, rtol=0)
