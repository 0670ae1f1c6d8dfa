"""benchmarks/pretext_clip.py and the VLPL / AEVLP rows of compare_methods.py: captions, visibility and the
contrastive loss by hand, a tiny real training run whose checkpoint add_clip_scores loads, and a tiny benchmark row."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from clip_fixture import make_tiny_clip

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # compare_methods imports pretext_clip beside it
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_visible_counts_objects_by_the_share_of_their_box_inside_the_crop():
    clip = load("pretext_clip")
    boxes = np.array([[0.0, 0.0, 0.2, 0.2], [0.3, 0.3, 0.5, 0.5], [0.45, 0.0, 0.65, 0.2]])
    # crop x in [0, 0.5]: box 0 fully in, box 1 fully in, box 2 a quarter in (0.05 of 0.2 wide)
    np.testing.assert_array_equal(clip.visible(boxes, (0.0, 0.0, 0.5, 0.5)), [True, True, False])
    np.testing.assert_array_equal(clip.visible(boxes, (0.0, 0.0, 0.55, 0.5)), [True, True, True])  # half in


def test_captions_name_every_object_once():
    clip = load("pretext_clip")
    rng = np.random.default_rng(0)
    for objects in (["red_circle"], ["red_circle", "cyan_ring", "black_hexagon"]):
        text = clip.caption(objects, rng)
        for name in objects:
            assert text.count(name.replace("_", " ")) == 1
        assert "_" not in text and text.endswith(".")


def test_contrastive_loss_treats_equal_label_sets_as_positives():
    clip = load("pretext_clip")
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    sets = torch.tensor([[1, 0], [0, 1], [1, 0]])
    scale = torch.tensor(2.0)
    logits = 2.0 * images @ texts.T  # unit vectors already
    # rows 0 and 2 share a label set: each has target ½ on columns 0 and 2, row 1 target 1 on column 1
    targets = torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]])
    by_hand = 0.5 * ((-targets * logits.log_softmax(1)).sum(1).mean() + (-targets * logits.log_softmax(0)).sum(0).mean())
    torch.testing.assert_close(clip.contrastive_loss(images, texts, scale, sets), by_hand)
    plain = torch.nn.functional.cross_entropy(logits, torch.arange(3))
    assert not torch.isclose(by_hand, plain)


def test_stand_in_trains_saves_and_scores_through_add_clip_scores(tmp_path, monkeypatch):
    clip = load("pretext_clip")
    monkeypatch.setattr(clip, "CACHE", tmp_path / "pretext")
    spec = {**clip.SPEC, "num_images": 24, "steps": 6, "batch_size": 16, "version": "test",
            "vision": {**clip.SPEC["vision"], "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1},
            "text": {**clip.SPEC["text"], "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}}
    folder = clip.clip_stand_in(spec, progress=False)
    report = json.loads((folder / "report.json").read_text())
    assert report["steps"] == 6 and np.isfinite(report["final_loss"])
    assert set(report["zero_shot_mAP_held_out"]) == {"whole_image", "best_cell"}
    from transformers import CLIPTokenizer

    tokens = CLIPTokenizer.from_pretrained(str(folder)).tokenize("a photo of a red circle.")
    assert "red</w>" in tokens and len(tokens) < len("a photo of a red circle.")  # words, not characters
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert clip.clip_stand_in(spec) == folder and (folder / "model.safetensors").stat().st_mtime == mtime  # cached


def test_pseudo_label_rows_run_with_a_given_clip_and_record_it(tmp_path):
    script = load("compare_methods")
    checkpoint = make_tiny_clip(tmp_path / "clip")
    stem = tmp_path / "results" / "cm"
    table = script.main(["--tiny", "--methods", "vlpl", "aevlp+scl", "--seeds", "0", "--output", str(stem),
                         "--work_dir", str(tmp_path / "w"), "--clip_model", str(checkpoint)])
    assert list(table) == ["vlpl", "aevlp+scl"]
    runs = json.loads(stem.with_suffix(".json").read_text())["runs"]
    assert all(r["clip_model"] == str(checkpoint) and 0 <= r["mAP"] <= 100 for r in runs)
    assert f"pseudo-labels from {checkpoint}" in stem.with_suffix(".md").read_text()
    assert script.needs_clip("aevlp+scl") == "aevlp" and script.needs_clip("scl") is None
