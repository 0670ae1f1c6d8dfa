"""Release folders: real safetensors files, real loading in a fresh process, cards, and pushes with only
the Hub's network calls faked."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import ResNetConfig, ResNetForImageClassification, TimmWrapperImageProcessor

from scl_hf import SCLConfig, SCLTrainer, create_model, hub
from scl_hf.transforms import EvalTransform

LABELS = ["cat", "dog", "bird"]
TOKEN = "hf_FAKEtoken1234567890abcdef"
SIZE = 48
# one 8-bit grey level after normalisation (1 / 255 / smallest std): torchvision's tensor resize (the
# default backend of ViTImageProcessor) rounds differently from PIL's; timm's processor uses PIL → exact.
GREY_LEVEL = 1.01 / 255 / 0.224

CHECK = textwrap.dedent("""
    import json, sys
    import torch, timm
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    results = []
    for folder, reference, image_path, is_timm in json.loads(sys.argv[1]):
        ref, image = load_file(reference), Image.open(image_path)
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        pixels = AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = model(pixel_values=ref["pixels"]).logits
            probs = torch.sigmoid(model(pixel_values=pixels).logits)[0]
        classify = pipeline("image-classification", model=folder, top_k=model.config.num_labels)
        scores = {p["label"]: p["score"] for p in classify(image)}
        out = {
            "logits": (logits - ref["logits"]).abs().max().item(),
            "pixels_max": (pixels[0] - ref["pixels"][0]).abs().max().item(),
            "pixels_mean": (pixels[0] - ref["pixels"][0]).abs().mean().item(),
            "labels": sorted(scores), "problem_type": model.config.problem_type,
            "pipeline": max(abs(scores[model.config.id2label[i]] - p.item()) for i, p in enumerate(probs)),
        }
        if is_timm:
            native = timm.create_model("local-dir:" + folder, pretrained=True).eval()
            with torch.no_grad():
                out["timm"] = (native(ref["pixels"]) - ref["logits"]).abs().max().item()
        results.append(out)
    print(json.dumps({"results": results, "scl_hf_imported": any(m.startswith("scl_hf") for m in sys.modules)}))
""")



def perturbed(model):
    """A 'trained' model: random weights and BatchNorm statistics that differ from the initial ones."""
    torch.manual_seed(0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.dtype.is_floating_point:
                tensor.add_(0.1 * torch.rand_like(tensor))
    return model.eval()


def tiny_native():
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=len(LABELS),
                          id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    return perturbed(ResNetForImageClassification(config))


def run_args(tmp_path, **extra):
    return SCLConfig(output_dir=str(tmp_path / "run"), image_size=SIZE, method="cl+scl", hub_token=TOKEN,
                     use_cpu=True, report_to="none", **extra)


def fresh_process_check(jobs: list[tuple[Path, object, bool]], tmp_path: Path) -> list[dict]:
    """Load each (folder, reference model, is_timm) in ONE new Python process that never imports scl_hf."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((71, 53))
    image.save(tmp_path / "image.png")
    specs = []
    for folder, model, is_timm in jobs:
        processor = json.loads((folder / "preprocessor_config.json").read_text())
        cfg = processor.get("pretrained_cfg") or {"mean": processor["image_mean"], "std": processor["image_std"]}
        pixels = EvalTransform(SIZE, cfg["mean"], cfg["std"])(image)[None]
        with torch.no_grad():
            logits = model(pixel_values=pixels).logits
        reference = tmp_path / f"{folder.name}.safetensors"
        save_file({"pixels": pixels.contiguous(), "logits": logits.contiguous()}, str(reference))
        specs.append((str(folder), str(reference), str(tmp_path / "image.png"), is_timm))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run([sys.executable, "-c", CHECK, json.dumps(specs)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["scl_hf_imported"]
    return report["results"]


def release_names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_export_loads_everywhere_in_a_fresh_process(tmp_path):
    """timm and transformers-native exports: same logits through AutoModel and timm, sigmoid pipeline scores
    for every label, AutoImageProcessor ≈ EvalTransform; and the timm num_classes bug cannot come back."""
    timm_model = perturbed(create_model("resnet18", num_labels=3, id2label=LABELS))
    timm_model.config.model_args = {"num_classes": 3, "drop_rate": 0.0}  # what timm 1.0.31's save_for_hf records
    native_model = tiny_native()
    metrics = {"eval_mAP": 61.234, "eval_F1_micro": 40.0, "eval_loss": 0.5}
    folders = {
        "timm": hub.export(timm_model, tmp_path / "timm", metrics=metrics, training_args=run_args(tmp_path),
                           dataset_name="synthetic"),
        "native": hub.export(native_model, tmp_path / "native", image_size=SIZE),
    }
    timm_folder = folders["timm"]
    assert release_names(timm_folder) == set(hub.RELEASE_FILES)
    assert release_names(folders["native"]) == set(hub.RELEASE_FILES) - {"training_args.json"}
    for folder in folders.values():
        assert not [p for p in folder.iterdir() if p.suffix in hub.PICKLE_SUFFIXES]
    config = json.loads((timm_folder / "config.json").read_text())
    assert config["model_args"] == {"drop_rate": 0.0}
    assert config["problem_type"] == "multi_label_classification" and config["label_names"] == LABELS
    pretrained_cfg = config["pretrained_cfg"]
    assert pretrained_cfg["input_size"] == [3, SIZE, SIZE] and pretrained_cfg["crop_pct"] == 1.0
    assert pretrained_cfg["crop_mode"] == "squash" and pretrained_cfg["interpolation"] == "bilinear"
    assert "hf_hub_id" not in pretrained_cfg  # these weights are not timm's resnet18.a1_in1k
    # preprocessor_config.json (what the Hub's AutoImageProcessor reads first) builds the same eval transform
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    processor = TimmWrapperImageProcessor.from_dict(json.loads((timm_folder / "preprocessor_config.json").read_text()))
    expected = EvalTransform(SIZE, pretrained_cfg["mean"], pretrained_cfg["std"])(image)
    assert torch.allclose(processor(image)["pixel_values"][0], expected, atol=1e-5)
    with safe_open(str(timm_folder / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.startswith("timm_model.")]  # timm-native names
    saved_args = (timm_folder / "training_args.json").read_text()
    assert TOKEN not in saved_args and json.loads(saved_args)["image_size"] == SIZE

    timm_result, native_result = fresh_process_check(
        [(timm_folder, timm_model, True), (folders["native"], native_model, False)], tmp_path)
    for result in (timm_result, native_result):
        assert result["logits"] <= 1e-5
        assert result["labels"] == sorted(LABELS) and result["problem_type"] == "multi_label_classification"
        assert result["pipeline"] <= 1e-5  # pipeline scores are sigmoid(logits), one per label
    assert timm_result["timm"] <= 1e-5
    assert timm_result["pixels_max"] <= 1e-5  # timm's processor: the same PIL bilinear resize
    assert native_result["pixels_max"] <= GREY_LEVEL and native_result["pixels_mean"] <= 0.25 * GREY_LEVEL


def test_load_checkpoint_checks_and_repairs(tmp_path):
    model = create_model("resnet18", num_labels=3, id2label=LABELS)
    folder = hub.export(model, tmp_path / "release", image_size=SIZE)
    assert hub.load_checkpoint(folder, expected_labels=LABELS).config.id2label == dict(enumerate(LABELS))
    with pytest.raises(ValueError, match="class 1 is 'dog', expected 'cow'"):
        hub.load(folder, expected_labels=["cat", "cow", "bird"])
    with pytest.raises(ValueError, match="has 3 classes but 2 were expected"):
        hub.load(folder, expected_labels=["cat", "dog"])
    with pytest.raises(ValueError, match="is not a folder"):
        hub.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="no config.json"):
        hub.load(tmp_path)
    # an older export with the timm num_classes duplication still loads
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_args": {"num_classes": 3}}))
    assert hub.load(folder).config.num_labels == 3
    (folder / "config.json").write_text(json.dumps({**config, "num_classes": 4}))
    with pytest.raises(ValueError, match="declares 4 classes but its label_names has 3"):
        hub.load(folder)
    # transformers layout: num_labels vs id2label, and pickle-only weights
    native = tmp_path / "native"
    native.mkdir()
    (native / "config.json").write_text(json.dumps({"model_type": "resnet", "num_labels": 5,
                                                    "id2label": {"0": "a", "1": "b"}}))
    with pytest.raises(ValueError, match="declares 5 classes but its id2label has 2"):
        hub.load(native)
    (native / "config.json").write_text(json.dumps({"model_type": "resnet", "id2label": {"0": "a", "1": "b"}}))
    (native / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match=r"no model.safetensors \(only pickle files \['pytorch_model.bin'\]"):
        hub.load(native)


def front_matter(card: ModelCard) -> dict:
    _, meta, _ = card.content.split("---", 2)
    return yaml.safe_load(meta)


def test_model_card_metadata_and_content(tmp_path):
    """Validated locally: ModelCard.validate posts to the Hub's API, which these tests cannot reach."""
    folder = hub.export(create_model("resnet18", num_labels=3, id2label=LABELS), tmp_path / "release",
                        metrics={"eval_test_mAP": 70.123, "eval_test_F1_macro": 55.5, "eval_test_AP/cat": 80.0},
                        training_args=run_args(tmp_path), dataset_name="coco", pretrained=False)
    card = ModelCard.load(folder / "README.md")
    meta = front_matter(card)
    index = meta["model-index"]
    assert isinstance(index, list) and index[0]["name"] == "release"
    result = index[0]["results"][0]
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"] == {"name": "MS-COCO 2014", "type": "coco", "split": "test"}
    assert {"type": "mAP", "name": "mAP", "value": 70.12} in result["metrics"]
    data = ModelCardData(**meta)  # huggingface_hub parses model-index back into EvalResults
    assert [(r.metric_type, r.metric_value) for r in data.eval_results] == [("mAP", 70.12), ("F1_macro", 55.5)]
    assert meta["pipeline_tag"] == "image-classification" and "multi-label-classification" in meta["tags"]
    text = card.text
    for expected in ("@inproceedings{verelst2023spatial", "WACV", "arXiv:2203.06127", "Cole et al.",
                     'pipeline("image-classification"', "AutoModelForImageClassification", "timm.create_model",
                     "Intended use and limitations", "| `spatial_weight` | `0.5` |", "| cat | 80.0 |",
                     f"{SIZE}×{SIZE}", "random (trained from scratch)"):
        assert expected in text, expected
    assert TOKEN not in card.content and "\n\n\n" not in text
    # re-rendering for a repository keeps the recorded results and names the repository
    again = hub.make_model_card(folder, repo_id="someone/resnet18-coco")
    assert 'model="someone/resnet18-coco"' in again.text and front_matter(again)["model-index"][0]["results"]
    # the template ships inside the package; model_cards/ holds the same file for readers
    repo_copy = Path(__file__).parents[1] / "model_cards" / "model_card_template.md"
    assert hub.template_path().read_text() == repo_copy.read_text()


class FakeHub:
    """Records what would have been sent to the Hub; nothing leaves the machine."""

    def __init__(self, monkeypatch):
        self.repos, self.commits = [], []
        # plain functions, so that they bind to the HfApi instance like the real methods
        monkeypatch.setattr(HfApi, "create_repo", lambda api, *a, **k: self.create_repo(api, *a, **k))
        monkeypatch.setattr(HfApi, "create_commit", lambda api, *a, **k: self.create_commit(api, *a, **k))
        monkeypatch.setattr(HfApi, "upload_folder", lambda *a, **k: pytest.fail("upload_folder must not be used"))

    def create_repo(self, api, repo_id, **kwargs):
        self.repos.append((repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def create_commit(self, api, repo_id, operations, **kwargs):
        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        self.commits.append({"repo_id": repo_id, "files": files, "token": api.token, **kwargs})
        return type("CommitInfo", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()


def assert_release_upload(commit):
    assert set(commit["files"]) == set(hub.RELEASE_FILES)
    for name, content in commit["files"].items():
        assert TOKEN.encode() not in content, name


def test_push_uploads_exactly_the_release_files(tmp_path, monkeypatch):
    fake = FakeHub(monkeypatch)
    folder = hub.export(create_model("resnet18", num_labels=3, id2label=LABELS), tmp_path / "release",
                        training_args=run_args(tmp_path), metrics={"eval_mAP": 50.0}, dataset_name="voc")
    for junk in ("scl_bank/heatmaps.npy", "optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin",
                 "checkpoint-4/model.safetensors", ".cache/token"):
        (folder / junk).parent.mkdir(parents=True, exist_ok=True)
        (folder / junk).write_bytes(TOKEN.encode())
    hub.push(folder, "someone/model", token=TOKEN, private=True, commit_message="release")
    assert fake.repos == [("someone/model", {"private": True, "exist_ok": True, "repo_type": "model"})]
    (commit,) = fake.commits
    assert commit["commit_message"] == "release" and commit["token"] == TOKEN
    assert_release_upload(commit)
    assert b'model="someone/model"' in commit["files"]["README.md"]  # the card names the repository
    assert commit["files"]["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    # a file holding the token is refused before anything is sent
    (folder / "training_args.json").write_text(json.dumps({"note": TOKEN}))
    with pytest.raises(ValueError, match="contains the access token"):
        hub.push(folder, "someone/model", token=TOKEN)
    assert len(fake.commits) == 1


def test_trainer_save_and_push_send_release_files_only(tmp_path, monkeypatch, tiny_synthetic):
    fake = FakeHub(monkeypatch)
    names = tiny_synthetic["train"].features["label"].names
    args = run_args(tmp_path, hub_model_id="someone/scl-run", save_strategy="no", disable_tqdm=True)
    trainer = SCLTrainer(model=create_model("resnet18", num_labels=len(names), id2label=names), args=args,
                         eval_dataset=tiny_synthetic["test"])
    trainer.state.log_history.append({"eval_mAP": 42.0, "epoch": 1.0})
    bank = Path(args.output_dir) / "scl_bank"
    bank.mkdir(parents=True)
    (bank / "heatmaps.npy").write_bytes(b"bank")
    trainer.save_model(str(tmp_path / "final"))
    assert release_names(tmp_path / "final") == set(hub.RELEASE_FILES)
    trainer.push_to_hub()
    trainer._push_from_checkpoint(str(tmp_path / "checkpoint-1"))  # what Trainer does at each save
    assert len(fake.commits) == 2
    for commit in fake.commits:
        assert commit["repo_id"] == "someone/scl-run" and commit["token"] == TOKEN
        assert_release_upload(commit)
    assert b"value: 42.0" in fake.commits[0]["files"]["README.md"]
    trainer.create_model_card()
    assert "someone/scl-run" in (Path(args.output_dir) / "README.md").read_text()


def test_recorded_image_size_reads_the_folder_in_order_and_names_the_fix(tmp_path):
    from scl_hf.cli import CLIError
    from scl_hf.cli import recorded_image_size as cli_recorded

    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["TimmWrapperForImageClassification"]}))
    with pytest.raises(ValueError, match="does not record its image size"):
        hub.recorded_image_size(folder)
    with pytest.raises(CLIError, match="pass --image_size"):
        cli_recorded(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 224, "width": 224}}))
    assert hub.recorded_image_size(folder) == 224
    (folder / "config.json").write_text(json.dumps({"pretrained_cfg": {"input_size": [3, 160, 160]}}))
    assert hub.recorded_image_size(folder) == 160
    (tmp_path / "training_args.json").write_text(json.dumps({"image_size": 96}))  # a checkpoint's parent run
    assert hub.recorded_image_size(folder) == 96
    (folder / "training_args.json").write_text(json.dumps({"image_size": 448}))
    assert hub.recorded_image_size(str(folder)) == 448 == cli_recorded(folder)
