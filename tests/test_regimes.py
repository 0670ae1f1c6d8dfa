"""benchmarks/regimes.py: a tiny real run per regime kind, resumed from its JSON, refused under another definition."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script():
    sys.path.insert(0, str(BENCHMARKS))  # regimes.py imports pretext.py beside it
    spec = importlib.util.spec_from_file_location("regimes", BENCHMARKS / "regimes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["regimes"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_tiny_regime_run_writes_val_and_test_resumes_and_refuses_a_changed_definition(tmp_path):
    script = load_script()
    stem = tmp_path / "regimes"
    argv = ["--tiny", "--regimes", "digits", "--methods", "an", "scl", "--seeds", "0", "--output", str(stem),
            "--work_dir", str(tmp_path / "w")]
    runs = script.main(argv)
    assert {(r["regime"], r["method"]) for r in runs} == {("digits", "an"), ("digits", "scl")}
    assert all(0 <= r["val_mAP"] <= 100 and 0 <= r["test_mAP"] <= 100 for r in runs)
    table = stem.with_suffix(".md").read_text()
    assert "## digits" in table and "| an |" in table and "| scl |" in table
    assert not any((tmp_path / "w").iterdir())

    # Resumed: a value planted in the JSON comes back instead of a new run (tuples in the definition survive JSON).
    saved = json.loads(stem.with_suffix(".json").read_text())
    saved["runs"][0]["test_mAP"] = 12.34
    stem.with_suffix(".json").write_text(json.dumps(saved))
    again = script.main(argv)
    assert len(again) == 2 and 12.34 in [r["test_mAP"] for r in again]

    # Another definition of a regime that has runs is refused; a change to a regime without runs is not.
    saved["meta"]["regimes"]["shapes"]["epochs"] = 99
    stem.with_suffix(".json").write_text(json.dumps(saved))
    assert len(script.main(argv)) == 2
    saved["meta"]["regimes"]["digits"]["epochs"] = 99
    stem.with_suffix(".json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="other definitions of the regimes \\['digits'\\]"):
        script.main(argv)
    saved["meta"]["regimes"]["digits"]["epochs"] = script.REGIMES["digits"].epochs
    saved["meta"]["regimes"]["digits"]["data_version"] = 1  # digit validation that shared training's scans
    stem.with_suffix(".json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="other definitions of the regimes \\['digits'\\]"):
        script.main(argv)
    saved["meta"]["regimes"]["digits"]["data_version"] = script.REGIMES["digits"].data_version

    # Runs of another invocation (its own --output) merge in; runs already here are kept, not duplicated.
    saved["meta"]["regimes"]["digits"]["epochs"] = script.REGIMES["digits"].epochs
    other = tmp_path / "other.json"
    extra = {**saved["runs"][0], "seed": 7, "test_mAP": 55.5}
    other.write_text(json.dumps({"meta": saved["meta"], "runs": [saved["runs"][0], extra]}))
    stem.with_suffix(".json").write_text(json.dumps({"meta": saved["meta"], "runs": saved["runs"]}))
    merged = script.main([*argv, "--merge", str(other)])
    assert len(merged) == 3 and 55.5 in [r["test_mAP"] for r in merged]
    assert len(json.loads(stem.with_suffix(".json").read_text())["runs"]) == 3


def test_table_gives_each_method_its_share_of_the_an_to_full_gap_per_seed():
    script = load_script()
    run = lambda method, seed, test: {"regime": "digits", "method": method, "seed": seed, "val_mAP": test,  # noqa: E731
                                      "test_mAP": test}
    runs = [run("an", 0, 20.0), run("full", 0, 40.0), run("scl", 0, 30.0),  # seed 0: half the gap
            run("an", 1, 10.0), run("full", 1, 20.0), run("scl", 1, 20.0),  # seed 1: all of it
            run("scl", 2, 99.0)]  # seed 2 has no bounds: left out of the share
    rows = {line.split(" | ")[0]: line for line in script.tables(runs).splitlines() if line.startswith("| ")}
    assert rows["| scl"].endswith("| 75 % (seeds [0, 1]) |")  # (50 % + 100 %) / 2
    assert rows["| an"].endswith("| 0 % (seeds [0, 1]) |") and rows["| full"].endswith("| 100 % (seeds [0, 1]) |")


def test_clutter10_is_the_clutter_generator_with_ten_classes_of_one_colour_family(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script, "CACHE", tmp_path)
    data = script.regime_data(script.REGIMES["clutter10"], seed=0, tiny=True)
    names = data["train"].features["label"].names
    assert len(names) == 10 and all(name.startswith("red_") for name in names)
    assert {split: len(data[split]) for split in ("train", "validation", "test")} == {
        "train": script.TINY["num_train"], "validation": script.TINY["num_validation"], "test": script.TINY["num_test"]}
    assert script.REGIMES["clutter10"].extra == {}  # the held-out check's recipe: every option at its default
