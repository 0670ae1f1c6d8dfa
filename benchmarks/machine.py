"""The machine a benchmark ran on, for the tables and JSON files that record its numbers."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU model (platform.processor() is empty on most Linux builds): benchmark tables name their machine."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
