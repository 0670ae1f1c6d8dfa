"""The bank under `accelerate launch`: real processes (gloo on CPU), real files.

Note: with accelerate 1.15, `accelerate launch --cpu --num_processes 2` takes the simple launcher and starts
ONE process (several CPU processes need an MPI hostfile there). `--multi_gpu` goes through torchrun and,
with `use_cpu=True` in the config and no GPU, gives a MULTI_CPU run on gloo: that is what these tests use.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from tiny_run import main as tiny_main  # noqa: E402

ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
ARRAYS = ("predictions", "seen", "stamps", "heatmaps", "coverage")
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(config: dict, num_processes: int = 2, machine_rank: int | None = None, port: int = 0) -> list[str]:
    command = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(num_processes), "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(port or free_port())]
    if machine_rank is None:
        command += ["--num_machines", "1"]
    else:
        command += ["--num_machines", "2", "--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1"]
    return command + [str(SCRIPTS / "tiny_run.py"), json.dumps(config)]


def run_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def check(process: subprocess.CompletedProcess | subprocess.Popen, output: str) -> None:
    assert process.returncode == 0, f"launch failed (rc={process.returncode}):\n{output[-6000:]}"


def bank(folder) -> dict[str, np.ndarray]:
    return {name: np.load(Path(folder) / f"{name}.npy") for name in ARRAYS}


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """2 × 8 images per step on gloo vs 16 in one process: same bank (fp16) and same weights.

    32 images = 2 global batches per epoch, no padding; the ViT has no batch statistics; the spatial loss is
    normalised over the global batch (without that, weights differ by ~6e-4 here)."""
    threads = torch.get_num_threads()
    try:
        tiny_main({"output_dir": str(tmp_path / "one"), "per_device_train_batch_size": 16})
    finally:
        torch.set_num_threads(threads)
    config = {"output_dir": str(tmp_path / "two"), "per_device_train_batch_size": 8}
    done = subprocess.run(launch_command(config), env=run_env(), capture_output=True, text=True, timeout=600)
    check(done, done.stdout + done.stderr)
    assert "'epoch': '1.5'" in done.stdout or "'epoch': 1.5" in done.stdout  # 2 steps per epoch: really 2 × 8

    one, two = bank(tmp_path / "one" / "scl_bank"), bank(tmp_path / "two" / "scl_bank")
    np.testing.assert_array_equal(one["seen"], np.full(32, 2))
    np.testing.assert_array_equal(two["seen"], one["seen"])
    np.testing.assert_array_equal(two["coverage"], one["coverage"])  # same crops, written once each
    np.testing.assert_allclose(two["predictions"], one["predictions"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(two["heatmaps"].astype(np.float32), one["heatmaps"].astype(np.float32), atol=1e-3, rtol=0)
    w_one = torch.load(tmp_path / "one" / "weights.pt")
    w_two = torch.load(tmp_path / "two" / "weights.pt")
    for key in w_one:
        torch.testing.assert_close(w_two[key], w_one[key], atol=5e-5, rtol=0, msg=key)


def test_padding_of_the_last_step_counts_once_and_two_processes_still_match_one(tmp_path):
    """20 images, drop_last=False, 2 × 3 per step vs 6 in one process: the epoch's last step has 2 real rows,
    which accelerate pads (for 2 processes) with 4 rows of the epoch's first step. Those 4 must not be trained
    on or written a second time: every row is seen exactly once per epoch, and the 2-process run equals the
    1-process one (whose last batch is 2 rows). Before the fix `seen` was 2–4 per row after 2 epochs."""
    common = {"num_train": 20, "dataloader_drop_last": False}
    threads = torch.get_num_threads()
    try:
        tiny_main({"output_dir": str(tmp_path / "one"), "per_device_train_batch_size": 6, **common})
    finally:
        torch.set_num_threads(threads)
    config = {"output_dir": str(tmp_path / "two"), "per_device_train_batch_size": 3, **common}
    done = subprocess.run(launch_command(config), env=run_env(), capture_output=True, text=True, timeout=600)
    check(done, done.stdout + done.stderr)
    assert "'epoch': '1.5'" in done.stdout or "'epoch': 1.5" in done.stdout  # 4 steps per epoch: 2 × 3, padded

    one, two = bank(tmp_path / "one" / "scl_bank"), bank(tmp_path / "two" / "scl_bank")
    np.testing.assert_array_equal(two["seen"], np.full(20, 2))
    np.testing.assert_array_equal(one["seen"], np.full(20, 2))
    np.testing.assert_array_equal(two["stamps"], np.full(20, 2))  # last written in epoch 1
    np.testing.assert_array_equal(two["coverage"], one["coverage"])
    np.testing.assert_allclose(two["predictions"], one["predictions"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(two["heatmaps"].astype(np.float32), one["heatmaps"].astype(np.float32), atol=1e-3, rtol=0)
    w_one = torch.load(tmp_path / "one" / "weights.pt")
    w_two = torch.load(tmp_path / "two" / "weights.pt")
    for key in w_one:
        torch.testing.assert_close(w_two[key], w_one[key], atol=5e-5, rtol=0, msg=key)


@pytest.mark.parametrize(("options", "message"), [
    ({"per_device_train_batch_size": 8, "accelerator_config": {"even_batches": False}},
     "the bank needs even batches across processes"),
    ({"per_device_train_batch_size": 16, "num_train": 20},  # accelerate would pad the only step with its own rows
     "20 training images do not fill one global batch of 32"),
])
def test_setups_the_bank_cannot_run_are_refused_before_training(tmp_path, options, message):
    config = {"output_dir": str(tmp_path / "out"), "dataloader_drop_last": False, **options}
    done = subprocess.run(launch_command(config), env=run_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert message in done.stdout + done.stderr, (done.stdout + done.stderr)[-4000:]
    assert not (tmp_path / "out" / "scl_bank" / "heatmaps.npy").exists()


def launch_two_machines(tmp_path: Path, bank_dirs: list[Path]) -> list[tuple[int, str]]:
    """Machine ranks 0 and 1 on loopback, one process each, as background subprocesses."""
    port = free_port()
    processes = []
    for rank, bank_dir in enumerate(bank_dirs):
        config = {"output_dir": str(tmp_path / "out"), "bank_dir": str(bank_dir), "per_device_train_batch_size": 8}
        log = open(tmp_path / f"rank{rank}.log", "w+")
        processes.append((subprocess.Popen(launch_command(config, machine_rank=rank, port=port), env=run_env(),
                                           stdout=log, stderr=subprocess.STDOUT), log))
    results = []
    for process, log in processes:
        try:
            process.wait(timeout=600)
        finally:
            if process.poll() is None:
                process.kill()
        log.seek(0)
        results.append((process.returncode, log.read()))
        log.close()
    return results


def test_two_machines_keep_identical_node_local_banks(tmp_path):
    results = launch_two_machines(tmp_path, [tmp_path / "node0" / "bank", tmp_path / "node1" / "bank"])
    for rc, output in results:
        assert rc == 0, output[-6000:]
    node0, node1 = bank(tmp_path / "node0" / "bank"), bank(tmp_path / "node1" / "bank")
    assert node0["seen"].sum() == 64  # 32 images, 2 epochs: both copies got every write
    for name in ARRAYS:
        np.testing.assert_array_equal(node0[name], node1[name], err_msg=name)
    assert (tmp_path / "out" / "weights.pt").exists()


def test_one_bank_dir_shared_by_two_machines_is_refused(tmp_path):
    results = launch_two_machines(tmp_path, [tmp_path / "shared", tmp_path / "shared"])
    for rc, output in results:
        assert rc != 0 and "is shared by several nodes" in output, output[-6000:]
    assert not (tmp_path / "shared" / "heatmaps.npy").exists()  # refused before any bank file was made
