"""Class maps for every supported backbone family, and create_model's contract."""

import pytest
import torch
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from scl_hf.models import attach_class_maps, create_model

# (name, timm kwargs, input side, do the maps average exactly to the logits?)
TIMM_FAMILIES = [
    ("resnet18", {}, 64, True),
    ("efficientnet_b0", {}, 64, True),
    ("regnetx_002", {}, 64, True),
    ("convnext_atto", {}, 64, False),
    ("vit_tiny_patch16_224", {"img_size": 64}, 64, False),
]


def tiny_hf_models(num_labels: int = 4):
    return {
        "hf-resnet": (ResNetForImageClassification(ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels)), True),
        "hf-convnext": (ConvNextForImageClassification(ConvNextConfig(
            hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=num_labels)), False),
        "hf-vit": (ViTForImageClassification(ViTConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=64,
            patch_size=16, num_labels=num_labels)), False),
    }


def maps_and_logits(model, side):
    hook = attach_class_maps(model)
    model.eval()
    with torch.no_grad():
        logits = model(pixel_values=torch.randn(2, 3, side, side)).logits
        maps = hook.pop_maps()
    hook.remove()
    return maps, logits


@pytest.mark.parametrize("name,kwargs,side,exact", TIMM_FAMILIES)
def test_timm_class_maps(name, kwargs, side, exact):
    model = create_model(name, num_labels=4, pretrained=False, **kwargs)
    maps, logits = maps_and_logits(model, side)
    assert maps.shape[:2] == (2, 4) and maps.shape[-1] >= 2
    if exact:  # pool → linear: the maps' average IS the logits
        torch.testing.assert_close(maps.mean((2, 3)), logits, atol=1e-5, rtol=1e-5)
    else:  # a norm after pooling: maps are an approximation, but they depend on the input
        assert torch.isfinite(maps).all() and maps.std() > 0


@pytest.mark.parametrize("family", ["hf-resnet", "hf-convnext", "hf-vit"])
def test_transformers_class_maps(family):
    model, exact = tiny_hf_models()[family]
    maps, logits = maps_and_logits(model, 64)
    assert maps.shape[:2] == (2, 4)
    if exact:
        torch.testing.assert_close(maps.mean((2, 3)), logits, atol=1e-5, rtol=1e-5)
    else:
        assert torch.isfinite(maps).all() and maps.std() > 0


def test_maps_carry_gradient_to_backbone():
    model = create_model("resnet18", num_labels=3)
    hook = attach_class_maps(model)
    model(pixel_values=torch.randn(2, 3, 64, 64))
    hook.pop_maps().sum().backward()
    assert model.timm_model.conv1.weight.grad is not None and model.timm_model.conv1.weight.grad.abs().sum() > 0


def test_pop_without_forward_fails():
    hook = attach_class_maps(create_model("resnet18", num_labels=3))
    with pytest.raises(RuntimeError, match="forward"):
        hook.pop_maps()


def test_create_model_contract():
    model = create_model("resnet18", num_labels=3, id2label=["cat", "dog", "car"], drop_rate=0.3)
    assert model.config.problem_type == "multi_label_classification"
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "car"}
    assert model.timm_model.drop_rate == 0.3  # extra kwargs reach timm.create_model
    assert "num_classes" not in (model.config.model_args or {})
    assert model.config.pretrained_cfg["architecture"] == "resnet18"
    vit = create_model("vit_tiny_patch16_224", num_labels=3, img_size=32)
    assert vit.timm_model.global_pool == "avg"


def test_create_model_errors():
    with pytest.raises(ValueError, match="no model named"):
        create_model("not_a_model_xyz", num_labels=3)
    with pytest.raises(ValueError, match="id2label has 2 names"):
        create_model("resnet18", num_labels=3, id2label=["a", "b"])
    with pytest.raises(ValueError, match="global_pool='avg'"):
        attach_class_maps(create_model("vit_tiny_patch16_224", num_labels=3, img_size=32, global_pool="token"))


def test_unsupported_model_names_the_supported_ones():
    with pytest.raises(ValueError, match="Supported: TimmWrapperForImageClassification"):
        attach_class_maps(torch.nn.Linear(3, 3))
