"""Publish a study's results (no weights) into a folder of the repository.

    dnnlab study ... --publish docs/results/full-study-corrected

copies study.json (plus the commit it was published from), report.md, report.html,
figures/*.png and, for each run whose records match the study, runs/<run>/{config.json,
metrics.csv, summary.json, probe.csv, stages.json, test_predictions.json, whole-splits/} and
its PNG figures, and weights.json (where each run's best.pt and last.pt were, with their
sha256: the weights themselves stay out of the repository), then writes manifest.json
(manifest.py: every file's sha256 and the command that wrote it). The new folder is
assembled beside the destination and swapped in only when complete, so an earlier
publication is never lost to a half-written one.

An existing destination is replaced only when it is a publication of the same study (the
same fingerprint: settings and data) that still matches its manifest: publishing again as
more runs finish updates it. A folder the tool did not publish, one changed by hand, or
another study's publication is refused, naming why.

A report shows the published studies first (`dnnlab study --published DIR`): read_published
reads them back, and published_section is their table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from dnnlab.cifar.models import VARIANTS
from dnnlab.errors import InputError
from dnnlab.study.course import (
    CONCLUSIONS_TEXT,
    COURSE_SI,
    COURSE_TEST_ACC,
    conclusions_table,
    rank_agreement,
    seed_agreement,
    seed_agreement_text,
)
from dnnlab.study.factorial import CELLS, factorial, factorial_lines
from dnnlab.study.manifest import MANIFEST, ManifestError, read_manifest, verify, write_manifest
from dnnlab.study.markup import md_grid, md_text, num, pct
from dnnlab.study.records import (
    FEATURE_LAYER,
    STAGES_FILE,
    WHOLE_SPLITS,
    diverged_runs,
    joined_values,
    read_probe_csv,
    read_study,
    recorded_config,
    recorded_runs,
    runs_by_variant,
    sort_runs,
    value_at,
)
from dnnlab.utils.atomic import atomic_write_json
from dnnlab.utils.lock import folder_lock
from dnnlab.utils.outputs import check_output, replacing
from dnnlab.utils.records import file_sha256, read_json

RUN_FILES = ("config.json", "metrics.csv", "summary.json", "probe.csv")
# stages.json: wall seconds per stage; test_predictions.json: per-image test results (runs
# trained since they were recorded); probe.json: probe.csv's rows with their provenance
# (published since runs are adopted from a publication, below); whole-splits/: the last
# layers on the whole splits.
OPTIONAL_RUN_FILES = (STAGES_FILE, "test_predictions.json", "probe.json")
WHOLE_SPLITS_FILES = ("probe.json", "probe.csv")
# The weights stay out of the repository (13.7 MB a checkpoint of the study's networks, with
# the optimizer's state); this file says where each run's were and their sha256.
WEIGHTS = "weights.json"
WEIGHT_FILES = ("best.pt", "last.pt")
# In a study folder's run adopted from a publication (adopt): where it came from and its
# weights' entry in that publication's weights.json.
ADOPTED = "adopted.json"
# What `dnnlab train` writes into a run folder, among the published files.
TRAIN_FILES = (
    "config.json",
    "metrics.csv",
    "summary.json",
    "curves.png",
    "test_predictions.json",
    "divergence.json",
    "divergence.png",
)


def writer_of(rel: str) -> str:
    """The command that wrote the published file at relative path `rel` (the manifest's
    "writer"): the study's record and report, or, in a run folder, the training, the study's
    stage times, its CKA, or its probes."""
    parts = rel.split("/")
    name = parts[-1]
    if parts == ["study.json"]:
        return "dnnlab study (its record), with --publish's commit and published runs added"
    if parts == [WEIGHTS]:
        return "dnnlab study --publish (the unpublished weights: where they were, their sha256)"
    if parts[0] != "runs":
        return "dnnlab study (report)"
    if len(parts) == 4 and parts[2] == WHOLE_SPLITS:
        return "dnnlab study (probe of the last layers on the whole splits)"
    if name in TRAIN_FILES:
        return "dnnlab train (called by dnnlab study)"
    if name == STAGES_FILE:
        return "dnnlab study (stage times)"
    if name.startswith("cka_"):
        return "dnnlab study (CKA of base against bn)"
    return "dnnlab probe (called by dnnlab study)"


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


def check_publish_dest(out, dest, inputs=(), fingerprint: str | None = None) -> None:
    """Refuse a --publish folder that is, or would replace (it is swapped in whole), the
    study folder or another input (the data, the --detector and --published folders), or an
    existing folder that is not an untouched publication of this study (`fingerprint`; None:
    the study's own, read from its study.json when it has one)."""
    check_output(dest, "--publish", "study --publish", inputs=[out, *inputs], replace=True)
    dest = Path(dest).expanduser()
    if not dest.exists():
        return
    try:
        verify(dest)
    except ManifestError as e:
        raise InputError(
            f"--publish: {dest} exists and is not an untouched dnnlab publication ({e}); "
            "dnnlab replaces only what it published: choose another folder"
        ) from None
    if fingerprint is None:
        fingerprint = (read_study(Path(out)) or {}).get("fingerprint")
    theirs = read_json(dest / "study.json", ()).get("fingerprint")
    if fingerprint is not None and theirs != fingerprint:
        raise InputError(
            f"--publish: {dest} holds the publication of another study (fingerprint "
            f"{theirs}, this study's {fingerprint}); choose another folder"
        )


def publish(out, dest, commit: str | None = None, inputs=()) -> tuple[list[str], bool]:
    """Copy the study in `out` (what its records hold) to `dest`; returns the runs
    published and whether `dest` was replaced (False: it held those files already). `dest`
    is never the study, inside it or one of `inputs` (the data, the --detector and
    --published folders), never a folder the tool did not publish, and one process at a
    time writes it."""
    check_publish_dest(out, dest, inputs)
    with folder_lock(dest, "--publish"):
        check_publish_dest(out, dest, inputs)  # again under the lock: another may have been first
        return _publish_locked(Path(out), Path(dest), commit)


def _publish_locked(out: Path, dest: Path, commit: str | None) -> tuple[list[str], bool]:
    """publish() once the destination's lock is held."""
    study = read_study(out)
    cfg = recorded_config(out, study)  # the study's settings, checked
    runs = recorded_runs(study)
    kept, _ = sort_runs(out, cfg, runs)  # finished runs that match the study
    variants = [m for m in kept if (out / "runs" / m / "probe.csv").exists()]
    diverged = sorted(diverged_runs(out, runs))
    check_keeps_published(dest, variants, diverged)
    # The user's umask; unmarked: the manifest is its proof. The old publication is
    # deleted only once the new one is in place, and kept as it is (its manifest and date
    # too) when the new one would hold the same files.
    try:
        with replacing(dest, "study --publish", marked=False) as tmp:
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
                whole = out / "runs" / m / WHOLE_SPLITS
                if all((whole / f).exists() for f in WHOLE_SPLITS_FILES):
                    (tmp / "runs" / m / WHOLE_SPLITS).mkdir()
                    for f in [*WHOLE_SPLITS_FILES, *(p.name for p in whole.glob("*.png"))]:
                        shutil.copy2(whole / f, tmp / "runs" / m / WHOLE_SPLITS / f)
            for m in diverged:  # what they have: settings and the loss curve until it diverged
                (tmp / "runs" / m).mkdir(parents=True)
                for f in ("config.json", "divergence.json", "divergence.png"):
                    if (out / "runs" / m / f).exists():
                        shutil.copy2(out / "runs" / m / f, tmp / "runs" / m / f)
            weights = {m: run_weights(out / "runs" / m) for m in variants}
            atomic_write_json(tmp / WEIGHTS, {"published": False, "runs": weights})
            rels = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()]
            writers = {r: writer_of(r) for r in rels}
            if same_files(tmp, dest, writers):
                raise _SameFiles
            write_manifest(tmp, writers, commit)
    except _SameFiles:  # the publication is left as it was: its manifest is still true
        return variants, False
    return variants, True


class _SameFiles(Exception):
    """Raised inside `replacing` to drop the assembled folder: it holds what the
    publication already holds, so publishing again changes nothing."""


def same_files(tmp: Path, dest: Path, writers: dict[str, str]) -> bool:
    """Whether the publication in `dest` (checked against its manifest before) lists
    exactly the files of `tmp`, with the same writers and content, study.json's "commit"
    aside: the commit a publication names is the one that published what it holds, and a
    later commit that would publish the same records publishes nothing."""
    if not (dest / MANIFEST).is_file():
        return False
    old = read_manifest(dest)["files"]

    def same(rel: str) -> bool:
        if rel != "study.json":
            return old[rel]["sha256"] == file_sha256(tmp / rel)
        a, b = read_json(dest / rel), read_json(tmp / rel)
        return {**a, "commit": None} == {**b, "commit": None}

    return set(old) == set(writers) and all(
        old[r].get("writer") == w and same(r) for r, w in writers.items()
    )


def run_weights(run: Path) -> dict:
    """weights.json's entry of a run: where its checkpoints are, their sha256 and size; for
    a run adopted from an earlier publication (ADOPTED), that publication's entry (the
    weights stayed on the machine that trained it)."""
    if (run / ADOPTED).is_file():
        return read_json(run / ADOPTED, ("weights",))["weights"]
    return {
        f: {
            "path": str((run / f).resolve()),
            "sha256": file_sha256(run / f),
            "bytes": (run / f).stat().st_size,
        }
        for f in WEIGHT_FILES
        if (run / f).is_file()
    }


def published_runs(study: dict | None) -> list[str]:
    """The runs a publication's study.json (`study`; None: no publication yet) publishes:
    finished, then diverged. What a later publication must keep and a new study folder
    adopts."""
    study = study or {}
    return [*(study.get("published_variants") or []), *(study.get("diverged_variants") or [])]


def adoptable(dest: Path, study: dict | None, out: Path) -> list[str]:
    """The runs of the publication `dest` (its study.json: `study`, None where it has none
    yet) that the study folder `out` has no record of: what adopt() will copy. Checked
    before any work: a run that `out` holds unfinished while DEST published it is refused
    (which one to keep is the user's choice), and DEST's weights.json must read."""
    todo = []
    for m in published_runs(study):
        run = out / "runs" / m
        if (run / "summary.json").exists() or (run / "divergence.json").exists():
            continue  # the study folder's own record of it
        if run.exists():
            raise InputError(
                f"--publish: {dest} has published run {m}, but {run} holds an unfinished run "
                "of it; move one of them aside"
            )
        todo.append(m)
    if todo and (dest / WEIGHTS).is_file():
        read_json(dest / WEIGHTS, ("runs",), InputError)  # readable before anything is copied
    return todo


def adopt(dest: Path | None, study: dict | None, out: Path, names: list[str]) -> None:
    """Copy the runs `names` (adoptable's) of the publication `dest` (its study.json:
    `study`) into the study folder `out`.

    This is how a study goes on when its folder is lost with its machine (a new session's
    machine, a new clone): `dnnlab study ... --publish DEST` on a new --out resumes from what
    DEST published, every run of it, whatever this command's variants and seeds, so that
    its next publication keeps them all. The caller has checked that DEST is an untouched
    publication of this study (check_publish_dest with the study's fingerprint, the
    recipe's values). An adopted run, finished or diverged, is never trained or probed
    again (its weights are not in the publication): ADOPTED in it records the publication,
    the commit and devices of the study that published it (the run's own devices are in its
    stages.json, where recorded) and the run's weights entry."""
    if not names:
        return
    weights = read_json(dest / WEIGHTS, ("runs",))["runs"] if (dest / WEIGHTS).is_file() else {}
    for m in names:
        tmp = out / "runs" / f".{m}.adopting"
        if tmp.exists():
            shutil.rmtree(tmp)  # a copy an earlier command left half done
        shutil.copytree(dest / "runs" / m, tmp)
        atomic_write_json(
            tmp / ADOPTED,
            {
                "publication": str(dest.resolve()),
                "published_by": {
                    "commit": study.get("commit"),
                    "device_names": study.get("device_names") or [study.get("device_name")],
                },
                "weights": weights.get(m, {}),
            },
        )
        tmp.rename(out / "runs" / m)


def check_keeps_published(dest: Path, variants: list[str], diverged: list[str]) -> None:
    """Refuse a publication that would drop a run `dest` publishes now (a study folder that
    lost runs without adopting them, a study retrained with --overwrite): a published run
    is replaced only by a publication that has it too."""
    lost = [m for m in published_runs(read_study(dest)) if m not in variants + diverged]
    if lost:
        raise InputError(
            f"--publish: {dest} publishes {', '.join(lost)}, which this study folder does "
            "not hold finished; publishing would drop them. Run the study with --publish "
            "on a folder that adopts them, or publish to another folder"
        )


def published_summary(published: tuple[list[str], bool], dest) -> str:
    """The line `dnnlab study --publish` prints from publish()'s answer: how many runs went
    where, or that the publication held them already."""
    runs, replaced = published
    if not replaced:
        return f"{dest} left as it was: it holds these {len(runs)} runs already ({', '.join(runs)})"
    return f"published {len(runs)} runs ({', '.join(runs)}) to {dest}, with {MANIFEST}"


def read_published(root) -> dict:
    """The published full studies under `root` (each a folder holding study.json and runs/),
    or the one study `root` is.

    A folder that does not match its manifest (or has none) is refused, named with the
    reason in "refused", and nothing from it is read. A run whose summary.json does not match
    its study.json (recipe, epochs) is left out. A variant's figures are the means over its
    seeds' runs.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--published: {root} is not a folder")
    if (root / "study.json").is_file():
        folders = [root]  # one study given, not the folder of studies
    else:
        folders = sorted(p for p in root.iterdir() if (p / "study.json").is_file())
    studies, refused = [], []
    for d in folders:
        try:
            manifest = verify(d)
        except ManifestError as e:
            refused.append({"path": str(d), "why": str(e)})
            continue
        st = read_json(d / "study.json")
        if not isinstance(st, dict):
            raise InputError(f"--published: {d / 'study.json'} is not a JSON object")
        recipe = st.get("recipe", "corrected")
        per_run, left_out = {}, []
        for run in sorted((d / "runs").glob("*/summary.json")):
            s = read_json(run, ())
            m = run.parent.name
            if s.get("recipe", "corrected") != recipe or s.get("epochs") != st.get("epochs"):
                left_out.append(m)
                continue
            p = read_probe_csv(run.parent / "probe.csv")
            per_run[m] = {
                "test_acc": s.get("test_acc"),
                "val_acc": s.get("best_val_acc"),
                **{
                    f"{k}_{sp}": value_at(p, sp, FEATURE_LAYER, k)
                    for sp in ("val", "test")
                    for k in ("si", "csi")
                },
            }
        seeds = runs_by_variant(per_run)
        rows = {
            variant: {
                "seeds": len(names),
                **{k: _mean([per_run[r][k] for r in names]) for k in per_run[names[0]]},
            }
            for variant, names in seeds.items()
        }
        acc_seeds = {
            m: [100 * per_run[r]["test_acc"] for r in names if per_run[r]["test_acc"] is not None]
            for m, names in seeds.items()
        }
        diverged = sorted(diverged_runs(d, [r.name for r in (d / "runs").glob("*")]))
        studies.append(
            {
                "path": str(d),
                "recipe": recipe,
                # What a factorial cell changes in a recipe: the head, the StepLR's period.
                "softmax_head": st.get("softmax_head", False),
                "step_size": st.get("step_size"),
                "card": "; ".join(st.get("device_names") or []) or st.get("device_name"),
                # A study published run by run has its date and wall time only at the end:
                # until then, the date of its latest publication.
                "date": st.get("date") or f"published {manifest.get('date')}",
                "commit": st.get("commit"),
                "epochs": st.get("epochs"),
                "quick": st.get("quick"),
                # A study's wall time counts only the commands that reached their end (one
                # cut off at a session's end adds nothing), and a study still running has
                # none of its own yet; each published run's stages.json has its own seconds
                # (training and probing, summed over the commands that built it).
                "wall_seconds": st.get("wall_seconds") if st.get("date") else None,
                "run_seconds": sum(
                    float(v.get("train") or 0) + float(v.get("probe") or 0)
                    for v in (read_json(f, ()) for f in (d / "runs").glob(f"*/{STAGES_FILE}"))
                ),
                "train_subset": st.get("train_subset"),
                "max_per_split": st.get("max_per_split"),
                "precision": joined_values(
                    read_json(r.parent / "config.json", ()).get("precision")
                    for r in (d / "runs").glob("*/summary.json")
                ),
                "rows": rows,
                "seed_agreement": seed_agreement(acc_seeds),
                "left_out": left_out,
                "diverged": diverged,
                # Planned by the study (study.json's runs) and not published yet: a study
                # published run by run says what is still to come.
                "planned": len(st.get("runs") or []),
                "weights": (d / WEIGHTS).is_file(),
                "missing": [
                    r for r in st.get("runs") or [] if r not in per_run and r not in diverged
                ],
                # The course's conclusions with their intervals (a quick study has none).
                "conclusions": None
                if st.get("quick")
                else conclusions_table(d, seeds, {m: v for m, v in acc_seeds.items() if v}),
            }
        )
    # The course's own recipe first, then the longest budget: the studies that say most.
    studies.sort(key=lambda s: (s["recipe"] != "course", -(s["epochs"] or 0), s["path"]))
    return {"root": str(root), "studies": studies, "refused": refused}


def _mean(values) -> float | None:
    """The mean of the values that exist (None when none does)."""
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got else None


def _published_label(s: dict) -> str:
    card = s["card"] or "an unrecorded device"
    budget = "QUICK budget, " if s["quick"] else ""
    images = (
        f"{s['train_subset']} training images" if s["train_subset"] else "45,000 training images"
    )
    probe = f", probe capped at {s['max_per_split']} per split" if s["max_per_split"] else ""
    wall = (
        f"{s['wall_seconds'] / 60:.0f} min wall over the commands that ran to their end"
        if s["wall_seconds"]
        else "wall time recorded when it ends"
    )
    if s["run_seconds"]:
        wall += (
            f" ({s['run_seconds'] / 3600:.1f} h of training and probing summed over its "
            "published runs, each run's commands and restarts included)"
        )
    changed = " with the course's double-softmax head" if s["softmax_head"] else ""
    if s["step_size"]:
        changed += f", its StepLR every {s['step_size']} epochs"
    text = (
        f"{s['recipe']} recipe{changed}: {budget}{s['epochs']} epochs of {images} in "
        f"{s['precision']}{probe}, on {card}, {wall}, {s['date'] or 'undated'}, commit "
        f"{s['commit'] or 'unrecorded'}; from {s['path']}"
    )
    r, both = rank_agreement(
        {m: v["test_acc"] for m, v in s["rows"].items() if v.get("test_acc") is not None}
    )
    seeds = sorted({v["seeds"] for v in s["rows"].values()})
    text += ". Seeds per variant: " + "/".join(map(str, seeds))
    if r["rho"] is not None:
        text += (
            f". Spearman's rho of its test accuracies against the course's 100-epoch "
            f"numbers: {r['rho']:.3f} over {len(both)} variants (permutation p = {r['p']:.2f})"
        )
    if len(s["seed_agreement"][1]) >= 3:  # measured, or undefined: said either way
        text += f". Seeds' rank agreement: {seed_agreement_text(*s['seed_agreement'])}"
    if s["diverged"]:
        text += f"; diverged under this recipe (no result): {', '.join(s['diverged'])}"
    if s["left_out"]:
        text += f"; left out (records do not match): {', '.join(s['left_out'])}"
    if s["weights"]:
        text += f"; weights not published: where they were and their sha256 in {WEIGHTS}"
    if s["missing"]:
        text += (
            f"; IN PROGRESS: {s['planned'] - len(s['missing'])} of the {s['planned']} runs it "
            f"plans are finished, still to come: {', '.join(s['missing'])}"
        )
    return text


def published_section(pub: dict) -> list[str]:
    """Markdown lines: the published full-study comparison, or a plain note."""
    title = "Published studies (measured results, read from the repository)"
    studies = pub["studies"]
    refusals = [
        md_text(f"Refused, nothing shown from it: {r['path']}: {r['why']}")
        for r in pub.get("refused", [])
    ]
    if not studies:
        note = (
            f"No study results are published yet (nothing under {md_text(pub['root'])} that "
            "passes its manifest check): this report shows only this run's own numbers."
        )
        return [f"## {title}", "", note, ""] + [x for t in refusals for x in (t, "")]
    labels = [md_text(_published_label(s)) for s in studies]
    # The factorial's own cells (base and bn under a changed recipe) are shown in its
    # section; the table and the course's conclusions are the full studies'.
    folders = {Path(s["path"]).name: Path(s["path"]) for s in studies}
    cells = [name for name in CELLS.values() if name.startswith("factorial-")]
    full = [s for s in studies if Path(s["path"]).name not in cells]
    header = ["Model", "Course's Test ACC"]
    for s in full:
        r = md_text(s["recipe"])
        header += [
            f"Test ACC ({r})",
            f"SI Val ({r})",
            f"CSI Val ({r})",
            f"SI Test ({r})",
            f"CSI Test ({r})",
        ]
    header += ["Course's SI Val (avgpool)"]
    models = [m for m in VARIANTS if any(m in s["rows"] for s in full)]
    rows = []
    for m in models:
        row = [m, f"{COURSE_TEST_ACC[m]:.2f}" if m in COURSE_TEST_ACC else "–"]
        for s in full:
            v = s["rows"].get(m, {})
            row += [
                pct(v.get("test_acc")),
                num(v.get("si_val")),
                num(v.get("csi_val")),
                num(v.get("si_test")),
                num(v.get("csi_test")),
            ]
        c = COURSE_SI.get((m, "val", FEATURE_LAYER))
        row.append("–" if c is None else f"{c:.3f}")
        rows.append(row)
    intro = (
        "Read from the published folders below (not measured by this run). Accuracies "
        "in %, SI/CSI at avgpool on each study's probe sample; a variant with several seeds "
        "shows their mean. The last column quotes the course's own SI where its write-up "
        "states one."
    )
    if not full:
        intro = "Read from the published folders below (not measured by this run)."
    md = [f"## {title}", "", intro, ""] + [f"- {x}" for x in labels] + [""]
    md += [x for t in refusals for x in (t, "")]
    table = [md_grid(header, rows), ""] if full else []
    conclusions_md = []
    for s in full:
        if s["conclusions"] and any(r[3] != "–" for r in s["conclusions"][1]):
            title = f"The course's conclusions: {s['recipe']} recipe, {s['epochs']} epochs"
            conclusions_md += [
                f"### {md_text(title)}",
                "",
                f"From {md_text(s['path'])}. {CONCLUSIONS_TEXT}",
                "",
                md_grid(*s["conclusions"]),
                "",
            ]
    factorial_md = []
    if any(name in folders for name in cells):
        factorial_md = factorial_lines(factorial(folders))
    return md + table + conclusions_md + factorial_md
