"""cut / paste-back with the model's cell centres (cell_offset) against slow per-cell references, and the
consistency that the offset buys: a flipped and an unflipped view of one image paste the same map.

The references do not shift boxes: for every cell they compute its centre in the original image from the
box, the flip and the offset, then sample there (tv_bilinear / border_bilinear of test_geometry).
"""

import math

import numpy as np
import pytest
import torch
from test_geometry import all_boxes, border_bilinear, tv_bilinear

from scl_hf.bank.geometry import cut_crop, paste_crop, spatial_targets

RESNET_OFFSET = -15.5 / 32  # CellGrid.padded(32).offset_cells


def view_cell_centre(box, flip: bool, cell: int, cells: int, offset: float, axis: int) -> float:
    """Normalised image coordinate of a view cell's centre along x (axis 0) or y (axis 1)."""
    lo, hi = float(box[axis]), float(box[axis + 2])
    u = (cell + 0.5 + offset) / cells  # in the view as the network saw it
    if flip and axis == 0:
        u = 1.0 - u  # the view was mirrored after cropping
    return lo + u * (hi - lo)


def ref_cut_offset(bank: np.ndarray, boxes, flips, out_size, offset: float) -> np.ndarray:
    """Per view cell: the average of RoIAlign's bilinear samples over a cell-sized bin around its centre."""
    size_y, size_x = bank.shape[-2:]
    out_h, out_w = out_size
    result = np.zeros((len(boxes), bank.shape[1], out_h, out_w))
    for b, box in enumerate(boxes):
        bin_w, bin_h = (box[2] - box[0]) * size_x / out_w, (box[3] - box[1]) * size_y / out_h  # bank pixels
        n_x, n_y = max(math.ceil(bin_w - 1e-6), 1), max(math.ceil(bin_h - 1e-6), 1)
        for r in range(out_h):
            cy = view_cell_centre(box, flips[b], r, out_h, offset, 1) * size_y - 0.5  # aligned=True
            for c in range(out_w):
                cx = view_cell_centre(box, flips[b], c, out_w, offset, 0) * size_x - 0.5
                ys = [cy - bin_h / 2 + (i + 0.5) * bin_h / n_y for i in range(n_y)]
                xs = [cx - bin_w / 2 + (i + 0.5) * bin_w / n_x for i in range(n_x)]
                for k in range(bank.shape[1]):
                    result[b, k, r, c] = np.mean([tv_bilinear(bank[b, k], y, x) for y in ys for x in xs])
    return result


def ref_paste_offset(bank, coverage, new_maps, boxes, flips, momentum, offset):
    """Per bank cell inside the box: where it falls among the view's cell centres, read bilinearly there."""
    bank, coverage = bank.astype(np.float64).copy(), coverage.astype(np.int64).copy()
    size = bank.shape[-1]
    map_h, map_w = new_maps.shape[-2:]
    for b, (x0, y0, x1, y1) in enumerate(boxes):
        for i in range(size):
            for j in range(size):
                cx, cy = (j + 0.5) / size, (i + 0.5) / size
                if not (x0 <= cx < x1 and y0 <= cy < y1):
                    continue
                u, v = (cx - x0) / (x1 - x0), (cy - y0) / (y1 - y0)
                if flips[b]:
                    u = 1.0 - u
                # cell t of the view is centred at (t + 0.5 + offset)/n: invert for the fractional index
                px, py = u * map_w - 0.5 - offset, v * map_h - 0.5 - offset
                for k in range(bank.shape[1]):
                    new = border_bilinear(new_maps[b, k], py, px)
                    old = bank[b, k, i, j]
                    bank[b, k, i, j] = new if coverage[b, i, j] == 0 else momentum * old + (1 - momentum) * new
                coverage[b, i, j] = min(coverage[b, i, j] + 1, 255)
    return bank, coverage


# ----------------------------------------------------------------------------- against the references


@pytest.mark.parametrize("offset", [RESNET_OFFSET, 0.3, 0.0])
@pytest.mark.parametrize("out_size", [(4, 4), (3, 5)])
def test_cut_crop_with_offset_matches_the_per_cell_reference(offset, out_size):
    size = 8
    boxes = all_boxes(11, 5, size)
    bank = torch.rand(len(boxes), 2, size, size, generator=torch.Generator().manual_seed(11))
    flips = torch.tensor([i % 2 == 1 for i in range(len(boxes))])
    cut = cut_crop(bank, boxes, flips, out_size, cell_offset=offset)
    expected = ref_cut_offset(bank.double().numpy(), boxes.double().numpy(), flips.tolist(), out_size, offset)
    np.testing.assert_allclose(cut.numpy(), expected, atol=1e-5, rtol=0)
    if offset:  # the offset moves the cut: not the centred one
        assert not np.allclose(cut.numpy(), cut_crop(bank, boxes, flips, out_size).numpy(), atol=1e-3)


@pytest.mark.parametrize("offset", [RESNET_OFFSET, 0.3])
def test_paste_crop_with_offset_matches_the_per_cell_reference(offset):
    size = 8
    boxes = all_boxes(12, 5, size)
    gen = torch.Generator().manual_seed(12)
    bank = torch.rand(len(boxes), 2, size, size, generator=gen)
    coverage = torch.randint(0, 3, (len(boxes), size, size), generator=gen, dtype=torch.uint8)
    new_maps = torch.rand(len(boxes), 2, 4, 5, generator=gen)
    flips = torch.tensor([i % 3 == 1 for i in range(len(boxes))])
    rows, new_coverage = paste_crop(bank, coverage, new_maps, boxes, flips, 0.7, cell_offset=offset)
    expected_rows, expected_coverage = ref_paste_offset(
        bank.numpy(), coverage.numpy(), new_maps.double().numpy(), boxes.double().numpy(), flips.tolist(), 0.7, offset
    )
    np.testing.assert_allclose(rows.numpy(), expected_rows, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(new_coverage.numpy(), expected_coverage)
    centred, _ = paste_crop(bank, coverage, new_maps, boxes, flips, 0.7)
    assert (rows - centred).abs().max() > 1e-2


@pytest.mark.parametrize("flip", [False, True])
def test_paste_then_cut_round_trip_with_offset(flip):
    # a map linear in the cell index survives bilinear pasting and bin-averaged cutting exactly, wherever the
    # cut's bins stay among the view's cell centres (the inner cells): the cut reads back where it pasted
    rows_idx, cols_idx = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij")
    maps = (0.1 * cols_idx + 0.03 * rows_idx + 0.2)[None, None]
    full, flips = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([flip])
    bank, coverage = torch.zeros(1, 1, 24, 24), torch.zeros(1, 24, 24, dtype=torch.uint8)
    rows, _ = paste_crop(bank, coverage, maps, full, flips, 0.0, cell_offset=RESNET_OFFSET)
    back = cut_crop(rows, full, flips, (6, 6), cell_offset=RESNET_OFFSET)
    torch.testing.assert_close(back[..., 1:-1, 1:-1], maps[..., 1:-1, 1:-1], atol=1e-5, rtol=0)
    # cut without the offset: a third of the step between cells off (0.1 · 15.5/32 along x; y too)
    centred = cut_crop(rows, full, flips, (6, 6))
    torch.testing.assert_close(
        (centred - maps)[..., 1:-1, 1:-1], torch.full((1, 1, 4, 4), -(0.1 + 0.03) * RESNET_OFFSET), atol=1e-5, rtol=0
    )


def test_spatial_targets_count_the_outside_of_the_image_as_unobserved():
    # resnet cells on the left/top border are centred half a cell from the edge: their bins are half outside
    heat, coverage = torch.full((1, 1, 16, 16), 0.6), torch.ones(1, 16, 16, dtype=torch.uint8)
    full, no_flip = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([False])
    target, weight = spatial_targets(heat, coverage, full, no_flip, (4, 4), cell_offset=RESNET_OFFSET)
    torch.testing.assert_close(target, torch.full_like(target, 0.6), atol=1e-5, rtol=0)  # not pulled to 0
    assert weight[0, 1:, 1:].eq(1).all()  # inner cells: the whole bin is in the image
    assert (weight[0, 0, 1:] < 0.8).all() and (weight[0, 0, 1:] > 0.4).all()  # top row: about half inside
    assert weight[0, 0, 0] < weight[0, 0, 1]  # the corner: outside along both axes


# ----------------------------------------------------------------------------- flip consistency


def padded_cnn(stride_log2: int, seed: int) -> torch.nn.Sequential:
    """Stride-2 3×3 convolutions padded on both sides (a resnet's downsampling) with mirror-symmetric,
    positive kernels: it commutes with a horizontal flip except for where its cells sit."""
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(stride_log2):
        conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
        kernel = torch.rand(1, 1, 3, 3, generator=gen)
        conv.weight.data = (kernel + kernel.flip(-1)) / 2
        layers.append(conv)
    return torch.nn.Sequential(*layers)


def inner_cells(box: torch.Tensor, size: int, margin: float = 0.25) -> torch.Tensor:
    """Bank cells at least `margin` of the box inside it: clear of the zero padding's reach (the receptive
    field is 15 px of the 64-px view) and of the clamping beyond the outer cell centres."""
    centres = (torch.arange(size) + 0.5) / size
    width = box[2] - box[0]
    along_x = (centres >= box[0] + margin * width) & (centres <= box[2] - margin * width)
    along_y = (centres >= box[1] + margin * width) & (centres <= box[3] - margin * width)
    return along_y[:, None] & along_x[None, :]


def test_flipped_and_unflipped_views_paste_the_same_map_with_the_offset():
    stride_log2, view, size = 3, 64, 16  # stride 8: cells at 8·i + 0.5 px, offset −3.5/8 of a cell
    offset = -(2**stride_log2 - 1) / 2 / 2**stride_log2
    net = padded_cnn(stride_log2, seed=0)
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    image = torch.exp(-((xx - 50) ** 2 + (yy - 70) ** 2) / (2 * 14.0**2))[None, None]  # a blob left of centre
    image = image + 0.5 * torch.exp(-((xx - 85) ** 2 + (yy - 40) ** 2) / (2 * 9.0**2))
    disagreement = {}
    for name, cell_offset in (("stated", offset), ("old", 0.0)):
        worst = 0.0
        for x0, y0 in ((32, 16), (0, 0), (64, 40)):  # 64-px views cut from the 128-px image without resizing
            crop = image[..., y0:y0 + view, x0:x0 + view]
            box = torch.tensor([[x0, y0, x0 + view, y0 + view]], dtype=torch.float32) / 128
            banks = []
            for flip in (False, True):
                with torch.no_grad():
                    maps = net(crop.flip(-1) if flip else crop)
                bank, coverage = torch.zeros(1, 1, size, size), torch.zeros(1, size, size, dtype=torch.uint8)
                rows, _ = paste_crop(bank, coverage, maps, box, torch.tensor([flip]), 0.0, cell_offset=cell_offset)
                banks.append(rows[0, 0][inner_cells(box[0], size)])
            worst = max(worst, float((banks[0] - banks[1]).abs().max() / banks[0].abs().max()))
        disagreement[name] = worst
    assert disagreement["stated"] < 0.05, disagreement  # the two views agree (bilinear error only)
    assert disagreement["old"] > 4 * disagreement["stated"], disagreement  # a cell apart without the offset


def test_offset_zero_is_the_old_geometry():
    boxes = all_boxes(14, 4, 8)
    gen = torch.Generator().manual_seed(14)
    bank, maps = torch.rand(len(boxes), 2, 8, 8, generator=gen), torch.rand(len(boxes), 2, 4, 4, generator=gen)
    coverage = torch.randint(0, 3, (len(boxes), 8, 8), generator=gen, dtype=torch.uint8)
    flips = torch.arange(len(boxes)) % 2 == 0
    assert torch.equal(cut_crop(bank, boxes, flips, (4, 4), cell_offset=0.0), cut_crop(bank, boxes, flips, (4, 4)))
    with_zero = paste_crop(bank, coverage, maps, boxes, flips, 0.5, cell_offset=0.0)
    assert all(torch.equal(a, b) for a, b in zip(with_zero, paste_crop(bank, coverage, maps, boxes, flips, 0.5)))
