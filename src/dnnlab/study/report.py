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

import html
import os
import urllib.parse
from pathlib import Path

from dnnlab.cifar.models import VARIANTS
from dnnlab.study.course import COURSE_TEST_ACC, conclusions, rank_agreement
from dnnlab.study.markup import html_grid, img_tag, md_grid, num, pct
from dnnlab.study.overlay import overlay_plot
from dnnlab.study.publish import published_section
from dnnlab.study.records import (
    FEATURE_LAYER,
    diverged_runs,
    load_run,
    read_study,
    recorded_budget,
    recorded_config,
    sort_runs,
    value_at,
)
from dnnlab.utils.atomic import atomic_write_text

# (title, variants in table order, the references they are compared with): a comparison is
# shown when a variant other than its references has a run beside at least one other.
COMPARISONS = [
    ("Normalization", ["base", "bn", "gn", "ln"], {"base"}),
    ("Skip connection", ["base", "noskip"], {"base"}),
    ("1x1 convolution", ["base", "conv4-1x1"], {"base"}),
    (
        "Paths (ResNeXt-style)",
        ["base", "paths2", "paths4", "paths2-shared", "paths4-shared"],
        {"base"},
    ),
    ("Wide network", ["wide", "base", "bn"], {"base", "bn"}),
]


def table_rows(out: Path, models):
    """The course's table row of each of `models` that has a finished run."""
    rows = []
    for m in models:
        s, p = load_run(out / "runs" / m)
        if s is None:
            continue
        rows.append(
            [
                m,
                pct(s["best_val_acc"]),
                pct(s["test_acc"]),
                num(value_at(p, "val", FEATURE_LAYER, "si")),
                num(value_at(p, "val", FEATURE_LAYER, "csi")),
                num(value_at(p, "test", FEATURE_LAYER, "si")),
                num(value_at(p, "test", FEATURE_LAYER, "csi")),
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


def _md_table(rows) -> str:
    return md_grid(HEADER, rows)


def _html_table(rows) -> str:
    return html_grid(HEADER, rows)


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
    text = "\n".join(e.read_text(encoding="utf-8") for e in evals) if evals else "(not evaluated)"
    pics = sorted((det / "photos").glob("*.jpg"))[:6] if (det / "photos").is_dir() else []
    return ("Cat detector (R-CNN style)", text, pics)


def write_report(
    out: Path,
    extra_sections: list[tuple[str, str, list[Path]]] = (),
    published: list[dict] | None = None,
) -> Path:
    """Write out/report.md and out/report.html of the study in `out`, from its records
    alone (study.json's settings, each run's records); returns the HTML path.

    Each section below gives (Markdown lines, HTML parts) from the same content."""
    out = Path(out)
    study = read_study(out)
    cfg = recorded_config(out, study)  # its settings, checked
    (out / "figures").mkdir(exist_ok=True)
    # The published studies come first: they are the real results, this run may be a check.
    sections = [] if published is None else [published_section(published)]
    kept, skipped = sort_runs(out, cfg)
    sections += [
        _header(study, cfg, recorded_budget(out, kept), skipped),
        _course_section(out, kept, cfg.models, cfg.quick),
        _diverged_section(out, cfg.models, cfg.recipe),
        _comparisons(out, kept),
        _cka_section(out, cfg.models),
        _variant_figures(out, cfg.models),
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


def _header(study: dict, cfg, budget: str, skipped) -> tuple[list[str], list[str]]:
    """Title, the budget the runs recorded, recipe and device; variants left out, and why."""
    label = study_label(cfg)
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


def _course_section(out: Path, kept, models, quick: bool) -> tuple[list[str], list[str]]:
    """The test accuracies of the runs `kept` (those matching the study) beside the course's
    100-epoch numbers: both rankings, Spearman's rho, and the direction of each of the
    course's conclusions. `models`: all the study's variants (for the overlay plot)."""
    acc = {m: 100 * load_run(out / "runs" / m)[0]["test_acc"] for m in kept}
    rho, both = rank_agreement(acc)
    if quick or len(both) < 3:
        return [], []
    title = "Against the course's 100-epoch results"
    ours = sorted(both, key=lambda m: -acc[m])
    theirs = sorted(both, key=lambda m: -COURSE_TEST_ACC[m])
    head = ["Model", "Test ACC (this study)", "rank", "Course's Test ACC (100 epochs)", "rank"]
    rows = [
        [m, f"{acc[m]:.2f}", str(ours.index(m) + 1), f"{COURSE_TEST_ACC[m]:.2f}"]
        + [str(theirs.index(m) + 1)]
        for m in sorted(both, key=list(VARIANTS).index)
    ]
    rho_text = (
        f"Spearman's rank correlation between the two orderings over these {len(both)} "
        f"variants: rho = {rho:.3f}"
        if rho is not None
        else "Spearman's rho: undefined"
    ) + " (1: the same order; the course's numbers are quoted, not measured here)."
    unranked = [m for m in diverged_runs(out, models) if m in COURSE_TEST_ACC]
    if unranked:
        rho_text += f" Not ranked, as they diverged under this recipe: {', '.join(unranked)}."
    c_head, c_rows = _conclusion_rows(acc)
    md = [f"## {title}", "", rho_text, "", md_grid(head, rows), ""]
    md += [
        "Each of the course's conclusions as a difference of test accuracy; it agrees when "
        "the difference has the same sign. A difference within about one point is within "
        "the seed-to-seed spread of a single run (docs/RESULTS.md) and decides nothing.",
        "",
        md_grid(c_head, c_rows),
        "",
    ]
    body = [
        f"<h2>{html.escape(title)}</h2>",
        f"<p>{html.escape(rho_text)}</p>",
        html_grid(head, rows),
        "<p class=note>Each of the course's conclusions as a difference of test accuracy; it "
        "agrees when the difference has the same sign. A difference within about one point "
        "is within the seed-to-seed spread of a single run and decides nothing.</p>",
        html_grid(c_head, c_rows),
    ]
    plot = out / "figures" / "all_variants_si_csi.png"
    measures = (("si", "SI"), ("csi", "CSI"))
    if overlay_plot(out, "All variants", models, plot, "test", measures, first_layers=True):
        md += ["![All variants: SI and CSI per layer](figures/all_variants_si_csi.png)", ""]
        body.append(img_tag(plot, "All variants: SI and CSI per layer"))
    return md, body


def _conclusion_rows(acc: dict[str, float]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the table of the course's conclusions against `acc`."""
    c_head = ["Course's conclusion", "pair", "this study (points)", "course (points)", "agrees"]
    c_rows = [
        [
            c["question"],
            f"{c['variant']} − {c['against']}",
            f"{c['study']:+.2f}",
            f"{c['course']:+.2f}",
            "yes" if c["same_direction"] else "NO",
        ]
        for c in conclusions(acc)
    ]
    return c_head, c_rows


def _diverged_section(out: Path, models, recipe: str) -> tuple[list[str], list[str]]:
    """The variants that could not train under the study's recipe, each with its loss curve:
    reported as such, not hidden and not given other settings."""
    runs = diverged_runs(out, models)
    if not runs:
        return [], []
    title = "Variants that did not train under this recipe"
    intro = (
        f"With the {recipe} recipe's common settings these runs diverged: the training "
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
            body.append(img_tag(fig, f"{m}: loss until it diverged"))
    return md, body


def _comparisons(out: Path, kept) -> tuple[list[str], list[str]]:
    """One table (and per-layer panel) per comparison with at least two of its variants
    among the runs `kept` (those matching the study)."""
    md: list[str] = []
    body: list[str] = []
    for title, models, references in COMPARISONS:
        models = [m for m in models if m in kept]
        rows = table_rows(out, models)
        if len(rows) < 2 or set(models) <= references:  # nothing compared
            continue
        slug = title.lower().split()[0].replace("(", "")
        plot = out / "figures" / f"compare_{slug}.png"
        has_plot = overlay_plot(out, title, models, plot)
        md += [f"## {title}", "", _md_table(rows), ""]
        body += [f"<h2>{html.escape(title)}</h2>", _html_table(rows)]
        if has_plot:
            md += [f"![{title}: per layer](figures/{plot.name})", ""]
            body.append(img_tag(plot, f"{title}: per layer"))
    return md, body


def _cka_section(out: Path, models) -> tuple[list[str], list[str]]:
    """The CKA heatmap of base against bn, when the study computed it."""
    cka = out / "runs" / "base" / "cka_with_bn_val.png"
    if not (cka.exists() and {"base", "bn"} <= set(models)):
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
        img_tag(cka, "CKA base vs bn"),
    ]
    return md, body


VARIANT_FIGURES = (
    "curves.png",
    "si_train20.png",
    "si_val_test.png",
    "csi_train20.png",
    "csi_val_test.png",
)


def _variant_figures(out: Path, models) -> tuple[list[str], list[str]]:
    """Each variant's training curves and probe figures."""
    md = ["## Per-variant figures", ""]
    body = ["<h2>Per-variant figures</h2>"]
    for m in models:
        run = out / "runs" / m
        pics = [run / f for f in VARIANT_FIGURES]
        # The measures beyond SI, when the probe asked for them (dnnlab.probe.beyond_si).
        pics += sorted(run.glob("*_per_layer.png")) + sorted(run.glob("cka_*.png"))
        pics = [p for p in pics if p.exists()]
        if not pics:
            continue
        md += [f"### {m}", ""] + [f"![{m} {p.stem}](runs/{m}/{p.name})" for p in pics] + [""]
        body += [f"<h3>{html.escape(m)}</h3>"] + [img_tag(p, f"{m} {p.stem}") for p in pics]
    return md, body


def _relative_link(path: Path, out: Path) -> str:
    """`path` as a Markdown link from a file in `out`, percent-encoded: a Markdown link ends
    at a space or a ')' ('my study-detector/cat (1).jpg')."""
    rel = Path(os.path.relpath(Path(path).resolve(), Path(out).resolve())).as_posix()
    return urllib.parse.quote(rel)


def _extra_sections(out: Path, sections) -> tuple[list[str], list[str]]:
    """The caller's (title, text, figures) sections, e.g. the detector's evaluation."""
    md: list[str] = []
    body: list[str] = []
    for title, text, pics in sections:
        md += [f"## {title}", "", text, ""]
        # Linked relative to the report, wherever the figures are (the main job's detector
        # sits beside the study folder).
        md += [f"![{p.stem}]({_relative_link(p, out)})" for p in pics]
        body += [f"<h2>{html.escape(title)}</h2>", f"<pre>{html.escape(text)}</pre>"]
        body += [img_tag(p, p.stem) for p in pics]
    return md, body
