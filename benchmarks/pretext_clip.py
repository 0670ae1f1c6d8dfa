"""A CLIP stand-in for the VLPL / AEVLP rows: a small `transformers.CLIPModel` trained on captioned scenes of its own.

    .venv/bin/python benchmarks/pretext_clip.py      # makes (or finds) the cached checkpoint and prints its report

No CLIP checkpoint can be downloaded here, and a randomly initialised one gives pseudo-labels that mean nothing.
What VLPL and AEVLP rely on is a vision-language model that has seen the downstream concepts in *other* images
with *other, loosely written* captions. This script makes one: a ViT/text-transformer CLIPModel trained with the
symmetric contrastive loss on shape scenes rendered from their own seeds (never the benchmark's: its seeds are
0-99) over all 12 shape classes (the benchmark uses the first 10), each image and two random square crops of it
captioned the way alt-text is written: the visible objects in a random order and one of several templates. The
checkpoint is saved with `save_pretrained` (model, word-level tokenizer, image processor), so the benchmark scores
images with `scl_hf.data.add_clip_scores(..., "<this folder>")` exactly as a user would with
openai/clip-vit-base-patch16. The report gives its zero-shot mAP ("a photo of a {}.") on a captioned split it
never trained on, whole images and the best grid cell, so the rows can be read with the quality of their
pseudo-labels in mind. It is a stand-in, not CLIP: the numbers it yields measure the losses' mechanics under a
weak-but-informative teacher, not the published CLIP rows.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CACHE = Path(os.environ.get("SCL_HF_CACHE", Path.home() / ".cache" / "scl_hf")) / "pretext"
SPEC = {"data_seed": 1000, "num_images": 6000, "crops_per_image": 2, "source_size": 96, "image_size": 48,
        "num_classes": 12, "steps": 3000, "batch_size": 128, "learning_rate": 1e-3, "version": 1,
        "vision": {"patch_size": 8, "hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 3,
                   "num_attention_heads": 4},
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "max_position_embeddings": 32},
        "projection_dim": 64}
TEMPLATES = ("a photo of {}.", "{}.", "a picture with {}.", "an image of {}.", "{} on a grey background.")
EXTRA_WORDS = "a an and of photo picture with image on grey background the".split()


def word_tokenizer_files(folder: Path, words: list[str]) -> None:
    """vocab.json and merges.txt for a CLIP BPE built from the listed words' spellings: each word becomes a few
    pieces (merges of one word can pre-empt another's), any other text falls back to characters."""
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,-'"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in sorted(set(words)):
        pieces = [*word[:-1], word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            merges.append(f"{merged} {piece}")
            merged += piece
            vocab.setdefault(merged, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")


def caption(objects: list[str], rng: np.random.Generator) -> str:
    """Alt-text for the named objects: a random order and template ('a red circle, a cyan ring and a black bar')."""
    named = [f"a {name.replace('_', ' ')}" for name in rng.permutation(objects)]
    listed = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    return TEMPLATES[rng.integers(len(TEMPLATES))].format(listed)


def visible(boxes: np.ndarray, crop: tuple[float, float, float, float], share: float = 0.5) -> np.ndarray:
    """Which boxes (normalised x0, y0, x1, y1) have at least `share` of their area inside the crop."""
    x0, y0, x1, y1 = crop
    inter_w = np.clip(np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0), 0, None)
    inter_h = np.clip(np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter_w * inter_h >= share * area


def captioned_views(dataset, spec: dict, seed: int) -> tuple[torch.Tensor, list[str], np.ndarray]:
    """Each image and `crops_per_image` random square crops holding at least one object: uint8 pixels at the
    model's size, captions, and the multi-hot label set of each view (views with equal sets are not negatives)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = dataset.features["labels"].feature.names
    size = spec["image_size"]
    pixels, captions, label_sets = [], [], []
    for row in dataset:
        image, labels, boxes = row["image"].convert("RGB"), np.array(row["labels"]), np.array(row["boxes"])
        views = [((0.0, 0.0, 1.0, 1.0), np.ones(len(labels), bool))]
        while len(views) < 1 + spec["crops_per_image"]:
            side = rng.uniform(0.35, 0.8)
            x0, y0 = rng.uniform(0, 1 - side, 2)
            crop = (x0, y0, x0 + side, y0 + side)
            shown = visible(boxes, crop)
            if shown.any():
                views.append((crop, shown))
        width, height = image.size
        for (x0, y0, x1, y1), shown in views:
            region = image.crop((round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)))
            region = region.resize((size, size), Image.BICUBIC)
            pixels.append(torch.from_numpy(np.asarray(region).copy()).permute(2, 0, 1))
            captions.append(caption([names[c] for c in labels[shown]], rng))
            multi_hot = np.zeros(len(names), np.int8)
            multi_hot[labels[shown]] = 1
            label_sets.append(multi_hot)
    return torch.stack(pixels), captions, np.stack(label_sets)


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor,
                     label_sets: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE with every pair of equal label sets a positive (their captions describe the same)."""
    logits = scale * F.normalize(image_embeds, dim=-1) @ F.normalize(text_embeds, dim=-1).T
    same = (label_sets[:, None, :] == label_sets[None, :, :]).all(-1).float()
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-targets * logits.log_softmax(1), 1).mean()
                  + torch.sum(-targets * logits.log_softmax(0), 0).mean())


def build_clip(folder: Path, spec: dict, class_names: list[str]):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    words = [w for name in class_names for w in name.split("_")] + EXTRA_WORDS
    word_tokenizer_files(folder, words)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    size = spec["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = CLIPConfig(
        text_config={**spec["text"], "vocab_size": len(tokenizer), "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={**spec["vision"], "image_size": size},
        projection_dim=spec["projection_dim"],
    )
    return CLIPModel(config), processor


def zero_shot_map(model_dir: Path, dataset, grid_size: int = 4) -> dict[str, float]:
    """mAP of the prompt "a photo of a {}." on whole images and on the best of the g×g grid cells (add_clip_scores)."""
    from scl_hf.data import add_clip_scores
    from scl_hf.labels import read_labels
    from scl_hf.metrics import mean_average_precision

    names = dataset.features["labels"].feature.names
    scored = add_clip_scores(dataset, names, str(model_dir), grid_size=grid_size)
    scores = np.asarray(scored["clip_scores"], dtype=np.float32)
    targets = read_labels(dataset, "labels", len(names), role="evaluation").dense().numpy()
    return {"whole_image": mean_average_precision(scores[:, 0], targets),
            "best_cell": mean_average_precision(scores[:, 1:].max(1), targets)}


def clip_stand_in(spec: dict = SPEC, progress: bool = True) -> Path:
    """The cached checkpoint folder (trained on first use, ~10 minutes on one CPU thread)."""
    from scl_hf.data.synthetic import make_synthetic

    folder = CACHE / f"clip-shapes{spec['num_classes']}-v{spec['version']}"
    if (folder / "report.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    data = make_synthetic(num_train=spec["num_images"], num_validation=400, num_test=1,
                          image_size=spec["source_size"], num_classes=spec["num_classes"], seed=spec["data_seed"],
                          cache_dir=str(CACHE.parent / "datasets"))
    class_names = data["train"].features["labels"].feature.names
    pixels, captions, label_sets = captioned_views(data["train"], spec, seed=spec["data_seed"])
    torch.manual_seed(spec["data_seed"])
    model, processor = build_clip(folder, spec, class_names)
    tokens = processor.tokenizer(captions, padding="max_length", max_length=spec["text"]["max_position_embeddings"],
                                 truncation=True, return_tensors="pt")
    mean = torch.tensor(processor.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["learning_rate"], weight_decay=0.1)
    warmup = max(1, spec["steps"] // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (
        1 + np.cos(np.pi * min(step, spec["steps"]) / spec["steps"])))
    sets = torch.from_numpy(label_sets)
    generator = torch.Generator().manual_seed(spec["data_seed"])
    started, losses = time.perf_counter(), []
    model.train()
    for step in range(spec["steps"]):
        batch = torch.randint(len(pixels), (spec["batch_size"],), generator=generator)
        images = pixels[batch].float().div(255)
        flip = torch.rand(len(batch), generator=generator) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        image_embeds = model.get_image_features(pixel_values=(images - mean) / std)
        text_embeds = model.get_text_features(input_ids=tokens["input_ids"][batch],
                                              attention_mask=tokens["attention_mask"][batch])
        image_embeds = getattr(image_embeds, "pooler_output", image_embeds)
        text_embeds = getattr(text_embeds, "pooler_output", text_embeds)
        loss = contrastive_loss(image_embeds, text_embeds, model.logit_scale.exp().clamp(max=100), sets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if progress and (step + 1) % 100 == 0:
            print(f"step {step + 1}/{spec['steps']}: loss {np.mean(losses[-100:]):.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    report = {**spec, "class_names": class_names, "train_seconds": time.perf_counter() - started,
              "final_loss": float(np.mean(losses[-100:])), "example_captions": captions[:6],
              "zero_shot_mAP_held_out": zero_shot_map(folder, data["validation"])}
    (folder / "report.json").write_text(json.dumps(report, indent=1))
    return folder


if __name__ == "__main__":
    path = clip_stand_in()
    print(path)
    print(json.dumps({k: v for k, v in json.loads((path / "report.json").read_text()).items()
                      if k not in ("class_names",)}, indent=1))
