"""The report's per-layer figure: every variant's curve of a measure per layer, one panel
per measure the probe measured."""

from __future__ import annotations

from pathlib import Path

from dnnlab.study.records import load_run
from dnnlab.utils.plots import pyplot, save_figure

# The per-layer panels of each comparison, when the probe measured them.
PANEL_MEASURES = (("si", "SI"), ("linear", "linear-classifier accuracy"), ("nc1", "NC1 (log)"))


def overlay_plot(
    out: Path,
    title: str,
    models,
    path: Path,
    split="val",
    measures=PANEL_MEASURES,
    first_layers: bool = False,
) -> bool:
    """One panel per measure of `measures` ((key, label) pairs; default SI, linear-classifier
    accuracy, NC1) that the probe measured, with every variant's curve per layer. The x axis
    is the layers all variants share, or with `first_layers` the first variant's layers,
    each other variant drawn on those it has."""
    plt = pyplot()
    series = _series(out, models, split)
    if not series:
        return False
    panels = [
        (k, label)
        for k, label in measures
        if any(r.get(k) is not None for pts in series.values() for r in pts)
    ]
    if not panels:
        return False
    common = _layers(series, first_layers)
    fig, axes = plt.subplots(1, len(panels), figsize=(8 * len(panels), 4), squeeze=False)
    # Past the default cycle's ten colours two variants would share one: use tab20's.
    colours = plt.get_cmap("tab20").colors if len(series) > 10 else None
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        if colours is not None:
            ax.set_prop_cycle(color=colours[: len(series)])
        _curves(ax, series, key, common, first_layers)
        if key == "nc1":
            ax.set_yscale("log")  # NC1 spans orders of magnitude; lower is more collapsed
        else:
            ax.set_ylim(0, 1.02)
        ax.set_ylabel(f"{label} ({split})")
        ax.set_title(f"{title}: {label} per layer")
        ax.grid(alpha=0.3)
        # Outside the axes, right of them: a legend inside covers the last layers' points.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, 90)
    return True


def _series(out: Path, models, split: str) -> dict[str, list[dict]]:
    """{variant: its probe rows of `split`}, for the variants the probe measured."""
    series = {}
    for m in models:
        _, p = load_run(out / "runs" / m)
        pts = [r for r in p if r["split"] == split]
        if pts:
            series[m] = pts
    return series


def _layers(series: dict, first_layers: bool) -> list[str]:
    """The x axis' layers: those every variant has, or with `first_layers` the first's."""
    common = [r["layer"] for r in next(iter(series.values()))]
    if not first_layers:  # else: the first variant's layers, each variant where it has them
        for pts in series.values():
            names = {r["layer"] for r in pts}
            common = [c for c in common if c in names]
    return common


def _curves(ax, series: dict, key: str, common: list[str], first_layers: bool) -> None:
    """Each variant's `key` per layer: by layer name when there are five or more common
    layers, else by relative depth."""
    use_names = len(common) >= 5
    for m, pts in series.items():
        if use_names:
            # One value per shared layer, NaN where the variant has none: the line breaks
            # there (matplotlib draws no segment to a NaN) instead of bridging layers the
            # variant does not have; the markers still show every point it has.
            at = {r["layer"]: r.get(key) for r in pts}
            xs = list(range(len(common)))
            ys = [float("nan") if at.get(c) is None else at[c] for c in common]
        else:
            xs = [i / max(1, len(pts) - 1) for i in range(len(pts))]
            ys = [float("nan") if r.get(key) is None else r[key] for r in pts]
        ax.plot(xs, ys, marker="o", label=m)
    if use_names:
        ax.set_xticks(range(len(common)))
        ax.set_xticklabels(common, rotation=45, ha="right")
        ax.set_xlabel(
            f"layer of {next(iter(series))} (execution order)"
            if first_layers
            else "layer (shared by all variants, execution order)"
        )
    else:
        ax.set_xlabel("relative depth (layer index / last index)")
