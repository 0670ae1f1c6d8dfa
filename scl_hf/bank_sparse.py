"""Sparse heatmap bank: per image, the maps of the observed class and of the k likeliest other classes.

A dense bank holds C heatmaps per image: ImageNet (1.28M × 1000 × 14 × 14 fp16) would be 502 GB. Almost
all of those maps belong to classes that are not in the image, whose running averages sit near 0. The
sparse layout keeps K' = min(k + 1, C) slots per image (`heatmaps.npy` (N, K', S, S) and their class ids in
`slots.npy` (N, K')): slot 0 is always the observed class, slots 1..K'-1 the k classes with the highest
running-average prediction P̄ (the observed one excluded).

Reading gives the same (B, C, h, w) targets and (B, h, w) weights as the dense bank, so the trainer cannot
tell the layouts apart: slot classes get their cut heatmaps, every other class the target 0 with the cell's
weight (they are below the image's k-th likeliest class, so their dense map would hold small values too,
and the loss keeps the dense layout's normalisation, over all C classes; see docs/bank.md).

Replacement: after each update of P̄, a class that entered the top k takes the slot of one that left it;
its history starts now — 0 (the value it was read as while outside) everywhere but inside the current
crop, where it takes this step's map as a first observation would. A class that leaves loses its map.
With k + 1 >= C every class has a slot from the first observation on and never leaves: the sparse bank
then holds, and reads, exactly what the dense bank does.
"""

from __future__ import annotations

import numpy as np
import torch

from .bank import SCLBank, _take_rows
from .geometry import paste_crop, spatial_targets


class SparseSCLBank(SCLBank):
    """SCLBank with the top-k + observed heatmap layout; same reading and updating interface."""

    def __init__(self, folder, header, writable: bool, prefetch: bool = True):
        super().__init__(folder, header, writable, prefetch)
        self.slots = self.arrays["slots"]

    def read_spatial(
        self, indices: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, out_size: tuple[int, int],
        device: torch.device | str | None = None, cell_offset: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets (B, C, h, w): cut slot maps at their classes, 0 elsewhere; weights (B, h, w) as dense.

        The dense targets are made on `device` (default: CPU): filling B·C·h·w zeros costs ~17 ms of CPU for
        64 ImageNet images at 14 × 14, almost nothing on a GPU, and only the K' slot maps cross the bus."""
        idx = indices.cpu().numpy()
        heat = torch.from_numpy(_take_rows(self.heatmaps, idx))
        coverage = torch.from_numpy(_take_rows(self.coverage, idx))
        slots = torch.from_numpy(_take_rows(self.slots, idx)).long()
        slot_targets, weights = spatial_targets(heat, coverage, boxes.cpu(), flips.cpu(), out_size, cell_offset)
        row, slot = torch.nonzero(slots >= 0, as_tuple=True)
        values, classes = slot_targets[row, slot], slots[row, slot]
        if device is not None:
            row, classes, values, weights = (t.to(device) for t in (row, classes, values, weights))
        targets = values.new_zeros((len(idx), self.header.num_classes, *slot_targets.shape[-2:]))
        targets[row, classes] = values
        return targets, weights

    def update(
        self,
        indices: torch.Tensor,
        probs: torch.Tensor,
        momentum: float,
        boxes: torch.Tensor | None = None,
        flips: torch.Tensor | None = None,
        map_probs: torch.Tensor | None = None,
        heatmap_momentum: float | None = None,
        labels: torch.Tensor | None = None,
        cell_offset: float = 0.0,
    ) -> None:
        if map_probs is not None and labels is None:
            raise ValueError("the sparse bank keeps the observed class's heatmap: pass labels= to update()")
        idx = self._check_writable(indices)
        seen_before = self._update_predictions(idx, probs, momentum)
        if map_probs is None:
            return
        running = torch.from_numpy(self.predictions[idx])  # P̄ after this step's update ranks the classes
        old_slots = torch.from_numpy(_take_rows(self.slots, idx)).long()
        old_slots[torch.from_numpy(seen_before == 0)] = -1  # a first observation starts every slot fresh
        new_slots, fresh = assign_slots(old_slots, running, labels.cpu().long(), self.header.num_slots)
        rows = torch.from_numpy(_take_rows(self.heatmaps, idx))
        rows = torch.where(fresh[:, :, None, None], torch.zeros((), dtype=rows.dtype), rows)
        maps = map_probs.detach().cpu()
        slot_maps = maps[torch.arange(len(idx))[:, None], new_slots]  # (B, K', h, w)
        pasted, coverage = paste_crop(
            rows,
            torch.from_numpy(_take_rows(self.coverage, idx)),
            slot_maps,
            boxes.cpu(),
            flips.cpu(),
            momentum if heatmap_momentum is None else heatmap_momentum,
            fresh=fresh,
            cell_offset=cell_offset,
        )
        self.heatmaps[idx] = pasted.half().numpy()
        self.coverage[idx] = coverage.numpy()
        self.slots[idx] = new_slots.numpy().astype(np.int32)

    def dense_heatmaps(self, index: int) -> np.ndarray:
        """One image's heatmaps as a dense (C, S, S) float32 array (0 for classes without a slot), for plots."""
        return slots_to_dense(self.heatmaps[index], self.slots[index], self.header.num_classes)


def slots_to_dense(slot_maps: np.ndarray, slot_classes: np.ndarray, num_classes: int) -> np.ndarray:
    """(K', S, S) slot heatmaps of one image and their class ids (-1: empty slot) → dense (C, S, S) float32;
    classes without a slot read 0, as the losses read them."""
    dense = np.zeros((num_classes, *slot_maps.shape[1:]), dtype=np.float32)
    held = slot_classes >= 0
    dense[slot_classes[held]] = slot_maps[held]
    return dense


def assign_slots(
    old_slots: torch.Tensor, running: torch.Tensor, labels: torch.Tensor, num_slots: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """New slot classes (B, K') and which slots start fresh (B, K'), vectorised over rows.

    Slot 0 holds the observed class. The other K'-1 slots hold the classes with the highest running average
    (observed class excluded; ties go to the lower class id: a stable sort). A class that stays keeps
    its slot, so its history is kept; entering classes fill the freed slots, likeliest first into the lowest
    slot. A never-observed row (all slots -1) starts every slot fresh.
    """
    batch = len(old_slots)
    ranked = running.float().clone()
    ranked[torch.arange(batch), labels] = -float("inf")
    wanted = torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, : num_slots - 1]  # likeliest first
    others = old_slots[:, 1:]
    stays = (others[:, :, None] == wanted[:, None, :]).any(-1)  # (B, K'-1) slot keeps its class
    entering = ~(wanted[:, :, None] == others[:, None, :]).any(-1)  # (B, K'-1) wanted class has no slot
    # the j-th free slot (in slot order) takes the j-th entering class (in likelihood order)
    positions = torch.arange(num_slots - 1).expand(batch, -1)
    free_order = torch.argsort(torch.where(stays, num_slots + positions, positions), dim=1, stable=True)
    enter_order = torch.argsort(torch.where(entering, positions, num_slots + positions), dim=1, stable=True)
    moved = torch.gather(wanted, 1, enter_order)  # entering classes first
    new_others = others.clone()
    count = (~stays).sum(1, keepdim=True)
    take = positions < count  # the first `count` free slots are filled
    rows = torch.arange(batch)[:, None].expand(-1, num_slots - 1)
    new_others[rows[take], free_order[take]] = moved[take]
    new_slots = torch.cat([labels[:, None], new_others], dim=1)
    fresh = new_slots != old_slots
    return new_slots, fresh
