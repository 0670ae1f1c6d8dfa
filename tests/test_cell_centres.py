"""Each class-map adapter's stated cell centres (CellGrid) against the input-gradient centroid of its cells.

A padded CNN centres cell i at 32·i + 0.5 px, not at 32·(i + 0.5) as the geometry used to assume: the
resnet case below fails under the old rule (offset 0) by half a cell. Cells on the image border are left
out: their gradient is cut by the image edge and its centroid pulled inwards.
"""

from functools import cache

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
from scl_hf.receptive import gradient_centroids

SEEDS = (0, 1, 2)  # random initialisations averaged (one random input each)
MEAN_TOLERANCE, CELL_TOLERANCE = 1 / 8, 1 / 4  # in cells


def hf_resnet(num_labels=3):
    return ResNetForImageClassification(ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], num_labels=num_labels))


def hf_convnext(num_labels=3):
    return ConvNextForImageClassification(ConvNextConfig(
        hidden_sizes=[16, 16, 32, 32], depths=[1, 1, 1, 1], num_labels=num_labels))


def hf_vit(num_labels=3):
    return ViTForImageClassification(ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=128,
        patch_size=16, num_labels=num_labels))


# id → (model factory, view side in pixels); tiny configs of every family, each with ≥ 6 cells a side
CASES = {
    # a plain ResNet (1×1/2 shortcuts): resnet18's layout with one block per stage
    "resnet": (lambda: create_model("resnet18", num_labels=3, layers=(1, 1, 1, 1)), 192),
    # ResNet-D (2×2 average-pool shortcuts); residual branches live (timm zero-inits them: shortcut only)
    "resnet-d": (lambda: create_model("test_resnet", num_labels=3, zero_init_last=False), 256),
    "efficientnet": (lambda: create_model("test_efficientnet", num_labels=3), 256),
    "efficientnet-tf-same": (lambda: create_model("test_efficientnet", num_labels=3, pad_type="same"), 256),
    "regnet": (lambda: create_model("regnetx_002", num_labels=3), 192),
    "convnext": (lambda: create_model("test_convnext", num_labels=3), 256),
    "vit": (lambda: create_model("test_vit", num_labels=3, img_size=128), 128),
    "hf-resnet": (hf_resnet, 192),
    "hf-convnext": (hf_convnext, 256),
    "hf-vit": (hf_vit, 128),
}


@cache
def measured_offsets(case: str):
    """Per interior cell (i, i): (centroid − (i + 0.5)·stride) / stride along x and y, averaged over SEEDS;
    with the model's stated offset."""
    factory, side = CASES[case]
    total, stated = None, None
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = factory()
        hook = attach_class_maps(model)
        centroids, grid = gradient_centroids(model, hook, side, trials=1, seed=seed, peak=0.25)
        hook.remove()
        assert grid[0] == grid[1] >= 6 and side % grid[1] == 0
        stride = side / grid[1]
        offsets = centroids / stride - (torch.arange(len(centroids), dtype=torch.float64)[:, None] + 0.5)
        total = offsets if total is None else total + offsets
        stated = hook.grid.offset_cells
        assert hook.grid.stride_px == stride
    return (total / len(SEEDS))[1:-1], stated


@pytest.mark.parametrize("case", list(CASES))
def test_stated_cell_centres_match_the_gradient_centroid(case):
    offsets, stated = measured_offsets(case)
    error = offsets - stated
    assert error.mean(0).abs().max() <= MEAN_TOLERANCE, (case, stated, offsets)
    assert error.abs().max() <= CELL_TOLERANCE, (case, stated, offsets)


def test_the_old_centred_rule_fails_for_padded_cnns():
    """The assumption before CellGrid (offset 0) is half a cell off for a padded CNN, and right for a ViT."""
    resnet, stated = measured_offsets("resnet")
    assert stated == pytest.approx(-15.5 / 32)
    assert (resnet.mean(0).abs() > 0.375).all() and (resnet.abs() > 0.3).all()
    vit, stated = measured_offsets("vit")
    assert stated == 0.0 and vit.abs().max() <= MEAN_TOLERANCE
