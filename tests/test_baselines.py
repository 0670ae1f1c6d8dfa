"""The single-positive baselines against hand-computed values, their schedules and state, and tiny trainer runs."""

import math
import os

import pytest
import torch
from safetensors.torch import load_file

from scl_hf import SCLConfig, SCLTrainer, create_model
from scl_hf.losses import BASE_LOSS_INFO, BASE_LOSSES, LossContext, observed_one_hot, parse_method
from scl_hf.losses.baselines import (
    BASELINE_DEFAULTS,
    LabelEstimates,
    PermanentCorrections,
    PseudoNegatives,
    large_loss_count,
)
from scl_hf.trainer import FULL_LABELS_WARNING, LOSS_STATE_FILE

LOGITS = [[2.0, -1.0, 0.5], [-0.3, 1.5, -2.0]]
LABELS = [0, 1]  # one observed positive per image
B, C = 2, 3


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def bce(z: float, t: float) -> float:
    p = sigmoid(z)
    return -(t * math.log(p) + (1.0 - t) * math.log(1.0 - p))


def entropy(z: float) -> float:
    p = sigmoid(z)
    return -(p * math.log(p) + (1.0 - p) * math.log(1.0 - p))


def observed(b: int, c: int) -> bool:
    return LABELS[b] == c


def tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def targets() -> torch.Tensor:
    return observed_one_hot(torch.tensor(LABELS), C).double()


def run(name: str, logits=None, ignore=None, **ctx) -> torch.Tensor:
    logits = tensor(LOGITS) if logits is None else logits
    return BASE_LOSSES[name](logits, targets(), LossContext(num_classes=C, **ctx), ignore)


ENTRIES = [(b, c) for b in range(B) for c in range(C)]


# ----------------------------------------------------------------------------- registry


def test_every_method_is_registered_and_composable():
    names = {"an", "an-ls", "wan", "epr", "role", "ll-r", "ll-ct", "ll-cp", "em", "em-apl", "full"}
    assert names <= set(BASE_LOSSES) and set(BASE_LOSSES) == set(BASE_LOSS_INFO)
    assert {n for n, info in BASE_LOSS_INFO.items() if info.make_state} == {"role", "ll-cp", "em-apl", "nnpu"}
    assert [n for n, info in BASE_LOSS_INFO.items() if info.full_labels] == ["full"]
    assert parse_method("ll-r+scl").base == "ll-r" and parse_method("ll-r+scl").terms == {"scl"}
    assert parse_method("em-apl+cl").base == "em-apl" and parse_method("em-apl+cl").terms == {"cl"}
    with pytest.raises(ValueError) as info:
        parse_method("ll-x+scl")
    assert all(repr(name) in str(info.value) for name in names)


# ----------------------------------------------------------------------------- stateless losses


def test_an_ls_smooths_both_targets():
    eps = BASELINE_DEFAULTS["ls_coefficient"]
    expected = sum(bce(LOGITS[b][c], 1 - eps if observed(b, c) else eps) for b, c in ENTRIES) / 6
    assert run("an-ls").item() == pytest.approx(expected, rel=1e-12)
    expected = sum(bce(LOGITS[b][c], 0.8 if observed(b, c) else 0.2) for b, c in ENTRIES) / 6
    assert run("an-ls", options={"ls_coefficient": 0.2}).item() == pytest.approx(expected, rel=1e-12)


def test_wan_weighs_negatives_by_one_over_c_minus_one():
    expected = sum(bce(LOGITS[b][c], 1.0) if observed(b, c) else bce(LOGITS[b][c], 0.0) / (C - 1)
                   for b, c in ENTRIES) / 6
    assert run("wan").item() == pytest.approx(expected, rel=1e-12)


def test_epr_positives_plus_expected_positive_penalty():
    k = 1.7
    positives = sum(-math.log(sigmoid(LOGITS[b][c])) for b, c in ENTRIES if observed(b, c)) / 6
    mean_count = sum(sigmoid(z) for row in LOGITS for z in row) / B
    expected = positives + (mean_count - k) ** 2 / C**2
    assert run("epr", options={"expected_positives": k}).item() == pytest.approx(expected, rel=1e-12)


def test_em_maximises_the_entropy_of_unobserved_labels():
    alpha = 0.3
    expected = sum(bce(LOGITS[b][c], 1.0) if observed(b, c) else -alpha * entropy(LOGITS[b][c])
                   for b, c in ENTRIES) / 6
    assert run("em", options={"em_alpha": alpha}).item() == pytest.approx(expected, rel=1e-12)


def test_full_uses_every_true_label_and_needs_them():
    full = [[1, 0, 1], [1, 1, 0]]
    expected = sum(bce(LOGITS[b][c], full[b][c]) for b, c in ENTRIES) / 6
    assert run("full", full_labels=tensor(full)).item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="full_labels"):
        run("full")


# ----------------------------------------------------------------------------- large loss


def test_large_loss_schedule():
    # LL-R / LL-Ct: rate e·Δrel at (0-based) epoch e, nothing in the first epoch; Δrel in percent
    assert [large_loss_count(e, 1280, 0.2) for e in (0.0, 0.99, 1.0, 1.5, 2.0, 9.0)] == [0, 0, 3, 3, 6, 24]
    assert large_loss_count(1.0, 40, 2.5) == 1  # 40·0.025 = 1.0000000000000002 in floats
    # LL-Cp: a constant ⌈B·C·Δrel⌉ from the second epoch on
    assert [large_loss_count(e, 1280, 0.2, permanent=True) for e in (0.5, 1.0, 5.0)] == [0, 3, 3]
    assert large_loss_count(3.0, 1280, 0.0) == 0


def unobserved_by_loss() -> list[tuple[int, int]]:
    return sorted((e for e in ENTRIES if not observed(*e)), key=lambda e: -bce(LOGITS[e[0]][e[1]], 0.0))


def test_ll_r_and_ll_ct_by_hand():
    options = {"ll_delta_rel": 25.0}  # epoch 1: k = ⌈6 · 0.25⌉ = 2
    top = set(unobserved_by_loss()[:2])
    an = sum(bce(LOGITS[b][c], float(observed(b, c))) for b, c in ENTRIES) / 6
    rejected = sum(0.0 if (b, c) in top else bce(LOGITS[b][c], float(observed(b, c))) for b, c in ENTRIES) / 6
    corrected = sum(bce(LOGITS[b][c], 1.0 if (b, c) in top else float(observed(b, c))) for b, c in ENTRIES) / 6
    assert run("ll-r", epoch=0.5, options=options).item() == pytest.approx(an, rel=1e-12)
    assert run("ll-r", epoch=1.0, options=options).item() == pytest.approx(rejected, rel=1e-12)
    assert run("ll-ct", epoch=1.7, options=options).item() == pytest.approx(corrected, rel=1e-12)
    # epoch 2: k = 3 of the 4 unobserved entries; k never exceeds them (epoch 9 asks for 14)
    top3 = set(unobserved_by_loss()[:3])
    expected = sum(0.0 if (b, c) in top3 else bce(LOGITS[b][c], float(observed(b, c))) for b, c in ENTRIES) / 6
    assert run("ll-r", epoch=2.0, options=options).item() == pytest.approx(expected, rel=1e-12)
    only_positives = sum(bce(LOGITS[b][LABELS[b]], 1.0) for b in range(B)) / 6
    assert run("ll-r", epoch=9.0, options=options).item() == pytest.approx(only_positives, rel=1e-12)


def test_ll_cp_corrections_persist_across_steps():
    state = PermanentCorrections(torch.tensor([0, 1, 2, 0, 1]), C, {})
    indices = torch.tensor([3, 1])  # the batch's rows in the training set
    options = {"ll_delta_rel": 10.0}  # k = ⌈6 · 0.1⌉ = 1 per batch from epoch 1 on
    first = unobserved_by_loss()[0]
    run("ll-cp", epoch=0.0, options=options, state=state, indices=indices)
    assert not state.corrected.any()  # nothing in the first epoch
    value = run("ll-cp", epoch=1.0, options=options, state=state, indices=indices)
    expected = sum(bce(LOGITS[b][c], 1.0 if (b, c) == first or observed(b, c) else 0.0) for b, c in ENTRIES) / 6
    assert value.item() == pytest.approx(expected, rel=1e-12)
    assert state.corrected.nonzero().tolist() == [[int(indices[first[0]]), first[1]]]
    # next step, other logits: the corrected entry stays a positive and the next largest loss is corrected too
    logits = [[2.0, -1.0, 0.5], [-0.3, 1.5, -2.0]]
    logits[first[0]][first[1]] = -5.0  # now the corrected entry has the lowest AN loss of all
    positive = {first, *((b, LABELS[b]) for b in range(B))}
    rest = sorted((e for e in ENTRIES if e not in positive), key=lambda e: -bce(logits[e[0]][e[1]], 0.0))
    second = rest[0]
    value = run("ll-cp", logits=tensor(logits), epoch=4.0, options=options, state=state, indices=indices)
    expected = sum(bce(logits[b][c], 1.0 if (b, c) in positive or (b, c) == second else 0.0) for b, c in ENTRIES) / 6
    assert value.item() == pytest.approx(expected, rel=1e-12)
    assert sorted(state.corrected.nonzero().tolist()) == sorted(
        [[int(indices[first[0]]), first[1]], [int(indices[second[0]]), second[1]]]
    )


# ----------------------------------------------------------------------------- ROLE


def test_role_loss_and_one_estimator_step():
    k, lr = 1.2, 0.5
    state = LabelEstimates(torch.tensor([2, 0, 1]), C, {"seed": 0})
    table = [[0.3, -0.4, 1.1], [0.2, 0.7, -0.6], [-1.0, 0.4, 0.9]]
    state.double()
    with torch.no_grad():
        state.logits.copy_(tensor(table))
    indices = torch.tensor([1, 2])  # rows 1, 2 carry the batch's labels 0, 1
    g = [table[1], table[2]]
    f = LOGITS
    logits = tensor(LOGITS).requires_grad_()
    value = BASE_LOSSES["role"](logits, targets(), LossContext(num_classes=C, indices=indices, state=state,
                                                              options={"expected_positives": k}), None)

    def penalty(z):
        return (sum(sigmoid(v) for row in z for v in row) / B - k) ** 2 / C**2

    matrix = sum(
        0.5 * ((bce(f[b][c], 1.0) + bce(g[b][c], 1.0)) if observed(b, c) else 0.0)
        + 0.5 * (bce(f[b][c], sigmoid(g[b][c])) + bce(g[b][c], sigmoid(f[b][c])))
        for b, c in ENTRIES
    ) / 6
    assert value.item() == pytest.approx(matrix + 0.5 * (penalty(f) + penalty(g)), rel=1e-12)

    # the estimator's gradient, by hand: ½/(BC)·(−t(1−σ(g)) + σ(g) − σ(f)) + ½·2(S̄−k)/C²·σ'(g)/B
    mean_count = sum(sigmoid(v) for row in g for v in row) / B
    grad = torch.zeros(3, C, dtype=torch.float64)
    for b, c in ENTRIES:
        s = sigmoid(g[b][c])
        own = -float(observed(b, c)) * (1 - s) + s - sigmoid(f[b][c])
        grad[indices[b], c] = 0.5 / 6 * own + (mean_count - k) / C**2 * s * (1 - s) / B
    optimizer = torch.optim.SGD(state.parameters(), lr=lr)
    value.backward()
    torch.testing.assert_close(state.logits.grad, grad, rtol=1e-10, atol=1e-12)
    optimizer.step()
    torch.testing.assert_close(state.logits.detach(), torch.tensor(table, dtype=torch.float64) - lr * grad)
    assert state.logits[0].tolist() == table[0]  # a row outside the batch does not move


def test_role_initialisation_follows_cole_et_al():
    state = LabelEstimates(torch.tensor([2, 0]), 4, {"seed": 1, "role_lr_multiplier": 7.0})
    probs = torch.sigmoid(state.logits.detach())
    assert probs[0, 2].item() == pytest.approx(0.995) and probs[1, 0].item() == pytest.approx(0.995)
    others = probs[torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)]
    assert ((others > 0.4 - 1e-6) & (others < 0.6 + 1e-6)).all() and state.lr_multiplier == 7.0
    torch.testing.assert_close(state.logits, LabelEstimates(torch.tensor([2, 0]), 4, {"seed": 1}).logits)
    assert others.std() > 0.02  # drawn, not constant
    flat = LabelEstimates(torch.tensor([2, 0]), 4, {"seed": 1, "role_init_spread": 0.0}).logits.detach()
    assert (flat[~torch.tensor([[0, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)] == 0).all()  # σ = ½ everywhere
    with pytest.raises(ValueError, match="role_init_spread"):
        SCLConfig(output_dir="unused", method="role", use_cpu=True, loss_options={"role_init_spread": -1.0})


def test_role_starts_flat_in_the_default_composition_and_as_cole_et_al_alone():
    def spread(method, **kwargs):
        return SCLConfig(output_dir="unused", method=method, use_cpu=True, **kwargs).role_init_spread

    assert spread("role+scl") == 0.0 and spread("role") == pytest.approx(math.log(1.5))
    assert spread("role+scl", role_init_spread=0.3) == 0.3  # an explicit value always wins
    assert spread("role+scl", dataset_defaults="voc") == 0.0  # a dataset's defaults do not restore the spread


def test_composition_defaults_sit_between_a_dataset_and_the_user(monkeypatch):
    from types import SimpleNamespace

    from scl_hf.losses import COMPOSITION_DEFAULTS, options_from_config, register_composition_defaults

    monkeypatch.setitem(COMPOSITION_DEFAULTS, ("ll-r", "scl"), {})
    register_composition_defaults("ll-r", "scl", ll_delta_rel=0.05)
    assert SCLConfig(output_dir="unused", method="ll-r+scl", use_cpu=True).ll_delta_rel == 0.05
    assert SCLConfig(output_dir="unused", method="ll-r", use_cpu=True).ll_delta_rel == 0.2  # the base alone: its own
    assert SCLConfig(output_dir="unused", method="ll-r+scl", use_cpu=True, ll_delta_rel=0.3).ll_delta_rel == 0.3
    # a config-like object without SCLConfig's filling gets the same values from options_from_config
    assert options_from_config(SimpleNamespace(method="role+scl"))["role_init_spread"] == 0.0
    assert options_from_config(SimpleNamespace(method="role"))["role_init_spread"] == pytest.approx(math.log(1.5))
    with pytest.raises(ValueError, match="consistency term"):
        register_composition_defaults("role", "mixup", role_init_spread=0.0)


def test_a_per_image_table_too_large_for_memory_is_named_with_its_size_and_the_alternative(monkeypatch):
    import warnings

    from accelerate import Accelerator

    from scl_hf import loss_state

    labels, accelerator = torch.tensor([2, 0, 1]), Accelerator(cpu=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a table of this size says nothing
        loss_state.make_loss_state(LabelEstimates, labels, 4, {}, torch.device("cpu"), accelerator)
    monkeypatch.setattr(loss_state, "LARGE_STATE_BYTES", 3 * 3 * 4 * 4 - 1)  # 3 × 4 float32, values + 2 moments
    with pytest.warns(UserWarning, match=r"3 images × 4 classes.*method='scl'"):
        state = loss_state.make_loss_state(LabelEstimates, labels, 4, {}, torch.device("cpu"), accelerator)
    assert state.logits.shape == (3, 4)  # the run goes on


# ----------------------------------------------------------------------------- EM + APL


def test_em_apl_warmup_then_asymmetric_pseudo_negatives():
    labels = torch.tensor([0, 1, 0, 2])  # 4 rows; unobserved per class: 2, 3, 3
    state = PseudoNegatives(labels, C, {}).double()  # float32 tables by default
    options = {"em_alpha": 0.2, "apl_beta": 0.5, "apl_warmup_epochs": 1, "apl_negative_proportion": 1.0,
               "num_epochs": 3}  # 2 labelling rounds: quota ⌊U_c / 2⌋ = 1, 1, 1 per round
    all_logits = tensor([[2.0, -1.0, 0.5], [-0.3, 1.5, -2.0], [1.0, -3.0, 0.0], [-0.5, 0.2, 1.0]])

    def step(epoch, rows):
        idx = torch.tensor(rows)
        ctx = LossContext(epoch=epoch, num_classes=C, indices=idx, state=state, options=options)
        return BASE_LOSSES["em-apl"](all_logits[idx], observed_one_hot(labels[idx], C).double(), ctx, None)

    # warm-up epoch: EM alone, and every row's prediction is recorded
    em = sum(bce(all_logits[r, c].item(), 1.0) if labels[r] == c else -0.2 * entropy(all_logits[r, c].item())
             for r in (0, 1) for c in range(C)) / 6
    assert step(0.0, [0, 1]).item() == pytest.approx(em, rel=1e-12)
    step(0.5, [2, 3])
    assert torch.isnan(state.soft_negatives).all() and state.recorded.all()
    # first step of epoch 1: per class, the unobserved entry with the lowest prediction becomes a soft negative
    value = step(1.0, [1, 2])
    lowest = {c: min((r for r in range(4) if labels[r] != c), key=lambda r: all_logits[r, c].item()) for c in range(C)}
    chosen = {(r, c) for c, r in lowest.items()}
    assert {tuple(e) for e in (~torch.isnan(state.soft_negatives)).nonzero().tolist()} == chosen
    expected = 0.0
    for r in (1, 2):
        for c in range(C):
            z = all_logits[r, c].item()
            if labels[r] == c:
                expected += bce(z, 1.0)
            elif (r, c) in chosen:
                expected += 0.5 * bce(z, sigmoid(z))  # the soft label is the prediction it had when chosen
            else:
                expected += -0.2 * entropy(z)
    assert value.item() == pytest.approx(expected / 6, rel=1e-12)
    step(1.5, [0, 3])  # no second round within the same epoch
    assert (~torch.isnan(state.soft_negatives)).sum() == 3 and int(state.labelled_epoch) == 1
    step(2.0, [0, 1])
    assert (~torch.isnan(state.soft_negatives)).sum() == 6 and not (state.observed & ~torch.isnan(state.soft_negatives)).any()


# ----------------------------------------------------------------------------- EN mask and element weights


@pytest.mark.parametrize("name", ["an-ls", "wan", "em", "em-apl", "ll-r", "ll-ct", "ll-cp", "full", "epr", "role"])
def test_ignore_mask_and_element_weights_are_honoured(name):
    labels = torch.tensor(LABELS)
    info = BASE_LOSS_INFO[name]
    state = info.make_state(labels, C, {}).double() if info.make_state else None
    ignore = torch.zeros(B, C, dtype=torch.bool)
    ignore[0, 2] = True  # an unobserved entry that EN leaves out
    weights = torch.ones(B, C, dtype=torch.float64)
    weights[1, 1] = 0.0  # the crop correction zeroes an observed positive
    logits = tensor(LOGITS).requires_grad_()
    ctx = LossContext(epoch=3.0, num_classes=C, indices=torch.arange(B), state=state, element_weights=weights,
                      full_labels=tensor([[1, 0, 1], [0, 1, 0]]), options={"ll_delta_rel": 20.0, "num_epochs": 8})
    value = BASE_LOSSES[name](logits, targets(), ctx, ignore)
    value.backward()
    assert math.isfinite(value.item())
    if name in ("epr", "role"):  # their expected-positives penalty counts every class, by design
        return
    assert logits.grad[0, 2] == 0 and logits.grad[1, 1] == 0 and logits.grad[0, 0] != 0


# ----------------------------------------------------------------------------- trainer


def make_args(tmp_path, method, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / method), method=method, image_size=64, num_train_epochs=1,
        per_device_train_batch_size=8, learning_rate=1e-3, use_cpu=True, warmup_epochs=1, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, seed=0, bank_size=8,
    )
    defaults.update(overrides)
    return SCLConfig(**defaults)


def trainer_for(tiny_synthetic, tmp_path, method, **overrides):
    torch.manual_seed(0)
    model = create_model("resnet18", num_labels=5)
    return SCLTrainer(model=model, args=make_args(tmp_path, method, **overrides),
                      train_dataset=tiny_synthetic["train"])


def test_non_full_methods_never_read_the_full_labels(tiny_synthetic, tmp_path):
    for name in sorted(BASE_LOSSES):
        if name == "full":
            with pytest.warns(UserWarning, match=FULL_LABELS_WARNING):
                trainer = trainer_for(tiny_synthetic, tmp_path, name)
            assert trainer.train_dataset.full_labels is not None  # read at construction, for this method only
            assert trainer.train_dataset[0]["full_labels"].sum() == len(tiny_synthetic["train"][0]["labels"])
            continue
        if BASE_LOSS_INFO[name].pseudo_labels:  # vlpl / aevlp also read their CLIP score column, nothing else
            train = tiny_synthetic["train"]
            data = {"train": train.add_column("clip_scores", [[[0.1] * 5] * 2] * len(train))}
            trainer = trainer_for(data, tmp_path, f"{name}+scl")
            assert trainer.train_dataset.rows.column_names == ["image", "clip_scores"], name
            assert trainer.train_dataset.full_labels is None, name
        else:
            trainer = trainer_for(tiny_synthetic, tmp_path, f"{name}+scl")
            assert trainer.train_dataset.rows.column_names == ["image"], name  # labels: read once, checked
            assert trainer.train_dataset.full_labels is None, name
        assert "full_labels" not in trainer.train_dataset[0]


@pytest.mark.parametrize(
    "method, overrides",
    [
        ("ll-cp", {"num_train_epochs": 2, "ll_delta_rel": 5.0}),
        ("em-apl", {"num_train_epochs": 2, "apl_warmup_epochs": 1}),
        ("full", {}),
        ("ll-r+scl", {"num_train_epochs": 2, "ll_delta_rel": 5.0}),
    ],
)
def test_tiny_training_runs(method, overrides, tiny_synthetic, tmp_path):
    """ROLE's run is the checkpoint test's below."""
    if method == "full":
        with pytest.warns(UserWarning, match=FULL_LABELS_WARNING):
            trainer = trainer_for(tiny_synthetic, tmp_path, method, **overrides)
    else:
        trainer = trainer_for(tiny_synthetic, tmp_path, method, **overrides)
    trainer.train()
    losses = [h["loss_base"] for h in trainer.state.log_history if "loss_base" in h]
    assert losses and all(math.isfinite(v) for v in losses)
    if "scl" in method:
        assert any("loss_scl" in h for h in trainer.state.log_history)
    state = trainer.loss_state
    if method == "ll-cp":
        assert state.corrected.sum() == 3 * math.ceil(40 * 0.05)  # 3 batches of the second epoch
    if method == "em-apl":
        assert (~torch.isnan(state.soft_negatives)).any() and state.recorded.all()


def test_role_estimates_are_checkpointed_resumed_and_not_exported(tiny_synthetic, tmp_path):
    options = dict(num_train_epochs=2, save_strategy="steps", save_steps=3)  # 3 steps per epoch
    straight = trainer_for(tiny_synthetic, tmp_path / "straight", "role", **options)
    initial = straight.loss_state.logits.detach().clone()
    straight.train()
    losses = [h["loss_base"] for h in straight.state.log_history if "loss_base" in h]
    assert losses and all(math.isfinite(v) for v in losses)
    group = straight.optimizer.param_groups[-1]  # the estimates train in their own group, lr × 10
    assert group["params"] == [straight.loss_state.logits] and group["weight_decay"] == 0.0
    assert group["initial_lr"] == pytest.approx(1e-3 * BASELINE_DEFAULTS["role_lr_multiplier"])
    assert not torch.equal(initial, straight.loss_state.logits.detach())
    assert straight.loss_state.logits.grad is None  # zeroed after every optimizer step
    checkpoint = tmp_path / "straight" / "role" / "checkpoint-3"
    saved = load_file(checkpoint / LOSS_STATE_FILE)
    assert saved["logits"].shape == (24, 5)

    resumed = trainer_for(tiny_synthetic, tmp_path / "resumed", "role", **options)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    torch.testing.assert_close(resumed.loss_state.logits, straight.loss_state.logits)

    fresh = trainer_for(tiny_synthetic, tmp_path / "other", "role", **options)
    os.remove(checkpoint / LOSS_STATE_FILE)
    with pytest.raises(FileNotFoundError, match=LOSS_STATE_FILE):
        fresh.train(resume_from_checkpoint=str(checkpoint))

    export = tmp_path / "export"
    straight.save_model(str(export))
    assert not (export / LOSS_STATE_FILE).exists()
    exported = load_file(export / "model.safetensors")
    assert all(tuple(v.shape) != (24, 5) for v in exported.values())
