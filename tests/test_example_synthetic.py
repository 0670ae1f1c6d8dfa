"""The embedded-default example end to end, in its tiny setting: table, JSON, heatmap and curve PNGs."""

import json
import runpy
import sys
from pathlib import Path

from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_synthetic.py"


def test_train_synthetic_tiny(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--tiny", "--output_dir", str(tmp_path)])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    printed = capsys.readouterr().out
    assert "| an |" in printed and "| scl |" in printed and "| role+scl |" in printed
    assert "heatmaps (role+scl seed 0)" in printed  # the default method's bank is drawn
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["method"] for r in results["runs"]} == {"an", "scl", "role+scl"}
    assert all(0.0 <= r["mAP"] <= 100.0 for r in results["runs"])
    for picture in ("heatmaps.png", "map_curves.png"):
        with Image.open(tmp_path / picture) as image:
            assert image.width > 200 and image.height > 100
