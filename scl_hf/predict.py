"""Seeing what a trained model found: labels above a threshold and, per predicted label, its class map.

Works on any exported checkpoint (scl_hf.hub.export output, or a Trainer checkpoint folder): the class maps
come from the model's own classifier applied at every position of its last feature map (the hook of
scl_hf.models), so no training bank is needed. The map of class c is σ(F_c) per cell, resized from the
g×g grid to the image (the whole image is resized to the model's input side, as evaluation does); for a
pool→linear head the image logit is the mean of F_c over the cells.

    from scl_hf.predict import predict, save_overlay
    for found in predict(["cat.jpg"], "runs/demo/final", threshold=0.5):
        print(found.labels)                    # [("cat", 0.93), ...]
        found.maps["cat"]                      # (H, W) float32 in [0, 1], the image's own size
        save_overlay(found, "cat_maps.png")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .transforms import EvalTransform, to_rgb


@dataclass
class Prediction:
    """One image: every class's score, the labels at or above the threshold (best first) and their maps."""

    source: str
    image: Image.Image
    scores: dict[str, float]
    labels: list[tuple[str, float]]
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # label → (H, W) float32 in [0, 1]
    threshold: float = 0.5


class Predictor:
    """A loaded model with its class-map hook and evaluation transform."""

    def __init__(self, model_dir: str | Path, image_size: int | None = None, device: str | None = None):
        from . import hub
        from .models import attach_class_maps, normalization_for

        folder = Path(model_dir)
        self.model = hub.load_checkpoint(folder).eval()
        processor = None
        if not hasattr(self.model.config, "pretrained_cfg") and (folder / "preprocessor_config.json").is_file():
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(folder)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.hook = attach_class_maps(self.model)
        id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        self.names = [id2label.get(i, str(i)) for i in range(self.model.config.num_labels)]
        mean, std = normalization_for(self.model, processor)
        self.transform = EvalTransform(image_size or input_side(folder), mean, std)

    @torch.no_grad()
    def __call__(self, images: list, threshold: float = 0.5, batch_size: int = 16) -> list[Prediction]:
        found = []
        for start in range(0, len(images), batch_size):
            chunk = [(str(item), to_rgb(_open(item))) for item in images[start:start + batch_size]]
            pixels = torch.stack([self.transform(image) for _, image in chunk]).to(self.device)
            logits = self.model(pixel_values=pixels).logits.float()
            maps = torch.sigmoid(self.hook.pop_maps().float())
            for (source, image), row, row_maps in zip(chunk, torch.sigmoid(logits), maps):
                found.append(self._one(source, image, row, row_maps, threshold))
        return found

    def _one(self, source, image, probs, maps, threshold) -> Prediction:
        scores = {name: float(p) for name, p in zip(self.names, probs)}
        order = torch.argsort(probs, descending=True).tolist()
        labels = [(self.names[c], float(probs[c])) for c in order if probs[c] >= threshold]
        width, height = image.size
        chosen = [c for c in order if probs[c] >= threshold]
        resized = F.interpolate(maps[chosen][None], size=(height, width), mode="bilinear", align_corners=False)[0] \
            if chosen else maps[:0]
        return Prediction(source, image, scores, labels,
                          {self.names[c]: m.cpu().numpy().astype(np.float32) for c, m in zip(chosen, resized)},
                          threshold)


def _open(item) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    path = Path(item)
    if not path.is_file():
        raise ValueError(f"{path} is not an image file")
    image = Image.open(path)
    image.load()
    return image


def input_side(folder: Path) -> int:
    """The side the model was trained/exported with (training_args.json, timm's input_size, the processor)."""
    from .hub import recorded_image_size

    try:
        return recorded_image_size(folder)
    except ValueError as e:
        raise ValueError(f"{e}: pass image_size (--image_size on the command line)") from e


def predict(images: list, model_dir: str | Path, threshold: float = 0.5, image_size: int | None = None,
            batch_size: int = 16) -> list[Prediction]:
    """Labels with score ≥ `threshold` and their class maps, for image paths or PIL images."""
    return Predictor(model_dir, image_size)(list(images), threshold, batch_size)


def save_overlay(prediction: Prediction, path: str | Path, max_labels: int = 6) -> Path:
    """The image, then one panel per predicted label: its class map over the image, titled with the score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .visualize import save_figure

    shown = prediction.labels[:max_labels]
    fig, axes = plt.subplots(1, 1 + len(shown), figsize=(3.0 * (1 + len(shown)), 3.3), squeeze=False)
    axes = axes[0]
    axes[0].imshow(prediction.image)
    best = max(prediction.scores.items(), key=lambda kv: kv[1])
    axes[0].set_title(Path(prediction.source).name if not shown else
                      f"{Path(prediction.source).name}\n{len(prediction.labels)} label(s) ≥ {prediction.threshold:g}",
                      fontsize=8)
    if not shown:
        axes[0].set_xlabel(f"nothing ≥ {prediction.threshold:g} (best: {best[0]} {best[1]:.2f})", fontsize=8)
    for ax, (name, score) in zip(axes[1:], shown):
        ax.imshow(prediction.image)
        image = ax.imshow(prediction.maps[name], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
        ax.set_title(f"{name}: {score:.2f}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if shown:
        fig.colorbar(image, ax=list(axes[1:]), fraction=0.03, pad=0.02, label="σ(class map)")
        fig.set_layout_engine("none")
    return save_figure(fig, path) if not shown else _save_plain(fig, path)


def _save_plain(fig, path: str | Path) -> Path:
    """A figure with a shared colorbar: no tight_layout (it cannot place the bar), saved tight instead."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
