import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_synthetic():
    """A small synthetic dataset shared by the trainer tests (train: label + labels; test: labels)."""
    from scl_hf.data.synthetic import make_synthetic

    return make_synthetic(num_train=24, num_test=16, image_size=64, num_classes=5, seed=3)
