"""Datasets in the single-positive protocol: COCO, VOC, ImageNet-ReaL, and the embedded synthetic default; CLIP
score columns for the vision-language pseudo-label losses."""

from .clip_scores import add_clip_scores, clip_score_provenance
from .coco import COCO_CLASS_NAMES, load_coco
from .export import load_protocol_splits, save_protocol_splits
from .imagenet_real import load_imagenet_real
from .protocol import DatasetLayoutError, sample_single_positive, split_train_val
from .synthetic import SYNTHETIC_CLASS_NAMES, make_synthetic
from .voc import VOC_CLASS_NAMES, load_voc

__all__ = [
    "COCO_CLASS_NAMES",
    "DatasetLayoutError",
    "SYNTHETIC_CLASS_NAMES",
    "VOC_CLASS_NAMES",
    "add_clip_scores",
    "clip_score_provenance",
    "load_coco",
    "load_imagenet_real",
    "load_protocol_splits",
    "load_voc",
    "make_synthetic",
    "sample_single_positive",
    "save_protocol_splits",
    "split_train_val",
]
