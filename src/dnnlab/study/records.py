"""What a study recorded, read back for the report and for publishing.

The study's study.json (its settings: recorded_config), and each run's summary.json,
split.json, probe.json (or probe.csv) and divergence.json; a run whose records do not match
the study (run_mismatch) is left out of the tables, and a run that diverged (diverged_runs)
is reported as such. The report and a publication are made from these records alone, so
they show what the folder holds, whatever the command that wrote it was asked.
"""

from __future__ import annotations

import csv
from dataclasses import fields
from pathlib import Path

import numpy as np

from dnnlab.cifar.config import parse_run_name
from dnnlab.errors import ConfigError, DnnlabError, InputError
from dnnlab.settings import flag_name
from dnnlab.study.config import (
    LATER_KEYS,
    RESULT_KEYS,
    WHOLE_SPLITS,
    StudyConfig,
    config_from_record,
    study_runs,
)
from dnnlab.utils.records import RecordError, read_json

FEATURE_LAYER = "avgpool"
# A run's wall seconds per stage (train, probe), summed over the commands that built it, and
# their devices (study.add_stage_seconds writes it; the published labels read it).
STAGES_FILE = "stages.json"


class StudyError(DnnlabError, RuntimeError):
    """The study folder cannot be used as asked, or some of its variants failed."""


def read_study(out: Path) -> dict | None:
    """The study's record (study.json), or None when the folder has none."""
    f = Path(out) / "study.json"
    if not f.exists():
        return None
    return read_json(f, (), StudyError)


# The settings a study.json must hold: those that change its numbers (RESULT_KEYS), less
# those older studies lack (LATER_KEYS), and the variants.
RECORDED_KEYS = ("models", *(k for k in RESULT_KEYS if k not in LATER_KEYS))


def recorded_config(out: Path, record: dict | None = None) -> StudyConfig:
    """The settings the study in `out` recorded: its study.json, or `record`, that file's
    content when the caller has read it already."""
    f = Path(out) / "study.json"
    d = read_study(out) if record is None else record
    if d is None:
        raise StudyError(f"{f}: missing; {out} holds no study")
    missing = [k for k in RECORDED_KEYS if k not in d]
    models = d.get("models")
    try:
        if missing:
            raise ConfigError(f"no {', '.join(missing)}")
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ConfigError(f"models: {models!r} is not a list of variant names")
        return config_from_record(d)
    except (ConfigError, TypeError) as e:
        raise StudyError(f"{f}: settings that are not a study's ({_keyed(str(e))})") from None


def _keyed(message: str) -> str:
    """A setting's error as study.json holds it: '--val-size: ...' -> 'n_val (--val-size): ...'
    (the file has keys, the command line flags). A setting with no flag (cli=False, e.g.
    probe_memory) keeps its key alone."""
    for field in fields(StudyConfig):
        flag = flag_name(field)
        spec = field.metadata.get("spec")
        if spec is not None and message.startswith(flag + ":"):
            named = f"{field.name} ({flag})" if spec.cli else field.name
            return f"{named}{message[len(flag) :]}"
    return message


def recorded_runs(study: dict) -> list[str]:
    """The run names a study.json records: every variant and seed any command of the study
    trained ("runs"), or, in a record from before seeds, its variants (each seed 0's run)."""
    runs = study.get("runs")
    if not (isinstance(runs, list) and all(isinstance(r, str) for r in runs)):
        runs = study.get("models")
        runs = list(runs) if isinstance(runs, list) else []
    # Each name becomes a folder under runs/: a name that is a path ("..", "a/b") would read
    # outside it. Any other text is a name, shown escaped in the report.
    bad = [
        r
        for r in runs
        if not isinstance(r, str) or r in ("", ".", "..") or "/" in r or "\\" in r or "\0" in r
    ]
    if bad:
        raise InputError(
            f"study.json: {bad[0]!r} is not a run name but a path (runs are folders under "
            "runs/); the record was edited or is not a dnnlab study's"
        )
    return list(runs)


def load_run(run: Path):
    """(summary.json or None, probe.json's rows, else probe.csv's, or []) of a run: what
    exists of them (a run adopted from a publication made before probe.json was published
    has only probe.csv: the same rows, numbers to 6 significant digits, which leaves SI and
    CSI, counts over n, as they were at the probe's sample sizes)."""
    s = read_json(run / "summary.json", ()) if (run / "summary.json").exists() else None
    if (run / "probe.json").exists():
        return s, read_json(run / "probe.json", ("rows",))["rows"]
    return s, read_probe_csv(run / "probe.csv")


def load_whole_splits(run: Path) -> list[dict]:
    """The rows of the run's whole-split probe of LAST_LAYERS ([] when it has none)."""
    f = run / WHOLE_SPLITS / "probe.json"
    return read_json(f, ("rows",))["rows"] if f.exists() else []


def load_predictions(run: Path) -> dict | None:
    """The run's test_predictions.json ({positions, labels, predictions}), or None."""
    f = run / "test_predictions.json"
    return read_json(f, ("positions", "labels", "predictions")) if f.exists() else None


def per_image_correct(out: Path, runs: list[str]):
    """(positions, a (seeds, N) 0/1 int8 array): the runs' per-image test results on the
    test images at `positions`; None when a run has no test_predictions.json or the runs
    tested different images (nothing to pair)."""
    records = [load_predictions(Path(out) / "runs" / r) for r in runs]
    if not records or any(d is None for d in records):
        return None
    if any(d["positions"] != records[0]["positions"] for d in records):
        return None
    got = np.array([np.equal(d["predictions"], d["labels"]) for d in records], dtype=np.int8)
    return records[0]["positions"], got


def runs_by_variant(runs) -> dict[str, list[str]]:
    """{variant: its run names, seed order}, for the variants of `runs` (names)."""
    got: dict[str, list[tuple[int, str]]] = {}
    for r in runs:
        variant, seed = parse_run_name(r)
        got.setdefault(variant, []).append((seed, r))
    return {v: [r for _, r in sorted(rs)] for v, rs in got.items()}


def value_at(rows, split, layer, key):
    for r in rows:
        if r["split"] == split and r["layer"] == layer:
            return r.get(key)
    return None


def joined_values(vals) -> str:
    vals = sorted({v for v in vals if v is not None}, key=str)
    return "/".join(map(str, vals)) if vals else "?"


def run_mismatch(run: Path, cfg) -> str | None:
    """Why the run's records do not belong to the study `cfg`, or None when they do."""
    try:
        c = read_json(run / "config.json", ())
        s = read_json(run / "summary.json", ())
    except RecordError as e:
        return f"unreadable records ({e})"
    variant, seed = parse_run_name(run.name)
    want = {
        "model": variant,
        "seed": seed,
        "recipe": cfg.recipe,
        "epochs": cfg.epochs,
        "n_val": cfg.n_val,
        "train_subset": cfg.train_subset,
        "test_subset": cfg.test_subset,
        "softmax_head": cfg.softmax_head,
    }
    got = {
        **c,
        "recipe": c.get("recipe", "corrected"),
        "seed": c.get("seed", 0),
        "softmax_head": c.get("softmax_head", False),
    }
    bad = [f"{k}={got.get(k)!r} (study: {v!r})" for k, v in want.items() if got.get(k) != v]
    if s.get("recipe", "corrected") != cfg.recipe or s.get("epochs") != cfg.epochs:
        bad.append(f"summary.json: recipe={s.get('recipe')!r}, epochs={s.get('epochs')!r}")
    return "; ".join(bad) or None


def sort_runs(out: Path, cfg, runs=None) -> tuple[list[str], list[tuple[str, str]]]:
    """(the runs, of `runs` or else of `cfg`'s variants and seeds, whose finished records match
    the study `cfg`, [(run, why not)] for the finished runs that do not): the report's tables
    show only the first."""
    kept, skipped = [], []
    for m in study_runs(cfg) if runs is None else runs:
        run = out / "runs" / m
        if not (run / "summary.json").exists():
            continue
        why = run_mismatch(run, cfg)
        if why:
            skipped.append((m, why))
        else:
            kept.append(m)
    return kept, skipped


def recorded_budget(out: Path, kept: list[str]) -> str:
    """The budget as the runs `kept` (those that match the study) recorded it."""
    train, val, test, epochs, probe = [], [], [], [], {}
    for m in kept:
        run = out / "runs" / m
        s = read_json(run / "summary.json", ()) if (run / "summary.json").exists() else {}
        train.append(s.get("train_images"))
        test.append(s.get("test_images"))
        epochs.append(s.get("epochs"))
        if (run / "split.json").exists():
            val.append(len(read_json(run / "split.json", ("val",))["val"]))
        else:  # adopted from a publication (split.json is not published): exactly its n_val
            val.append(read_json(run / "config.json", ()).get("n_val"))
        for r in load_run(run)[1]:
            probe.setdefault(r["split"], []).append(r.get("n"))
    if not train:
        return "no finished runs yet"
    text = (
        f"{joined_values(train)} training images, {joined_values(epochs)} epochs, "
        f"{joined_values(val)} validation images, test on {joined_values(test)} images"
    )
    if probe:
        text += ", probed on " + ", ".join(f"{k} {joined_values(v)}" for k, v in probe.items())
        text += " samples"
    return text


def diverged_runs(out: Path, runs) -> dict[str, dict]:
    """{run: its divergence.json} for the `runs` (names) that diverged and never finished."""
    got = {}
    for m in runs:
        run = out / "runs" / m
        if (run / "divergence.json").exists() and not (run / "summary.json").exists():
            got[m] = read_json(run / "divergence.json", ())
    return got


PROBE_TEXT_COLUMNS = ("split", "layer", "note")
PROBE_INT_COLUMNS = ("dim", "n")


def read_probe_csv(path: Path) -> list[dict]:
    """probe.csv's rows as probe.json holds them: dim and n ints, the measures and seconds
    floats (an empty cell, a measure not computed: None), split, layer and note text."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8-sig") as fh:  # a byte-order mark is no cell
        rows = list(csv.DictReader(fh))
    for i, r in enumerate(rows, start=2):
        if None in r or None in r.values():
            raise InputError(f"{path}: row {i} has more or fewer cells than the header")
        for k, v in r.items():
            if k in PROBE_TEXT_COLUMNS:
                continue
            try:
                r[k] = None if v in (None, "") else int(v) if k in PROBE_INT_COLUMNS else float(v)
            except ValueError:
                raise InputError(f"{path}: row {i}, column {k!r}: {v!r} is not a number") from None
    return rows
