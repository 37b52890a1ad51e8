"""What separability() gives back: the measures' values, per class too, printable and
saved as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class SeparabilityResult:
    """Values of the requested measures, per class too; prints as a table, saves as JSON."""

    values: dict[str, float]
    per_class: dict[str, dict[str, float]]
    class_counts: dict[str, int]
    n: int
    dim: int
    normalize: str
    device: str
    seconds: float
    notes: list[str] = field(default_factory=list)
    # The fitted separability.linear.LinearClassifier when "linear" was measured (not saved).
    linear_classifier: object = field(default=None, repr=False, compare=False)

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    def to_dict(self) -> dict:
        return {
            **self.values,
            "per_class": self.per_class,
            "class_counts": self.class_counts,
            "n": self.n,
            "dim": self.dim,
            "normalize": self.normalize,
            "device": self.device,
            "seconds": round(self.seconds, 4),
            "notes": self.notes,
        }

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:
        names = list(self.values)
        head = f"N={self.n}  D={self.dim}  normalize={self.normalize}  device={self.device}"
        lines = [head, f"{'measure':<10}{'value':>9}"]
        lines += [f"{k:<10}{v:>9.4f}" for k, v in self.values.items()]
        if self.per_class:
            w = max(8, *(len(c) for c in self.per_class)) + 2
            lines.append("")
            lines.append(f"{'class':<{w}}{'n':>7}" + "".join(f"{k:>9}" for k in names))
            for c, vals in self.per_class.items():
                row = f"{c:<{w}}{self.class_counts[c]:>7}"
                lines.append(row + "".join(f"{vals[k]:>9.4f}" for k in names))
        lines.append(f"({self.seconds:.2f} s)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
