"""The probe's measures beyond the separability core: the linear classifier and CKA.

`linear` is fitted on the train20 split's features of each layer (separability.linear) and
scored on every later split; the train20 row gets the training accuracy. Each fitted classifier
is saved as plain tensors in RUN/linear_probe/LAYER.pt (with the settings that produced it),
so a resumed probe scores val and test without refitting. A layer whose train20 gives no
classifier (every class a single sample: no training set; one class only) has NaN for
`linear` on the later splits, with the reason in the row's note; the reason is saved in
place of the classifier, so a resumed probe says the same. CKA (separability.cka) is
computed between all probed layers of each probed split named in cfg.cka_splits (none by
default) and stored in probe.json under "cka", with a heatmap cka_SPLIT.png; a split resumed
part-way gets no new CKA matrix (its earlier layers' features are gone), and says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from dnnlab.errors import InputError
from dnnlab.probe.config import budget_share
from dnnlab.separability import SeparabilityResult, parse_measures, separability
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


class ProbeExtras:
    """Per-layer hooks for probe_model: `measure` replaces its separability() call."""

    def __init__(
        self,
        cfg,
        split_names: list[str],
        out: Path | None,
        resumed: bool = False,
        weights: str | None = None,
    ):
        wanted = parse_measures(cfg.measures)
        self.linear = any(m.kind == "linear" for m in wanted)
        core = [m.name for m in wanted if m.kind != "linear"]
        self.core_measures = ",".join(core)
        self.cfg = cfg
        self.out = out
        self.weights = weights  # the model's content hash: a saved classifier is of these weights
        if self.linear and FIT_SPLIT not in split_names:
            raise InputError(
                f"measure linear is fitted on the {FIT_SPLIT} split, which is not among the "
                f"splits {split_names}; add it to --splits"
            )
        if self.linear and split_names[0] != FIT_SPLIT:
            raise InputError(
                f"measure linear: put {FIT_SPLIT} first in --splits (it is fitted "
                "there before the other splits are scored)"
            )
        # Each layer's classifier, or the reason none was fitted (a str).
        self.classifiers: dict[str, LinearClassifier | str] = {}
        self.cka_splits = cfg.cka_split_names
        self.cka: dict[str, dict] = {}
        if resumed and out is not None and (out / "probe.json").exists():
            self.cka = dict(read_json(out / "probe.json", ()).get("cka", {}))
        self._matrix: CkaMatrix | None = None
        self._complete = False

    def reserve(self, split: str, n: int) -> int:
        """Bytes of the budget this split's extra measures need beside the feature groups:
        the linear classifier's Gram and float64 row chunks on train20; on a CKA split, the Gram
        being formed, its column panel and the Grams kept in memory (the rest spill)."""
        need = 0
        if self.linear and split == FIT_SPLIT:
            need = linear_most(n)
        if split in self.cka_splits:
            in_memory = budget_share(parse_size(self.cfg.max_memory), "cka") // GRAMS_SHARE
            need = max(need, n * n * 8 + (64 << 20) + in_memory)
        return need

    # ------------------------------------------------------------------ per split
    def start_split(self, split: str, all_layers: list[str], todo: list[str]) -> None:
        on = split in self.cka_splits
        self._complete = on and len(todo) == len(all_layers) and len(all_layers) > 1
        if on and not self._complete and todo and split not in self.cka:
            self.cka[split] = {
                "note": "not computed: the split was resumed part-way; rerun "
                "with --overwrite for its CKA matrix"
            }
        if self._complete:
            budget = budget_share(parse_size(self.cfg.max_memory), "cka")
            self._matrix = CkaMatrix(max_memory=budget, spill_dir=self.out)

    def end_split(self, split: str) -> None:
        if self._matrix is None:
            return
        with self._matrix as m:
            res = m.result()
        self._matrix = None
        self.cka[split] = res.to_dict()
        if self.out is not None:
            plot_cka(res.to_dict(), self.out / f"cka_{split}.png", title=f"CKA on {split}")

    # ------------------------------------------------------------------ per layer
    def measure(
        self,
        split: str,
        layer: str,
        feats,
        y,
        *,
        budget: int,
        core=separability,
        fitting=separability_fitting,
        **core_kw,
    ):
        """This layer's measures as one SeparabilityResult: CKA, then the core's measures (by
        `core`, the separability function) with the linear classifier fitted (on train20, by
        `fitting`, which shares the core's work with the fit and gets the fit's share of
        the budget besides `budget`) or scored (elsewhere, first: the core may normalize
        `feats` in place).
        """
        extra: dict[str, float] = {}
        per_class_extra: dict[str, dict[str, float]] = {}
        x = torch.from_numpy(np.asarray(feats))
        if self._matrix is not None:
            self._matrix.add(layer, x)
        fit_here = self.linear and split == FIT_SPLIT
        unfitted = None  # the reason this layer has no classifier to score with
        if self.linear and not fit_here:
            classifier = self._load_classifier(layer)
            if isinstance(classifier, str):
                unfitted = classifier
                extra["linear"] = float("nan")
            else:
                extra["linear"], per, _ = classifier.score(x, y)
                per_class_extra = {c: {"linear": v} for c, v in per.items()}
        if fit_here:
            measures = ",".join(m for m in (self.core_measures, "linear") if m)
            r, classifier = fitting(
                x, y, measures, max_memory=budget + linear_most(len(y)), **core_kw
            )
            if classifier is None:  # the fit had no training set: its reason, from the notes
                classifier = "; ".join(r.notes) or "no classifier was fitted"
            self.classifiers[layer] = classifier
            self._save_classifier(layer, classifier)
            for vals in r.per_class.values():  # the training accuracy is kept whole only
                vals.pop("linear", None)
        elif self.core_measures:
            r = core(x, y, self.core_measures, max_memory=budget, **core_kw)
        else:
            _, classes = encode_labels(y, x.shape[0])
            r = SeparabilityResult(
                {},
                {str(c): {} for c in classes},
                {},
                x.shape[0],
                x.shape[1],
                self.cfg.normalize,
                self.cfg.device,
                0.0,
            )
        for name in (m.name for m in parse_measures(self.cfg.measures)):
            if name in extra:
                r.values[name] = extra[name]
        r.values = {m.name: r.values[m.name] for m in parse_measures(self.cfg.measures)}
        for c, vals in r.per_class.items():
            vals.update(per_class_extra.get(c, {"linear": float("nan")} if unfitted else {}))
        if unfitted is not None:
            r.notes.append(f"linear: NaN, no classifier was fitted on {FIT_SPLIT} ({unfitted})")
        return r

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


def plot_extra(rows: list[dict], out: Path, title: str = "") -> list[Path]:
    """One figure per measure beyond SI/CSI present in the rows: value per layer, per split."""
    plt = pyplot()

    names = []
    for r in rows:
        for k in r:
            base = k.split(":")[0]
            if base in ("knn", "nc1", "linear") and k not in names:
                names.append(k)
    written = []
    for name in names:
        fig, ax = plt.subplots(figsize=(10, 4))
        for split in dict.fromkeys(r["split"] for r in rows):
            pts = [r for r in rows if r["split"] == split and r.get(name) is not None]
            ys = [r[name] for r in pts]
            if pts and all(math.isfinite(v) for v in ys):
                ax.plot([r["layer"] for r in pts], ys, marker="o", label=split)
        if name == "nc1":
            ax.set_yscale("log")  # NC1 spans orders of magnitude and falls as layers collapse
        else:
            ax.set_ylim(0, 1.02)
        ax.set_ylabel(name)
        ax.set_xlabel("layer (execution order)")
        ax.set_title(f"{title} {name} per layer".strip())
        ax.grid(alpha=0.3)
        ax.legend()
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
        fig.tight_layout()
        path = out / f"{name.replace(':', '')}_per_layer.png"
        save_figure(fig, path, 90)
        written.append(path)
    return written
