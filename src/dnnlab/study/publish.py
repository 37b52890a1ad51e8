"""Publish a study's results (no weights) into a folder of the repository.

    dnnlab study ... --publish docs/results/full-study-corrected

copies study.json (plus the commit it was published from), report.md, report.html,
figures/*.png and, for each variant whose records match the study, runs/<v>/{config.json,
metrics.csv, summary.json, probe.csv, stages.json} and its PNG figures. The new folder is
assembled beside the destination and swapped in only when complete, so an earlier
publication is never lost to a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

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
    from dnnlab.utils.spare_inputs import check_outputs_spare_inputs

    check_outputs_spare_inputs([out, *inputs], dest, owned=True, flag="--publish")


def publish(out, dest, cfg, commit: str | None = None) -> list[str]:
    """Copy the study in `out` to `dest`; returns the variants published. `dest` is never
    the study or inside it, and one process at a time writes it."""
    from dnnlab.utils.lock import folder_lock

    check_publish_dest(out, dest)
    with folder_lock(dest, "--publish"):
        return _publish_locked(Path(out), Path(dest), cfg, commit)


def _publish_locked(out: Path, dest: Path, cfg, commit: str | None) -> list[str]:
    """publish() once the destination's lock is held."""
    from dnnlab.study.report import diverged_runs, run_mismatch
    from dnnlab.utils.atomic import atomic_write_json

    study = json.loads((out / "study.json").read_text())
    variants = [
        m
        for m in cfg.models
        if (out / "runs" / m / "summary.json").exists()
        and (out / "runs" / m / "probe.csv").exists()
        and run_mismatch(out / "runs" / m, cfg) is None
    ]
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
