"""Moving class maps between a crop's frame and the original image's frame.

Two pure functions, the whole geometry of the spatial consistency loss:
- `cut_crop` reads the stored heatmaps under a crop box (RoIAlign) and resamples them to the network's
  class-map grid, flipped when the view was flipped;
- `paste_crop` resamples the network's new class maps back into the bank frame and blends them in
  (exponential moving average) at the bank cells whose centres lie inside the box.

Boxes are normalised (x0, y0, x1, y1) in [0, 1] of the original image; the bank frame is an S×S grid
over the whole image. Nothing here knows about files or processes.

`cell_offset` says where the network's cells sit in its view, in cells: cell i of an n-cell map is centred
at (i + 0.5 + cell_offset)/n of the view, in the view's own (possibly flipped) frame. It is the model's
`CellGrid.offset_cells` (models.py): about −0.48 for padded CNNs (resnet, efficientnet, regnet), 0 for
patchifying stems (ViT, ConvNeXt, Swin) and the default, which is the rule before offsets existed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

# adaptive (torchvision's rule: ceil(box size / output size) samples per bin): a full-image box at the
# bank's own resolution then reads the bank exactly, and a large box averages rather than aliases.
ROI_SAMPLING_RATIO = 0


def _mirror_rows(tensor: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror (last axis) the rows whose flip flag is set. On the CPU in place (no copy of the unflipped rows);
    on an accelerator by a select, since indexing by the flags would wait for the device (a host sync)."""
    if tensor.device.type != "cpu":
        return torch.where(flips.reshape(-1, *([1] * (tensor.dim() - 1))).bool(), tensor.flip(-1), tensor)
    rows = torch.nonzero(flips.reshape(-1).bool(), as_tuple=True)[0]
    if len(rows):
        tensor[rows] = tensor[rows].flip(-1)
    return tensor


def view_cell_boxes(boxes: torch.Tensor, flips: torch.Tensor, out_size: tuple[int, int], cell_offset: float) -> torch.Tensor:
    """Boxes moved by `cell_offset` cells, so that RoIAlign's bin i is centred on the view's cell i.

    The offset is in the view's frame: a flipped view's cells move the other way in the image."""
    if not cell_offset:
        return boxes
    out_h, out_w = out_size
    boxes = boxes.float()
    sign = 1.0 - 2.0 * flips.reshape(-1).to(boxes.device).float()  # +1 unflipped, −1 flipped
    dx = cell_offset * sign * (boxes[:, 2] - boxes[:, 0]) / out_w
    dy = cell_offset * (boxes[:, 3] - boxes[:, 1]) / out_h
    return boxes + torch.stack([dx, dy, dx, dy], 1)


def cut_crop(
    bank_rows: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, out_size: tuple[int, int], cell_offset: float = 0.0
) -> torch.Tensor:
    """RoIAlign of (B, K, S, S) bank rows under normalised boxes (B, 4) → (B, K, h, w) in the view's frame.

    Each output cell averages the bank over one cell-sized bin centred where the view's cell is centred
    (`cell_offset`); samples more than half a bank pixel outside the image read 0 (RoIAlign's rule)."""
    boxes = view_cell_boxes(boxes, flips, out_size, cell_offset)
    size_y, size_x = bank_rows.shape[-2:]
    scale = torch.tensor([size_x, size_y, size_x, size_y], dtype=torch.float32, device=bank_rows.device)
    rois = torch.cat(
        [torch.arange(len(boxes), device=bank_rows.device, dtype=torch.float32)[:, None], boxes.float() * scale], 1
    )
    cut = roi_align(
        bank_rows.float(), rois, output_size=out_size, spatial_scale=1.0, sampling_ratio=ROI_SAMPLING_RATIO, aligned=True
    )
    return _mirror_rows(cut, flips)


def cell_centres(size: int, device: torch.device | None = None) -> torch.Tensor:
    return (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size


def paste_grid(
    boxes: torch.Tensor,
    size: int,
    flips: torch.Tensor | None = None,
    cell_offset: float = 0.0,
    map_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every bank cell: where it falls in the crop (grid_sample coordinates) and whether it is inside.

    With `flips`, the x coordinate of flipped views is mirrored, so that sampling the view as it is equals
    sampling the un-flipped view (align_corners=False maps pixel centres onto mirrored pixel centres).
    With `cell_offset`, the (h, w) = `map_size` map's cell i is read as centred at (i + 0.5 + offset)/n."""
    centres = cell_centres(size, boxes.device)
    x0, y0, x1, y1 = (boxes[:, i, None].float() for i in range(4))
    u = (centres[None] - x0) / (x1 - x0).clamp_min(1e-6)  # (B, S) along x
    v = (centres[None] - y0) / (y1 - y0).clamp_min(1e-6)  # (B, S) along y
    inside = ((u >= 0) & (u < 1))[:, None, :] & ((v >= 0) & (v < 1))[:, :, None]  # (B, S_y, S_x)
    grid_x, grid_y = 2 * u - 1, 2 * v - 1
    if flips is not None:
        grid_x = torch.where(flips.reshape(-1, 1).bool(), -grid_x, grid_x)
    if cell_offset:
        if map_size is None:
            raise ValueError("paste_grid with a cell_offset needs map_size=(h, w) of the maps being pasted")
        # fractional cell index t = u·n − 0.5 − offset; grid_sample (align_corners=False) reads index (g + 1)·n/2 − 0.5
        grid_x, grid_y = grid_x - 2 * cell_offset / map_size[1], grid_y - 2 * cell_offset / map_size[0]
    grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)
    return grid, inside


def paste_crop(
    bank_rows: torch.Tensor,
    coverage: torch.Tensor,
    new_maps: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor,
    momentum: float,
    fresh: torch.Tensor | None = None,
    cell_offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EMA paste-back of view-frame maps (B, K, h, w) into bank rows (B, K, S, S).

    Cells seen for the first time (coverage 0) take the new value; others become
    momentum·old + (1 − momentum)·new. `fresh` (B, K), optional: channels whose history starts now (a class
    that just entered a sparse bank's slots) take the new value at every cell inside the box, whatever the
    coverage. Each bank cell reads the maps bilinearly where it falls among the view's cell centres
    (`cell_offset`, clamped to the border cells). Returns the new rows (float32) and the new coverage counts.
    """
    size = bank_rows.shape[-1]
    grid, inside = paste_grid(boxes, size, flips, cell_offset, tuple(new_maps.shape[-2:]))
    resampled = F.grid_sample(new_maps.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    # one lerp per cell: old + w·(new − old), w = 0 outside the box, 1 at a first observation, 1 − m otherwise
    # (torch.lerp is exact at w = 0 and w = 1, so untouched cells stay bit-identical and first ones take new)
    first = (coverage == 0)[:, None]
    if fresh is not None:
        first = first | fresh.bool()[:, :, None, None]
    weight = torch.where(first, 1.0, 1.0 - momentum) * inside[:, None]
    rows = torch.lerp(bank_rows.float(), resampled, weight.expand_as(resampled))
    new_coverage = torch.where(inside, (coverage.long() + 1).clamp_max(255), coverage.long()).to(coverage.dtype)
    return rows, new_coverage


def spatial_targets(
    heat_rows: torch.Tensor,
    coverage: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor,
    out_size: tuple[int, int],
    cell_offset: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and per-cell weights for the spatial loss.

    The weight is the observed fraction of each target cell; the target is the average of the observed
    bank values only (unobserved cells hold 0 and are divided out), so a half-seen cell is not pulled to 0.
    A cell whose bin reaches outside the image (`cell_offset` moves border bins half out) counts the
    outside as unobserved: its weight drops, its target stays the mean of what is inside.
    """
    batch, channels = heat_rows.shape[:2]
    observed = (coverage > 0)[:, None]
    # one RoIAlign over [heat·observed, observed]: channels are independent, so this is the two cuts at once
    stacked = torch.empty((batch, channels + 1, *heat_rows.shape[-2:]), dtype=torch.float32, device=heat_rows.device)
    stacked[:, :channels] = heat_rows
    stacked[:, channels:] = observed
    # later epochs: every cell observed, the mask would multiply by 1 (skipped on the CPU only: asking an
    # accelerator whether all cells are observed would wait for it, a host sync)
    if heat_rows.device.type != "cpu" or not bool(observed.all()):
        stacked[:, :channels] *= stacked[:, channels:]
    cut = cut_crop(stacked, boxes, flips, out_size, cell_offset)
    summed, weight = cut[:, :channels], cut[:, channels:]
    target = summed.div_(weight.clamp_min(1e-6)).clamp_(0.0, 1.0)
    return target, weight[:, 0]
