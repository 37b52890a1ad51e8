"""The study report: report.md plus a self-contained report.html (images embedded).

Tables follow the course's layout, Model | Val ACC | Test ACC | SI Val | CSI Val | SI Test |
CSI Test at the last feature layer (avgpool), with the course's published test accuracy
beside ours, marked as the course's. Every figure comes from what the runs recorded
(summary.json, split.json, probe.json), and a run whose records do not match the study is
left out of the tables with the reason. With a published folder (`--published`), the report
also shows the published full studies' tables, labelled with their recipe, card, date and
commit.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from dnnlab.cifar.models import VARIANTS
from dnnlab.study.course import COURSE_TEST_ACC, conclusions, rank_agreement
from dnnlab.utils.atomic import atomic_savefig, atomic_write_text

VARIANT_ORDER = tuple(VARIANTS)

FEATURE_LAYER = "avgpool"
COMPARISONS = [
    ("Normalization", ["base", "bn", "gn", "ln"]),
    ("Skip connection", ["base", "noskip"]),
    ("1x1 convolution", ["base", "conv4-1x1"]),
    ("Paths (ResNeXt-style)", ["base", "paths2", "paths4", "paths2-shared", "paths4-shared"]),
    ("Wide network", ["wide", "base", "bn"]),
]


def _load(run: Path):
    s = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else None
    p = (
        json.loads((run / "probe.json").read_text())["rows"]
        if (run / "probe.json").exists()
        else []
    )
    return s, p


def _at(rows, split, layer, key):
    for r in rows:
        if r["split"] == split and r["layer"] == layer:
            return r.get(key)
    return None


def _pct(v):
    return "–" if v is None else f"{100 * v:.2f}"


def _num(v):
    return "–" if v is None else f"{v:.4f}"


def run_mismatch(run: Path, cfg) -> str | None:
    """Why the run's records do not belong to the study `cfg`, or None when they do."""
    try:
        c = json.loads((run / "config.json").read_text())
        s = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError) as e:
        return f"unreadable records ({e})"
    want = {
        "model": run.name,
        "recipe": cfg.recipe,
        "epochs": cfg.epochs,
        "n_val": cfg.n_val,
        "train_subset": cfg.train_subset,
        "test_subset": cfg.test_subset,
    }
    got = {**c, "recipe": c.get("recipe", "corrected")}
    bad = [f"{k}={got.get(k)!r} (study: {v!r})" for k, v in want.items() if got.get(k) != v]
    if s.get("recipe", "corrected") != cfg.recipe or s.get("epochs") != cfg.epochs:
        bad.append(f"summary.json: recipe={s.get('recipe')!r}, epochs={s.get('epochs')!r}")
    return "; ".join(bad) or None


def table_rows(out: Path, models, cfg=None):
    rows = []
    for m in models:
        s, p = _load(out / "runs" / m)
        if s is None or (cfg is not None and run_mismatch(out / "runs" / m, cfg)):
            continue
        rows.append(
            [
                m,
                _pct(s["best_val_acc"]),
                _pct(s["test_acc"]),
                _num(_at(p, "val", FEATURE_LAYER, "si")),
                _num(_at(p, "val", FEATURE_LAYER, "csi")),
                _num(_at(p, "test", FEATURE_LAYER, "si")),
                _num(_at(p, "test", FEATURE_LAYER, "csi")),
                f"{COURSE_TEST_ACC[m]:.2f}" if m in COURSE_TEST_ACC else "–",
            ]
        )
    return rows


HEADER = [
    "Model",
    "Val ACC",
    "Test ACC",
    "SI Val",
    "CSI Val",
    "SI Test",
    "CSI Test",
    "Course's Test ACC (reference)",
]


# The per-layer panels of each comparison, when the probe measured them.
PANEL_MEASURES = (("si", "SI"), ("linear", "linear-probe accuracy"), ("nc1", "NC1 (log)"))


def overlay_plot(
    out: Path,
    title: str,
    models,
    path: Path,
    split="val",
    measures=PANEL_MEASURES,
    first_layers: bool = False,
) -> bool:
    """One panel per measure of `measures` ((key, label) pairs; default SI, linear-probe
    accuracy, NC1) that the probe measured, with every variant's curve per layer. The x axis
    is the layers all variants share, or with `first_layers` the first variant's layers,
    each other variant drawn on those it has."""
    from dnnlab.utils.plots import pyplot

    plt = pyplot()

    series = {}
    for m in models:
        _, p = _load(out / "runs" / m)
        pts = [r for r in p if r["split"] == split]
        if pts:
            series[m] = pts
    if not series:
        return False
    panels = [
        (k, label)
        for k, label in measures
        if any(r.get(k) is not None for pts in series.values() for r in pts)
    ]
    if not panels:
        return False
    common = [r["layer"] for r in next(iter(series.values()))]
    if not first_layers:  # else: the first variant's layers, each variant where it has them
        for pts in series.values():
            names = {r["layer"] for r in pts}
            common = [c for c in common if c in names]
    use_names = len(common) >= 5
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
    # Past the default cycle's ten colours two variants would share one: use tab20's.
    colours = plt.get_cmap("tab20").colors if len(series) > 10 else None
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        if colours is not None:
            ax.set_prop_cycle(color=colours[: len(series)])
        for m, pts in series.items():
            keep = [r for r in pts if r["layer"] in common] if use_names else pts
            xs = (
                [common.index(r["layer"]) for r in keep]
                if use_names
                else [i / max(1, len(keep) - 1) for i in range(len(keep))]
            )
            ys = [float("nan") if r.get(key) is None else r[key] for r in keep]
            ax.plot(list(xs), ys, marker="o", label=m)
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
        if key == "nc1":
            ax.set_yscale("log")  # NC1 spans orders of magnitude; lower is more collapsed
        else:
            ax.set_ylim(0, 1.02)
        ax.set_ylabel(f"{label} ({split})")
        ax.set_title(f"{title}: {label} per layer")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=90)
    plt.close(fig)
    return True


def _md_table(rows) -> str:
    return _md_grid(HEADER, rows)


def _html_table(rows) -> str:
    return _html_grid(HEADER, rows)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    mime = "image/jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "image/png"
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{data}">'


# Runs in the browser: records whether every image decoded and every table has a size, so a
# headless browser's DOM dump (and a person) can see that the report renders.
SELF_CHECK = """<script>
window.addEventListener('load', function () {
  var bad = [];
  document.querySelectorAll('img').forEach(function (im) {
    if (!(im.complete && im.naturalWidth > 0 && im.getBoundingClientRect().height > 0))
      bad.push('image ' + im.alt);
  });
  document.querySelectorAll('table').forEach(function (t, i) {
    if (t.getBoundingClientRect().height <= 0) bad.push('table ' + i);
  });
  document.body.setAttribute('data-check', bad.length ? 'FAILED: ' + bad.join('; ') :
    'ok ' + document.images.length + ' images ' +
    document.querySelectorAll('table').length + ' tables');
});
</script>"""

CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;
text-align:right}td:first-child,th:first-child{text-align:left}th{background:#eee}
img{max-width:100%;display:block;margin:0.5em 0}.note{color:#666;font-size:0.9em}"""


def detector_section(det: Path) -> tuple[str, str, list[Path]]:
    """The detector's evaluation records (one per evaluated folder) and its annotated
    photos, for the report."""
    det = Path(det)
    evals = sorted((det / "evals").glob("*.md"))
    text = "\n".join(e.read_text() for e in evals) if evals else "(not evaluated)"
    pics = sorted((det / "photos").glob("*.jpg"))[:6] if (det / "photos").is_dir() else []
    return ("Cat detector (R-CNN style)", text, pics)


def write_report(
    out: Path,
    cfg,
    extra_sections: list[tuple[str, str, list[Path]]] = (),
    published: list[dict] | None = None,
) -> Path:
    """Write out/report.md and out/report.html; returns the HTML path.

    Each section below gives (Markdown lines, HTML parts) from the same content."""
    out = Path(out)
    (out / "figures").mkdir(exist_ok=True)
    # The published studies come first: they are the real results, this run may be a check.
    sections = [] if published is None else [published_section(published)]
    sections += [
        _header(out, cfg),
        _course_section(out, cfg),
        _diverged_section(out, cfg),
        _comparisons(out, cfg),
        _cka_section(out, cfg),
        _variant_figures(out, cfg),
        _extra_sections(out, extra_sections),
    ]
    md = [line for lines, _ in sections for line in lines]
    body = [part for _, parts in sections for part in parts]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>dnnlab study</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}{SELF_CHECK}</body></html>"
    )
    atomic_write_text(out / "report.html", page)
    return out / "report.html"


def _header(out: Path, cfg) -> tuple[list[str], list[str]]:
    """Title, the budget the runs recorded, recipe and device; variants left out, and why."""
    label = study_label(cfg)
    budget, skipped = recorded_budget(out, cfg)
    study = _read_json(out / "study.json") or {}
    where = f"Recipe: {cfg.recipe}. Device: {study.get('device_name') or cfg.device}."
    md = [
        f"# dnnlab CIFAR-10 architecture study: {label}",
        "",
        f"Budget, as the runs recorded it: {budget}. {where}",
        "",
        "Accuracies in %. SI/CSI at the last feature layer (`avgpool`). The last column is "
        "the course's published test accuracy, quoted for reference (not measured here).",
        "",
    ]
    body = [
        f"<h1>dnnlab CIFAR-10 architecture study: {html.escape(label)}</h1>",
        f"<p>Budget, as the runs recorded it: {html.escape(budget)}. {html.escape(where)}</p>",
        "<p class=note>Accuracies in %. SI/CSI at the last feature layer (avgpool). The "
        "last column is the course's published test accuracy, quoted for reference (not "
        "measured here).</p>",
    ]
    for m, why in skipped:
        md += [f"Left out of the tables: `{m}`: its records do not match the study ({why}).", ""]
        body.append(
            f"<p class=note>Left out of the tables: {html.escape(m)}: its records do "
            f"not match the study ({html.escape(why)}).</p>"
        )
    return md, body


def study_label(cfg) -> str:
    """What kind of study this is, for its title."""
    if cfg.quick:
        return "QUICK run: reduced budget, not comparable with the course's numbers"
    if cfg.recipe == "budget":
        return (
            f"budget recipe, {cfg.epochs} epochs (a CPU budget, not the course's 100-epoch recipe)"
        )
    return "full recipe"


def _course_section(out: Path, cfg) -> tuple[list[str], list[str]]:
    """This study's test accuracies beside the course's 100-epoch numbers: both rankings,
    Spearman's rho, and the direction of each of the course's conclusions."""
    acc = {}
    for m in cfg.models:
        s, _ = _load(out / "runs" / m)
        if s is not None and run_mismatch(out / "runs" / m, cfg) is None:
            acc[m] = 100 * s["test_acc"]
    rho, both = rank_agreement(acc)
    if cfg.quick or len(both) < 3:
        return [], []
    title = "Against the course's 100-epoch results"
    ours = sorted(both, key=lambda m: -acc[m])
    theirs = sorted(both, key=lambda m: -COURSE_TEST_ACC[m])
    head = ["Model", "Test ACC (this study)", "rank", "Course's Test ACC (100 epochs)", "rank"]
    rows = [
        [m, f"{acc[m]:.2f}", str(ours.index(m) + 1), f"{COURSE_TEST_ACC[m]:.2f}"]
        + [str(theirs.index(m) + 1)]
        for m in sorted(both, key=VARIANT_ORDER.index)
    ]
    rho_text = (
        f"Spearman's rank correlation between the two orderings over these {len(both)} "
        f"variants: rho = {rho:.3f}"
        if rho is not None
        else "Spearman's rho: undefined"
    ) + " (1: the same order; the course's numbers are quoted, not measured here)."
    unranked = [m for m in diverged_runs(out, cfg.models) if m in COURSE_TEST_ACC]
    if unranked:
        rho_text += f" Not ranked, as they diverged under this recipe: {', '.join(unranked)}."
    found = conclusions(acc)
    c_head = ["Course's conclusion", "pair", "this study (points)", "course (points)", "agrees"]
    c_rows = [
        [
            c["question"],
            f"{c['variant']} − {c['against']}",
            f"{c['study']:+.2f}",
            f"{c['course']:+.2f}",
            "yes" if c["same_direction"] else "NO",
        ]
        for c in found
    ]
    md = [f"## {title}", "", rho_text, "", _md_grid(head, rows), ""]
    md += [
        "Each of the course's conclusions as a difference of test accuracy; it agrees when "
        "the difference has the same sign. A difference within about one point is within "
        "the seed-to-seed spread of a single run (docs/RESULTS.md) and decides nothing.",
        "",
        _md_grid(c_head, c_rows),
        "",
    ]
    body = [
        f"<h2>{html.escape(title)}</h2>",
        f"<p>{html.escape(rho_text)}</p>",
        _html_grid(head, rows),
        "<p class=note>Each of the course's conclusions as a difference of test accuracy; it "
        "agrees when the difference has the same sign. A difference within about one point "
        "is within the seed-to-seed spread of a single run and decides nothing.</p>",
        _html_grid(c_head, c_rows),
    ]
    plot = out / "figures" / "all_variants_si_csi.png"
    measures = (("si", "SI"), ("csi", "CSI"))
    if overlay_plot(out, "All variants", cfg.models, plot, "test", measures, first_layers=True):
        md += ["![All variants: SI and CSI per layer](figures/all_variants_si_csi.png)", ""]
        body.append(_img(plot, "All variants: SI and CSI per layer"))
    return md, body


def diverged_runs(out: Path, models) -> dict[str, dict]:
    """{variant: its divergence.json} for the runs that diverged and never finished."""
    got = {}
    for m in models:
        run = out / "runs" / m
        if (run / "divergence.json").exists() and not (run / "summary.json").exists():
            got[m] = _read_json(run / "divergence.json") or {}
    return got


def _diverged_section(out: Path, cfg) -> tuple[list[str], list[str]]:
    """The variants that could not train under the study's recipe, each with its loss curve:
    reported as such, not hidden and not given other settings."""
    runs = diverged_runs(out, cfg.models)
    if not runs:
        return [], []
    title = "Variants that did not train under this recipe"
    intro = (
        f"With the {cfg.recipe} recipe's common settings these runs diverged: the training "
        "loss stopped being finite, so they have no weights, accuracy or probe. They are "
        "left out of every table above and of the rank correlation."
    )
    md = [f"## {title}", "", intro, ""]
    body = [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(intro)}</p>"]
    for m, d in runs.items():
        steps = d.get("steps") or []
        bad = d.get("first_non_finite_step")
        lr = steps[bad]["lr"] if bad is not None and bad < len(steps) else None
        last = [x["loss"] for x in steps[:bad] if isinstance(x.get("loss"), float)][-1:]
        text = (
            f"{m}: the loss became non-finite at step {bad} of epoch {d.get('epoch')}"
            + (f" (learning rate {lr:.4g})" if lr is not None else "")
            + (f", after {last[0]:.3g} the step before" if last else "")
            + "."
        )
        md += [f"- {text}", ""]
        body.append(f"<p>{html.escape(text)}</p>")
        fig = out / "runs" / m / "divergence.png"
        if fig.exists():
            md += [f"![{m}: loss until it diverged](runs/{m}/{fig.name})", ""]
            body.append(_img(fig, f"{m}: loss until it diverged"))
    return md, body


def _md_grid(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _html_grid(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _comparisons(out: Path, cfg) -> tuple[list[str], list[str]]:
    """One table (and per-layer panel) per comparison with at least two of its variants."""
    md: list[str] = []
    body: list[str] = []
    for title, models in COMPARISONS:
        models = [m for m in models if m in cfg.models]
        rows = table_rows(out, models, cfg)
        if len(rows) < 2:  # a comparison needs two of its variants
            continue
        slug = title.lower().split()[0].replace("(", "")
        plot = out / "figures" / f"compare_{slug}.png"
        has_plot = overlay_plot(out, title, models, plot)
        md += [f"## {title}", "", _md_table(rows), ""]
        body += [f"<h2>{html.escape(title)}</h2>", _html_table(rows)]
        if has_plot:
            md += [f"![{title}: per layer](figures/{plot.name})", ""]
            body.append(_img(plot, f"{title}: per layer"))
    return md, body


def _cka_section(out: Path, cfg) -> tuple[list[str], list[str]]:
    """The CKA heatmap of base against bn, when the study computed it."""
    cka = out / "runs" / "base" / "cka_with_bn_val.png"
    if not (cka.exists() and {"base", "bn"} <= set(cfg.models)):
        return [], []
    title = "Representation similarity: base against bn"
    text = (
        "Linear and unbiased CKA between each layer of base (rows) and of bn "
        "(columns) on validation images; 1 = the same representation up to rotation "
        "and scale."
    )
    md = [f"## {title}", "", text, "", f"![CKA base vs bn](runs/base/{cka.name})", ""]
    body = [
        f"<h2>{title}</h2>",
        f"<p class=note>{html.escape(text)}</p>",
        _img(cka, "CKA base vs bn"),
    ]
    return md, body


VARIANT_FIGURES = (
    "curves.png",
    "si_train20.png",
    "si_val_test.png",
    "csi_train20.png",
    "csi_val_test.png",
)


def _variant_figures(out: Path, cfg) -> tuple[list[str], list[str]]:
    """Each variant's training curves and probe figures."""
    md = ["## Per-variant figures", ""]
    body = ["<h2>Per-variant figures</h2>"]
    for m in cfg.models:
        run = out / "runs" / m
        pics = [run / f for f in VARIANT_FIGURES]
        # The measures beyond SI, when the probe asked for them (dnnlab.probe.extra).
        pics += sorted(run.glob("*_per_layer.png")) + sorted(run.glob("cka_*.png"))
        pics = [p for p in pics if p.exists()]
        if not pics:
            continue
        md += [f"### {m}", ""] + [f"![{m} {p.stem}](runs/{m}/{p.name})" for p in pics] + [""]
        body += [f"<h3>{html.escape(m)}</h3>"] + [_img(p, f"{m} {p.stem}") for p in pics]
    return md, body


def _extra_sections(out: Path, sections) -> tuple[list[str], list[str]]:
    """The caller's (title, text, figures) sections, e.g. the detector's evaluation."""
    md: list[str] = []
    body: list[str] = []
    for title, text, pics in sections:
        md += [f"## {title}", "", text, ""]
        md += [
            f"![{p.stem}]({p.resolve().relative_to(out.resolve())})"
            if p.resolve().is_relative_to(out.resolve())
            else f"![{p.stem}]({p})"
            for p in pics
        ]
        body += [f"<h2>{html.escape(title)}</h2>", f"<pre>{html.escape(text)}</pre>"]
        body += [_img(p, p.stem) for p in pics]
    return md, body


# The course's avgpool SI/CSI where its write-up states them ({model: (SI, CSI)} on test).
# It states none that dnnlab could verify, so the column shows "–" until someone adds them.
COURSE_AVGPOOL: dict[str, tuple[float, float]] = {}


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _values(vals) -> str:
    vals = sorted({v for v in vals if v is not None}, key=str)
    return "/".join(map(str, vals)) if vals else "?"


def recorded_budget(out: Path, cfg) -> tuple[str, list[tuple[str, str]]]:
    """The budget as the runs recorded it, and the runs left out (variant, reason)."""
    train, val, test, epochs, probe = [], [], [], [], {}
    skipped = []
    for m in cfg.models:
        run = out / "runs" / m
        if not (run / "summary.json").exists():
            continue
        why = run_mismatch(run, cfg)
        if why:
            skipped.append((m, why))
            continue
        s = _read_json(run / "summary.json") or {}
        split = _read_json(run / "split.json") or {}
        train.append(s.get("train_images"))
        test.append(s.get("test_images"))
        epochs.append(s.get("epochs"))
        val.append(len(split["val"]) if "val" in split else None)
        for r in _load(run)[1]:
            probe.setdefault(r["split"], []).append(r.get("n"))
    if not train:
        return "no finished runs yet", skipped
    text = (
        f"{_values(train)} training images, {_values(epochs)} epochs, {_values(val)} "
        f"validation images, test on {_values(test)} images"
    )
    if probe:
        text += ", probed on " + ", ".join(f"{k} {_values(v)}" for k, v in probe.items())
        text += " samples"
    return text, skipped


def read_published(root) -> dict:
    """The published full studies under `root` (each a folder holding study.json and runs/).

    A variant whose summary.json does not match its study.json (recipe, epochs) is left out.
    """
    from dnnlab.errors import InputError

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--published: {root} is not a folder")
    studies = []
    for d in sorted(p for p in root.iterdir() if (p / "study.json").is_file()):
        st = _read_json(d / "study.json")
        if not isinstance(st, dict):
            raise InputError(f"--published: {d / 'study.json'} is not a JSON object")
        recipe = st.get("recipe", "corrected")
        rows, left_out = {}, []
        for run in sorted((d / "runs").glob("*/summary.json")):
            s = _read_json(run) or {}
            m = run.parent.name
            if s.get("recipe", "corrected") != recipe or s.get("epochs") != st.get("epochs"):
                left_out.append(m)
                continue
            p = _read_probe_csv(run.parent / "probe.csv")
            rows[m] = {
                "test_acc": s.get("test_acc"),
                "val_acc": s.get("best_val_acc"),
                **{
                    f"{k}_{sp}": _at(p, sp, FEATURE_LAYER, k)
                    for sp in ("val", "test")
                    for k in ("si", "csi")
                },
            }
        studies.append(
            {
                "path": str(d),
                "recipe": recipe,
                "card": st.get("device_name"),
                "date": st.get("date"),
                "commit": st.get("commit"),
                "epochs": st.get("epochs"),
                "quick": st.get("quick"),
                "wall_seconds": st.get("wall_seconds"),
                "train_subset": st.get("train_subset"),
                "max_per_split": st.get("max_per_split"),
                "precision": _values(
                    (_read_json(r.parent / "config.json") or {}).get("precision")
                    for r in (d / "runs").glob("*/summary.json")
                ),
                "rows": rows,
                "left_out": left_out,
                "diverged": sorted(diverged_runs(d, [r.name for r in (d / "runs").glob("*")])),
            }
        )
    studies.sort(key=lambda s: (s["recipe"] != "course", s["path"]))
    return {"root": str(root), "studies": studies}


def _read_probe_csv(path: Path) -> list[dict]:
    import csv

    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8-sig") as fh:  # a byte-order mark is no cell
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in ("si", "csi"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else None
    return rows


def _published_label(s: dict) -> str:
    card = s["card"] or "an unrecorded device"
    budget = "QUICK budget, " if s["quick"] else ""
    images = (
        f"{s['train_subset']} training images" if s["train_subset"] else "45,000 training images"
    )
    probe = f", probe capped at {s['max_per_split']} per split" if s["max_per_split"] else ""
    wall = f"{s['wall_seconds'] / 60:.0f} min wall" if s["wall_seconds"] else "? min wall"
    text = (
        f"{s['recipe']} recipe: {budget}{s['epochs']} epochs of {images} in "
        f"{s['precision']}{probe}, on {card}, {wall}, {s['date'] or 'undated'}, commit "
        f"{s['commit'] or 'unrecorded'}; from {s['path']}"
    )
    rho, both = rank_agreement(
        {m: v["test_acc"] for m, v in s["rows"].items() if v.get("test_acc") is not None}
    )
    if rho is not None:
        text += (
            f". Spearman's rho of its test accuracies against the course's 100-epoch "
            f"numbers: {rho:.3f} over {len(both)} variants"
        )
    if s["diverged"]:
        text += f"; diverged under this recipe (no result): {', '.join(s['diverged'])}"
    if s["left_out"]:
        text += f"; left out (records do not match): {', '.join(s['left_out'])}"
    return text


def published_section(pub: dict) -> tuple[list[str], list[str]]:
    """Markdown and HTML parts: the published full-study comparison, or a plain note."""
    title = "Published studies (measured results, read from the repository)"
    studies = pub["studies"]
    if not studies:
        note = (
            f"No study results are published yet (nothing under {pub['root']}): "
            "this report shows only this run's own numbers."
        )
        return ([f"## {title}", "", note, ""], [f"<h2>{title}</h2>", f"<p>{html.escape(note)}</p>"])
    labels = [_published_label(s) for s in studies]
    header = ["Model", "Course's Test ACC"]
    for s in studies:
        r = s["recipe"]
        header += [
            f"Test ACC ({r})",
            f"SI Val ({r})",
            f"CSI Val ({r})",
            f"SI Test ({r})",
            f"CSI Test ({r})",
        ]
    header += ["Course's SI/CSI Test"]
    models = [m for m in VARIANT_ORDER if any(m in s["rows"] for s in studies)]
    rows = []
    for m in models:
        row = [m, f"{COURSE_TEST_ACC[m]:.2f}" if m in COURSE_TEST_ACC else "–"]
        for s in studies:
            v = s["rows"].get(m, {})
            row += [
                _pct(v.get("test_acc")),
                _num(v.get("si_val")),
                _num(v.get("csi_val")),
                _num(v.get("si_test")),
                _num(v.get("csi_test")),
            ]
        c = COURSE_AVGPOOL.get(m)
        row.append(f"{c[0]:.4f}/{c[1]:.4f}" if c else "–")
        rows.append(row)
    intro = (
        "Read from the published folders below (not measured by this run). Accuracies "
        "in %, SI/CSI at avgpool."
    )
    md = [f"## {title}", "", intro, ""] + [f"- {x}" for x in labels] + [""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    page = [
        f"<h2>{title}</h2>",
        f"<p class=note>{html.escape(intro)}</p>",
        "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in labels) + "</ul>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
    ]
    return md, page
