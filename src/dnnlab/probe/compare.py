"""Two probes' SI/CSI per layer on one figure (two training stages, or two models)."""

from __future__ import annotations

from pathlib import Path

from dnnlab.errors import InputError
from dnnlab.utils.plots import pyplot, save_figure
from dnnlab.utils.records import RecordError, read_json


def read_rows(out: Path) -> list[dict]:
    path = Path(out) / "probe.json"
    if not path.is_file():
        raise InputError(f"--compare {out}: no probe.json there; probe it first")
    try:
        return read_json(path, ("rows",))["rows"]
    except RecordError as e:
        raise InputError(f"{path}: not a probe.json dnnlab can read ({e})") from None


def compare_probes(a: Path, b: Path) -> list[Path]:
    """compare_si.png and compare_csi.png in `a`: one line per (probe, split), by layer.

    Layers are placed by their position in each probe's own execution order, so two models
    with different layer names still share the x axis (as depth, 0 to 1)."""
    plt = pyplot()

    rows_a, rows_b = read_rows(a), read_rows(b)
    written = []
    for measure in ("si", "csi"):
        fig, ax = plt.subplots(figsize=(10, 4))
        drawn = 0
        for label, rows, style in ((Path(a).name, rows_a, "-"), (Path(b).name, rows_b, "--")):
            for split in dict.fromkeys(r["split"] for r in rows):
                pts = [r for r in rows if r["split"] == split and measure in r]
                if not pts:
                    continue
                xs = [i / max(1, len(pts) - 1) for i in range(len(pts))]
                ax.plot(xs, [r[measure] for r in pts], style, marker="o", label=f"{label} {split}")
                drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("relative depth (layers in execution order)")
        ax.set_ylabel(measure.upper())
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{measure.upper()}: {Path(a).name} vs {Path(b).name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(a) / f"compare_{measure}.png"
        save_figure(fig, path, 90)
        written.append(path)
    return written
