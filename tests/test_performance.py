"""Mixed precision and torch.compile with the SCL terms (issue 7: performance).

Why these tests: the class maps come from a forward hook and are turned into maps by the head applied per
location *outside* `model.forward` — the one place accelerate's autocast wraps. Under bf16/fp16 the captured
features are low precision while the head's weights are fp32 (a dtype error unless the trainer applies the
same autocast), and under torch.compile the hook's capture must survive graph capture (the captured
tensor becomes an extra graph output) with its gradient path intact. Each test runs a tiny real training
(SCLTrainer.train) so that the bank update sees what the compiled / autocast step produces.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from scl_hf import SCLConfig, SCLTrainer, create_model
from scl_hf.models import attach_class_maps

NUM_LABELS = 5


def tiny_args(tmp_path, **overrides) -> SCLConfig:
    defaults = dict(
        output_dir=str(tmp_path / "run"),
        method="cl+scl",
        image_size=64,
        num_train_epochs=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        use_cpu=True,
        warmup_epochs=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        bank_size=8,
    )
    defaults.update(overrides)
    return SCLConfig(**defaults)


def losses(trainer: SCLTrainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h]


def assert_trained_with_scl(trainer: SCLTrainer) -> None:
    """The spatial term ran after the warm-up, every logged term is finite, the bank holds finite fp16 maps."""
    for key in ("loss", "loss_base", "loss_cl", "loss_scl"):
        values = losses(trainer, key)
        assert values and all(math.isfinite(v) for v in values), (key, values)
    heatmaps = np.load(trainer.bank_dir / "heatmaps.npy")
    assert heatmaps.dtype == np.float16 and np.isfinite(heatmaps.astype(np.float32)).all()
    assert np.load(trainer.bank_dir / "coverage.npy").max() >= 1
    assert (np.load(trainer.bank_dir / "seen.npy") == 2).all()  # recorded in both epochs


class DtypeProbe:
    """Records the dtype of the features the class-map hook captured (the logits say nothing: accelerate
    converts the autocast forward's outputs back to fp32)."""

    def __init__(self, trainer: SCLTrainer):
        self.features: set[torch.dtype] = set()
        to_maps = trainer.map_hook._to_maps

        def recording(features: torch.Tensor) -> torch.Tensor:
            self.features.add(features.dtype)
            return to_maps(features)

        trainer.map_hook._to_maps = recording


# ----------------------------------------------------------------------------- bf16 autocast on CPU
def test_bf16_autocast_training_with_scl(tiny_synthetic, tmp_path):
    model = create_model("resnet18", num_labels=NUM_LABELS)
    trainer = SCLTrainer(
        model=model,
        args=tiny_args(tmp_path, bf16=True),
        train_dataset=tiny_synthetic["train"],
        eval_dataset=tiny_synthetic["test"],
    )
    probe = DtypeProbe(trainer)
    trainer.train()
    assert probe.features == {torch.bfloat16}  # autocast really ran
    assert_trained_with_scl(trainer)
    assert 0.0 <= trainer.evaluate()["eval_mAP"] <= 100.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_class_maps_under_autocast_average_to_the_logits(dtype):
    """The trainer computes the maps under the forward's autocast: same precision as the logits they explain."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_labels=NUM_LABELS).eval()
    hook = attach_class_maps(model)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        logits = model(pixel_values=pixels).logits
        maps = hook.pop_maps()
    assert maps.dtype == dtype and maps.shape == (2, NUM_LABELS, 2, 2)
    torch.testing.assert_close(maps.float().mean(dim=(2, 3)), logits.float(), atol=0.05, rtol=0.02)


def test_fp16_flag_on_cpu_trains_with_scl(tiny_synthetic, tmp_path):
    """`fp16=True` on a CPU machine: accelerate 1.15 keeps the forward in fp32 there (its CPU autocast is bf16
    only, no GradScaler), and the SCL terms must train as usual; the fp16 + GradScaler path is CUDA's."""
    trainer = SCLTrainer(
        model=create_model("resnet18", num_labels=NUM_LABELS),
        args=tiny_args(tmp_path, fp16=True),
        train_dataset=tiny_synthetic["train"],
    )
    probe = DtypeProbe(trainer)
    trainer.train()
    assert trainer.accelerator.mixed_precision == "fp16"
    assert probe.features == {torch.float32}  # what the README tells CPU users (use bf16 there)
    assert_trained_with_scl(trainer)


# ----------------------------------------------------------------------------- torch.compile
def test_compiled_forward_keeps_class_maps_and_their_gradient():
    """Graph capture with the hook: same maps as eager, one graph without breaks, gradients reach the stem."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = create_model("test_resnet", num_labels=NUM_LABELS).train()
    hook = attach_class_maps(model)
    pixels = torch.randn(2, 3, 64, 64)
    eager_logits = model(pixel_values=pixels).logits
    eager_maps = hook.pop_maps()

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="aot_eager")
    logits = compiled(pixel_values=pixels).logits
    maps = hook.pop_maps()
    torch.testing.assert_close(logits, eager_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(maps, eager_maps, atol=1e-5, rtol=1e-5)
    assert not counters["graph_break"], dict(counters["graph_break"])
    model.zero_grad()
    maps.sigmoid().mean().backward()
    stem = next(p for p in model.parameters() if p.ndim == 4)
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    torch._dynamo.reset()


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_torch_compile_aot_eager_training_with_scl(tiny_synthetic, tmp_path, bf16):
    """SCLConfig(torch_compile_backend="aot_eager"): Trainer compiles the model; the SCL terms still train."""
    torch._dynamo.reset()
    model = create_model("test_resnet", num_labels=NUM_LABELS)
    args = tiny_args(tmp_path, torch_compile_backend="aot_eager", bf16=bf16)
    assert args.torch_compile
    trainer = SCLTrainer(
        model=model, args=args, train_dataset=tiny_synthetic["train"], eval_dataset=tiny_synthetic["test"]
    )
    trainer.train()
    assert isinstance(trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule)  # it was compiled
    assert_trained_with_scl(trainer)
    assert 0.0 <= trainer.evaluate()["eval_mAP"] <= 100.0
    torch._dynamo.reset()


def _inductor_unavailable() -> str | None:
    """Why inductor cannot compile on this CPU, or None: it generates and builds C++ for CPU kernels."""
    compiler = next((shutil.which(name) for name in ("g++", "c++", "clang++") if shutil.which(name)), None)
    if compiler is None:
        return (
            "torch.compile's inductor backend needs a C++ compiler on CPU (none of g++, c++, clang++ on PATH)"
        )
    return None


@pytest.mark.slow
def test_torch_compile_inductor_training_with_scl(tiny_synthetic, tmp_path):
    """The default backend (inductor) on CPU: generated C++ kernels, the hook capture and the SCL step."""
    reason = _inductor_unavailable()
    if reason:
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    torch._dynamo.reset()
    model = create_model("test_resnet", num_labels=NUM_LABELS)
    args = tiny_args(tmp_path, torch_compile=True)
    assert args.torch_compile_backend == "inductor"
    trainer = SCLTrainer(model=model, args=args, train_dataset=tiny_synthetic["train"])
    trainer.train()
    assert isinstance(trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert_trained_with_scl(trainer)
    torch._dynamo.reset()
