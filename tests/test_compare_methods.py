"""benchmarks/compare_methods.py: the gap/target arithmetic by hand, a tiny real run that resumes from its JSON,
and the CPU name of benchmarks/machine.py that its tables record."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from scl_hf.recipes import gap_closed, markdown_table

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "compare_methods.py"


def load_script():
    sys.path.insert(0, str(BENCHMARKS))  # compare_methods imports machine.py beside it
    spec = importlib.util.spec_from_file_location("compare_methods", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(mean: float) -> dict:
    return {"mAP_mean": mean, "mAP_std": 0.5, "mAP_min": mean - 1, "mAP_max": mean + 1, "runs": 3,
            "seconds_per_step": 0.25}


TABLE = {"full": row(100.0), "an": row(80.0), "ll-r": row(85.0), "em-apl": row(93.0), "scl": row(92.0),
         "role+scl": row(95.0), "ll-r+scl": row(88.0)}


def test_cpu_name_is_the_model_name_line_of_proc_cpuinfo():
    sys.path.insert(0, str(BENCHMARKS))
    from machine import cpu_name

    name = cpu_name()
    assert isinstance(name, str) and name
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return  # no /proc/cpuinfo: the platform fallback, non-empty, is all there is to check
    models = [line.partition(":")[2].strip() for line in lines if line.startswith("model name")]
    if models:
        assert name == models[0]


def test_gap_closed_by_hand():
    assert gap_closed(TABLE, "scl") == pytest.approx(0.6)  # (92 - 80) / (100 - 80)
    assert gap_closed(TABLE, "an") == 0.0 and gap_closed(TABLE, "full") == 1.0
    assert gap_closed({"an": row(80.0), "scl": row(90.0)}, "scl") is None  # no upper bound
    assert gap_closed({"an": row(80.0), "full": row(80.0)}, "an") is None  # no gap to close


def test_markdown_table_shows_the_gap_only_with_both_ends():
    text = markdown_table(TABLE)
    assert "AN → full gap closed" in text and "| scl | 92.00 ± 0.50 | 91.00 – 93.00 | 3 | 60.0% |" in text
    assert all(line.count("|") == 8 for line in text.splitlines())
    without = markdown_table({"an": row(80.0), "scl": row(90.0)})
    assert "gap" not in without and all(line.count("|") == 7 for line in without.splitlines())


def test_target_check_by_hand():
    script = load_script()
    lines = script.target_check(TABLE)
    assert "mAP ≥ 90.00" in lines[0]
    verdicts = {line.split(":")[0][2:]: line for line in lines if line.startswith("- ")}
    assert set(verdicts) == {"scl", "role+scl", "ll-r+scl"}
    assert "60.0% of the gap, not ahead of both → **not met**" in verdicts["scl"]  # behind em-apl 93
    assert "75.0% of the gap, ahead of both → **met**" in verdicts["role+scl"]
    assert "**not met**" in verdicts["ll-r+scl"]  # 40 %
    assert script.target_check({k: v for k, v in TABLE.items() if k != "ll-r"}) == []


def test_tiny_benchmark_writes_resumes_and_refuses_another_budget(tmp_path):
    script = load_script()
    stem = tmp_path / "results" / "cm"
    argv = ["--tiny", "--methods", "an", "scl", "--seeds", "0", "--output", str(stem), "--work_dir", str(tmp_path / "w")]
    table = script.main(argv)
    assert list(table) == ["an", "scl"]
    saved = json.loads(stem.with_suffix(".json").read_text())
    assert {(r["method"], r["seed"]) for r in saved["runs"]} == {("an", 0), ("scl", 0)}
    assert saved["meta"]["budget"]["epochs"] == 2 and all(0 <= r["mAP"] <= 100 for r in saved["runs"])
    assert "| an |" in stem.with_suffix(".md").read_text()
    with Image.open(stem.with_suffix(".png")) as image:
        assert image.width > 300
    assert not any((tmp_path / "w").iterdir())  # each run's folder (bank included) is removed

    # A run already in the JSON is read, not retrained: a value planted there comes back in the table.
    saved["runs"][0]["mAP"] = 12.34
    stem.with_suffix(".json").write_text(json.dumps(saved))
    again = script.main(argv)
    assert again[saved["runs"][0]["method"]]["mAP_mean"] == 12.34

    with pytest.raises(SystemExit, match="another budget"):
        script.main([*argv, "--epochs", "3"])
