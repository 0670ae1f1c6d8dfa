"""The COCO / VOC / ImageNet-ReaL examples, run as users run them, on tiny fake data in the real layouts.

Each example runs for a couple of steps with a small model from scratch, once as ``python
examples/<script>.py`` and once under ``accelerate launch`` with two CPU processes (gloo); every run
must exit 0, write ``test_results.json`` with an ``eval_mAP`` in [0, 100] and save a loadable model.

Two CPU processes: ``accelerate launch --cpu --num_processes 2`` starts ONE process in accelerate 1.x
(its plain launcher only fans out through mpirun); ``--multi_gpu`` goes through torchrun, and with the
script's ``--use_cpu True`` the processes form a gloo group on the CPU, GPU or not. The tests read
``num_processes`` back from the metrics file, so a silently single-process run cannot pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import make_fake_coco, make_fake_imagenet_real, make_fake_voc

from scl_hf import SCLConfig

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TIMEOUT_S = 300

# A couple of steps of a small CNN from scratch on 32 px images: seconds per run on two CPU cores.
TINY = [
    "--model_name", "resnet18", "--pretrained", "False", "--image_size", "32", "--bank_size", "4",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--report_to", "none",
    "--use_cpu", "True", "--dataloader_num_workers", "0", "--disable_tqdm", "True", "--logging_steps", "1",
]
TWO_STEPS = ["--max_steps", "2"]


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> dict[str, Path | dict]:
    root = tmp_path_factory.mktemp("fake_data")
    make_fake_coco(root / "coco", num_train=24, num_val=12)
    make_fake_voc(root / "voc", num_train=18, num_val=12)
    imagenet = make_fake_imagenet_real(root / "imagenet", num_classes=4, per_class=3, num_val=8)
    return {"coco": root / "coco", "voc": root / "voc", "imagenet": imagenet}


def free_port() -> int:
    """torchrun's fixed default port would clash with other runs on a shared machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_example(script: str, args: list[str], output_dir: Path, processes: int = 1) -> dict:
    """Run one example as a subprocess; return its test metrics (``test_results.json``)."""
    command = [sys.executable]
    if processes > 1:
        command += [
            "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()),
        ]
    command += [str(EXAMPLES / script), *args, "--output_dir", str(output_dir),
                "--cache_dir", str(output_dir.parent / "datasets_cache")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(command, cwd=output_dir.parent, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{' '.join(command)}\n--- stdout\n{result.stdout[-6000:]}\n" \
                                   f"--- stderr\n{result.stderr[-6000:]}"
    assert "test eval_mAP:" in result.stdout
    metrics_file = output_dir / "test_results.json"
    assert metrics_file.is_file()
    metrics = json.loads(metrics_file.read_text())
    assert 0.0 <= metrics["eval_mAP"] <= 100.0
    assert metrics["num_processes"] == processes
    final = output_dir / "final"
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    return metrics


def log_history(output_dir: Path) -> list[dict]:
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


# ---------------------------------------------------------------------------------------------- one process
def test_coco_example_one_process(fake_data, tmp_path):
    from transformers import AutoModelForImageClassification

    out = tmp_path / "coco"
    metrics = run_example("train_coco.py", ["--coco_root", str(fake_data["coco"]), *TINY, *TWO_STEPS], out)
    assert metrics["test_samples"] > 0
    model = AutoModelForImageClassification.from_pretrained(out / "final")
    assert model.config.num_labels == 80
    assert model.config.id2label[0] == "person"
    assert model.config.problem_type == "multi_label_classification"
    # the truncated epoch still validated once: the protocol's best-epoch selection ran
    assert any("eval_mAP" in entry for entry in log_history(out))


def test_voc_example_one_process(fake_data, tmp_path):
    args = ["--voc_root", str(fake_data["voc"]), *TINY, *TWO_STEPS, "--method", "em-apl", "--apl_beta", "0.05"]
    metrics = run_example("train_voc.py", args, tmp_path / "voc")
    assert metrics["test_samples"] > 0
    # the run used VOC's published loss defaults (Cole et al., Zhou et al.), not COCO's; the explicit value won
    recorded = json.loads((tmp_path / "voc" / "final" / "training_args.json").read_text())
    assert recorded["dataset_defaults"] == "voc"
    assert (recorded["expected_positives"], recorded["em_alpha"], recorded["apl_beta"]) == (1.5, 0.2, 0.05)


def test_imagenet_example_one_process_with_heldout_validation(fake_data, tmp_path):
    imagenet = fake_data["imagenet"]
    out = tmp_path / "imagenet"
    args = ["--train_dir", imagenet["train_dir"], "--val_dir", imagenet["val_dir"], "--real_json",
            imagenet["real_json"], "--val_fraction", "0.25", *TINY, *TWO_STEPS]
    metrics = run_example("train_imagenet.py", args, out)
    assert metrics["test_samples"] == sum(1 for ids in imagenet["real"] if ids)  # empty ReaL lists left out
    assert any("eval_mAP" in entry for entry in log_history(out))  # the held-out part was evaluated


# ---------------------------------------------------------------------------------------------- two processes
@pytest.mark.slow
def test_coco_example_two_processes_with_spatial_loss(fake_data, tmp_path):
    """Three one-step epochs on 8 images: from epoch 2 on, both processes read and write the shared bank."""
    out = tmp_path / "coco2"
    args = ["--coco_root", str(fake_data["coco"]), *TINY, "--num_train_epochs", "3",
            "--max_train_samples", "8", "--max_eval_samples", "8"]
    run_example("train_coco.py", args, out, processes=2)
    spatial = [entry["loss_scl"] for entry in log_history(out) if "loss_scl" in entry]
    assert spatial and all(value > 0 for value in spatial)


@pytest.mark.slow
def test_voc_example_two_processes(fake_data, tmp_path):
    run_example("train_voc.py", ["--voc_root", str(fake_data["voc"]), *TINY, *TWO_STEPS], tmp_path / "voc2",
                processes=2)


@pytest.mark.slow
def test_imagenet_example_two_processes_with_spatial_loss(fake_data, tmp_path):
    """Three epochs of two steps: the ImageNet default bank layout (sparse, when scl_hf has it) under two
    processes, read by the spatial loss from the second epoch on."""
    imagenet = fake_data["imagenet"]
    args = ["--train_dir", imagenet["train_dir"], "--val_dir", imagenet["val_dir"], "--real_json",
            imagenet["real_json"], *TINY, "--num_train_epochs", "3",
            "--reliability_gate", "False"]  # the spatial term acts at once: what is tested is the shared bank
    out = tmp_path / "imagenet2"
    run_example("train_imagenet.py", args, out, processes=2)
    history = log_history(out)
    # no validation split: nothing evaluated during training, the test split at the end only
    assert not any("eval_mAP" in entry for entry in history[:-1])
    spatial = [entry["loss_scl"] for entry in history if "loss_scl" in entry]
    assert spatial and all(value > 0 for value in spatial)
    if "bank_layout" in {f.name for f in dataclasses.fields(SCLConfig)}:
        assert json.loads((out / "scl_bank" / "header.json").read_text())["layout"] == "sparse"


# ---------------------------------------------------------------------------------------------- arguments
@pytest.fixture
def examples_on_path(monkeypatch):
    """The examples import their shared module as ``common`` (the script's folder is on sys.path)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
    for name in ("common", "train_coco", "train_voc", "train_imagenet", "train_nus_wide", "train_cub"):
        sys.modules.pop(name, None)


def test_protocol_defaults_and_overrides(examples_on_path, tmp_path):
    import train_coco

    _, model_args, args = train_coco.parse_arguments(
        train_coco.CocoArguments, ["--coco_root", "x", "--output_dir", str(tmp_path)]
    )
    assert (model_args.model_name, model_args.pretrained) == ("resnet50", True)
    assert (args.method, args.image_size, args.num_train_epochs, args.per_device_train_batch_size) == (
        "role+scl", 448, 10, 8
    )
    assert (args.learning_rate, args.weight_decay, args.optim.value) == (1e-5, 0.0, "adamw_torch")
    assert args.lr_scheduler_type.value == "constant"
    assert args.eval_strategy.value == "epoch" and args.load_best_model_at_end
    assert args.metric_for_best_model in ("mAP", "eval_mAP") and args.greater_is_better

    data_args, _, args = train_coco.parse_arguments(
        train_coco.CocoArguments,
        ["--coco_root", "x", "--output_dir", str(tmp_path), "--learning_rate", "1e-3", "--method", "an",
         "--eval_strategy", "no", "--max_train_samples", "5"],
    )
    assert (args.learning_rate, args.method, data_args.max_train_samples) == (1e-3, "an", 5)
    assert not args.load_best_model_at_end  # follows --eval_strategy no instead of failing


def test_each_example_applies_its_datasets_loss_defaults(examples_on_path, tmp_path):
    import train_coco
    import train_voc

    _, _, voc = train_voc.parse_arguments(
        train_voc.VocArguments, ["--voc_root", "x", "--output_dir", str(tmp_path)], defaults=train_voc.LOSS_DEFAULTS
    )
    assert (voc.dataset_defaults, voc.expected_positives, voc.em_alpha, voc.apl_beta) == ("voc", 1.5, 0.2, 0.02)
    _, _, coco = train_coco.parse_arguments(
        train_coco.CocoArguments, ["--coco_root", "x", "--output_dir", str(tmp_path), "--expected_positives", "3.5"],
        defaults=train_coco.LOSS_DEFAULTS,
    )
    assert (coco.expected_positives, coco.em_alpha, coco.apl_beta) == (3.5, 0.1, 0.9)


def test_nus_wide_and_cub_examples_train_with_their_defaults(tmp_path):
    from fixtures_nus_cub import make_fake_cub, make_fake_nus_wide

    make_fake_nus_wide(tmp_path / "nus", num_train=16, num_val=6)
    make_fake_cub(tmp_path / "cub", num_images=16)
    for script, flag, root, expected in (("train_nus_wide.py", "--nus_root", "nus", 1.9),
                                         ("train_cub.py", "--cub_root", "cub", 31.4)):
        out = tmp_path / f"run_{root}"
        metrics = run_example(script, [flag, str(tmp_path / root), *TINY, *TWO_STEPS, "--method", "epr"], out)
        assert metrics["test_samples"] > 0
        assert json.loads((out / "final" / "training_args.json").read_text())["expected_positives"] == expected


def test_required_dataset_path(examples_on_path, tmp_path, capsys):
    import train_voc

    with pytest.raises(SystemExit):
        train_voc.parse_arguments(train_voc.VocArguments, ["--output_dir", str(tmp_path)])
    assert "--voc_root" in capsys.readouterr().err


def test_imagenet_defaults(examples_on_path, tmp_path):
    import common
    import train_imagenet

    base = ["--val_dir", "v", "--real_json", "r.json", "--train_dir", "t", "--output_dir", str(tmp_path)]
    parse = train_imagenet.parse_arguments
    defaults, adjust = train_imagenet.IMAGENET_DEFAULTS, train_imagenet.adjust_defaults
    _, _, args = parse(train_imagenet.ImageNetArguments, base, defaults, adjust)
    assert (args.image_size, args.bank_size, args.method) == (224, 7, "scl")  # no N×C table at ImageNet size
    assert args.eval_strategy.value == "no" and not args.load_best_model_at_end
    if common.has_config_field("bank_layout"):
        assert args.bank_layout == "sparse"
    _, _, args = parse(train_imagenet.ImageNetArguments, [*base, "--val_fraction", "0.01"], defaults, adjust)
    assert args.eval_strategy.value == "epoch" and args.load_best_model_at_end


def test_imagenet_training_source(examples_on_path, tmp_path):
    import train_imagenet
    from datasets import ClassLabel, Dataset, Features, Value

    args = train_imagenet.ImageNetArguments(val_dir="v", real_json="r")
    with pytest.raises(SystemExit):
        train_imagenet.training_source(args)  # neither --train_dir nor --train_dataset
    features = Features({"image": Value("string"), "label": ClassLabel(names=["a", "b"])})
    table = Dataset.from_dict({"image": ["a.jpg"], "label": [1]}, features=features)
    table.save_to_disk(tmp_path / "table")
    args.train_dataset = str(tmp_path / "table")
    assert train_imagenet.training_source(args)["label"] == [1]
    names = train_imagenet.readable_names(["n01440764", "n01443537"])
    assert names == ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    assert train_imagenet.readable_names(["cat", "dog"]) == ["cat", "dog"]
