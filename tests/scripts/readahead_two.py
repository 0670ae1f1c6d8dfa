"""Two processes (gloo), two banks in lockstep — one read ahead, one not — with every step's prefetch run to
completion before the previous step's write: each rank's batch shares rows with the other rank's previous
batch, which only the node's writer (rank 0) stores. Every read and the final files must be equal.
Run by tests/test_bank_readahead.py under `accelerate launch --multi_gpu --num_processes 2`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from scl_hf.bank import BankHeader, SharedBank

N, C, S, B, STEPS = 64, 6, 5, 8, 6


def global_batches() -> list[torch.Tensor]:
    """Step t+1's global batch: half of each rank's rows come from the other rank's rows of step t."""
    gen = torch.Generator().manual_seed(0)
    out = [torch.randperm(N, generator=gen)[: 2 * B]]
    for _ in range(STEPS - 1):
        last, new = out[-1], torch.randperm(N, generator=gen)[:B]
        out.append(torch.cat([last[B:B + B // 2], new[: B // 2], last[: B // 2], new[B // 2:]]))
    return out


def assert_same_read(a, b) -> None:
    for name in ("fresh", "running", "seen", "targets", "weights"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, msg=name)
    for name in b.rows:
        torch.testing.assert_close(a.rows[name], b.rows[name], rtol=0, atol=0, msg=name)


def main(folder: Path) -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    assert accelerator.num_processes == 2, "launch with --multi_gpu --num_processes 2 (gloo on a CPU)"
    rank, device = accelerator.process_index, accelerator.device
    header = BankHeader(N, C, S, True, "data", "cfg")
    ahead, plain = (SharedBank.setup(accelerator, folder / name, header, 0.7, 0.6) for name in ("ahead", "plain"))
    steps = []
    for t, rows in enumerate(global_batches()):
        gen = torch.Generator().manual_seed(100 * t + rank)
        index = rows[rank * B:(rank + 1) * B]
        x0y0 = torch.rand(B, 2, generator=gen) * 0.4
        steps.append({"index": index.to(device), "index_host": index,
                      "boxes": torch.cat([x0y0, x0y0 + 0.4 + 0.2 * torch.rand(B, 2, generator=gen)], 1).to(device),
                      "flips": (torch.rand(B, generator=gen) < 0.5).to(device),
                      "label": torch.randint(0, C, (B,), generator=gen).to(device),
                      "logits": torch.randn(B, C, generator=gen).to(device),
                      "maps": torch.randn(B, C, S, S, generator=gen).to(device)})
    stale = 0
    for t, inputs in enumerate(steps):
        reads = [bank.read(inputs, t, (S, S), device) for bank in (ahead, plain)]
        assert_same_read(*reads)
        if t + 1 < len(steps):
            ahead.prefetch(steps[t + 1])
            early = ahead._prefetch.result()["predictions"].clone()  # read before step t's write
        for bank, read in zip((ahead, plain), reads, strict=True):
            bank.write(inputs, inputs["logits"], inputs["maps"], read, t)
        time.sleep(0.05)  # the writer stores step t's rows now
        if t + 1 < len(steps):
            shared = ~torch.isin(steps[t + 1]["index_host"], inputs["index_host"])  # rows of the other rank's batch
            later = [bank.read(steps[t + 1], t + 1, (S, S), device) for bank in (ahead, plain)]
            assert_same_read(*later)
            stale += int((early[shared] != later[1].rows["predictions"].cpu()[shared]).any(1).sum())
            ahead.prefetch(steps[t + 1])
    for bank in (ahead, plain):
        bank.close(STEPS, STEPS)
    assert stale > 0, "no prefetched row was changed by a later write: the test did not test"
    if accelerator.is_main_process:
        for name in ahead.store.arrays:
            np.testing.assert_array_equal(np.load(folder / "ahead" / f"{name}.npy"),
                                          np.load(folder / "plain" / f"{name}.npy"), err_msg=name)
    accelerator.wait_for_everyone()
    print(f"rank {rank}: reads equal, {stale} stale prefetched rows re-read", flush=True)
    time.sleep(0.5)  # let gloo's workers drain before exit (docs/bank.md)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
