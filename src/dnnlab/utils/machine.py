"""What this machine's CPU is, for records and for choosing a precision (Linux's /proc/cpuinfo;
elsewhere what `platform` says)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = "/proc/cpuinfo"


def _cpuinfo_field(names: tuple[str, ...], cpuinfo: str | Path = CPUINFO) -> str | None:
    """The first value of a /proc/cpuinfo field named one of `names`, or None."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in names:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | Path = CPUINFO) -> set[str] | None:
    """The CPU's feature flags, or None where they cannot be read."""
    value = _cpuinfo_field(("flags", "Features"), cpuinfo)
    return None if value is None else set(value.split())


def cpu_model(cpuinfo: str | Path = CPUINFO) -> str:
    """The CPU's model name (e.g. 'AMD EPYC 9R14 96-Core Processor')."""
    return _cpuinfo_field(("model name",), cpuinfo) or platform.processor() or platform.machine()


def cpu_description() -> str:
    """'CPU: <model> (<n> cores)': the cores this process may use."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return f"CPU: {cpu_model()} ({n} cores)"
