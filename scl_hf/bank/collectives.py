"""The collectives of the bank across processes: packing a batch's rows into one tensor for one all-gather,
de-duplicating the gathered rows, the writes' own process group, and the row-sparse gradient mean of a
per-image table (ROLE's estimates)."""

from __future__ import annotations

import torch


def gather_group(accelerator):
    """A process group of its own for the writes' all-gather, which runs on the writer thread (created here,
    collectively, on every process); None for one process, and on CUDA devices, where the gather stays on
    the training thread (docs/bank.md: a collective on another thread would need its own CUDA stream)."""
    if accelerator.num_processes == 1 or accelerator.device.type == "cuda":
        return None
    return torch.distributed.new_group(backend=torch.distributed.get_backend())


def pack_rows(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list]:
    """Several (B, ...) tensors of any dtypes as one (B, bytes) uint8 tensor, and what `unpack_rows` needs."""
    names = sorted(tensors)
    batch = len(tensors[names[0]])
    parts, layout = [], []
    for name in names:
        tensor = tensors[name].contiguous()
        part = tensor.reshape(batch, -1)
        part = part.to(torch.uint8) if part.dtype == torch.bool else part.view(torch.uint8)
        parts.append(part)
        layout.append((name, tensor.dtype, tuple(tensor.shape[1:]), part.shape[1]))
    return torch.cat(parts, dim=1), layout


def unpack_rows(packed: torch.Tensor, layout: list, names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """The tensors `pack_rows` packed (`names`: only these, sliced before any copy)."""
    out, start = {}, 0
    for name, dtype, shape, width in layout:
        start += width
        if names is not None and name not in names:
            continue
        piece = packed[:, start - width:start].contiguous()
        piece = piece.bool() if dtype == torch.bool else piece.view(dtype)
        out[name] = piece.reshape(len(packed), *shape)
    return out


def gather_packed(accelerator, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """All-gather several (B, ...) tensors of any dtypes as one (B, bytes) uint8 tensor: one collective."""
    packed, layout = pack_rows(tensors)
    return unpack_rows(accelerator.gather(packed), layout)


def first_occurrence(indices: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct index (padding repeats rows across processes)."""
    _, inverse = torch.unique(indices, return_inverse=True)
    positions = torch.arange(len(indices), device=indices.device)
    first = torch.full((int(inverse.max()) + 1 if len(indices) else 0,), len(indices), device=indices.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return first


def row_gradient_mean(grad: torch.Tensor, indices: torch.Tensor, gather) -> torch.Tensor:
    """DDP's mean of a per-image table's gradient (N, C) without an all-reduce of the whole table.

    Only the rows of this step's batch have a gradient: each process sends those rows (B, C) with their
    indices, and every process rebuilds Σ_p grad_p / P from the gathered rows. A row that occurs twice in a
    process's batch is sent twice, each copy divided by its multiplicity, so the sum stays exact."""
    indices = indices.long().reshape(-1)
    multiplicity = (indices[:, None] == indices[None, :]).sum(1, keepdim=True).to(grad.dtype)
    rows = grad[indices] / multiplicity
    all_indices, all_rows = gather(indices.contiguous()), gather(rows.contiguous())
    processes = len(all_indices) // max(len(indices), 1)
    out = torch.zeros_like(grad)
    out.index_put_((all_indices,), all_rows / processes, accumulate=True)
    return out
