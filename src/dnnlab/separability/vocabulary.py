"""The Separation Index family, computed from one neighbour search.

SI      fraction of samples whose nearest neighbour (itself excluded) shares its label
CSI     fraction of samples whose nearest class mean is their own class's
hsi:r   fraction whose r nearest neighbours all share the label (high-order SI)
soft:r  mean fraction of the r nearest neighbours that share the label
anti:r  fraction whose r nearest neighbours include none with the label
knn:k   leave-one-out k-nearest-neighbour accuracy: majority vote of the k nearest; a tie
        between labels goes to the tied label met first in distance order
nc1     neural collapse NC1 (Papyan, Han and Donoho 2020): trace(Sigma_W Sigma_B^+) / C
linear  linear-classifier accuracy on a test set of a ridge classifier fitted on these samples
        (separability.linear)
For r = 1: hsi = soft = knn = si and anti = 1 - si, exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("si", "csi", "hsi", "soft", "anti", "knn", "nc1", "linear")

# Measures that need no neighbour search.
NO_SEARCH = ("csi", "nc1", "linear")

# Measures with a per-sample tally (the others are computed whole).
ROW_KINDS = ("si", "csi", "hsi", "soft", "anti", "knn")

ORDERLESS = ("si", "csi", "nc1", "linear")

DEFAULT_MEASURES = ("si", "csi")


@dataclass(frozen=True)
class Measure:
    kind: str
    order: int = 1

    @property
    def name(self) -> str:
        return self.kind if self.kind in ORDERLESS else f"{self.kind}:{self.order}"


def parse_measures(spec) -> list[Measure]:
    """'si,csi,hsi:3' (or a list of such names) -> [Measure, ...]."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Measure] = []
    for raw in items:
        text = str(raw).strip().lower()
        if not text:
            continue
        m = re.fullmatch(r"([a-z][a-z0-9]*?)(?::(\d+))?", text)
        if not m or m.group(1) not in KINDS:
            raise ValueError(
                f"unknown measure {raw!r}; known: si, csi, hsi:R, soft:R, anti:R, knn:K, nc1, "
                "linear (R, K >= 1)"
            )
        kind, order = m.group(1), int(m.group(2) or 1)
        if kind in ORDERLESS and m.group(2) and order != 1:
            raise ValueError(f"measure {raw!r}: {kind} takes no order; use hsi:{order}")
        if order < 1:
            raise ValueError(f"measure {raw!r}: the order must be >= 1")
        meas = Measure(kind, order)
        if meas not in out:
            out.append(meas)
    if not out:
        raise ValueError("no measure requested")
    return out


def search_order(wanted: list[Measure]) -> int:
    """The number of nearest neighbours the measures need (0: no neighbour search)."""
    return max((m.order for m in wanted if m.kind not in NO_SEARCH), default=0)
