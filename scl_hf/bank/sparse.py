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

from .dense import SCLBank
from .geometry import paste_crop, spatial_targets
from .layouts import register_layout


@register_layout("sparse")
class SparseSCLBank(SCLBank):
    """SCLBank with the top-k + observed heatmap layout; same reading and updating interface."""

    def __init__(self, folder, header, writable: bool, prefetch: bool = True):
        super().__init__(folder, header, writable, prefetch)
        self.slots = self.arrays["slots"]

    def read_spatial(
        self, indices: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, out_size: tuple[int, int],
        device: torch.device | str | None = None, cache: dict | None = None, cell_offset: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets (B, C, h, w): cut slot maps at their classes, 0 elsewhere; weights (B, h, w) as dense.

        The dense targets are made on `device` (default: CPU): filling B·C·h·w zeros costs ~17 ms of CPU for
        64 ImageNet images at 14 × 14, almost nothing on a GPU, and only the K' slot maps cross the bus."""
        heat, coverage, slots = self.rows_on(device, indices, "heatmaps", "coverage", "slots", cache=cache)
        boxes, flips = boxes.to(heat.device, non_blocking=True), flips.to(heat.device, non_blocking=True)
        slot_targets, weights = spatial_targets(heat, coverage, boxes, flips, out_size, cell_offset)
        # scatter the slot maps into dense (B, C, h, w) targets without a host sync: a class is in one slot at
        # most, and empty slots (-1) go to a spare channel C that is cut off, so no two writes meet
        num_classes = self.header.num_classes
        classes = torch.where(slots >= 0, slots.long(), num_classes)[:, :, None, None].expand_as(slot_targets)
        targets = slot_targets.new_zeros((len(slots), num_classes + 1, *slot_targets.shape[-2:]))
        targets.scatter_(1, classes, slot_targets)
        return targets[:, :num_classes], weights

    def new_rows(self, indices, probs, momentum, boxes=None, flips=None, map_probs=None, heatmap_momentum=None,
                 labels=None, cache=None, cell_offset=0.0) -> dict[str, torch.Tensor]:
        """As the dense layout's, plus the slot classes: P̄ after this step ranks the classes (assign_slots)."""
        if map_probs is not None and labels is None:
            raise ValueError("the sparse bank keeps the observed class's heatmap: pass labels= to update()")
        rows = super().new_rows(indices, probs, momentum, cache=cache)  # predictions and counts
        if map_probs is None:
            return rows
        device = map_probs.device
        heat, coverage, old_slots = self.rows_on(device, indices, "heatmaps", "coverage", "slots", cache=cache)
        old_slots = torch.where((rows["seen"] == 1)[:, None], -1, old_slots.long())  # a first observation: all fresh
        new_slots, fresh = assign_slots(old_slots, rows["predictions"], labels.to(device).long(),
                                        self.header.num_slots)
        heat = torch.where(fresh[:, :, None, None], torch.zeros((), dtype=heat.dtype, device=device), heat)
        slot_maps = torch.gather(map_probs.detach(), 1, new_slots[:, :, None, None].expand(
            -1, -1, *map_probs.shape[-2:]))  # (B, K', h, w)
        pasted, coverage = paste_crop(heat, coverage, slot_maps, boxes.to(device), flips.to(device).bool(),
                                      momentum if heatmap_momentum is None else heatmap_momentum, fresh=fresh,
                                      cell_offset=cell_offset)
        rows.update(heatmaps=pasted.half(), coverage=coverage, slots=new_slots.to(torch.int32))
        return rows

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
    device = running.device
    ranked[torch.arange(batch, device=device), labels] = -float("inf")
    wanted = torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, : num_slots - 1]  # likeliest first
    others = old_slots[:, 1:]
    stays = (others[:, :, None] == wanted[:, None, :]).any(-1)  # (B, K'-1) slot keeps its class
    entering = ~(wanted[:, :, None] == others[:, None, :]).any(-1)  # (B, K'-1) wanted class has no slot
    # the j-th free slot (in slot order) takes the j-th entering class (in likelihood order)
    positions = torch.arange(num_slots - 1, device=device).expand(batch, -1)
    free_order = torch.argsort(torch.where(stays, num_slots + positions, positions), dim=1, stable=True)
    enter_order = torch.argsort(torch.where(entering, positions, num_slots + positions), dim=1, stable=True)
    moved = torch.gather(wanted, 1, enter_order)  # entering classes first
    new_others = others.clone()
    count = (~stays).sum(1, keepdim=True)
    take = positions < count  # the first `count` free slots are filled
    rows = torch.arange(batch, device=device)[:, None].expand(-1, num_slots - 1)
    new_others[rows[take], free_order[take]] = moved[take]
    new_slots = torch.cat([labels[:, None], new_others], dim=1)
    fresh = new_slots != old_slots
    return new_slots, fresh
