"""Augmentation that reports where it cropped.

The spatial consistency loss must know, for every training view, which part of the original image it
shows: the crop box (normalised x0, y0, x1, y1 in the original image) and whether it was flipped. So the
random-resized crop and flip here return their parameters with the pixels.

Randomness is a pure function of (seed, epoch, row index): a run gives the same views whatever the
number of processes or dataloader workers, and a resumed run redraws exactly the views it would have had.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CropBox:
    """A crop in normalised coordinates of the original image, plus the flip applied after cropping."""

    x0: float
    y0: float
    x1: float
    y1: float
    flip: bool = False

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.x0, self.y0, self.x1, self.y1], dtype=torch.float32)


def view_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """A generator owned by one (seed, epoch, row): independent of who draws it and in which order."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


def sample_crop_box(
    rng: np.random.Generator,
    width: int,
    height: int,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
    attempts: int = 10,
) -> CropBox:
    """Random-resized-crop parameters (torchvision's rule: area fraction and log-uniform aspect ratio),
    falling back to a centre crop clamped to the ratio range, as torchvision does."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            box = (left, top, left + w, top + h)
            break
    if box is None:
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, round(width / ratio[0])
        elif in_ratio > ratio[1]:
            w, h = round(height * ratio[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        box = (left, top, left + w, top + h)
    flip = bool(rng.uniform() < flip_prob)
    x0, y0, x1, y1 = box
    return CropBox(x0 / width, y0 / height, x1 / width, y1 / height, flip)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode. 16-bit and 32-bit grey ("I;16", "I", "F") are scaled to 0..255 by their bit
    depth, not clipped: PIL's convert("RGB") clips them, which turns a 16-bit photo almost all white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            peak = 65535.0
        elif image.mode == "F" and array.size and array.max() <= 1.0:
            peak = 1.0  # float images in [0, 1]
        else:  # "I" holds 16-bit PNGs on some Pillow versions; 8-bit content stays as it is
            peak = 65535.0 if array.size and array.max() > 255 else 255.0
        grey = np.clip(np.rint(array * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")  # transparent pixels over white, as a viewer shows them
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def to_normalised_tensor(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (tensor - mean_t) / std_t


def crop_and_resize(image: Image.Image, box: CropBox, size: int) -> Image.Image:
    """Cut the box out of the image, resize it to size×size (bilinear), flip if asked."""
    width, height = image.size
    pixel_box = (box.x0 * width, box.y0 * height, box.x1 * width, box.y1 * height)
    view = image.resize((size, size), Image.Resampling.BILINEAR, box=pixel_box)
    if box.flip:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return view


class TrainTransform:
    """Random-resized crop + horizontal flip + the model's normalisation, reporting the crop."""

    def __init__(
        self,
        image_size: int,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        scale: tuple[float, float] = (0.25, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        seed: int = 0,
    ):
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.scale, self.ratio, self.flip_prob, self.seed = tuple(scale), tuple(ratio), flip_prob, seed

    def box_for(self, width: int, height: int, epoch: int, index: int) -> CropBox:
        rng = view_rng(self.seed, epoch, index)
        return sample_crop_box(rng, width, height, self.scale, self.ratio, self.flip_prob)

    def __call__(self, image: Image.Image, epoch: int, index: int) -> tuple[torch.Tensor, CropBox]:
        image = to_rgb(image)
        box = self.box_for(*image.size, epoch=epoch, index=index)
        view = crop_and_resize(image, box, self.image_size)
        return to_normalised_tensor(view, self.mean, self.std), box


class EvalTransform:
    """Whole image resized to image_size×image_size, as the single-positive protocol evaluates."""

    def __init__(self, image_size: int, mean: tuple[float, ...] = IMAGENET_MEAN, std=IMAGENET_STD):
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        view = to_rgb(image).resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return to_normalised_tensor(view, self.mean, self.std)
