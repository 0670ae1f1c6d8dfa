"""What a run refuses, or warns about, before it trains: each message names the setting to change. Pure
functions of the config and the launch, so that the trainer reads as what it does, not what it guards against."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import Accelerator

    from .config import SCLConfig
    from .losses import MethodSpec
    from .models import CellGrid


def check_one_process_per_gpu(n_gpu: int) -> None:
    """Trainer would wrap the model in nn.DataParallel, whose replicas share one class-map hook."""
    if n_gpu > 1:
        raise ValueError(
            f"SCLTrainer runs one process per device; this process sees {n_gpu} GPUs, for which Trainer "
            "would use nn.DataParallel. Launch one process per GPU instead: `accelerate launch --multi_gpu "
            f"--num_processes {n_gpu} your_script.py` (or torchrun), or pick one GPU with "
            "CUDA_VISIBLE_DEVICES=0."
        )


def check_bank_launch(accelerator: Accelerator, args: SCLConfig, num_rows: int) -> None:
    """What the bank cannot run under: every process joins each step's gather, on rows of its own."""
    processes = accelerator.num_processes
    if processes > 1 and not accelerator.even_batches:
        raise ValueError(
            "the bank needs even batches across processes (every process joins each step's gather): remove "
            "accelerator_config={'even_batches': False} from SCLConfig, or set dataloader_drop_last=True."
        )
    global_batch = args.per_device_train_batch_size * processes
    if processes > 1 and not args.dataloader_drop_last and num_rows < global_batch:
        raise ValueError(
            f"{num_rows} training images do not fill one global batch of {global_batch}: "
            "accelerate would pad that step with its own rows. Use fewer processes, a smaller "
            "per_device_train_batch_size, or dataloader_drop_last=True."
        )


def off_grid_warning(grid: CellGrid | None, image_size: int) -> str | None:
    """A view that the backbone's offset cells do not tile: the bank would cut and paste back approximately."""
    if grid is None or not grid.offset_px or not image_size % grid.stride_px:
        return None
    fit = max(grid.stride_px, round(image_size / grid.stride_px) * grid.stride_px)
    return (f"image_size={image_size} is not a multiple of the backbone's stride ({grid.stride_px} px): its "
            f"class-map cells then do not tile the view and the bank's cut/paste-back place them approximately; "
            f"use image_size={fit}")


def terms_never_act_warning(method: MethodSpec, args: SCLConfig, epochs: float) -> str | None:
    """A run no longer than the warm-up trains the base loss alone: said, rather than logging no loss_scl."""
    terms = sorted(method.terms)
    if not terms or epochs > args.warmup_epochs + 1e-6:
        return None
    return (
        f"method={args.method!r}: the consistency terms {terms} start after warmup_epochs="
        f"{args.warmup_epochs:g}, but this run trains {epochs:g} epoch(s), so it trains the base loss "
        f"{method.base!r} alone. Train longer or lower warmup_epochs (e.g. warmup_epochs="
        f"{max(epochs - 1, 0):g})."
    )
