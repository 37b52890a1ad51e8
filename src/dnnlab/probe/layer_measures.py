"""What the probe measures of each layer's features: three peers with one small interface.

Each peer is a LayerMeasure, called by probe_model:

    reserve(split, n)                bytes of the budget it needs on the split beside the
                                     features held (the plan takes the largest of them)
    start_split(split, layers, todo) before the split's first layer (`todo`: the layers
                                     measured now; the others' rows were reused)
    add(split, layer, features, labels, budget, block) -> LayerValues
                                     the layer's values, per-class values and notes
    end_split(split)                 after the split's last layer

- `Separability`: the separability core's measures (si, csi, hsi, knn, nc1, ...;
  dnnlab.separability), within `budget` (block rows `block` for features read from a file).
  The features are the probe's own, so it normalizes them in place: it reads them last.
- `LinearClassifiers`: `linear`, fitted on the train20 split's features of each layer
  (separability.linear) and scored on every later split; the train20 row gets the training
  accuracy. The fit runs inside Separability's call on train20 (separability_fitting), which
  shares the neighbour search's work with it and gives it its own share of the budget
  besides `budget`. Each fitted classifier is saved as plain tensors in
  RUN/linear_probe/LAYER.pt (with the settings that produced it), so a resumed probe scores
  val and test without refitting. A layer whose train20 gives no classifier (every class a
  single sample: no training set; one class only) has NaN for `linear` on the later splits,
  with the reason in the row's note; the reason is saved in place of the classifier, so a
  resumed probe says the same.
- `CkaMatrices`: CKA (separability.cka) between all probed layers of each probed split named
  in cfg.cka_splits (none by default), stored in probe.json under "cka", with a heatmap
  cka_SPLIT.png; a split resumed part-way gets no new CKA matrix (its earlier layers'
  features are gone), and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dnnlab.errors import InputError
from dnnlab.probe.config import budget_share
from dnnlab.separability import parse_measures, separability
from dnnlab.separability.cka import GRAMS_SHARE, CkaMatrix
from dnnlab.separability.inputs import encode_labels
from dnnlab.separability.linear import DEFAULT_ALPHA, LinearClassifier, linear_most
from dnnlab.separability.measures import separability_fitting
from dnnlab.utils.atomic import atomic_torch_save
from dnnlab.utils.plots import pyplot, save_figure
from dnnlab.utils.records import read_json
from dnnlab.utils.safe_load import load_error_reason, load_plain
from dnnlab.utils.sizes import parse_size

FIT_SPLIT = "train20"
# The folder of the fitted linear classifiers in a probe's output; its name is the one earlier
# probes wrote, kept so that their outputs resume without refitting.
CLASSIFIERS = "linear_probe"


@dataclass
class LayerValues:
    """What one measure found on one layer's features of one split."""

    values: dict[str, float] = field(default_factory=dict)  # {measure: value}
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # {class: {measure: v}}
    notes: list[str] = field(default_factory=list)


class LayerMeasure:
    """The interface every measure of the probe implements (see the module's docstring)."""

    def reserve(self, split: str, n: int) -> int:
        return 0

    def start_split(self, split: str, layers: list[str], todo: list[str]) -> None:
        pass

    def add(self, split, layer, features, labels, budget: int, block) -> LayerValues:
        raise NotImplementedError

    def end_split(self, split: str) -> None:
        pass


class Separability(LayerMeasure):
    """The separability core's measures of cfg.measures (all but `linear`); on the fit split
    also `linear`, fitted in the same call and handed to `linear` (a LinearClassifiers)."""

    def __init__(self, cfg, linear: LinearClassifiers | None):
        self.names = ",".join(m.name for m in parse_measures(cfg.measures) if m.kind != "linear")
        self.cfg = cfg
        self.linear = linear

    def add(self, split, layer, features, labels, budget: int, block) -> LayerValues:
        x = torch.from_numpy(np.asarray(features))
        how = {
            "normalize_method": self.cfg.normalize,
            "device": torch.device(self.cfg.device),
            "block": block,
            "overwrite_input": True,
            "undefined": "nan",
        }
        if self.linear is not None and split == FIT_SPLIT:
            measures = ",".join(m for m in (self.names, "linear") if m)
            r, classifier = separability_fitting(
                x, labels, measures, max_memory=budget + linear_most(len(labels)), **how
            )
            if classifier is None:  # the fit had no training set: its reason, from the notes
                classifier = "; ".join(r.notes) or "no classifier was fitted"
            self.linear.keep(layer, classifier)
            for vals in r.per_class.values():  # the training accuracy is kept whole only
                vals.pop("linear", None)
        elif self.names:
            r = separability(x, labels, self.names, max_memory=budget, **how)
        else:  # linear alone, scored by LinearClassifiers: the row's classes
            _, classes = encode_labels(labels, x.shape[0])
            return LayerValues({}, {str(c): {} for c in classes}, [])
        return LayerValues(r.values, r.per_class, r.notes)


class LinearClassifiers(LayerMeasure):
    """`linear`: each layer's ridge classifier, fitted on FIT_SPLIT (by Separability, which
    hands it over with `keep`), saved, and scored on every later split."""

    def __init__(self, cfg, split_names: list[str], out: Path | None, weights: str | None):
        self.cfg = cfg
        self.out = out
        self.weights = weights  # the model's content hash: a saved classifier is of these weights
        if FIT_SPLIT not in split_names:
            raise InputError(
                f"measure linear is fitted on the {FIT_SPLIT} split, which is not among the "
                f"splits {split_names}; add it to --splits"
            )
        if split_names[0] != FIT_SPLIT:
            raise InputError(
                f"measure linear: put {FIT_SPLIT} first in --splits (it is fitted "
                "there before the other splits are scored)"
            )
        # Each layer's classifier, or the reason none was fitted (a str).
        self.classifiers: dict[str, LinearClassifier | str] = {}

    def reserve(self, split: str, n: int) -> int:
        """The fit's Gram and float64 row chunks on FIT_SPLIT."""
        return linear_most(n) if split == FIT_SPLIT else 0

    def keep(self, layer: str, classifier: LinearClassifier | str) -> None:
        """The layer's classifier fitted on FIT_SPLIT (or why none was), kept and saved."""
        self.classifiers[layer] = classifier
        self._save_classifier(layer, classifier)

    def add(self, split, layer, features, labels, budget: int, block) -> LayerValues:
        """The layer's accuracy on this split (read before the core normalizes the features);
        on FIT_SPLIT nothing: its value comes from Separability's call, which fits."""
        if split == FIT_SPLIT:
            return LayerValues()
        classifier = self._load_classifier(layer)
        if isinstance(classifier, str):
            _, classes = encode_labels(labels, len(labels))
            return LayerValues(
                {"linear": float("nan")},
                {str(c): {"linear": float("nan")} for c in classes},
                [f"linear: NaN, no classifier was fitted on {FIT_SPLIT} ({classifier})"],
            )
        accuracy, per, _ = classifier.score(torch.from_numpy(np.asarray(features)), labels)
        return LayerValues({"linear": accuracy}, {c: {"linear": v} for c, v in per.items()})

    # ------------------------------------------------------------------ storage
    def _classifier_path(self, layer: str) -> Path | None:
        return None if self.out is None else self.out / CLASSIFIERS / f"{layer}.pt"

    def _settings(self) -> dict:
        return {
            "normalize": self.cfg.normalize,
            "alpha": DEFAULT_ALPHA,
            "split": FIT_SPLIT,
            "weights": self.weights,
        }

    def _save_classifier(self, layer: str, p: LinearClassifier | str) -> None:
        """The classifier's file; for a layer without one, the reason (a resumed probe
        scores NaN with it instead of asking for a rerun that would fit nothing again)."""
        path = self._classifier_path(layer)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(p, str):
            atomic_torch_save({"layer": layer, "settings": self._settings(), "unfitted": p}, path)
            return
        atomic_torch_save(
            {
                "layer": layer,
                "settings": self._settings(),
                "classes": [str(c) for c in p.classes],
                "class_values": torch.as_tensor(np.asarray(p.classes))
                if _numeric(p.classes)
                else torch.empty(0),
                "mean": p.mean.cpu(),
                "scale": p.scale.cpu(),
                "coef": p.coef.cpu(),
                "intercept": p.intercept.cpu(),
                "form": p.form,
                "n_train": p.n_train,
                "train_accuracy": p.train_accuracy,
            },
            path,
        )

    def _load_classifier(self, layer: str) -> LinearClassifier | str:
        if layer in self.classifiers:
            return self.classifiers[layer]
        path = self._classifier_path(layer)
        if path is None or not path.exists():
            raise InputError(
                f"measure linear: layer {layer!r} has no classifier fitted on {FIT_SPLIT} in this "
                "run" + (f" ({path} is missing)" if path else "") + "; rerun with --overwrite"
            )
        try:
            d = load_plain(path)
        except Exception as e:
            raise InputError(
                f"{path}: not a readable classifier file ({load_error_reason(e)}); rerun with "
                "--overwrite"
            ) from None
        if d.get("settings") != self._settings() or d.get("layer") != layer:
            raise InputError(
                f"{path}: fitted with {d.get('settings')}, not {self._settings()}; rerun with "
                "--overwrite"
            )
        if isinstance(d.get("unfitted"), str):
            self.classifiers[layer] = d["unfitted"]
            return d["unfitted"]
        classes = d["class_values"].tolist() if d["class_values"].numel() else d["classes"]
        p = LinearClassifier(
            classes,
            d["mean"],
            d["scale"],
            d["coef"],
            d["intercept"],
            DEFAULT_ALPHA,
            self.cfg.normalize,
            d["form"],
            d["n_train"],
            d["train_accuracy"],
        )
        self.classifiers[layer] = p
        return p


class CkaMatrices(LayerMeasure):
    """CKA between all probed layers of each split in cfg.cka_splits: `matrices` {split: the
    matrix as a dict, or {"note": why there is none}}, earlier probes' kept when resumed."""

    def __init__(self, cfg, out: Path | None, resumed: bool):
        self.splits = cfg.cka_split_names
        self.budget = budget_share(parse_size(cfg.max_memory), "cka")
        self.out = out
        self.matrices: dict[str, dict] = {}
        if resumed and out is not None and (out / "probe.json").exists():
            self.matrices = dict(read_json(out / "probe.json", ()).get("cka", {}))
        self._matrix: CkaMatrix | None = None  # the split's, when all its layers are measured

    def reserve(self, split: str, n: int) -> int:
        """On a CKA split: the Gram being formed, its column panel and the Grams kept in
        memory (the rest spill)."""
        if split not in self.splits:
            return 0
        return n * n * 8 + (64 << 20) + self.budget // GRAMS_SHARE

    def start_split(self, split: str, layers: list[str], todo: list[str]) -> None:
        on = split in self.splits
        complete = on and len(todo) == len(layers) and len(layers) > 1
        if on and not complete and todo and split not in self.matrices:
            self.matrices[split] = {
                "note": "not computed: the split was resumed part-way; rerun "
                "with --overwrite for its CKA matrix"
            }
        if complete:
            self._matrix = CkaMatrix(max_memory=self.budget, spill_dir=self.out)

    def add(self, split, layer, features, labels, budget: int, block) -> LayerValues:
        if self._matrix is not None:
            self._matrix.add(layer, torch.from_numpy(np.asarray(features)))
        return LayerValues()

    def end_split(self, split: str) -> None:
        if self._matrix is None:
            return
        with self._matrix as m:
            res = m.result()
        self._matrix = None
        self.matrices[split] = res.to_dict()
        if self.out is not None:
            plot_cka(res.to_dict(), self.out / f"cka_{split}.png", title=f"CKA on {split}")

    def note_reused(self, notes: list[str]) -> None:
        """A CKA split none of whose layers was measured in this probe has no matrix."""
        for split in self.splits:
            if split not in self.matrices:  # every row of the split came from earlier runs
                why = "not computed: the split's rows were reused; rerun with --overwrite"
                self.matrices[split] = {"note": why}
                notes.append(f"CKA on {split}: {why}")


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_cka(cka: dict, path: Path, title: str = "CKA") -> Path:
    """Heatmaps of linear and unbiased CKA between layers (undefined pairs left blank)."""
    return cka_heatmaps(cka, path, {k: f"{title} ({k})" for k in ("linear", "unbiased")})


def cka_heatmaps(doc: dict, path: Path, titles: dict, xlabel=None, ylabel=None) -> Path:
    """doc's "linear" and "unbiased" matrices over doc["layers"] side by side, titled by
    titles[kind]; None (undefined) entries left blank."""
    plt = pyplot()

    layers = doc["layers"]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 0.9 * len(layers), 2 + 0.45 * len(layers)))
    for ax, kind in zip(axes, ("linear", "unbiased"), strict=True):
        m = np.array([[np.nan if v is None else v for v in row] for row in doc[kind]])
        im = ax.imshow(
            m, vmin=0 if kind == "linear" else min(0.0, np.nanmin(m)), vmax=1, cmap="viridis"
        )
        ax.set_xticks(range(len(layers)), layers, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(layers)), layers, fontsize=7)
        if xlabel is not None:
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
        ax.set_title(titles[kind])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path, 90)
    return path
