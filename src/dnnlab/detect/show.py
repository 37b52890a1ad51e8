"""`dnnlab detect show`: grids of positive and negative indexed boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dnnlab.detect.build import read_index
from dnnlab.detect.features import crop_batch
from dnnlab.detect.voc import load_rgb
from dnnlab.utils.outputs import check_output
from dnnlab.utils.paths import check_in_folder
from dnnlab.utils.plots import pyplot, save_figure


def show_samples(out, n: int = 16, seed: int = 0) -> list[Path]:
    plt = pyplot()

    out = check_output(out, "DIR", "detect build")  # the grids are written into it
    rows = read_index(out)
    rng = np.random.default_rng(seed)
    written = []
    for label, name in ((1, "positives"), (0, "negatives")):
        pick = [r for r in rows if r["label"] == label]
        if not pick:
            continue
        pick = [pick[i] for i in rng.permutation(len(pick))[:n]]
        cols = 4
        fig, axes = plt.subplots(
            (len(pick) + cols - 1) // cols,
            cols,
            figsize=(8, 2.1 * ((len(pick) + cols - 1) // cols)),
            squeeze=False,
        )
        for ax in axes.flat:
            ax.axis("off")
        for ax, r in zip(axes.flat, pick, strict=False):
            crop = crop_batch(load_rgb(Path(r["image"])), np.array([r["box"]]), 112, 0.0)
            ax.imshow(crop[0].permute(1, 2, 0).numpy())
            ax.set_title(f"IoU {float(r['iou']):.2f}", fontsize=8)
        fig.suptitle(f"{name} (label {label})")
        fig.tight_layout()
        path = out / f"samples_{name}.png"
        save_figure(fig, path, 80)
        written.append(path)
    return written


def main(args) -> int:
    """`dnnlab detect show DIR`."""
    check_in_folder(args.dir, "DIR")
    for p in show_samples(args.dir):
        print(f"wrote {p}")
    return 0
