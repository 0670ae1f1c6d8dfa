"""The `scl-hf` command: help, one-line user errors, and the new user's path end to end — train on the
synthetic data, export, then classify an image in a fresh process that never imports scl_hf."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from scl_hf import hub
from scl_hf.cli import main
from scl_hf.data.synthetic import SYNTHETIC_CLASS_NAMES, make_synthetic
from scl_hf.transforms import EvalTransform

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
# what `--tiny` does, made smaller still for the shared test machine: same code path, fewer steps
SMALL = ["--tiny", "--num_train", "16", "--num_test", "8"]


@pytest.mark.parametrize("command,expected", [
    ([], ["train", "eval", "export", "push", "card", "AutoModelForImageClassification"]),
    (["train"], ["--model", "--method", "--output_dir", "--epochs", "--image_size", "--batch_size",
                 "--learning_rate", "--pretrained", "--set", "--coco_root", "--tiny"]),
    (["eval"], ["folder", "--voc_root", "--real_json", "--batch_size"]),
    (["export"], ["checkpoint-*", "destination", "--image_size"]),
    (["push"], ["repo_id", "--token", "--private", "training_args.json"]),
    (["card"], ["--repo_id", "--write"]),
])
def test_help_explains_each_command(command, expected, capsys):
    assert main([*command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in expected:
        assert word in text, word


@pytest.mark.parametrize("argv,message", [
    (["train", "imagenet21k"], "invalid choice: 'imagenet21k'"),
    (["train", "coco"], "dataset 'coco' needs --coco_root"),
    (["train", "imagenet", "--imagenet_val", "{tmp}"], "dataset 'imagenet' needs --imagenet_train and --real_json"),
    (["train", "synthetic", "--set", "spatial_wieght=2"], "SCLConfig has no field 'spatial_wieght'"),
    (["train", "synthetic", "--set", "momentum"], "--set expects KEY=VALUE"),
    (["train", "voc", "--voc_root", "{tmp}"], "not found"),
    (["export", "{tmp}/missing", "{tmp}/out"], "is not a folder"),
    (["export", "{tmp}", "{tmp}/out"], "is not a checkpoint (no config.json) nor a trainer output dir"),
    (["eval", "{tmp}", "synthetic", *SMALL], "is not a checkpoint: it has no config.json"),
    (["push", "{tmp}", "someone/model"], "is not a release folder"),
    (["card", "{tmp}"], "is not a release folder"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, message, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("scl-hf") and message in err, err
    assert "Traceback" not in err


def test_every_protocol_dataset_names_a_loader_of_scl_hf_data_and_flags_the_parser_knows():
    from scl_hf import data
    from scl_hf.cli import build_parser
    from scl_hf.cli_data import PROTOCOL_LOADERS

    train = build_parser().parse_args(["train", "synthetic"])
    for name, (function, flags) in PROTOCOL_LOADERS.items():
        assert callable(getattr(data, function)), name
        assert all(hasattr(train, flag) for flag in flags), (name, flags)


CLASSIFY = textwrap.dedent("""
    import json, sys
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    folder, image = sys.argv[1], Image.open(sys.argv[2])
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    # top_k=None would mean the default top 5 in transformers 5.x: ask for every class
    predictions = pipeline("image-classification", model=folder, top_k=model.config.num_labels)(image)
    inputs = AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0].tolist()
    print(json.dumps({"predictions": predictions, "logits": logits,
                      "scl_hf_imported": any(m.startswith("scl_hf") for m in sys.modules)}))
""")


def test_new_user_trains_exports_and_classifies_in_a_fresh_process(tmp_path, capsys):
    run, release = tmp_path / "run", tmp_path / "release"
    assert main(["train", "synthetic", *SMALL, "--epochs", "1", "--batch_size", "8", "--output_dir", str(run)]) == 0
    assert "release folder:" in capsys.readouterr().out
    assert set(hub.RELEASE_FILES) <= {p.name for p in (run / "final").iterdir()}

    assert main(["export", str(run), str(release)]) == 0  # trainer output dir → its last checkpoint
    assert {p.name for p in release.iterdir()} == set(hub.RELEASE_FILES)
    args = json.loads((release / "training_args.json").read_text())
    assert args["image_size"] == 64 and args["method"] == "role+scl"  # the default method
    card = (release / "README.md").read_text()
    assert "type: synthetic" in card and "split: test" in card and "random (trained from scratch)" in card

    assert main(["eval", str(release), "synthetic", *SMALL]) == 0
    assert "eval_mAP:" in capsys.readouterr().out
    assert main(["card", str(release), "--repo_id", "someone/demo"]) == 0
    assert 'model="someone/demo"' in capsys.readouterr().out

    image = make_synthetic(num_train=1, num_test=1, image_size=96, seed=5)["test"][0]["image"]
    image.save(tmp_path / "shapes.png")
    result = subprocess.run([sys.executable, "-c", CLASSIFY, str(release), str(tmp_path / "shapes.png")],
                            capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert not out["scl_hf_imported"]
    names = list(SYNTHETIC_CLASS_NAMES[:10])
    assert sorted(p["label"] for p in out["predictions"]) == sorted(names)
    assert all(0.0 <= p["score"] <= 1.0 for p in out["predictions"])
    # the fresh process sees the model and preprocessing that scl_hf evaluated
    model = hub.load_checkpoint(release, expected_labels=names).eval()
    config = model.config.pretrained_cfg
    with torch.no_grad():
        expected = model(pixel_values=EvalTransform(64, config["mean"], config["std"])(image)[None]).logits[0]
    assert torch.allclose(torch.tensor(out["logits"]), expected, atol=1e-5)
    scores = {p["label"]: p["score"] for p in out["predictions"]}
    assert torch.allclose(torch.tensor([scores[n] for n in names]), torch.sigmoid(expected), atol=1e-5)


def test_console_script_and_module_entry_points():
    script = Path(sys.executable).parent / "scl-hf"
    commands = [[sys.executable, "-m", "scl_hf.cli", "--help"]] + ([[str(script), "--help"]] if script.exists() else [])
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
        assert result.returncode == 0 and "usage: scl-hf" in result.stdout, result.stderr
    result = subprocess.run([sys.executable, "-m", "scl_hf.cli", "export", "/nonexistent", "/tmp/x"],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == "scl-hf export: error: /nonexistent is not a folder"


def test_train_on_cub_applies_its_published_loss_defaults(tmp_path, capsys):
    from fixtures_nus_cub import make_fake_cub

    make_fake_cub(tmp_path / "cub", num_images=12)
    out = tmp_path / "run"
    argv = ["train", "cub", "--cub_root", str(tmp_path / "cub"), "--tiny", "--model", "resnet18", "--epochs", "1",
            "--method", "em-apl", "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
            "--set", "apl_beta=0.3"]
    assert main(argv) == 0
    recorded = json.loads((out / "final" / "training_args.json").read_text())
    assert recorded["dataset_defaults"] == "cub"
    assert (recorded["expected_positives"], recorded["em_alpha"], recorded["apl_beta"]) == (31.4, 0.01, 0.3)
