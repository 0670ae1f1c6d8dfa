"""Partial labels: several observed positives (and observed negatives) per row, in every base loss, the
consistency terms, the bank and the spatial term; single-positive is the one-hot special case."""

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scl_hf import SCLConfig, SCLTrainer, create_model
from scl_hf.losses import BASE_LOSS_INFO, BASE_LOSSES, LossContext, consistency_loss

B, C = 3, 5
TARGETS = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.float64)
NEGATIVES = torch.tensor([[0, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
# every base loss on the model's logits (BoostLU scores the image from its class maps: trained below instead)
BASES = sorted(n for n in BASE_LOSSES if n != "full" and not BASE_LOSS_INFO[n].logits_from_maps)


def context(name, negatives=None, epoch=3.0):
    info = BASE_LOSS_INFO[name]
    state = info.make_state(TARGETS, C, {"seed": 0}).double() if info.make_state else None
    gen = torch.Generator().manual_seed(1)
    extra = {}
    if info.pseudo_labels:  # CLIP scores (whole image + one cell) of the pseudo-label losses
        extra["pseudo_labels"] = torch.rand(B, 2, C, generator=gen, dtype=torch.float64) * 0.3
    if info.logits_from_maps:  # BoostLU scores the image from its class maps
        extra["class_maps"] = torch.zeros(B, C, 2, 2, dtype=torch.float64)
    return LossContext(epoch=epoch, num_classes=C, indices=torch.arange(B), state=state,
                       observed_negatives=negatives, options={"num_epochs": 10, "apl_warmup_epochs": 1,
                                                              "ll_delta_rel": 10.0}, **extra)


@pytest.mark.parametrize("name", BASES)
def test_every_base_loss_pushes_every_observed_positive_up(name):
    logits = torch.zeros(B, C, dtype=torch.float64, requires_grad=True)
    loss = BASE_LOSSES[name](logits, TARGETS, context(name), None)
    loss.backward()
    assert torch.isfinite(loss)
    assert (logits.grad[TARGETS > 0.5] < 0).all(), logits.grad  # both positives of row 0, all three of row 2


@pytest.mark.parametrize("name", BASES)
def test_observed_negatives_are_plain_bce_towards_zero(name):
    """The gradient on an observed negative is σ(z)/(B·C) (BCE to 0, weight 1 in the B·C mean) in every loss,
    plus, for EPR and ROLE, their expected-positives penalty's own gradient (computed apart)."""
    from scl_hf.losses.baselines import expected_positive_penalty

    logits = torch.randn(B, C, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    BASE_LOSSES[name](logits, TARGETS, context(name, NEGATIVES), None).backward()
    expected = torch.sigmoid(logits.detach()) / (B * C)
    if name in ("epr", "role", "aevlp"):
        from scl_hf.losses.pseudo_labels import pseudo_option

        z = logits.detach().clone().requires_grad_()
        expected_positive_penalty(torch.sigmoid(z), 2.9).backward()
        weight = {"role": 0.5, "epr": 1.0}.get(name) or pseudo_option(context(name), "aevlp_reg")
        expected = expected + weight * z.grad
    assert torch.allclose(logits.grad[NEGATIVES], expected[NEGATIVES], atol=1e-12), (logits.grad, expected)


def test_one_hot_targets_give_the_single_positive_losses():
    """Single-positive is the special case: one-hot targets from a (N, C) matrix or (N,) ids build equal states."""
    ids = torch.tensor([2, 1, 4])
    hot = F.one_hot(ids, C).double()
    for name in ("role", "ll-cp", "em-apl"):
        a, b = BASE_LOSS_INFO[name].make_state(ids, C, {"seed": 0}), BASE_LOSS_INFO[name].make_state(hot, C, {"seed": 0})
        for x, y in zip(a.state_dict().values(), b.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)  # EM-APL's table starts as NaN


def test_consistency_term_leaves_observed_positives_and_negatives_out():
    logits = torch.randn(B, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    running = torch.rand(B, C, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    value = consistency_loss(logits, TARGETS, running, observed_negatives=NEGATIVES)
    unobserved = (TARGETS < 0.5) & ~NEGATIVES
    expected = F.binary_cross_entropy_with_logits(logits, running, reduction="none")[unobserved].mean()
    assert torch.allclose(value, expected) and unobserved.sum() == 7


def tiny_partial_dataset(n=8, negatives=False):
    rng = np.random.default_rng(0)
    rows = [[k % C, (k + 2) % C] for k in range(n)]
    if negatives:
        labels = [[1 if c in r else (-1 if c == (r[0] + 1) % C else 0) for c in range(C)] for r in rows]
        feats = {"label": datasets.List(datasets.Value("int64"), length=C)}
    else:
        labels, feats = rows, {"label": datasets.List(datasets.Value("int64"))}
    data = {"image": [Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)) for _ in range(n)],
            "label": labels, "labels": [sorted(r) for r in rows]}
    features = datasets.Features({"image": datasets.Image(), **feats, "labels": datasets.List(datasets.Value("int64"))})
    return datasets.Dataset.from_dict(data, features=features)


METHODS = ["an", "an-ls", "wan", "epr", "role", "ll-r", "ll-ct", "ll-cp", "em", "em-apl", "cl", "en", "scl",
           "role+scl", "ll-r+cl"]


@pytest.mark.parametrize("negatives", [False, True])
def test_partial_labels_train_with_every_method_name(negatives, tmp_path):
    data = tiny_partial_dataset(negatives=negatives)
    for method in METHODS:
        args = SCLConfig(output_dir=str(tmp_path / method), method=method, image_size=32, num_train_epochs=2,
                         per_device_train_batch_size=4, use_cpu=True, save_strategy="no", report_to="none",
                         disable_tqdm=True, seed=0, bank_size=4, warmup_epochs=1, apl_warmup_epochs=1, logging_steps=1,
                         bank_layout="sparse" if method == "scl" else "dense", bank_top_k=2)
        trainer = SCLTrainer(model=create_model("resnet18", num_labels=C, seed=0), args=args, train_dataset=data)
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        assert losses and all(np.isfinite(losses)), method
        if "scl" in method:
            assert any("loss_scl" in h for h in trainer.state.log_history), method
