"""Where a class-map cell looks: the input-gradient centroid of each cell.

The geometry of the spatial loss assumes a place in the view for every cell of the class maps
(`models.CellGrid`). Padded CNN stems put cell i at pixel 32·i + 0.5 rather than 32·(i + 0.5), which
nothing in the architecture's name tells; this measures it. For cell (i, j), the gradient of its summed
class map with respect to the input image weighs every pixel by how much it moves that cell; the centroid
of the gradient's magnitude is where the cell is centred. Used by the test that checks each adapter's
stated `CellGrid` and by `benchmarks/cell_centres.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from .models import ClassMapHook


def gradient_centroids(
    model: nn.Module,
    hook: ClassMapHook,
    image_size: int,
    trials: int = 1,
    seed: int = 0,
    cells: list[tuple[int, int]] | None = None,
    chunk: int = 8,
    peak: float = 0.0,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Centroids (x, y) in pixels of the view (pixel k spans [k, k + 1)) of the input gradient of `cells`
    ((row, col) pairs; default the diagonal (i, i), which gives every column's x and every row's y),
    averaged over `trials` random N(0, 1) inputs. Returns ((len(cells), 2) float64, the maps' (h, w)).
    The model is put in eval mode (the copies of a batch must not interact through batch norm)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    coords = torch.arange(image_size, dtype=torch.float64) + 0.5
    total, grid = None, None  # summed |gradient| maps (n, H, W) over the trials
    for _ in range(trials):
        image = torch.randn(1, 3, image_size, image_size, generator=generator)
        if grid is None:
            with torch.no_grad():
                _forward(model, image)
                grid = tuple(hook.pop_maps().shape[-2:])
            cells = cells if cells is not None else [(i, i) for i in range(min(grid))]
        parts = [_gradient_mass(model, hook, image, cells[s:s + chunk]) for s in range(0, len(cells), chunk)]
        found = torch.cat(parts)
        total = found if total is None else total + found
    weight = total
    if peak > 0:
        weight = (weight - peak * weight.amax((1, 2), keepdim=True)).clamp_min(0)
    mass = weight.sum((1, 2)).clamp_min(1e-30)
    x = (weight.sum(1) * coords).sum(1) / mass
    y = (weight.sum(2) * coords).sum(1) / mass
    return torch.stack([x, y], -1), grid


def _gradient_mass(model: nn.Module, hook: ClassMapHook, image: torch.Tensor, cells) -> torch.Tensor:
    # a batch of copies of one image; copy c backpropagates only its own cell
    batch = image.repeat(len(cells), 1, 1, 1).requires_grad_(True)
    _forward(model, batch)
    maps = hook.pop_maps().sum(1)  # (n, h, w)
    rows, cols = (torch.tensor(axis) for axis in zip(*cells))
    picked = maps[torch.arange(len(cells)), rows, cols]
    (grad,) = torch.autograd.grad(picked.sum(), batch)
    weight = grad.abs().sum(1).double()  # (n, H, W)
    return weight / weight.sum((1, 2), keepdim=True).clamp_min(1e-30)


def _forward(model: nn.Module, pixels: torch.Tensor):
    try:
        return model(pixel_values=pixels)
    except TypeError:  # a plain timm module
        return model(pixels)
