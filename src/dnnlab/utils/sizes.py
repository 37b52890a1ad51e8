"""Human-readable sizes: '2GB', '512MiB', '1.5G', or a plain number of bytes."""

from __future__ import annotations

import math
import re

from dnnlab.errors import InputError

# The measures' default memory budget (dnnlab si --max-memory, separability(), fit_linear,
# CkaMatrix), declared here, where the command line can read it without importing torch.
MEASURE_MEMORY = "2GB"

_UNITS = {
    "": 1,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_size(value) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"a memory size must be a finite number; got {value}")
        if value <= 0:
            raise InputError(f"a memory size must be positive; got {value}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?)?b?\s*", str(value), re.IGNORECASE)
    if not m:
        raise InputError(f"cannot read {value!r} as a size; write e.g. 2GB, 512MB or 1.5GiB")
    size = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if not math.isfinite(size):  # hundreds of digits read as a float
        raise InputError(f"cannot read {value!r} as a size: too large")
    if size <= 0:
        raise InputError(f"a memory size must be positive; got {value!r}")
    return int(size)


def format_size(n: float, up: bool = False) -> str:
    """n bytes as B/KiB/MiB/GiB with two decimals; up=True rounds up, for a least figure
    that must still suffice when given back."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            if unit == "B":
                return f"{math.ceil(n) if up else round(n)} B"
            return f"{math.ceil(n * 100) / 100 if up else n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
