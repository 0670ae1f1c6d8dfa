"""Per-dataset loss defaults: SCLConfig(dataset_defaults=...) fills the unset options; explicit values win."""

from __future__ import annotations

import json

import pytest

from scl_hf import SCLConfig
from scl_hf.losses import LOSS_DEFAULTS, dataset_defaults, options_from_config


def config(**kwargs) -> SCLConfig:
    return SCLConfig(output_dir="unused", report_to="none", **kwargs)


@pytest.mark.parametrize("dataset, expected", [
    ("voc", {"expected_positives": 1.5, "em_alpha": 0.2, "apl_beta": 0.02, "apl_warmup_epochs": 5}),
    ("nuswide", {"expected_positives": 1.9, "em_alpha": 0.1, "apl_beta": 0.2, "apl_warmup_epochs": 4}),
    ("cub", {"expected_positives": 31.4, "em_alpha": 0.01, "apl_beta": 0.4, "apl_warmup_epochs": 3}),
    (None, {"expected_positives": 2.9, "em_alpha": 0.1, "apl_beta": 0.9, "apl_warmup_epochs": 5}),
])
def test_unset_options_take_the_datasets_values_and_are_recorded(dataset, expected):
    args = config(method="em-apl", dataset_defaults=dataset)
    recorded = json.loads(args.to_json_string())
    for name, value in expected.items():
        assert getattr(args, name) == value and recorded[name] == value
    assert options_from_config(args)["apl_beta"] == expected["apl_beta"]


def test_an_explicit_value_wins_over_the_dataset():
    args = config(method="epr", dataset_defaults="voc", expected_positives=4.0)
    assert args.expected_positives == 4.0 and args.em_alpha == 0.2


def test_every_option_has_a_value_and_all_but_the_pseudo_label_ones_a_field():
    from scl_hf.losses.pseudo_labels import PSEUDO_LABEL_DEFAULTS

    args = config()
    options = options_from_config(args)
    for name in LOSS_DEFAULTS:
        assert options[name] is not None, name
        if name not in PSEUDO_LABEL_DEFAULTS:  # those are set through loss_options
            assert getattr(args, name) is not None, name
    assert options_from_config(config(dataset_defaults="cub"))["aevlp_top_k"] == 32
    assert dataset_defaults("Pascal") == dataset_defaults("voc")


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(ValueError, match="coco.*voc.*nuswide.*cub"):
        config(dataset_defaults="imagenet21k")


@pytest.mark.parametrize("bad, message", [
    ({"gr_q": [0.01]}, "gr_q takes 2 numbers"),
    ({"splc_tau": 1.5}, "splc_tau"),
    ({"loss_options": {"aevlp_lambda": [0.2, 0.7]}}, "λ2 ≤ λ1"),
    ({"loss_options": {"no_such_option": 1}}, "unknown loss option"),
])
def test_bad_recent_options_fail_at_configuration(bad, message):
    with pytest.raises(ValueError, match=message):
        config(**bad)


def test_a_pseudo_label_run_records_its_datasets_values():
    recorded = json.loads(config(method="aevlp+scl", dataset_defaults="voc",
                                 loss_options={"aevlp_top_k": 2}).to_json_string())["loss_options"]
    assert recorded["aevlp_reg"] == 0.05 and recorded["aevlp_k_schedule"] == [0.0, 2.0, -2.0, -2.0]
    assert recorded["aevlp_top_k"] == 2  # the explicit value
