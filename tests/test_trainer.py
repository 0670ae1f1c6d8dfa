"""SCLTrainer end to end on tiny data: every backbone family, label hygiene, accumulation, bank checks."""

import math

import numpy as np
import pytest
import torch
from test_models import tiny_hf_models

from scl_hf import SCLConfig, SCLTrainer, create_model
from scl_hf.bank import BankMismatchError, read_header


def make_args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "run"), method="cl+scl", image_size=64, num_train_epochs=2,
        per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=1e-3, use_cpu=True,
        warmup_epochs=1, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        bank_size=8,
    )
    defaults.update(overrides)
    return SCLConfig(**defaults)


def loss_history(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


BACKBONES = {
    "timm-resnet": lambda n: create_model("resnet18", num_labels=n),
    "timm-convnext": lambda n: create_model("convnext_atto", num_labels=n),
    "timm-efficientnet": lambda n: create_model("efficientnet_b0", num_labels=n),
    "timm-regnet": lambda n: create_model("regnetx_002", num_labels=n),
    "timm-vit": lambda n: create_model("vit_tiny_patch16_224", num_labels=n, img_size=64),
    "hf-resnet": lambda n: tiny_hf_models(n)["hf-resnet"][0],
    "hf-convnext": lambda n: tiny_hf_models(n)["hf-convnext"][0],
    "hf-vit": lambda n: tiny_hf_models(n)["hf-vit"][0],
}


@pytest.mark.parametrize("family", list(BACKBONES))
def test_two_epochs_every_backbone(family, tiny_synthetic, tmp_path):
    num_labels = len(tiny_synthetic["train"].features["label"].names)
    model = BACKBONES[family](num_labels)
    trainer = SCLTrainer(model=model, args=make_args(tmp_path), train_dataset=tiny_synthetic["train"],
                         eval_dataset=tiny_synthetic["test"])
    trainer.train()
    for key in ("loss_base", "loss_cl", "loss_scl"):
        values = loss_history(trainer, key)
        assert values and all(math.isfinite(v) for v in values), key
    # the consistency terms start after the warm-up epoch, not before
    first_cl_epoch = min(h["epoch"] for h in trainer.state.log_history if "loss_cl" in h)
    assert first_cl_epoch > 1.0
    header = read_header(trainer.bank_dir)
    heatmaps = np.load(trainer.bank_dir / "heatmaps.npy", mmap_mode="r")
    assert heatmaps.shape == (24, num_labels, 8, 8) and heatmaps.dtype == np.float16
    assert header.num_rows == 24 and header.with_heatmaps
    seen = np.load(trainer.bank_dir / "seen.npy")
    assert (seen == 2).all()  # every image observed once per epoch
    coverage = np.load(trainer.bank_dir / "coverage.npy")
    assert coverage.max() >= 1 and np.isfinite(heatmaps.astype(np.float32)).all()
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_mAP"] <= 100.0


def train_losses(dataset, tmp_path, name, **overrides):
    model = create_model("resnet18", num_labels=5)
    torch.manual_seed(0)
    model = create_model("resnet18", num_labels=5)
    args = make_args(tmp_path / name, **overrides)
    trainer = SCLTrainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    return loss_history(trainer, "loss")


def test_full_labels_never_reach_the_loss(tiny_synthetic, tmp_path):
    train = tiny_synthetic["train"]
    rng = np.random.default_rng(0)
    poisoned = train.map(lambda row: {"labels": sorted(rng.choice(5, size=3, replace=False).tolist())})
    assert poisoned["labels"] != train["labels"]
    clean_losses = train_losses(train, tmp_path, "clean")
    poisoned_losses = train_losses(poisoned, tmp_path, "poisoned")
    assert clean_losses == poisoned_losses
    # while changing the observed label does change the loss (the comparison above could fail)
    relabelled = train.map(lambda row: {"label": (row["label"] + 1) % 5})
    assert train_losses(relabelled, tmp_path, "relabelled") != clean_losses


def test_gradient_accumulation_matches_a_large_batch(tiny_synthetic, tmp_path):
    """bs 8 × 1 and bs 4 × 2 give the same update (a model without batch statistics)."""
    weights = []
    for batch, accumulation in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        model = create_model("vit_tiny_patch16_224", num_labels=5, img_size=64, drop_rate=0.0)
        args = make_args(tmp_path / f"ga{accumulation}", method="an", per_device_train_batch_size=batch,
                         gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=0.5,
                         lr_scheduler_type="constant", dataloader_drop_last=True)
        trainer = SCLTrainer(model=model, args=args, train_dataset=tiny_synthetic["train"])
        trainer.train()
        weights.append(model.timm_model.head.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], atol=1e-5, rtol=1e-4)


def test_bank_of_another_dataset_is_refused(tiny_synthetic, tmp_path):
    args = make_args(tmp_path, num_train_epochs=1)
    SCLTrainer(model=create_model("resnet18", num_labels=5), args=args, train_dataset=tiny_synthetic["train"]).train()
    other = tiny_synthetic["train"].select(range(20))
    trainer = SCLTrainer(model=create_model("resnet18", num_labels=5), args=args, train_dataset=other)
    with pytest.raises(BankMismatchError, match="belongs to another run"):
        trainer.train()


def test_bad_columns_and_labels_fail_clearly(tiny_synthetic, tmp_path):
    args = make_args(tmp_path)
    model = create_model("resnet18", num_labels=5)
    with pytest.raises(ValueError, match="no column 'label'.*label_column"):
        SCLTrainer(model=model, args=args, train_dataset=tiny_synthetic["train"].rename_column("label", "cls"))
    with pytest.raises(ValueError, match="outside 0..2"):
        SCLTrainer(model=create_model("resnet18", num_labels=3), args=args, train_dataset=tiny_synthetic["train"])
    test = tiny_synthetic["test"]
    with pytest.raises(ValueError, match="no column 'labels'"):
        SCLTrainer(model=model, args=args, eval_dataset=test.remove_columns([c for c in ("labels", "label")
                                                                               if c in test.column_names]))
    with pytest.raises(ValueError, match="unknown method part"):
        make_args(tmp_path, method="scl+nope")


def test_evaluate_reports_map_and_per_class_ap(tiny_synthetic, tmp_path):
    names = tiny_synthetic["train"].features["label"].names
    model = create_model("resnet18", num_labels=5, id2label=names)
    trainer = SCLTrainer(model=model, args=make_args(tmp_path, log_per_class_ap=True), eval_dataset=tiny_synthetic["test"])
    metrics = trainer.evaluate()
    assert trainer.evaluate(eval_dataset=tiny_synthetic["test"])["eval_mAP"] == metrics["eval_mAP"]  # plain Dataset
    per_class = [metrics[f"eval_AP/{name}"] for name in names]
    assert metrics["eval_mAP"] == pytest.approx(np.mean(per_class))


def _one_step_with_stored_heat(tiny_synthetic, tmp_path, method: str, threshold: float | None, heat, **options):
    """One compute_loss from fixed weights after the bank's heatmaps were set to `heat` (broadcast over rows and
    cells, e.g. one value or one per class) with every cell observed; returns the trainer and the batch."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_labels=5)
    args = make_args(tmp_path / f"{method}-{threshold}-{sorted(options.items())}", method=method, warmup_epochs=0,
                     crop_negative_threshold=threshold, reliability_gate=False,  # as they act once the bank is trusted
                     **options)
    trainer = SCLTrainer(model=model, args=args, train_dataset=tiny_synthetic["train"])
    bank = trainer.setup_bank().store
    bank.heatmaps[:] = np.broadcast_to(heat, bank.heatmaps.shape)
    bank.coverage[:] = 1
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(trainer.model, batch)
    return trainer, batch


@pytest.mark.parametrize("threshold", [0.3, None])
def test_spatial_negatives_leave_unlabelled_objects_in_view_out_of_the_base_loss(tiny_synthetic, tmp_path, threshold):
    """crop_negative_threshold θ: an unobserved class whose stored heat inside the crop reaches θ is not a negative
    of the base loss (the default 'scl'); with θ off every unobserved class is one. Checked against a hand mask."""
    heat = np.full((5, 1, 1), 0.1, np.float16)
    heat[2] = 0.9  # class 2: an object in view wherever the crop falls; the others stay below θ
    trainer, batch = _one_step_with_stored_heat(tiny_synthetic, tmp_path, "scl", threshold, heat)
    with torch.no_grad():
        logits = trainer.model(pixel_values=batch["pixel_values"]).logits.float()
    targets = torch.nn.functional.one_hot(batch["label"].long(), 5).float()
    per_entry = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    keep = torch.ones_like(targets, dtype=torch.bool)
    keep[:, 2] = batch["label"] == 2  # class 2 stays only where it is the observed positive
    masked, everything = per_entry[keep].mean(), per_entry.mean()
    assert not torch.isclose(masked, everything, rtol=1e-3)  # the two expectations differ: the test can fail
    expected = masked if threshold is not None else everything
    torch.testing.assert_close(trainer._loss_terms["loss_base"][-1], expected, rtol=1e-4, atol=1e-5)


def test_spatial_negative_mask_leaves_entropy_bases_alone(tiny_synthetic, tmp_path):
    """EM has no negatives: with 'em+scl' the crop mask must not drop its unobserved (entropy) entries."""
    from scl_hf.losses import LossContext
    from scl_hf.losses.baselines import entropy_maximization

    # every class "in view": all would be masked
    trainer, batch = _one_step_with_stored_heat(tiny_synthetic, tmp_path, "em+scl", 0.3, np.float16(0.9))
    with torch.no_grad():
        logits = trainer.model(pixel_values=batch["pixel_values"]).logits.float()
    targets = torch.nn.functional.one_hot(batch["label"].long(), 5).float()
    expected = entropy_maximization(logits, targets, LossContext(options=trainer.loss_options))
    masked = entropy_maximization(logits, targets, LossContext(options=trainer.loss_options), ignore=targets < 0.5)
    assert not torch.isclose(expected, masked, rtol=1e-3)
    torch.testing.assert_close(trainer._loss_terms["loss_base"][-1], expected, rtol=1e-4, atol=1e-5)


def _base_loss_of_one_step(tiny_synthetic, tmp_path, method: str, threshold: float | None) -> torch.Tensor:
    """loss_base of one step where every class is 'in view' in the bank (all would be masked)."""
    trainer, _ = _one_step_with_stored_heat(tiny_synthetic, tmp_path, method, threshold, np.float16(0.9))
    return trainer._loss_terms["loss_base"][-1]


@pytest.mark.parametrize(("method", "masked"), [("scl", True), ("an-ls+scl", True), ("ll-r+scl", True),
                                                ("wan+scl", False), ("role+scl", False), ("epr+scl", False),
                                                ("em-apl+scl", False), ("splc+scl", False)])
def test_spatial_negative_mask_only_for_bases_with_hard_negatives(tiny_synthetic, tmp_path, method, masked):
    """The same step with the mask on (θ 0.3) and off: the base loss changes only where unobserved entries are
    hard negatives; WAN's weak negatives, ROLE's estimates, EPR's regulariser and EM's entropy stay whole."""
    with_mask = _base_loss_of_one_step(tiny_synthetic, tmp_path, method, 0.3)
    without_mask = _base_loss_of_one_step(tiny_synthetic, tmp_path, method, None)
    assert torch.isfinite(with_mask)
    if masked:
        assert not torch.isclose(with_mask, without_mask, rtol=1e-3)
    else:
        torch.testing.assert_close(with_mask, without_mask, rtol=1e-6, atol=1e-7)


def test_end_training_shuts_the_process_group_down(tiny_synthetic, tmp_path):
    """A launched script ends with end_training(): the gloo group must be gone so no rank aborts at exit."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        trainer = SCLTrainer(model=create_model("resnet18", num_labels=5), args=make_args(tmp_path, method="an"),
                             eval_dataset=tiny_synthetic["test"])
        assert torch.distributed.is_initialized()
        trainer.end_training()
        assert not torch.distributed.is_initialized()
        trainer.end_training()  # a second call (or a single-process run) is a no-op
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.mark.parametrize("epochs, max_steps, warns", [(2, -1, True), (3, -1, False), (1, 6, True), (3, 9, False)])
def test_a_run_within_the_warm_up_says_the_terms_never_act(epochs, max_steps, warns, tiny_synthetic, tmp_path):
    """24 rows, batch 8: 3 steps an epoch; warm-up 2 epochs. max_steps 6 is 2 epochs (warns), 9 is 3 (does not)."""
    import warnings

    num_labels = len(tiny_synthetic["train"].features["label"].names)
    args = make_args(tmp_path, method="scl", num_train_epochs=epochs, max_steps=max_steps, warmup_epochs=2)
    trainer = SCLTrainer(model=create_model("resnet18", num_labels=num_labels), args=args,
                         train_dataset=tiny_synthetic["train"])
    assert trainer.planned_epochs() == (epochs if max_steps < 0 else max_steps / 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.warn_if_terms_never_act()
    messages = [str(w.message) for w in caught if "warmup_epochs" in str(w.message)]
    assert bool(messages) == warns
    if warns:
        assert "trains the base loss 'an' alone" in messages[0] and "['scl']" in messages[0]


def test_tiny_cli_run_trains_the_spatial_term(tmp_path):
    """`scl-hf train synthetic --tiny` (2 epochs) uses a 1-epoch warm-up, so loss_scl is logged."""
    import json

    from scl_hf.cli import main

    run = tmp_path / "run"
    assert main(["train", "synthetic", "--tiny", "--output_dir", str(run)]) == 0
    state = json.loads(next(run.glob("checkpoint-*/trainer_state.json")).read_text())
    assert any("loss_scl" in h for h in state["log_history"])


def test_reliability_gate_scores_the_bank_each_epoch_and_scales_the_spatial_term(tiny_synthetic, tmp_path):
    num_labels = len(tiny_synthetic["train"].features["label"].names)

    def run(low, high, name):
        torch.manual_seed(0)
        args = make_args(tmp_path / name, method="scl", num_train_epochs=3, reliability_low=low, reliability_high=high,
                         spatial_reliability_low=low, spatial_reliability_high=high)
        trainer = SCLTrainer(model=create_model("resnet18", num_labels=num_labels), args=args,
                             train_dataset=tiny_synthetic["train"])
        trainer.train()
        return trainer

    closed = run(0.99, 1.0, "closed")  # a gate no bank opens: the spatial term is there but weighs nothing
    assert closed.class_auc is not None and closed.class_auc.shape == (num_labels,)
    assert ((closed.class_auc >= 0) & (closed.class_auc <= 1)).all()
    assert loss_history(closed, "loss_scl") and max(loss_history(closed, "loss_scl")) == 0.0
    assert loss_history(closed, "bank_auc")
    opened = run(0.0, 0.01, "open")  # any AUC above 0.01 opens it fully
    assert max(loss_history(opened, "loss_scl")) > 0.0


def test_the_spatial_term_has_its_own_gate_thresholds(tiny_synthetic, tmp_path):
    """spatial_reliability_low/high gate the spatial term; the mask keeps the gate of reliability_low/high."""
    args = make_args(tmp_path, method="scl", reliability_low=0.7, reliability_high=0.9, spatial_reliability_low=0.85,
                     spatial_reliability_high=0.95)
    trainer = SCLTrainer(model=create_model("resnet18", num_labels=5), args=args, train_dataset=tiny_synthetic["train"])
    assert trainer.class_gate(torch.device("cpu")).tolist() == [0.0] * 5  # nothing scored yet: shut
    trainer.class_auc = torch.tensor([0.6, 0.8, 0.875, 0.9, 0.97])
    assert trainer.class_gate(torch.device("cpu")).tolist() == pytest.approx([0.0, 0.5, 0.875, 1.0, 1.0])
    assert trainer.class_gate(torch.device("cpu"), spatial=True).tolist() == pytest.approx([0.0, 0.0, 0.25, 0.5, 1.0])
    with pytest.raises(ValueError, match="spatial_reliability_low < spatial_reliability_high"):
        make_args(tmp_path, spatial_reliability_low=0.9, spatial_reliability_high=0.8)


def test_one_process_over_several_gpus_is_refused_with_the_launch_command(tiny_synthetic, tmp_path):
    """Trainer would wrap the model in nn.DataParallel, whose replicas share one class-map hook: refused at once.
    A config that reports two GPUs stands in for a two-GPU host (this machine has none)."""
    from scl_hf import SCLConfig

    class TwoGPUConfig(SCLConfig):
        @property
        def n_gpu(self) -> int:
            return 2

    args = TwoGPUConfig(**{**make_args(tmp_path).to_dict(), "output_dir": str(tmp_path / "dp")})
    with pytest.raises(ValueError, match=r"accelerate launch --multi_gpu --num_processes 2"):
        SCLTrainer(model=create_model("resnet18", num_labels=5), args=args, train_dataset=tiny_synthetic["train"])

def test_the_trainer_cuts_and_pastes_at_the_models_cell_centres(tiny_synthetic, tmp_path):
    """The hook's CellGrid reaches the bank: one step's spatial loss and paste-back equal the geometry with the
    resnet's stated offset, not the centred rule (a heat ramp along x makes the two differ)."""
    from scl_hf.bank.geometry import paste_crop, spatial_targets
    from scl_hf.losses import spatial_consistency_loss

    ramp = np.linspace(0.05, 0.95, 8, dtype=np.float16)[None, None, :]  # the same over classes, rows, images
    trainer, batch = _one_step_with_stored_heat(tiny_synthetic, tmp_path, "scl", 0.3, ramp)
    offset = trainer.map_hook.grid.offset_cells
    assert offset == pytest.approx(-15.5 / 32)
    with torch.no_grad():  # the same weights, the same (train) mode as the step
        trainer.model(pixel_values=batch["pixel_values"])
        maps = trainer.map_hook.pop_maps().float()
    num = len(batch["index"])
    heat = torch.from_numpy(np.broadcast_to(ramp, (num, 5, 8, 8)).astype(np.float32))
    coverage = torch.ones(num, 8, 8, dtype=torch.uint8)
    boxes, flips = batch["boxes"], batch["flips"]

    def scl_loss(cell_offset):
        targets, weights = spatial_targets(heat, coverage, boxes, flips, tuple(maps.shape[-2:]), cell_offset)
        return spatial_consistency_loss(maps, targets, weights, trainer.args.spatial_loss)

    assert not torch.isclose(scl_loss(offset), scl_loss(0.0), rtol=1e-3)
    torch.testing.assert_close(trainer._loss_terms["loss_scl"][-1], scl_loss(offset), rtol=1e-4, atol=1e-6)

    momentum = trainer.args.heatmap_momentum if trainer.args.heatmap_momentum is not None else trainer.args.momentum
    new_maps = torch.sigmoid(maps).half().float()
    trainer.bank.settle()  # the step's write runs on the writer thread
    stored = torch.from_numpy(np.asarray(trainer.bank.store.heatmaps[batch["index"].numpy()], dtype=np.float32))
    expected, _ = paste_crop(heat, coverage, new_maps, boxes, flips, momentum, cell_offset=offset)
    centred, _ = paste_crop(heat, coverage, new_maps, boxes, flips, momentum)
    torch.testing.assert_close(stored, expected.half().float(), atol=2e-3, rtol=0)
    assert (stored - centred).abs().max() > 1e-2


@pytest.mark.parametrize("observed", [True, False])
def test_the_spatial_term_leaves_the_observed_classes_to_the_base_loss_when_asked(tiny_synthetic, tmp_path, observed):
    """spatial_observed_classes=False: each row's observed class carries no spatial loss (checked against the
    loss computed by hand with and without those entries; the two differ, so the test can fail)."""
    from scl_hf.bank.geometry import spatial_targets
    from scl_hf.losses import spatial_consistency_loss

    heat = np.linspace(0.1, 0.9, 5, dtype=np.float16)[:, None, None]  # a different stored heat per class
    trainer, batch = _one_step_with_stored_heat(tiny_synthetic, tmp_path, "scl", 0.3, heat,
                                                spatial_observed_classes=observed)
    with torch.no_grad():
        trainer.model(pixel_values=batch["pixel_values"])
        maps = trainer.map_hook.pop_maps().float()
    num = len(batch["index"])
    stored = torch.from_numpy(np.broadcast_to(heat, (num, 5, 8, 8)).astype(np.float32))
    targets, weights = spatial_targets(stored, torch.ones(num, 8, 8, dtype=torch.uint8), batch["boxes"], batch["flips"],
                                       tuple(maps.shape[-2:]), trainer.map_hook.grid.offset_cells)
    unobserved = 1.0 - torch.nn.functional.one_hot(batch["label"].long(), 5).float()
    every = spatial_consistency_loss(maps, targets, weights, trainer.args.spatial_loss)
    without = spatial_consistency_loss(maps, targets, weights, trainer.args.spatial_loss, unobserved)
    assert not torch.isclose(every, without, rtol=1e-3)
    torch.testing.assert_close(trainer._loss_terms["loss_scl"][-1], every if observed else without, rtol=1e-4, atol=1e-6)


def test_without_the_observed_classes_the_spatial_term_keeps_its_own_gate(tiny_synthetic, tmp_path):
    """With the gate on, the per-row weights are the spatial gate (not the mask's) times the unobserved classes."""
    from scl_hf.losses import spatial_consistency_loss

    heat = np.linspace(0.1, 0.9, 5, dtype=np.float16)[:, None, None]
    trainer, batch = _one_step_with_stored_heat(tiny_synthetic, tmp_path, "scl", 0.3, heat,
                                                spatial_observed_classes=False)
    trainer.args.reliability_gate = True
    trainer.class_auc = torch.tensor([0.6, 0.8, 0.875, 0.9, 0.97])  # mask gate ≠ spatial gate on classes 1-3
    with torch.no_grad():
        logits = trainer.model(pixel_values=batch["pixel_values"]).logits.float()
        maps = trainer.map_hook.pop_maps().float()
    read = trainer.bank.read(batch, 5, tuple(maps.shape[-2:]), maps.device)  # a later epoch: every row is fresh
    _, terms = trainer.loss_terms(logits, maps, batch, read)
    unobserved = 1.0 - torch.nn.functional.one_hot(batch["label"].long(), 5).float()
    spatial_gate = trainer.class_gate(maps.device, spatial=True)
    expected = spatial_consistency_loss(maps, read.targets, read.weights, trainer.args.spatial_loss,
                                        spatial_gate[None] * unobserved)
    with_mask_gate = spatial_consistency_loss(maps, read.targets, read.weights, trainer.args.spatial_loss,
                                              trainer.class_gate(maps.device)[None] * unobserved)
    assert not torch.isclose(expected, with_mask_gate, rtol=1e-3)
    torch.testing.assert_close(terms["loss_scl"], expected, rtol=1e-5, atol=1e-7)


def test_a_view_that_is_not_a_multiple_of_the_stride_warns(tiny_synthetic, tmp_path):
    dataset = tiny_synthetic["train"]
    with pytest.warns(UserWarning, match=r"image_size=88 is not a multiple .*\(32 px\).*use image_size=96"):
        SCLTrainer(model=create_model("resnet18", num_labels=5), args=make_args(tmp_path, image_size=88), train_dataset=dataset)
