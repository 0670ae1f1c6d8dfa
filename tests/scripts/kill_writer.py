"""Writes a bank without end until it is killed: `python kill_writer.py <folder> <layout>`.

Creates a small bank (clean), prints "writing" after its first update, then keeps updating random rows;
the test kills it with SIGKILL somewhere in the middle of a write.
"""

from __future__ import annotations

import sys

import torch

from scl_hf.bank import BankHeader, open_bank

N, C, S = 64, 8, 8


def header(layout: str) -> BankHeader:
    return BankHeader(num_rows=N, num_classes=C, size=S, with_heatmaps=True, dataset_fingerprint="kill",
                      config_fingerprint="kill", layout=layout, top_k=3)


def main(folder: str, layout: str) -> None:
    bank = open_bank(folder, header(layout), writable=True, create=True)
    gen = torch.Generator().manual_seed(0)
    step = 0
    while True:
        rows = torch.randperm(N, generator=gen)[:16]
        x0y0 = torch.rand(16, 2, generator=gen) * 0.5
        boxes = torch.cat([x0y0, x0y0 + 0.5], 1)
        bank.update(rows, torch.rand(16, C, generator=gen), 0.8, boxes=boxes, flips=torch.rand(16, generator=gen) < 0.5,
                    map_probs=torch.rand(16, C, 4, 4, generator=gen), labels=rows % C)
        if step == 0:
            print("writing", flush=True)
        step += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
