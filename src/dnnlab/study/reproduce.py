"""`dnnlab reproduce RUN`: train a published run's first epochs again on this machine and
hold them against its published curve.

    dnnlab reproduce docs/results/clipped-cpu/runs/base --epochs 1 --data-root DATA --out DIR

What a newcomer learns from it in minutes: whether this machine, this checkout and this copy
of CIFAR-10 give the numbers a published study reports, before trusting (or extending) them.

1. **Checks, before any training.** RUN is a run folder of a published study (RUN/../../
   passes its manifest, so nothing in it was edited); its config.json and metrics.csv are
   read; --epochs is at most the epochs it published; the data given (--data-root, or
   $DNNLAB_DATA) has the identity the run recorded, or it is refused: other images would
   make the comparison meaningless. The output folder spares every input.
2. **Training.** The run's own settings (model, recipe, seed, and the schedule of all its
   epochs) on this machine's device, for the first K epochs only (`train(stop_after=K)`),
   into DIR/run: an unfinished run that `dnnlab train --resume --out DIR/run` continues to
   the end. A second call reuses the epochs already there.
3. **Comparison**, epoch by epoch: validation accuracy and loss, training loss and accuracy,
   published against here, and one verdict:
   - "identical": every figure equal to the published one. CPU training here is
     deterministic for a given CPU kind, thread count and library build (the 10-epoch
     study's first epochs matched the recipe screen's exactly: 0.5872 and 0.5860 for base
     seeds 0 and 1, docs/RESULTS.md §14).
   - "consistent": not bit-identical (another CPU, thread count or library rounds
     differently, and training carries the difference on, as a change of seed would), but
     every epoch's validation accuracy within TOLERANCE_SE standard errors of the
     difference between two accuracies measured on the run's n_val validation images,
     sqrt(2 p (1 - p) / n_val) at the published accuracy p (about 2.0 points at 58 % on
     5,000 images).
   - "differs": a gap beyond that, which noise in the measurement does not explain: the
     data, the code or the settings differ (the record lists what both sides used).
   Beside it, the published seeds of the same variant at the same epochs, for scale.
4. **Records.** DIR/reproduction.json (what was compared, from what, on what machine) and
   DIR/report.md + report.html: the published studies (--published) first, then the
   comparison, then a detector's evaluation (--detector), as the main job shows them.
"""

from __future__ import annotations

import csv
import math
import platform
import shlex
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from dnnlab.cifar.config import RESUMABLE_CHANGES, TrainConfig, parse_run_name
from dnnlab.cifar.data import default_root, load_cifar10
from dnnlab.cifar.rundir import read_run_config
from dnnlab.cifar.train import train
from dnnlab.errors import ConfigError, InputError
from dnnlab.settings import from_args, setting, validate
from dnnlab.study.config import shared_setting
from dnnlab.study.manifest import MANIFEST, ManifestError, verify
from dnnlab.study.markup import md_code, md_grid, md_page, md_text
from dnnlab.study.publish import git_commit, published_section, read_published
from dnnlab.study.report import detector_section, extra_section_lines
from dnnlab.utils.atomic import atomic_write_json, atomic_write_text
from dnnlab.utils.device import check_device
from dnnlab.utils.machine import cpu_description
from dnnlab.utils.outputs import check_output, is_ours, mark
from dnnlab.utils.paths import check_in_file, check_in_folder, real
from dnnlab.utils.records import file_sha256, read_json

# Two accuracies on the same n_val images from runs that differ only in rounding are taken
# as consistent when they differ by at most this many standard errors of a difference
# (2: about 95 % of such differences, were they independent draws).
TOLERANCE_SE = 2.0
COMPARED = ("val_acc", "val_loss", "train_loss", "train_acc")


@dataclass
class ReproduceConfig:
    epochs: int = setting(
        1, "the published run's first epochs to train again (its schedule stays whole)", low=1
    )
    data_root: str | None = shared_setting(TrainConfig, "data_root")
    device: str = shared_setting(TrainConfig, "device")

    def __post_init__(self):
        validate(self)


def reproduce(
    cfg: ReproduceConfig,
    run,
    out,
    published=None,
    detector=None,
    progress: bool = True,
) -> dict:
    """Train the published `run`'s first cfg.epochs epochs again into out/run, compare them
    with its metrics.csv, write out/reproduction.json and out/report.md/html; returns the
    record. Every input is checked before any training (see the module's steps)."""
    run, out = Path(run).expanduser(), Path(out).expanduser()
    # 1. Checks: the output folder (the write gate), then RUN, --epochs and the data.
    study = run.parent.parent
    root = cfg.data_root or default_root()
    if root is None:
        raise ConfigError("--data-root: not given and $DNNLAB_DATA is not set; name CIFAR-10")
    inputs = [root, study, published, detector]
    check_output(out, "--out", "reproduce", inputs=inputs, replace=True)
    # Its run folder too, and the device, before the marker is written (a refusal after
    # it would leave a folder behind, or mark a user's: the outside test found both).
    check_output(out / "run", "--out", "train", inputs=inputs, replace=True)
    check_device(cfg.device)
    check_in_folder(run, "RUN")
    if run.parent.name != "runs" or not (study / MANIFEST).is_file():
        raise InputError(
            f"RUN {run}: not a run of a published study (a folder STUDY/runs/NAME, with "
            f"STUDY/{MANIFEST}); e.g. docs/results/budget-cpu/runs/base"
        )
    if real(study) in real(out).parents:
        raise InputError(f"--out {out}: inside the published study {study}; choose another --out")
    try:
        verify(study)
    except ManifestError as e:
        raise InputError(f"RUN {run}: its study does not match its manifest: {e}") from None
    published_rows = read_metrics(check_in_file(run / "metrics.csv", "RUN"))
    record = read_json(run / "config.json", ("model", "seed", "data_identity"))
    run_cfg = read_run_config(run)
    # An earlier reproduction in --out continues (the epochs it did are kept) only when it
    # is of this run; another run's is refused here, in reproduce's words (train's would
    # name flags reproduce does not have).
    if (out / "run" / "config.json").is_file():
        earlier = read_run_config(out / "run")
        differ = [
            f.name
            for f in fields(TrainConfig)
            if (f.name == "epochs" or f.name not in RESUMABLE_CHANGES)  # its schedule's epochs too
            and getattr(earlier, f.name) != getattr(run_cfg, f.name)
        ]
        if differ:
            raise InputError(
                f"--out {out}: holds the reproduction of another run ({earlier.model}, seed "
                f"{earlier.seed}; settings unlike {run}'s: {', '.join(differ[:3])}); choose "
                "another --out"
            )
    if cfg.epochs > len(published_rows):
        raise ConfigError(
            f"--epochs {cfg.epochs}: {run} published {len(published_rows)} epochs; give at "
            f"most {len(published_rows)}"
        )
    if published is not None:
        pub = read_published(published)
    if detector is not None:
        check_in_folder(detector, "--detector")
        if not is_ours(detector, "detect build"):
            raise InputError(f"--detector {detector}: not a folder `dnnlab detect build` made")
    data = load_cifar10(root)
    if data.identity != record["data_identity"]:
        raise InputError(
            f"--data-root {root}: these images (identity {data.identity}) are not the ones "
            f"{run} was trained on ({record.get('data_source')}, identity "
            f"{record['data_identity']}); a comparison on other data would mean nothing"
        )

    # 2. Training: the run's settings, this machine's device and data path.
    mark(out, "reproduce")
    here_cfg = replace(run_cfg, data_root=str(root), device=cfg.device, compile=False)
    train(here_cfg, out / "run", resume=True, progress=progress, stop_after=cfg.epochs, data=data)
    here_rows = read_metrics(out / "run" / "metrics.csv")

    # 3. Comparison.
    k = cfg.epochs
    rows = [
        {"epoch": i + 1, "published": published_rows[i], "here": here_rows[i]} for i in range(k)
    ]
    verdict, tolerance = judge(rows, run_cfg.n_val)
    here_record = read_json(out / "run" / "config.json", ())
    result = {
        "published_run": str(run),
        "published_manifest_sha256": file_sha256(study / MANIFEST),
        "model": run_cfg.model,
        "seed": run_cfg.seed,
        "recipe": run_cfg.recipe,
        "schedule_epochs": run_cfg.epochs,
        "epochs_compared": k,
        "epochs_here": len(here_rows),  # the run in out/run may have gone on since
        "rows": rows,
        "tolerance_val_acc": tolerance,
        "verdict": verdict,
        "seeds_beside": seeds_beside(run, k),
        "published_summary": _summary(run),
        "published_precision": record.get("precision"),
        "here": {
            "precision": here_record.get("precision"),
            "machine": cpu_description(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "device": cfg.device,
            "data_source": here_record.get("data_source"),
            "data_identity": here_record.get("data_identity"),
            "commit": git_commit(Path(__file__).parent),
            "epoch_seconds": [r["here"]["seconds"] for r in rows],
        },
        "settings": asdict(cfg),
    }

    # 4. Records and report.
    atomic_write_json(out / "reproduction.json", result)
    md = []
    if published is not None:
        md += published_section(pub)
    md += reproduction_markdown(result, out)
    if detector is not None:
        md += extra_section_lines(out, [detector_section(detector)])
    text = "\n".join(md) + "\n"
    # Rendered first: a figure it cannot read changes neither file.
    page = md_page(text, out, "dnnlab reproduce")
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.html", page)
    return result


def judge(rows: list[dict], n_val: int) -> tuple[str, list[float]]:
    """("identical" | "consistent" | "differs", each epoch's allowed gap in validation
    accuracy) of the compared `rows` ({"published": row, "here": row} per epoch): see the
    module's step 3."""
    tolerance = [
        TOLERANCE_SE * math.sqrt(2 * p * (1 - p) / n_val)
        for p in (r["published"]["val_acc"] for r in rows)
    ]
    if all(r["published"][key] == r["here"][key] for r in rows for key in COMPARED):
        return "identical", tolerance
    gaps = [abs(r["here"]["val_acc"] - r["published"]["val_acc"]) for r in rows]
    if all(g <= t for g, t in zip(gaps, tolerance, strict=True)):
        return "consistent", tolerance
    return "differs", tolerance


def read_metrics(path: Path) -> list[dict]:
    """metrics.csv's rows as numbers, in epoch order; a malformed file is named."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as e:
        raise InputError(f"{path}: not a metrics.csv dnnlab wrote ({e})") from None
    if not rows or any(k not in rows[0] for k in ("epoch", *COMPARED, "seconds")):
        raise InputError(f"{path}: not a metrics.csv dnnlab wrote (no epochs, or a column missing)")
    if [r["epoch"] for r in rows] != list(range(1, len(rows) + 1)):
        raise InputError(f"{path}: its epochs are not 1, 2, 3, ... in order")
    return rows


def seeds_beside(run: Path, k: int) -> dict[str, list[float]]:
    """{run name: its first k validation accuracies} of the published study's other seeds of
    the same variant (runs/VARIANT, runs/VARIANT-seedN), those that published k epochs."""
    variant, _ = parse_run_name(run.name)
    out = {}
    for other in sorted(run.parent.iterdir()):
        if other == run or not (other / "metrics.csv").is_file():
            continue
        try:
            if parse_run_name(other.name)[0] != variant:
                continue
            rows = read_metrics(other / "metrics.csv")
        except (ConfigError, InputError):
            continue
        if len(rows) >= k:
            out[other.name] = [r["val_acc"] for r in rows[:k]]
    return out


def _summary(run: Path) -> dict | None:
    """What the published run reached at the end (summary.json), if it finished."""
    f = run / "summary.json"
    if not f.is_file():
        return None
    s = read_json(f, ())
    keys = ("epochs", "best_val_acc", "best_epoch", "test_acc")
    return {k: s.get(k) for k in keys}


VERDICT_TEXT = {
    "identical": "Verdict: reproduced exactly. Every figure here equals the published one.",
    "consistent": (
        "Verdict: consistent, not bit-identical. Every epoch's validation accuracy is within "
        "{se:g} standard errors of the published one (another CPU, thread count or library "
        "rounds differently, and training carries that on as a change of seed would)."
    ),
    "differs": (
        "Verdict: differs. A validation accuracy is further from the published one than {se:g} "
        "standard errors; noise in the measurement does not explain it. Compare the "
        "settings, data and versions in reproduction.json with the published run's records."
    ),
}


def reproduction_markdown(r: dict, out: Path) -> list[str]:
    """The comparison as the report and the terminal show it."""
    here = r["here"]
    k, total = r["epochs_compared"], r["schedule_epochs"]
    head = ["epoch", "val % published", "val % here", "gap (points)", "± allowed"]
    head += ["train loss published", "train loss here"]
    grid = []
    for row, tol in zip(r["rows"], r["tolerance_val_acc"], strict=True):
        p, h = row["published"], row["here"]
        grid.append(
            [
                str(row["epoch"]),
                f"{100 * p['val_acc']:.2f}",
                f"{100 * h['val_acc']:.2f}",
                f"{100 * (h['val_acc'] - p['val_acc']):+.2f}",
                f"{100 * tol:.2f}",
                f"{p['train_loss']:.4f}",
                f"{h['train_loss']:.4f}",
            ]
        )
    epochs = f"epochs 1-{k}" if k > 1 else "epoch 1"
    settings = md_text(
        f"The published run's settings ({r['model']}, recipe {r['recipe']}, seed {r['seed']}, "
        f"the learning-rate schedule of all {total} epochs), trained again here for its first "
        f"{k} epoch{'s' if k > 1 else ''}: {here['machine']}, {here['threads']} threads, "
        f"{here['precision']} (the published run: {r['published_precision']}), torch "
        f"{here['torch']}, on {here['data_source']} (the published run's images: same "
        f"identity, {here['data_identity']})."
    )
    lines = [
        f"## Reproduction: {md_code(r['published_run'])}, {epochs} of {total}",
        "",
        settings,
        "",
        md_grid(head, grid),
        "",
        VERDICT_TEXT[r["verdict"]].format(se=TOLERANCE_SE),
        "",
    ]
    if r["seeds_beside"]:
        beside = "; ".join(
            f"{name}: {', '.join(f'{100 * v:.2f}' for v in vals)}"
            for name, vals in r["seeds_beside"].items()
        )
        lines += [
            md_text(
                f"For scale, the published study's other seeds of {r['model']} (val %): {beside}."
            ),
            "",
        ]
    s = r["published_summary"]
    seconds = sum(here["epoch_seconds"]) / max(1, len(here["epoch_seconds"]))
    rest = f"{(total - r['epochs_here']) * seconds / 60:.0f}"
    if s is not None and s.get("test_acc") is not None:
        lines += [
            f"The published run went on to {100 * s['best_val_acc']:.2f} % validation accuracy "
            f"(epoch {s['best_epoch']}) and {100 * s['test_acc']:.2f} % test accuracy after "
            f"{s['epochs']} epochs.",
            "",
        ]
    if len(here["epoch_seconds"]) and r["epochs_here"] < total:
        resume = md_code(f"dnnlab train --resume --out {shlex.quote(str(out / 'run'))}")
        lines += [
            f"{resume} continues this run to all {total} "
            f"epochs (about {rest} more minutes at this machine's pace here, "
            f"{seconds:.0f} s an epoch), for a whole-run comparison.",
            "",
        ]
    return lines


__all__ = ["ReproduceConfig", "reproduce", "reproduction_markdown", "read_metrics"]


def main(args) -> int:
    """`dnnlab reproduce RUN`, from its parsed flags: the published studies' tables first
    (with --published), then the comparison."""
    result = reproduce(
        from_args(ReproduceConfig, args),
        args.run,
        args.out,
        published=args.published,
        detector=args.detector,
        progress=sys.stderr.isatty(),
    )
    if args.published:
        print("\n".join(published_section(read_published(args.published))))
    print("\n".join(reproduction_markdown(result, Path(args.out))))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0
