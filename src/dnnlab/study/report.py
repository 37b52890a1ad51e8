"""The study report: report.md plus a self-contained report.html (images embedded).

Tables follow the seed's layout, Model | Val ACC | Test ACC | SI Val | CSI Val | SI Test |
CSI Test at the last feature layer (avgpool), with the seed's published test accuracy beside
ours, marked as the seed's.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from dnnlab.utils.atomic import atomic_savefig, atomic_write_text

FEATURE_LAYER = "avgpool"
# The seed's reported test accuracies (%), quoted for reference; not measured by dnnlab.
SEED_TEST_ACC = {"base": 73.29, "bn": 85.67, "gn": 84.86, "ln": 85.24, "noskip": 59.75,
                 "conv4-1x1": 72.18, "paths2-shared": 80.05, "paths4-shared": 82.82,
                 "wide": 85.37}  # fmt: skip
COMPARISONS = [
    ("Normalization", ["base", "bn", "gn", "ln"]),
    ("Skip connection", ["base", "noskip"]),
    ("1x1 convolution", ["base", "conv4-1x1"]),
    ("Paths (ResNeXt-style)", ["base", "paths2", "paths4", "paths2-shared", "paths4-shared"]),
    ("Wide network", ["wide", "base", "bn"]),
]


def _load(run: Path):
    s = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else None
    p = json.loads((run / "probe.json").read_text())["rows"] if (run / "probe.json").exists() \
        else []  # fmt: skip
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


def table_rows(out: Path, models):
    rows = []
    for m in models:
        s, p = _load(out / "runs" / m)
        if s is None:
            continue
        rows.append([m, _pct(s["best_val_acc"]), _pct(s["test_acc"]),
                     _num(_at(p, "val", FEATURE_LAYER, "si")),
                     _num(_at(p, "val", FEATURE_LAYER, "csi")),
                     _num(_at(p, "test", FEATURE_LAYER, "si")),
                     _num(_at(p, "test", FEATURE_LAYER, "csi")),
                     f"{SEED_TEST_ACC[m]:.2f}" if m in SEED_TEST_ACC else "–"])  # fmt: skip
    return rows


HEADER = ["Model", "Val ACC", "Test ACC", "SI Val", "CSI Val", "SI Test", "CSI Test",
          "Seed's Test ACC (reference)"]  # fmt: skip


def overlay_plot(out: Path, title: str, models, path: Path, split="val") -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for m in models:
        _, p = _load(out / "runs" / m)
        pts = [r for r in p if r["split"] == split]
        if pts:
            series[m] = pts
    if not series:
        return False
    common = [r["layer"] for r in next(iter(series.values()))]
    for pts in series.values():
        names = {r["layer"] for r in pts}
        common = [c for c in common if c in names]
    fig, ax = plt.subplots(figsize=(10, 4))
    use_names = len(common) >= 5
    for m, pts in series.items():
        if use_names:
            keep = [r for r in pts if r["layer"] in common]
            ax.plot(range(len(keep)), [r["si"] for r in keep], marker="o", label=m)
        else:
            xs = [i / max(1, len(pts) - 1) for i in range(len(pts))]
            ax.plot(xs, [r["si"] for r in pts], marker="o", label=m)
    if use_names:
        ax.set_xticks(range(len(common)))
        ax.set_xticklabels(common, rotation=45, ha="right")
        ax.set_xlabel("layer (shared by all variants, execution order)")
    else:
        ax.set_xlabel("relative depth (layer index / last index)")
    ax.set_ylabel(f"SI ({split})")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}: SI per layer")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=90)
    plt.close(fig)
    return True


def _md_table(rows) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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


def write_report(out: Path, cfg, extra_sections: list[tuple[str, str, list[Path]]] = ()) -> Path:
    """Write out/report.md and out/report.html; returns the HTML path."""
    out = Path(out)
    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    label = "QUICK run: reduced budget, not comparable with the seed's numbers" if cfg.quick \
        else "full recipe"  # fmt: skip
    budget = (f"{cfg.train_subset or 45000} training images, {cfg.epochs} epochs, "
              f"{cfg.n_val} validation images, test on {cfg.test_subset or 10000} images, "
              f"probe splits capped at {cfg.max_per_split or 'no cap'} samples")  # fmt: skip
    md = [f"# dnnlab CIFAR-10 architecture study: {label}", "",
          f"Budget: {budget}. Device: {cfg.device}.", "",
          "Accuracies in %. SI/CSI at the last feature layer (`avgpool`). The last column is "
          "the seed's published test accuracy, quoted for reference (not measured here).",
          ""]  # fmt: skip
    body = [f"<h1>dnnlab CIFAR-10 architecture study: {html.escape(label)}</h1>",
            f"<p>Budget: {html.escape(budget)}. Device: {html.escape(cfg.device)}.</p>",
            "<p class=note>Accuracies in %. SI/CSI at the last feature layer (avgpool). The "
            "last column is the seed's published test accuracy, quoted for reference (not "
            "measured here).</p>"]  # fmt: skip
    for title, models in COMPARISONS:
        models = [m for m in models if m in cfg.models]
        rows = table_rows(out, models)
        if len(rows) < 2:  # a comparison needs two of its variants
            continue
        slug = title.lower().split()[0].replace("(", "")
        plot = figs / f"compare_{slug}.png"
        has_plot = overlay_plot(out, title, models, plot)
        md += [f"## {title}", "", _md_table(rows), ""]
        body += [f"<h2>{html.escape(title)}</h2>", _html_table(rows)]
        if has_plot:
            md += [f"![{title}: SI per layer](figures/{plot.name})", ""]
            body.append(_img(plot, f"{title}: SI per layer"))
    md += ["## Per-variant figures", ""]
    body.append("<h2>Per-variant figures</h2>")
    for m in cfg.models:
        run = out / "runs" / m
        pics = [run / f for f in ("curves.png", "si_train20.png", "si_val_test.png",
                                  "csi_train20.png", "csi_val_test.png")]  # fmt: skip
        pics = [p for p in pics if p.exists()]
        if not pics:
            continue
        md += [f"### {m}", ""] + [f"![{m} {p.stem}](runs/{m}/{p.name})" for p in pics] + [""]
        body += [f"<h3>{html.escape(m)}</h3>"] + [_img(p, f"{m} {p.stem}") for p in pics]
    for title, text, pics in extra_sections:
        md += [f"## {title}", "", text, ""]
        md += [f"![{p.stem}]({p.resolve().relative_to(out.resolve())})"
               if p.resolve().is_relative_to(out.resolve()) else f"![{p.stem}]({p})"
               for p in pics]  # fmt: skip
        body += [f"<h2>{html.escape(title)}</h2>", f"<pre>{html.escape(text)}</pre>"]
        body += [_img(p, p.stem) for p in pics]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>dnnlab study</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}{SELF_CHECK}</body></html>")
    atomic_write_text(out / "report.html", page)
    return out / "report.html"
