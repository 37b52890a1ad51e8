"""Publish a study's results (no weights) into a folder of the repository.

    dnnlab study ... --publish docs/results/full-study-corrected

copies study.json (plus the commit it was published from), report.md, report.html,
figures/*.png and, for each variant whose records match the study, runs/<v>/{config.json,
metrics.csv, summary.json, probe.csv, stages.json} and its PNG figures. The new folder is
assembled beside the destination and swapped in only when complete, so an earlier
publication is never lost to a half-written one.

A report shows the published studies first (`dnnlab study --published DIR`): read_published
reads them back, and published_section is their table.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from dnnlab.cifar.models import VARIANTS
from dnnlab.errors import InputError
from dnnlab.study.course import COURSE_TEST_ACC, rank_agreement
from dnnlab.study.markup import num, pct
from dnnlab.study.records import (
    FEATURE_LAYER,
    diverged_runs,
    joined_values,
    read_probe_csv,
    read_record,
    read_study,
    recorded_config,
    sort_runs,
    value_at,
)
from dnnlab.utils.atomic import atomic_write_json
from dnnlab.utils.lock import folder_lock
from dnnlab.utils.spare_inputs import check_outputs_spare_inputs

RUN_FILES = ("config.json", "metrics.csv", "summary.json", "probe.csv")
OPTIONAL_RUN_FILES = ("stages.json",)  # wall seconds per stage, from studies that record them


def git_commit(where: Path, fallback: bool = True) -> str | None:
    """The commit checked out at `where` ("-dirty" when tracked files differ from it); else
    (with `fallback`) $DNNLAB_COMMIT (a copied
    tree without .git, as on a lent GPU machine), else None."""
    try:
        r = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if r.returncode == 0 and r.stdout.strip():
            dirty = subprocess.run(
                ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            return r.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return (os.environ.get("DNNLAB_COMMIT") if fallback else None) or None


def check_publish_dest(out, dest, inputs=()) -> None:
    """Refuse a --publish folder that is, or would replace (it is swapped in whole), the
    study folder or another input (the --detector, --published folders)."""
    check_outputs_spare_inputs([out, *inputs], dest, owned=True, flag="--publish")


def publish(out, dest, commit: str | None = None) -> list[str]:
    """Copy the study in `out` (what its records hold) to `dest`; returns the variants
    published. `dest` is never the study or inside it, and one process at a time writes it."""
    check_publish_dest(out, dest)
    with folder_lock(dest, "--publish"):
        return _publish_locked(Path(out), Path(dest), commit)


def _publish_locked(out: Path, dest: Path, commit: str | None) -> list[str]:
    """publish() once the destination's lock is held."""
    study = read_study(out)
    cfg = recorded_config(out, study)  # the study's settings, checked
    kept, _ = sort_runs(out, cfg)  # finished runs that match the study
    variants = [m for m in kept if (out / "runs" / m / "probe.csv").exists()]
    diverged = sorted(diverged_runs(out, cfg.models))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        commit = commit or git_commit(Path.cwd())
        atomic_write_json(
            tmp / "study.json",
            {
                **study,
                "commit": commit,
                "published_variants": variants,
                "diverged_variants": diverged,
            },
        )
        for f in ("report.md", "report.html"):
            shutil.copy2(out / f, tmp / f)
        if (out / "figures").is_dir():
            (tmp / "figures").mkdir()
            for png in (out / "figures").glob("*.png"):
                shutil.copy2(png, tmp / "figures" / png.name)
        for m in variants:
            (tmp / "runs" / m).mkdir(parents=True)
            for f in RUN_FILES:
                shutil.copy2(out / "runs" / m / f, tmp / "runs" / m / f)
            for f in OPTIONAL_RUN_FILES:
                if (out / "runs" / m / f).exists():
                    shutil.copy2(out / "runs" / m / f, tmp / "runs" / m / f)
            for png in (out / "runs" / m).glob("*.png"):
                shutil.copy2(png, tmp / "runs" / m / png.name)
        for m in diverged:  # what they have: settings and the loss curve until it diverged
            (tmp / "runs" / m).mkdir(parents=True)
            for f in ("config.json", "divergence.json", "divergence.png"):
                if (out / "runs" / m / f).exists():
                    shutil.copy2(out / "runs" / m / f, tmp / "runs" / m / f)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return variants


def published_summary(variants: list[str], dest) -> str:
    """The line `dnnlab study --publish` prints: how many variants went where."""
    return f"published {len(variants)} variants ({', '.join(variants)}) to {dest}"


# The course's avgpool SI/CSI where its write-up states them ({model: (SI, CSI)} on test).
# It states none that dnnlab could verify, so the column shows "–" until someone adds them.
COURSE_AVGPOOL: dict[str, tuple[float, float]] = {}


def read_published(root) -> dict:
    """The published full studies under `root` (each a folder holding study.json and runs/).

    A variant whose summary.json does not match its study.json (recipe, epochs) is left out.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--published: {root} is not a folder")
    studies = []
    for d in sorted(p for p in root.iterdir() if (p / "study.json").is_file()):
        st = read_record(d / "study.json")
        if not isinstance(st, dict):
            raise InputError(f"--published: {d / 'study.json'} is not a JSON object")
        recipe = st.get("recipe", "corrected")
        rows, left_out = {}, []
        for run in sorted((d / "runs").glob("*/summary.json")):
            s = read_record(run) or {}
            m = run.parent.name
            if s.get("recipe", "corrected") != recipe or s.get("epochs") != st.get("epochs"):
                left_out.append(m)
                continue
            p = read_probe_csv(run.parent / "probe.csv")
            rows[m] = {
                "test_acc": s.get("test_acc"),
                "val_acc": s.get("best_val_acc"),
                **{
                    f"{k}_{sp}": value_at(p, sp, FEATURE_LAYER, k)
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
                "precision": joined_values(
                    (read_record(r.parent / "config.json") or {}).get("precision")
                    for r in (d / "runs").glob("*/summary.json")
                ),
                "rows": rows,
                "left_out": left_out,
                "diverged": sorted(diverged_runs(d, [r.name for r in (d / "runs").glob("*")])),
            }
        )
    studies.sort(key=lambda s: (s["recipe"] != "course", s["path"]))
    return {"root": str(root), "studies": studies}


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
    models = [m for m in VARIANTS if any(m in s["rows"] for s in studies)]
    rows = []
    for m in models:
        row = [m, f"{COURSE_TEST_ACC[m]:.2f}" if m in COURSE_TEST_ACC else "–"]
        for s in studies:
            v = s["rows"].get(m, {})
            row += [
                pct(v.get("test_acc")),
                num(v.get("si_val")),
                num(v.get("csi_val")),
                num(v.get("si_test")),
                num(v.get("csi_test")),
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
