"""CLIP region-class similarities of every training image, cached as a dataset column (VLPL / AEVLP inputs).

Any CLIP checkpoint that `transformers.CLIPModel` loads (a local folder or a hub name) scores each image once:
the whole image and, with `grid_size=g`, the g×g grid of crops AEVLP uses (row-major), against one text prompt
per class ("a photo of a {}." by default, or a prompt set whose embeddings are averaged). The column holds the cosine similarities, (1 + g²) × C per row; the
losses (scl_hf/losses/pseudo_labels.py) turn them into pseudo-labels. The model name, prompt and grid are recorded
in the dataset's `info.description` (`clip_score_provenance` reads them back), and `datasets` caches the
computation by fingerprint, so a second call with the same inputs reads the Arrow cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from datasets import Dataset, Value
from datasets import Sequence as SequenceFeature
from PIL import Image

PROVENANCE_KEY = "scl_hf_clip_scores"


def grid_crops(image: Image.Image, grid_size: int) -> list[Image.Image]:
    """The whole image, then its g×g grid of crops, row by row (AEVLP's sub-images)."""
    image = image.convert("RGB")
    crops = [image]
    width, height = image.size
    for row in range(grid_size):
        for col in range(grid_size):
            box = (col * width // grid_size, row * height // grid_size,
                   (col + 1) * width // grid_size, (row + 1) * height // grid_size)
            crops.append(image.crop(box))
    return crops


def _projected(output) -> torch.Tensor:
    """get_*_features returns the projected embedding (transformers 4) or an output whose pooler_output it is (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def text_embeddings(model, processor, class_names: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
    """(C, D) unit class embeddings: the mean of the unit embeddings of every prompt (CLIP's prompt ensembling)."""
    total = 0
    for prompt in prompts:
        texts = [prompt.format(name.replace("_", " ")) for name in class_names]
        tokens = processor(text=texts, return_tensors="pt", padding=True)
        features = _projected(model.get_text_features(input_ids=tokens["input_ids"].to(model.device),
                                                      attention_mask=tokens["attention_mask"].to(model.device)))
        total = total + torch.nn.functional.normalize(features.float(), dim=-1)
    return torch.nn.functional.normalize(total, dim=-1)


@torch.no_grad()
def region_similarities(model, processor, images: Sequence[Image.Image], texts: torch.Tensor,
                        grid_size: int) -> torch.Tensor:
    """(B, 1 + g², C) cosine similarities of each image's regions with the class prompts."""
    regions = [crop for image in images for crop in grid_crops(image, grid_size)]
    pixels = processor(images=regions, return_tensors="pt")["pixel_values"]
    features = _projected(model.get_image_features(pixel_values=pixels.to(model.device, model.dtype)))
    similarities = torch.nn.functional.normalize(features.float(), dim=-1) @ texts.T.to(features.device)
    return similarities.reshape(len(images), 1 + grid_size * grid_size, -1).cpu()


def add_clip_scores(
    dataset: Dataset,
    class_names: Sequence[str],
    model_name_or_path: str,
    prompt: str | Sequence[str] = "a photo of a {}.",
    grid_size: int = 0,
    column: str = "clip_scores",
    image_column: str = "image",
    batch_size: int = 16,
    device: str | None = None,
) -> Dataset:
    """`dataset` with `column` added: per row, the (1 + grid_size²) × C CLIP similarities (see the module).
    `prompt` is one template or a prompt set (their class embeddings are averaged)."""
    from transformers import CLIPModel, CLIPProcessor

    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    bad = [p for p in prompts if "{}" not in p]
    if bad or not prompts:
        raise ValueError(f"every prompt must hold '{{}}' where the class name goes, got {bad or prompts!r}")
    if image_column not in dataset.column_names:
        raise ValueError(f"the dataset has no image column {image_column!r} (columns: {dataset.column_names})")
    try:
        model = CLIPModel.from_pretrained(model_name_or_path).eval()
        processor = CLIPProcessor.from_pretrained(model_name_or_path)
    except OSError as err:
        raise OSError(f"cannot load a CLIP model and processor from {model_name_or_path!r}: a local folder saved with "
                      "save_pretrained, or a hub name reachable from here (e.g. openai/clip-vit-base-patch16)") from err
    if device is not None:
        model.to(device)
    texts = text_embeddings(model, processor, class_names, prompts)

    def score(batch):
        sims = region_similarities(model, processor, batch[image_column], texts, grid_size)
        return {column: sims.tolist()}

    features = dataset.features.copy()
    features[column] = SequenceFeature(SequenceFeature(Value("float32")))
    scored = dataset.map(score, batched=True, batch_size=batch_size, features=features,
                         desc=f"CLIP scores ({model_name_or_path})")
    provenance = {"model": str(model_name_or_path), "prompt": prompt if isinstance(prompt, str) else prompts, "grid_size": grid_size, "column": column,
                  "class_names": list(class_names)}
    scored.info.description = json.dumps({PROVENANCE_KEY: provenance})
    return scored


def clip_score_provenance(dataset: Dataset) -> dict | None:
    """The model, prompt, grid and class names `add_clip_scores` recorded, or None."""
    try:
        return json.loads(dataset.info.description or "")[PROVENANCE_KEY]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
