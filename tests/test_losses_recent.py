"""GR, Hill, SPLC and BoostLU against numbers produced by their authors' code.

The reference values were computed by running each repository's own loss code (at the commit named next to
it) in float64 on the inputs `reference_inputs` draws: torch.Generator seeds 1500 (GR), 1501 (Hill, SPLC),
1502 (BoostLU); labels one positive per image. Nothing of that code is part of scl_hf; only its outputs are here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scl_hf import SCLConfig
from scl_hf.losses import BASE_LOSS_INFO, BASE_LOSSES, LossContext, parse_method
from scl_hf.losses.boostlu import boosted_logits

GR_REFERENCE = {  # yan4xi1/GRLoss@5e13f7f9d8e40a804698860fd621bb272c1ad0a3 GR_loss, 1-based epoch: (loss, dL/dz)
    1: (0.5777925458548736, [[0.005151608788346356, -0.010521216481783526, 0.00250505008417755, 0.0011749389023575098, 0.002965943557541373, 0.003225336257028663], [0.00599679102731591, -0.002303273991187482, 0.006628768043853807, -0.02874478188978839, 0.0030177272148791626, 9.007742035699296e-05], [-0.0299552346976607, 0.0037981244357342347, 0.0027445603399783272, 0.004909386914227755, 0.000705496571987128, -0.003697723896086149], [0.006838934679342989, -0.013828313172219622, 0.004193710240490613, -0.00136406446839285, 0.004152575379238925, 0.006789171734497379]]),
    5: (0.5484025310637863, [[0.0034158808877109118, -0.010521216481783526, 0.0014078999974930565, 0.0007208500230117191, 0.0017661095156848447, 0.0019681951008381922], [0.004132053373607399, -0.0022329206074866966, 0.0046117069692593144, -0.02874478188978839, 0.0019170590945830012, -0.0004455213566876228], [-0.0299552346976607, 0.0024497872892393358, 0.0017344081498955088, 0.003285178500063121, 0.0004290791910131231, -0.0032461036780562814], [0.004736603201951652, -0.013828313172219622, 0.0027249207184918216, -0.0015381193515538163, 0.002692724999099383, 0.004691136371067214]]),
}
HILL_REFERENCE = (  # xinyu1205/robust-loss-mlml@dcfa4d54bcca43fba3632ec9d21d8bfabef1f6dd Hill(reduction='mean')
    0.20070590841142436, [[-0.0010019958421185204, 8.992826809052833e-05, 5.2911517768394e-06, 0.007018957133877749, 0.003772788453111362, 0.0010866212715959105], [0.0010664455653477398, 0.0025416909935267705, 0.005144012149096703, 0.007698853211782441, -0.0011348423010246616, 0.0023522823434287783], [0.005323867765785649, 0.005939952618121099, 0.007783491052550793, 9.72774184583906e-06, 0.007772145990464409, -0.038482009856503914], [0.006339760745700353, -0.008122846708318072, 0.0027694657884840003, 0.00715541430867258, 0.003594252005951636, 0.005700799703121348]],
)
SPLC_REFERENCE = {  # same commit, SPLC(reduction='mean'), 0-based epoch: (loss, dL/dz)
    0: (0.28229826397407387, [[-0.0010019958421185206, 2.598857957384894e-06, 3.5033196341266355e-08, 0.02120378482798098, 0.03630340869875423, 0.00013580931841857327], [0.045771848650800265, 0.0006000903838828403, 0.0025333276652106593, 0.015443078630761078, -0.0011348423010246616, 0.0005204761210710476], [0.0027510413073514846, 0.003638107749445954, 0.011039682742204411, 8.788555495932391e-08, 0.01418166018119802, -0.03848200985650391], [0.004370627140307042, -0.008122846708318074, 0.04010008129713557, 0.006582969789927374, 0.0011679115408693497, 0.02817775971471921]]),
    1: (0.08802117209124853, [[-0.0010019958421185206, 2.598857957384894e-06, 3.5033196341266355e-08, -0.006106987127958995, -0.0012883471318327004, 0.00013580931841857327], [-0.00013161440958906365, 0.0006000903838828403, 0.0025333276652106593, 0.015443078630761078, -0.0011348423010246616, 0.0005204761210710476], [0.0027510413073514846, 0.003638107749445954, 0.011039682742204411, 8.788555495932391e-08, 0.01418166018119802, -0.03848200985650391], [0.004370627140307042, -0.008122846708318074, -0.0007042983408467074, 0.006582969789927374, 0.0011679115408693497, -0.003264466229323002]]),
}
BOOSTLU_REFERENCE = {  # youngwk/BridgeGapExplanationPAMC@4a1986cce4ec6fda1f19b9e4c6080b031f13aa25, 1-based
    # epoch: (loss, Σ|dL/dCAM|, dL/dCAM of image 0 summed over cells)
    1: (2.5476420533691964, 2.554015874862671, [0.022160174325108528, 0.01510174386203289, 0.013032108545303345, 0.025154881179332733, 0.019090047106146812, 0.02235483005642891, 0.0031858473084867, 0.011884154751896858, 0.007758012041449547, 0.021764203906059265, 0.006851396523416042, -0.003236712422221899, 0.012756808660924435, 0.019780132919549942, 0.010675115510821342, 0.01970895752310753, 0.011309289373457432, 0.016225643455982208, 0.025656716898083687, 0.02183605171740055]),
    3: (2.46602519698315, 2.4999282360076904, [0.022160174325108528, 0.01510174386203289, 0.013032108545303345, 0.025154881179332733, 0.019090047106146812, 0.02235483005642891, 0.0031858473084867, 0.011884154751896858, 0.007758012041449547, 0.021764203906059265, 0.006851396523416042, -0.003236712422221899, 0.012756808660924435, 0.019780132919549942, 0.010675115510821342, 0.01970895752310753, 0.011309289373457432, 0.016225643455982208, 0.0, 0.02183605171740055]),
}


def reference_inputs(seed: int, batch: int = 4, classes: int = 6, scale: float = 2.0):
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    return logits, F.one_hot(labels, classes).double()


def loss_and_grad(name: str, logits: torch.Tensor, targets: torch.Tensor, epoch: float, num_epochs: int = 8):
    logits = logits.clone().requires_grad_(True)
    ctx = LossContext(epoch=epoch, num_classes=logits.shape[1], options={"num_epochs": num_epochs})
    loss = BASE_LOSSES[name](logits, targets, ctx, None)
    loss.backward()
    return loss.item(), logits.grad


@pytest.mark.parametrize("epoch", [1, 5])
def test_gr_matches_grloss_repository(epoch):
    logits, targets = reference_inputs(1500)
    loss, grad = loss_and_grad("gr", logits, targets, epoch - 1.0)  # ours counts epochs from 0
    expected_loss, expected_grad = GR_REFERENCE[epoch]
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float64), rtol=1e-6, atol=0)


def test_hill_matches_robust_loss_mlml():
    logits, targets = reference_inputs(1501)
    loss, grad = loss_and_grad("hill", logits, targets, 0.0)
    assert loss == pytest.approx(HILL_REFERENCE[0], rel=1e-6)
    torch.testing.assert_close(grad, torch.tensor(HILL_REFERENCE[1], dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("epoch", [0, 1])
def test_splc_matches_robust_loss_mlml(epoch):
    logits, targets = reference_inputs(1501)
    loss, grad = loss_and_grad("splc", logits, targets, float(epoch))
    assert loss == pytest.approx(SPLC_REFERENCE[epoch][0], rel=1e-6)
    torch.testing.assert_close(grad, torch.tensor(SPLC_REFERENCE[epoch][1], dtype=torch.float64), rtol=1e-6, atol=0)
    corrected = (torch.sigmoid(logits) > 0.6) & (targets < 0.5)
    assert corrected.any(), "the inputs must exercise SPLC's correction"


@pytest.mark.parametrize("epoch", [1, 3])
def test_boostlu_matches_bridgegap_repository(epoch):
    generator = torch.Generator().manual_seed(1502)
    cam = 1.5 * torch.randn(8, 20, 3, 3, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 20, (8,), generator=generator)
    targets = F.one_hot(labels, 20).double()
    cam.requires_grad_(True)
    ctx = LossContext(epoch=epoch - 1.0, num_classes=20, class_maps=cam, options={"num_epochs": 10})
    loss = BASE_LOSSES["boostlu"](cam.mean(dim=(2, 3)), targets, ctx, None)
    loss.backward()
    expected_loss, expected_abs_sum, expected_row0 = BOOSTLU_REFERENCE[epoch]
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    assert cam.grad.abs().sum().item() == pytest.approx(expected_abs_sum, rel=1e-6)
    torch.testing.assert_close(cam.grad[0].sum(dim=(1, 2)), torch.tensor(expected_row0, dtype=torch.float64),
                               rtol=1e-6, atol=1e-12)


def test_boost_scales_only_positive_cells():
    maps = torch.tensor([[[[1.0, -2.0], [3.0, -4.0]]]])
    assert boosted_logits(maps, 5.0).item() == pytest.approx((5 - 2 + 15 - 4) / 4)


def test_gr_schedule_needs_the_number_of_epochs():
    logits, targets = reference_inputs(1500)
    with pytest.raises(ValueError, match="num_epochs"):
        BASE_LOSSES["gr"](logits, targets, LossContext(epoch=0.0, num_classes=6), None)


def test_recent_losses_compose_with_scl_and_declare_their_negatives():
    for name in ("gr", "hill", "splc", "boostlu"):
        assert parse_method(f"{name}+scl").base == name
    assert not BASE_LOSS_INFO["gr"].crop_negative_mask and not BASE_LOSS_INFO["hill"].crop_negative_mask
    assert not BASE_LOSS_INFO["splc"].crop_negative_mask  # its relabelling runs away with the mask (docs/method.md)
    assert BASE_LOSS_INFO["boostlu"].crop_negative_mask
    assert parse_method("boostlu").needs_class_maps and not parse_method("gr").needs_class_maps


def test_ignored_entries_leave_the_mean():
    logits, targets = reference_inputs(1501)
    ignore = torch.zeros_like(targets, dtype=torch.bool)
    ignore[0, (targets[0] < 0.5).nonzero()[0]] = True
    ctx = LossContext(epoch=0.0, num_classes=6, options={"num_epochs": 8})
    per_entry = (BASE_LOSSES["hill"](logits, targets, ctx, None) * 24).item()
    kept = BASE_LOSSES["hill"](logits, targets, ctx, ignore).item() * 23
    assert kept < per_entry


def test_recent_options_reach_the_config():
    args = SCLConfig(output_dir="unused", method="gr", gr_q=[0.5, 1.0], splc_tau=0.7, report_to="none")
    assert args.gr_q == [0.5, 1.0] and args.splc_tau == 0.7 and args.hill_lambda == 1.5


def test_boostlu_trains_and_evaluates_its_boosted_scores(tiny_synthetic, tmp_path):
    from scl_hf import SCLTrainer, create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_labels=5)
    args = SCLConfig(output_dir=str(tmp_path / "run"), method="boostlu+scl", image_size=64, num_train_epochs=2,
                     per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=1e-3, use_cpu=True,
                     warmup_epochs=1, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                     bank_size=8)
    trainer = SCLTrainer(model=model, args=args, train_dataset=tiny_synthetic["train"],
                         eval_dataset=tiny_synthetic["test"])
    trainer.train()
    assert [h["loss_scl"] for h in trainer.state.log_history if "loss_scl" in h]
    with torch.no_grad():  # make some cells positive, so that the boost shows
        trainer.model.timm_model.get_classifier().bias += 3.0
    predictions = trainer.predict(trainer.eval_dataset).predictions
    batch = torch.stack([trainer.eval_dataset[i]["pixel_values"] for i in range(4)])
    trainer.model.eval()
    with torch.no_grad():
        plain = trainer.model(pixel_values=batch).logits
        boosted = boosted_logits(trainer.map_hook.pop_maps(), 5.0)
    np_boosted = boosted.numpy()
    assert not torch.allclose(plain, boosted, atol=1e-4)  # the boost changes the scores
    assert abs(predictions[:4] - np_boosted).max() < 1e-4
