"""Rounds of `bank_critical_path.py` side by side: one table of every round's figures, in Markdown.

On a shared machine one run is one sample of the load; the settings are run in alternating rounds, each
round into its own `--output-dir`, and this collects them (rank 0's median [quartiles] of each run):
    python benchmarks/bank_critical_path_rounds.py --set "writer: one thread=/tmp/r1,/tmp/r2,/tmp/r3" \\
        [--set "writer: thread per step=/tmp/o1,..."] --output benchmarks/results/bank_critical_path_rounds.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def cell(stats: dict) -> str:
    return f"{stats['median']:.2f} [{stats['q1']:.2f}–{stats['q3']:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", required=True, help="LABEL=DIR,DIR,...: one folder per round")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--intro", default="", help="a paragraph above the table")
    args = parser.parse_args()

    lines = ["# The bank on the critical path: rounds", ""]
    if args.intro:
        lines += [args.intro, ""]
    lines += ["| code | processes | read-ahead | sync | round | host critical path | its minimum | host CPU | "
              "every rank's host median | load average (1, 5, 15 min) |",
              "|---|---:|:---:|:---:|---:|---:|---:|---:|---|---|"]
    summary, machines = [], set()
    for spec in args.set:
        label, folders = spec.split("=", 1)
        runs = {}
        for r, folder in enumerate(folders.split(","), start=1):
            for run in json.loads((Path(folder) / "bank_critical_path.json").read_text())["runs"]:
                key = (run["processes"], run["readahead"], run.get("sync", "step"))  # runs before `sync`: per step
                runs.setdefault(key, []).append((r, run))
                machines.add(run["machine"]["cpu_model"])
        for (processes, readahead, sync), rounds in sorted(runs.items()):
            for r, run in rounds:
                s = run["rank0"]
                ranks = ", ".join(f"{p['host']:.2f}" for p in run["per_process_medians_ms"])
                load = ", ".join(f"{x:.2f}" for x in run["load_average"])
                lines.append(f"| {label} | {processes} | {'on' if readahead else 'off'} | {sync} | {r} | {cell(s['host'])} | "
                             f"{s['host']['min']:.2f} | {cell(s['host_cpu'])} | {ranks} | {load} |")
            summary.append((label, processes, readahead, sync, [run["rank0"]["host"]["median"] for _, run in rounds],
                            [run["rank0"]["host_cpu"]["median"] for _, run in rounds]))
    lines += ["", "Median over the rounds of rank 0's per-run medians (ms):", "",
              "| code | processes | read-ahead | sync | rounds | host critical path | host CPU |",
              "|---|---:|:---:|:---:|---:|---:|---:|"]
    for label, processes, readahead, sync, host, cpu in summary:
        lines.append(f"| {label} | {processes} | {'on' if readahead else 'off'} | {sync} | {len(host)} | "
                     f"{statistics.median(host):.2f} | {statistics.median(cpu):.2f} |")
    lines += ["", f"CPU: {', '.join(sorted(machines))}.", ""]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
