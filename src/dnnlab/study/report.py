"""The study report: report.md, and report.html rendered from it (self-contained: images
embedded; markup.md_page).

Tables follow the course's layout, Model | Val ACC | Test ACC | SI Val | CSI Val | SI Test |
CSI Test at the last feature layer (avgpool), with the course's published test accuracy
beside ours, marked as the course's. A variant trained with several seeds shows the mean
over its seeds and their standard deviation; the course's conclusions come with 95 %
intervals and verdicts, and rank correlations with p-values (stats.py says how). Every
figure comes from what the runs recorded (summary.json, split.json, probe.json,
test_predictions.json), and a run whose records do not match the study is left out of the
tables with the reason. With a published folder (`--published`), the report
also shows the published full studies' tables, labelled with their recipe, card, date and
commit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dnnlab.cifar.config import parse_run_name
from dnnlab.cifar.models import VARIANTS
from dnnlab.cifar.recipe import COURSE, FIXED
from dnnlab.study.config import LAST_LAYERS
from dnnlab.study.course import (
    CONCLUSIONS_TEXT,
    COURSE_NAMES,
    COURSE_SI,
    COURSE_TEST_ACC,
    conclusions_table,
    rank_agreement,
    seed_agreement,
    seed_agreement_text,
)
from dnnlab.study.markup import md_code, md_grid, md_link, md_page, md_text
from dnnlab.study.overlay import overlay_plot
from dnnlab.study.publish import published_section
from dnnlab.study.records import (
    FEATURE_LAYER,
    diverged_runs,
    load_run,
    load_whole_splits,
    read_study,
    recorded_budget,
    recorded_config,
    recorded_runs,
    runs_by_variant,
    sort_runs,
    value_at,
)
from dnnlab.study.stats import p_text, proportion_interval, seed_summary
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


def mean_sd(values, scale: float = 1.0, digits: int = 4) -> str:
    """'mean ± sd' of per-seed values (scaled), or the value alone for one seed; '–' if none."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    s = seed_summary([scale * v for v in values])
    text = f"{s['mean']:.{digits}f}"
    return text if s["sd"] is None else f"{text} ± {s['sd']:.{digits}f}"


def seed_values(out: Path, runs, key: str, split: str | None = None) -> list:
    """Per-seed values of `key`: summary.json's, or with `split` the probe's at FEATURE_LAYER."""
    got = []
    for r in runs:
        s, p = load_run(out / "runs" / r)
        got.append(s.get(key) if split is None and s else value_at(p, split, FEATURE_LAYER, key))
    return got


def table_rows(out: Path, seeds: dict[str, list[str]], models):
    """The course's table row of each of `models` with a finished run: mean ± sd over the
    variant's seeds (`seeds`: {variant: its run names})."""
    rows = []
    for m in models:
        runs = seeds.get(m)
        if not runs:
            continue
        rows.append(
            [
                m,
                str(len(runs)),
                mean_sd(seed_values(out, runs, "best_val_acc"), 100, 2),
                mean_sd(seed_values(out, runs, "test_acc"), 100, 2),
                mean_sd(seed_values(out, runs, "si", "val")),
                mean_sd(seed_values(out, runs, "csi", "val")),
                mean_sd(seed_values(out, runs, "si", "test")),
                mean_sd(seed_values(out, runs, "csi", "test")),
                f"{COURSE_TEST_ACC[m]:.2f}" if m in COURSE_TEST_ACC else "–",
            ]
        )
    return rows


HEADER = [
    "Model",
    "Seeds",
    "Val ACC",
    "Test ACC",
    "SI Val",
    "CSI Val",
    "SI Test",
    "CSI Test",
    "Course's Test ACC (reference)",
]


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
    alone (study.json's settings and runs, each run's records); returns the HTML path.

    Each section below gives its Markdown lines; report.html is rendered from report.md's
    text (markup.md_page), so the two say the same."""
    out = Path(out)
    study = read_study(out)
    cfg = recorded_config(out, study)  # its settings, checked
    runs = recorded_runs(study)
    (out / "figures").mkdir(exist_ok=True)
    # The published studies come first: they are the real results, this run may be a check.
    sections = [] if published is None else [published_section(published)]
    kept, skipped = sort_runs(out, cfg, runs)
    seeds = runs_by_variant(kept)
    sections += [
        _header(study, cfg, recorded_budget(out, kept), skipped, seeds),
        _course_section(out, seeds, runs, cfg.quick),
        _last_layers_section(out, seeds),
        _diverged_section(out, runs, cfg.recipe),
        _comparisons(out, seeds),
        _cka_section(out, runs),
        _variant_figures(out, runs),
        extra_section_lines(out, extra_sections),
    ]
    text = "\n".join(line for lines in sections for line in lines) + "\n"
    page = md_page(text, out)  # rendered first: a figure it cannot read changes neither file
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.html", page)
    return out / "report.html"


def _seeds_text(seeds: dict[str, list[str]]) -> str:
    """Which seeds the variants have, grouped: 'seeds 0, 1 for base, bn; seed 0 for ...'."""
    groups: dict[str, list[str]] = {}
    for m, runs in seeds.items():
        numbers = ", ".join(str(parse_run_name(r)[1]) for r in runs)
        groups.setdefault(numbers, []).append(md_text(m))
    if not groups:
        return "no finished runs"
    return "; ".join(
        f"{'seeds' if ',' in k else 'seed'} {k} for {', '.join(v)}" for k, v in groups.items()
    )


def _header(study: dict, cfg, budget: str, skipped, seeds) -> list[str]:
    """Title, the budget the runs recorded, seeds, recipe and device; runs left out, and why."""
    label = study_label(cfg)
    devices = study.get("device_names") or [study.get("device_name") or cfg.device]
    where = f"Recipe: {cfg.recipe}. Device: {md_text(devices[0])}."
    if len(devices) > 1:  # a study resumed in sessions on other machines
        where = (
            f"Recipe: {cfg.recipe}. Devices, over the commands that built it: "
            f"{md_text('; '.join(devices))} (each run's in its stages.json)."
        )
    seed_text = f"Training seeds: {_seeds_text(seeds)}."
    if seeds and all(len(r) == 1 for r in seeds.values()):
        seed_text += (
            " Every variant is a single seed: the seed-to-seed spread of this configuration "
            "is not measured, so no difference between variants gets an interval or a verdict."
        )
    note = (
        "Accuracies in %. SI/CSI at the last feature layer (`avgpool`), on the probe's sample. "
        "With several seeds a cell is the mean ± the seeds' standard deviation. The last "
        "column is the course's published test accuracy, quoted for reference (not measured "
        "here)."
    )
    md = [
        f"# dnnlab CIFAR-10 architecture study: {label}",
        "",
        f"Budget, as the runs recorded it: {md_text(budget)}. {where}",
        "",
        seed_text,
        "",
        note,
        "",
    ]
    for m, why in skipped:
        md += [
            f"Left out of the tables: {md_code(m)}: its records do not match the study "
            f"({md_text(why)}).",
            "",
        ]
    return md


def study_label(cfg) -> str:
    """What kind of study this is, for its title."""
    if cfg.quick:
        return "QUICK run: reduced budget, not comparable with the course's numbers"
    if cfg.recipe in FIXED:
        return (
            f"{cfg.recipe} recipe, {cfg.epochs} epochs (a CPU budget, not the course's "
            "100-epoch recipe)"
        )
    if cfg.epochs != COURSE["epochs"]:
        return f"{cfg.recipe} recipe, {cfg.epochs} epochs (not the course's 100)"
    return "full recipe"


def _rho_text(r: dict, n_text: str) -> str:
    if r["rho"] is None:
        return f"Spearman's rho {n_text}: undefined (fewer than three variants, or no order)"
    method = "exact" if r["p_method"] == "exact" else f"from {r['p_method']}"
    return (
        f"Spearman's rho {n_text}: rho = {r['rho']:.3f}, two-sided permutation "
        f"{p_text(r['p'])} ({method})"
    )


def _course_section(out: Path, seeds, runs, quick: bool) -> list[str]:
    """The mean test accuracies of the variants (`seeds`: {variant: its matching runs})
    beside the course's 100-epoch numbers: both rankings, Spearman's rho with its p-value,
    the rank correlation between seeds, and each of the course's conclusions with its
    interval and verdict. `runs`: all the study's runs (for the overlay plot)."""
    acc_seeds = {m: [100 * v for v in seed_values(out, rs, "test_acc")] for m, rs in seeds.items()}
    acc = {m: float(np.mean(v)) for m, v in acc_seeds.items()}
    r, both = rank_agreement(acc)
    if quick or len(both) < 2:  # nothing to compare with the course
        return []
    title = "Against the course's 100-epoch results"
    ours = sorted(both, key=lambda m: -acc[m])
    theirs = sorted(both, key=lambda m: -COURSE_TEST_ACC[m])
    head = ["Model", "Test ACC (this study)", "rank", "Course's Test ACC (100 epochs)", "rank"]
    rows = [
        [m + (f" (course: {COURSE_NAMES[m]})" if m in COURSE_NAMES else "")]
        + [mean_sd(acc_seeds[m], 1, 2), str(ours.index(m) + 1), f"{COURSE_TEST_ACC[m]:.2f}"]
        + [str(theirs.index(m) + 1)]
        for m in sorted(both, key=list(VARIANTS).index)
    ]
    texts = [
        _rho_text(r, f"between the two orderings over these {len(both)} variants")
        + " (1: the same order; the course's numbers are quoted, not measured here). The "
        "course's GP2 and GP4 are paths2-shared and paths4-shared (one path's weights summed "
        "2 or 4 times); paths2 and paths4 have no course row."
    ]
    unranked = sorted(
        {parse_run_name(d)[0] for d in diverged_runs(out, runs)} & set(COURSE_TEST_ACC)
    )
    if unranked:
        texts[0] += f" Not ranked, as they diverged under this recipe: {', '.join(unranked)}."
    agreement = seed_agreement_text(*seed_agreement(acc_seeds))
    texts.append(f"Reproducibility of the ranking: {agreement}.")
    c_head, c_rows = conclusions_table(out, seeds, acc_seeds)
    md = [f"## {title}", ""] + [x for t in texts for x in (t, "")] + [md_grid(head, rows), ""]
    md += [CONCLUSIONS_TEXT, "", md_grid(c_head, c_rows), ""]
    plot = out / "figures" / "all_variants_si_csi.png"
    measures = (("si", "SI"), ("csi", "CSI"))
    firsts = [rs[0] for rs in seeds.values()]
    if overlay_plot(out, "All variants", firsts, plot, "test", measures, first_layers=True):
        md += ["![All variants: SI and CSI per layer](figures/all_variants_si_csi.png)", ""]
    return md


def _last_layers_section(out: Path, seeds) -> list[str]:
    """SI and CSI of the last layers on the whole validation and test splits (the study's
    second probe), each with its 95 % image-sampling interval, mean over seeds; the course's
    own figure beside bn's where it states one."""
    rows = []
    for m, runs in seeds.items():
        per_run = [load_whole_splits(out / "runs" / r) for r in runs]
        if not all(per_run):
            continue
        for split in ("val", "test"):
            for layer in LAST_LAYERS:
                cells = [md_text(m), str(len(runs)), split, layer]
                for key in ("si", "csi"):
                    got = [value_at(p, split, layer, key) for p in per_run]
                    n = value_at(per_run[0], split, layer, "n")
                    if None in got or not n:
                        cells.append("–")
                        continue
                    mean = float(np.mean(got))
                    _, lo, hi = proportion_interval(round(mean * n), n)
                    sd = f" ± {seed_summary(got)['sd']:.4f} (seeds)" if len(got) > 1 else ""
                    cells.append(f"{mean:.4f}{sd} [{lo:.4f}, {hi:.4f}]")
                course = COURSE_SI.get((m, split, layer))
                cells.append("–" if course is None else f"{course:.3f}")
                rows.append(cells)
    if not rows:
        return []
    title = "Last layers on the whole validation and test splits"
    text = (
        "SI and CSI of avgpool, fc1 and fc2 on every validation and test image (not the "
        "probe's sample), the mean over the variant's seeds. In brackets: the 95 % interval "
        "from the images' sampling (a bootstrap of the per-image indicator with each image's "
        "neighbours found in the whole split, docs/cifar.md); '± … (seeds)' is the seeds' "
        "standard deviation. The last column quotes the course's own figure where its "
        "write-up states one (bn, validation, avgpool: 0.883), not measured here."
    )
    head = ["Model", "Seeds", "split", "layer", "SI", "CSI", "Course's SI"]
    return [f"## {title}", "", text, "", md_grid(head, rows), ""]


def _diverged_section(out: Path, runs, recipe: str) -> list[str]:
    """The runs that could not train under the study's recipe, each with its loss curve:
    reported as such, counted, not hidden and not given other settings."""
    runs = diverged_runs(out, runs)
    if not runs:
        return []
    title = f"Runs that did not train under this recipe ({len(runs)})"
    intro = (
        f"With the {recipe} recipe's common settings these runs diverged: the training "
        "loss stopped being finite, so they have no weights, accuracy or probe. They are "
        "left out of every table above and of the rank correlation."
    )
    md = [f"## {title}", "", intro, ""]
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
        md += [f"- {md_text(text)}", ""]
        fig = out / "runs" / m / "divergence.png"
        if fig.exists():
            link = md_link(f"runs/{m}/{fig.name}")
            md += [f"![{md_text(m)}: loss until it diverged]({link})", ""]
    return md


def _comparisons(out: Path, seeds) -> list[str]:
    """One table (and per-layer panel, of each variant's first seed) per comparison with at
    least two of its variants among the matching runs (`seeds`: {variant: runs})."""
    md: list[str] = []
    for title, models, references in COMPARISONS:
        models = [m for m in models if m in seeds]
        rows = table_rows(out, seeds, models)
        if len(rows) < 2 or set(models) <= references:  # nothing compared
            continue
        slug = title.lower().split()[0].replace("(", "")
        plot = out / "figures" / f"compare_{slug}.png"
        has_plot = overlay_plot(out, title, [seeds[m][0] for m in models], plot)
        md += [f"## {title}", "", md_grid(HEADER, rows), ""]
        if has_plot:
            md += [f"![{title}: per layer](figures/{plot.name})", ""]
    return md


def _cka_section(out: Path, models) -> list[str]:
    """The CKA heatmap of base against bn, when the study computed it."""
    cka = out / "runs" / "base" / "cka_with_bn_val.png"
    if not (cka.exists() and {"base", "bn"} <= set(models)):
        return []
    title = "Representation similarity: base against bn"
    text = (
        "Linear and unbiased CKA between each layer of base (rows) and of bn "
        "(columns) on validation images; 1 = the same representation up to rotation "
        "and scale."
    )
    return [f"## {title}", "", text, "", f"![CKA base vs bn](runs/base/{cka.name})", ""]


VARIANT_FIGURES = (
    "curves.png",
    "si_train20.png",
    "si_val_test.png",
    "csi_train20.png",
    "csi_val_test.png",
)


def _variant_figures(out: Path, models) -> list[str]:
    """Each variant's training curves and probe figures."""
    md = ["## Per-variant figures", ""]
    for m in models:
        run = out / "runs" / m
        pics = [run / f for f in VARIANT_FIGURES]
        # The measures beyond SI, when the probe asked for them (dnnlab.probe.layer_measures).
        pics += sorted(run.glob("*_per_layer.png")) + sorted(run.glob("cka_*.png"))
        pics = [p for p in pics if p.exists()]
        if not pics:
            continue
        md += [f"### {md_text(m)}", ""]
        md += [f"![{md_text(f'{m} {p.stem}')}]({md_link(f'runs/{m}/{p.name}')})" for p in pics]
        md += [""]
    return md


def _relative_link(path: Path, out: Path) -> str:
    """`path` as a Markdown link from a file in `out`, percent-encoded: a Markdown link ends
    at a space or a ')' ('my study-detector/cat (1).jpg')."""
    return md_link(Path(os.path.relpath(Path(path).resolve(), Path(out).resolve())).as_posix())


def extra_section_lines(out: Path, sections) -> list[str]:
    """The caller's (title, Markdown text, figures) sections, e.g. the detector's evaluation
    (its evals/*.md)."""
    md: list[str] = []
    for title, text, pics in sections:
        md += [f"## {title}", "", text, ""]
        # Linked relative to the report, wherever the figures are (the main job's detector
        # sits beside the study folder).
        md += [f"![{md_text(p.stem)}]({_relative_link(p, out)})" for p in pics]
    return md
