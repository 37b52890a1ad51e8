"""Figures: matplotlib without a display, and the training-curve plot, written once."""

from __future__ import annotations

from pathlib import Path

from dnnlab.utils.atomic import atomic_savefig


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    # Here, not at the top: matplotlib and pyplot add 0.35 s to the import of every module
    # that plots (benchmarks/lazy_imports.py, docs/RESULTS.md §9), and a refused input never draws.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int) -> None:
    """Write fig to path atomically (the format from the suffix), then close it."""
    atomic_savefig(fig, path, dpi=dpi)
    pyplot().close(fig)


def plot_train_curves(rows: list[dict], path: Path, title: str, dpi: int = 100) -> None:
    """Loss and accuracy per epoch, training against validation, from rows holding epoch,
    train_loss, val_loss, train_acc and val_acc."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "loss", "Loss"), (axes[1], "acc", "Accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in rows], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{title}: {label.lower()}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi)


def plot_divergence(losses: list[float], lrs: list[float], bad, path: Path, title: str) -> None:
    """The training loss of each step (log scale) up to a divergence, with the learning rate
    on a second axis and the first non-finite step marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    finite = [(i, v) for i, v in enumerate(losses) if v == v and abs(v) != float("inf")]
    ax.plot([i for i, _ in finite], [v for _, v in finite], label="training loss")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step in the epoch")
    ax.set_ylabel("training loss (log)")
    if bad is not None:
        ax.axvline(bad, color="red", linestyle="--", label=f"loss not finite (step {bad})")
    lr_ax = ax.twinx()
    lr_ax.plot(range(len(lrs)), lrs, color="gray", alpha=0.6, label="learning rate")
    lr_ax.set_ylabel("learning rate")
    ax.set_title(f"{title}: the run diverged")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    save_figure(fig, path, 90)
