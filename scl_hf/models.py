"""Models: `create_model` for timm names, and per-class maps for every supported backbone.

Class maps are the model's own classifier applied at every position of its last feature map. They are
taken with a forward hook during the one ordinary forward pass (so the call still goes through
DistributedDataParallel and its gradient hooks), then the head is applied per location. For a
pool → linear head the maps average exactly to the logits; for heads with a norm after pooling
(ConvNeXt, ViT with fc_norm) they are the usual CAM approximation. Each adapter also states where its
cells are centred in the view (`CellGrid`, `ClassMapHook.grid`): the bank's cut and paste-back need it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
from torch import nn
from transformers import (
    ConvNextForImageClassification,
    PreTrainedModel,
    ResNetForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    ViTForImageClassification,
)

from .transforms import IMAGENET_MEAN, IMAGENET_STD


# --------------------------------------------------------------------------- create_model
def _is_vit(name: str) -> bool:
    entry = timm.models.model_entrypoint(timm.models.get_arch_name(name) if hasattr(timm.models, "get_arch_name") else name)
    return entry.__module__.endswith(("vision_transformer", "deit", "eva"))


def create_model(
    name: str,
    num_labels: int,
    pretrained: bool = False,
    id2label: dict[int, str] | list[str] | None = None,
    seed: int | None = None,
    **timm_kwargs,
) -> TimmWrapperForImageClassification:
    """A transformers model (TimmWrapper) around `timm.create_model(name, ...)`, set up for multi-label.

    Extra keyword arguments go to `timm.create_model` (img_size, drop_path_rate, ...). ViTs get
    `global_pool="avg"` unless told otherwise, because class maps need patch tokens to feed the head.
    `seed`: draw the initial weights from a torch generator seeded with it (the global one is left as it was),
    so two runs with the same seed start from the same weights; Trainer seeds only after the model exists.
    """
    if not timm.is_model(name):
        raise ValueError(f"timm has no model named {name!r}; see timm.list_models('{name.split('.')[0]}*')")
    if _is_vit(name):
        timm_kwargs.setdefault("global_pool", "avg")
    if seed is None:
        timm_model = timm.create_model(name, pretrained=pretrained, num_classes=num_labels, **timm_kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            timm_model = timm.create_model(name, pretrained=pretrained, num_classes=num_labels, **timm_kwargs)
    if isinstance(id2label, (list, tuple)):
        id2label = dict(enumerate(id2label))
    id2label = {int(k): str(v) for k, v in (id2label or {i: f"LABEL_{i}" for i in range(num_labels)}).items()}
    if len(id2label) != num_labels:
        raise ValueError(f"id2label has {len(id2label)} names but num_labels={num_labels}")
    pretrained_cfg = {k: v for k, v in dict(timm_model.pretrained_cfg).items() if k != "num_classes"}
    config = TimmWrapperConfig(
        architecture=pretrained_cfg.get("architecture", name),
        pretrained_cfg=pretrained_cfg,
        model_args=dict(timm_kwargs),  # {} not None: timm's local-dir loader needs a dict
        num_labels=num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        problem_type="multi_label_classification",
    )
    model = TimmWrapperForImageClassification(config)
    model.timm_model = timm_model
    return model


def normalization_for(model: nn.Module, processor=None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the backbone was trained with: timm's pretrained_cfg, else the image processor's."""
    cfg = getattr(getattr(model, "config", None), "pretrained_cfg", None)
    if cfg and "mean" in cfg and "std" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    if processor is not None and getattr(processor, "image_mean", None) is not None:
        return tuple(processor.image_mean), tuple(processor.image_std)
    return IMAGENET_MEAN, IMAGENET_STD


# --------------------------------------------------------------------------- where cells are centred
@dataclass(frozen=True)
class CellGrid:
    """Where the cells of a class map sit in the view: cell i is centred at (i + 0.5)·stride_px + offset_px
    pixels (pixel k spans [k, k + 1)), along x and y alike. Properties of the architecture, not of the image
    size; the geometry takes `offset_cells` (exact when the view size is a multiple of the stride).

    Measured with the input-gradient centroid (scl_hf/receptive.py, docs/method.md): symmetric padding of
    stride-2 convolutions puts output j over input 2j, so a stride-32 CNN centres cell i at 32·i + 0.5 px
    (offset −15.5 px); TF 'SAME' padding pads right/bottom and centres it at 32·i + 31.5 (+15.5 px);
    patchifying stems (ViT, ConvNeXt, Swin) centre it on its patch (0)."""

    stride_px: int = 32
    offset_px: float = 0.0

    @property
    def offset_cells(self) -> float:
        return self.offset_px / self.stride_px

    @classmethod
    def padded(cls, stride_px: int) -> CellGrid:
        return cls(stride_px, -(stride_px - 1) / 2)

    @classmethod
    def same_padded(cls, stride_px: int) -> CellGrid:
        return cls(stride_px, (stride_px - 1) / 2)


def _side(size: int | tuple[int, ...] | list[int]) -> int:
    return int(size if isinstance(size, int) else size[0])


def _timm_stride(m: nn.Module) -> int:
    info = getattr(m, "feature_info", None)
    return int(info[-1]["reduction"]) if info else 32


def _timm_padded_grid(m: nn.Module) -> CellGrid:
    stride = _timm_stride(m)
    if any(isinstance(module, timm.layers.Conv2dSame) for module in m.modules()):  # tf_* ports
        return CellGrid.same_padded(stride)
    return CellGrid.padded(stride)


def _timm_resnet_grid(m: nn.Module) -> CellGrid:
    """ResNet-D (avg_down: resnet10t, resnet50d, …) downsamples the shortcut with a 2×2 average pool, which
    centres that path at 32·i + 14.5 px against 32·i + 0.5 for the convolutions: the two are averaged
    (−8.5 px, within 7 px of either; at timm's init the residual branches are zero and the shortcut alone
    measures −1.5 px)."""
    grid = _timm_padded_grid(m)
    downsample = getattr(getattr(m, "layer2", [None])[0], "downsample", None)
    if isinstance(downsample, nn.Sequential) and isinstance(downsample[0], nn.AvgPool2d):
        return CellGrid(grid.stride_px, (grid.offset_px - 1.5) / 2)
    return grid


def _timm_centred_grid(m: nn.Module) -> CellGrid:
    return CellGrid(_timm_stride(m), 0.0)


# timm model class → its grid; a class not listed is taken as centred (offset 0), the geometry's old rule
TIMM_CELL_GRIDS: dict[str, Callable[[nn.Module], CellGrid]] = {
    "ResNet": _timm_resnet_grid,
    "EfficientNet": _timm_padded_grid,
    "RegNet": _timm_padded_grid,
    "ConvNeXt": _timm_centred_grid,
    "VisionTransformer": _timm_centred_grid,
    "SwinTransformer": _timm_centred_grid,
}


def timm_cell_grid(m: nn.Module) -> CellGrid:
    return TIMM_CELL_GRIDS.get(type(m).__name__, _timm_centred_grid)(m)


# --------------------------------------------------------------------------- class-map hooks
class ClassMapHook:
    """Captures a feature tensor during forward and turns it into (B, C, h, w) class maps on demand.

    `grid` says where the maps' cells are centred in the view (set by `attach_class_maps`)."""

    def __init__(
        self, module: nn.Module, to_maps: Callable[[torch.Tensor], torch.Tensor], capture: str, grid: CellGrid | None = None
    ):
        self.grid = grid or CellGrid()
        self._to_maps = to_maps
        self._captured: torch.Tensor | None = None
        self._computing = False
        self.enabled = True
        if capture == "input":
            self._handle = module.register_forward_pre_hook(lambda _m, args: self._keep(args[0]))
        else:
            self._handle = module.register_forward_hook(lambda _m, _a, out: self._keep(_first_tensor(out)))

    def _keep(self, tensor: torch.Tensor) -> None:
        if self.enabled and not self._computing:
            self._captured = tensor

    def pop_maps(self) -> torch.Tensor:
        """Class maps of the last forward pass (consumed: a second call without a forward fails)."""
        if self._captured is None:
            raise RuntimeError("no feature map was captured: call the model forward first (with the hook enabled)")
        features, self._captured = self._captured, None
        self._computing = True
        try:
            return self._to_maps(features)
        finally:
            self._computing = False

    def remove(self) -> None:
        self._handle.remove()


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    return output[0]


def _per_location(head: Callable[[torch.Tensor], torch.Tensor], maps_nhwc: torch.Tensor) -> torch.Tensor:
    """Apply a (B, D) → (B, C) head at every location of a (B, H, W, D) map → (B, C, H, W)."""
    b, h, w, d = maps_nhwc.shape
    out = head(maps_nhwc.reshape(b * h * w, d))
    return out.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def _token_grid(num_tokens: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is not None and grid[0] * grid[1] == num_tokens:
        return tuple(grid)
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"cannot arrange {num_tokens} patch tokens on a square grid")
    return side, side


def _timm_vit_hook(m: nn.Module) -> ClassMapHook:
    if getattr(m, "global_pool", None) != "avg" or getattr(m, "attn_pool", None) is not None:
        raise ValueError(
            f"class maps of {type(m).__name__} need average pooling over patch tokens (global_pool='avg'), "
            f"this one has global_pool={getattr(m, 'global_pool', None)!r}: create it with "
            "create_model(name, ..., global_pool='avg')"
        )
    prefix = m.num_prefix_tokens

    def to_maps(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:]
        b, n, d = patches.shape
        gh, gw = _token_grid(n, getattr(m.patch_embed, "grid_size", None))
        # each patch alone through forward_head: zero prefix tokens are dropped by the avg pool
        single = torch.cat([patches.new_zeros(b * n, prefix, d), patches.reshape(b * n, 1, d)], dim=1)
        return m.forward_head(single).reshape(b, gh, gw, -1).permute(0, 3, 1, 2)

    return ClassMapHook(m.norm, to_maps, capture="output")


def _timm_pool_hook(m: nn.Module) -> ClassMapHook:
    pool = getattr(m, "global_pool", None)
    if not isinstance(pool, nn.Module):
        pool = getattr(getattr(m, "head", None), "global_pool", None)
    if not isinstance(pool, nn.Module):
        raise _unsupported(m)
    channels_last = getattr(getattr(pool, "pool", None), "dim", (2, 3)) == (1, 2)

    def to_maps(features: torch.Tensor) -> torch.Tensor:
        nhwc = features if channels_last else features.permute(0, 2, 3, 1)
        b, h, w, d = nhwc.shape
        cells = nhwc.reshape(b * h * w, 1, 1, d) if channels_last else nhwc.reshape(b * h * w, d, 1, 1)
        return m.forward_head(cells).reshape(b, h, w, -1).permute(0, 3, 1, 2)

    return ClassMapHook(pool, to_maps, capture="input")


def timm_class_map_hook(m: nn.Module) -> ClassMapHook:
    if hasattr(m, "patch_embed") and hasattr(m, "num_prefix_tokens") and isinstance(getattr(m, "norm", None), nn.Module):
        return _timm_vit_hook(m)
    return _timm_pool_hook(m)


def _hf_resnet_hook(model: ResNetForImageClassification) -> ClassMapHook:
    linear = model.classifier[-1]
    return ClassMapHook(model.resnet.pooler, lambda f: _per_location(linear, f.permute(0, 2, 3, 1)), capture="input")


def _hf_convnext_hook(model: ConvNextForImageClassification) -> ClassMapHook:
    norm, linear = model.convnext.layernorm, model.classifier
    return ClassMapHook(
        model.convnext.encoder, lambda f: _per_location(lambda x: linear(norm(x)), f.permute(0, 2, 3, 1)), "output"
    )


def _hf_vit_hook(model: ViTForImageClassification) -> ClassMapHook:
    def to_maps(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:]
        gh, gw = _token_grid(patches.shape[1], None)
        return _per_location(model.classifier, patches.reshape(len(patches), gh, gw, -1))

    return ClassMapHook(model.vit.layernorm, to_maps, capture="output")


def _hf_resnet_grid(config) -> CellGrid:
    """transformers' ResNet: 7×7/2 and 3×3/2 convolutions padded on both sides, 1×1/2 shortcuts (no ResNet-D)."""
    stride = 4 * 2 ** (len(config.depths) - 1) * (2 if config.downsample_in_first_stage else 1)
    return CellGrid.padded(stride)


@dataclass(frozen=True)
class MapAdapter:
    model_type: type
    build: Callable[[nn.Module], ClassMapHook]
    exact: bool  # do the maps average exactly to the logits?
    grid: Callable[[nn.Module], CellGrid]  # where its cells are centred


CLASS_MAP_ADAPTERS: list[MapAdapter] = [
    MapAdapter(
        TimmWrapperForImageClassification, lambda m: timm_class_map_hook(m.timm_model), exact=True,
        grid=lambda m: timm_cell_grid(m.timm_model),
    ),
    MapAdapter(ResNetForImageClassification, _hf_resnet_hook, exact=True, grid=lambda m: _hf_resnet_grid(m.config)),
    MapAdapter(ConvNextForImageClassification, _hf_convnext_hook, exact=False, grid=lambda m: CellGrid(32, 0.0)),
    MapAdapter(
        ViTForImageClassification, _hf_vit_hook, exact=False, grid=lambda m: CellGrid(_side(m.config.patch_size), 0.0)
    ),
]


def _unsupported(model: nn.Module) -> ValueError:
    names = ", ".join(a.model_type.__name__ for a in CLASS_MAP_ADAPTERS)
    return ValueError(
        f"cannot find the last feature map of {type(model).__name__}, so no class maps for the spatial "
        f"consistency loss. Supported: {names} (timm CNNs with a global-pool head — resnet, convnext, "
        "efficientnet, regnet, swin — and timm ViTs with global_pool='avg', via scl_hf.create_model). "
        "Methods without 'scl' work with any model that returns logits."
    )


def attach_class_maps(model: nn.Module) -> ClassMapHook:
    """Register the hook that yields class maps for this model, or fail saying which models work."""
    for adapter in CLASS_MAP_ADAPTERS:
        if isinstance(model, adapter.model_type):
            hook = adapter.build(model)
            hook.grid = adapter.grid(model)
            return hook
    if isinstance(model, PreTrainedModel) or not hasattr(model, "forward_head"):
        raise _unsupported(model)
    hook = timm_class_map_hook(model)
    hook.grid = timm_cell_grid(model)
    return hook
