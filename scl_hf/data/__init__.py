"""Datasets in the single-positive protocol: COCO, VOC, NUS-WIDE, CUB-200-2011, ImageNet-ReaL, and the embedded synthetic default; CLIP
score columns for the vision-language pseudo-label losses."""

from .clip_scores import add_clip_scores, clip_score_provenance
from .coco import COCO_CLASS_NAMES, load_coco
from .cub import load_cub
from .export import load_protocol_splits, save_protocol_splits
from .imagenet_real import load_imagenet_real
from .nus_wide import NUS_WIDE_CLASS_NAMES, load_nus_wide
from .protocol import DatasetLayoutError, sample_single_positive, split_train_val
from .synthetic import SYNTHETIC_CLASS_NAMES, make_synthetic
from .voc import VOC_CLASS_NAMES, load_voc

__all__ = [
    "COCO_CLASS_NAMES",
    "DatasetLayoutError",
    "NUS_WIDE_CLASS_NAMES",
    "SYNTHETIC_CLASS_NAMES",
    "VOC_CLASS_NAMES",
    "add_clip_scores",
    "clip_score_provenance",
    "load_coco",
    "load_cub",
    "load_imagenet_real",
    "load_nus_wide",
    "load_protocol_splits",
    "load_voc",
    "make_synthetic",
    "sample_single_positive",
    "save_protocol_splits",
    "split_train_val",
]
