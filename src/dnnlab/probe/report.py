"""Plain-text tables of a probe for the terminal: its rows and a model's layer list."""

from __future__ import annotations

import sys
from pathlib import Path

# Row keys that are not per-layer measures, so get no column of their own.
NOT_MEASURES = (
    "split",
    "layer",
    "dim",
    "n",
    "seconds",
    "note",
    "per_class",
    "stored",
    "fingerprint",
    "provenance",
)


def rows_table(rows: list[dict]) -> str:
    """One line per probe row: split, layer, dim, then each measure to 4 decimals."""
    names = [k for k in rows[0] if k not in NOT_MEASURES]
    w = max(12, *(len(r["layer"]) + 2 for r in rows))
    lines = [f"{'split':<8}{'layer':<{w}}{'dim':>8}" + "".join(f"{k:>9}" for k in names)]
    for r in rows:
        vals = "".join(f"{r[k]:>9.4f}" for k in names)
        lines.append(f"{r['split']:<8}{r['layer']:<{w}}{r['dim']:>8}" + vals)
    return "\n".join(lines)


def layers_table(layers: list) -> str:
    """One line per traced layer: name, output shape (or its note) and feature count."""
    w = max(8, *(len(i.name) + 2 for i in layers))
    lines = [f"{'layer':<{w}}{'output shape':<22}{'features':>10}"]
    for i in layers:
        shape = "x".join(map(str, i.shape)) if i.shape else (i.note or "-")
        lines.append(f"{i.name:<{w}}{shape:<22}{i.dim:>10,}")
    return "\n".join(lines)


def print_result(res, out: Path) -> None:
    """A finished probe: its notes on stderr, then its table and where it was written."""
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    print(rows_table(res.rows))
    print(f"wrote {out}/probe.csv, probe.json and the SI/CSI plots")


__all__ = ["layers_table", "print_result", "rows_table"]
