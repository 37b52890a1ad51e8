"""`dnnlab study`: train and probe a list of variants, then write the comparison report.

Everything is resumable: a finished run (trained and probed: run_finished) is not touched
again, an interrupted run continues from last.pt, and a probe keeps the (split, layer) rows
it has. With --publish, a study folder that lacks runs its publication holds (a new machine,
a new clone: the folder was lost, the publication is in the repository) adopts them from it
first (publish.adopt), so a study run across sessions goes on from what it published.
With `jobs` > 1 each variant is trained and probed by its own worker process
(dnnlab.study.worker), up to `jobs` at a time; a worker's failure is reported with its
variant and log, the others go on.

study.json records the settings, the fingerprint of the study's inputs (settings that change
results, and the data's identity), the devices and commits of the commands that built it and
the study's wall seconds; each run's stages.json, the wall seconds of its stages and the
device they ran on. A rerun with other settings or other data in the same folder, or a
publication of another study, is refused before any work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

import dnnlab
from dnnlab.cifar.config import run_name
from dnnlab.cifar.data import default_root, load_cifar10, make_split, test_positions
from dnnlab.cifar.recipe import SETTINGS, check_recipe_flag
from dnnlab.cifar.rundir import check_run_data
from dnnlab.cifar.train import TrainConfig, train
from dnnlab.errors import InputError
from dnnlab.probe.cka_runs import cka_between_runs
from dnnlab.probe.probe import ProbeConfig
from dnnlab.probe.trained_run import probe_run
from dnnlab.settings import given_flags
from dnnlab.study.config import (
    LATER_KEYS,
    RESULT_KEYS,
    WHOLE_SPLITS,
    StudyConfig,
    probe_config,
    study_config,
    study_runs,
    train_config,
    whole_splits_config,
)
from dnnlab.study.plan import print_plan
from dnnlab.study.publish import (
    ADOPTED,
    adopt,
    adoptable,
    check_publish_dest,
    git_commit,
    publish,
    published_runs,
    published_section,
    published_summary,
    read_published,
)
from dnnlab.study.records import STAGES_FILE, StudyError, read_study, recorded_runs
from dnnlab.study.report import detector_section, write_report
from dnnlab.utils.atomic import atomic_write_json
from dnnlab.utils.lock import folder_lock
from dnnlab.utils.machine import cpu_description
from dnnlab.utils.outputs import check_output, mark
from dnnlab.utils.records import content_hash, read_json


def data_identity(data) -> str:
    """The identity of the loaded CIFAR-10 content (dnnlab.cifar.data's content hash)."""
    return data.identity


def study_fingerprint(cfg: StudyConfig, data_id: str) -> str:
    """A short hash of everything that decides the study's numbers."""
    d = {k: getattr(cfg, k) for k in RESULT_KEYS}
    d["data"] = data_id
    return content_hash([json.dumps(d, sort_keys=True)])


def device_name(device: str) -> str:
    """The card's name (e.g. 'NVIDIA H200') or the CPU's, for the records."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_description()


def _check_same_study(out: Path, cfg: StudyConfig, fp: str, data_id: str, overwrite: bool) -> None:
    prev = read_study(out)
    if prev is None or overwrite:
        return
    # A setting a study from before it existed lacks: its default then (LATER_KEYS; bf16's
    # None: either, the study did not record its precision).
    was_then = {k: prev.get(k, LATER_KEYS.get(k)) for k in RESULT_KEYS}
    diff = [
        k
        for k in RESULT_KEYS
        if was_then[k] != getattr(cfg, k) and not (k == "bf16" and was_then[k] is None)
    ]
    if "recipe" not in diff and other_recipe_values(prev, cfg):
        diff.append("recipe_settings")
    if diff:
        was = ", ".join(f"{k}={prev.get(k)!r}" for k in diff)
        was += "; this command: " + ", ".join(
            f"{k}={recipe_values(cfg) if k == 'recipe_settings' else getattr(cfg, k)!r}"
            for k in diff
        )
        raise StudyError(
            f"{out} holds a study with other settings ({was}); use another --out, "
            "or --overwrite to replace it"
        )
    if prev.get("fingerprint") not in (None, fp):
        raise StudyError(
            f"{out} holds a study of other data (data identity "
            f"{prev.get('data_identity')}, but {cfg.data_root} has {data_id}); "
            "pass the study's data root, or use another --out"
        )


def recipe_values(cfg: StudyConfig) -> dict:
    """The recipe's hyperparameters as the study's runs get them (recipe.py's table, with the
    study's epochs and step size)."""
    t = train_config(cfg, cfg.models[0])
    return {k: getattr(t, k) for k in SETTINGS[cfg.recipe]}


def other_recipe_values(record: dict, cfg: StudyConfig) -> bool:
    """Whether a study's record holds this recipe's name with other values: a recipe whose
    settings changed in another commit is another recipe under the same name (recorded since
    recipe_settings existed; an older record cannot tell, and passes)."""
    return record.get("recipe_settings") not in (None, recipe_values(cfg))


def check_publication(dest: Path, published: dict, cfg: StudyConfig, overwrite: bool) -> None:
    """Refuse a --publish folder, whose study.json is `published`, that holds this recipe's
    name with other values (another commit's recipe: its runs would be adopted into a study
    they do not belong to), or, with --overwrite (every run trained again), one that
    publishes runs already, which the first publication would drop until they are trained
    again."""
    if other_recipe_values(published, cfg):
        raise InputError(
            f"--publish: {dest} holds a study of the {cfg.recipe} recipe with other values "
            f"({published['recipe_settings']}; this command's: {recipe_values(cfg)}); "
            "choose another folder"
        )
    had = published_runs(published)
    if overwrite and had:
        raise InputError(
            f"--publish: {dest} publishes {len(had)} run{'s' * (len(had) != 1)} "
            f"({', '.join(had)}); with --overwrite "
            "the study trains every run again and its first publication would drop them: "
            "publish to another folder"
        )


def check_study_data(out: Path, runs, data) -> None:
    """Refuse a run of the study's `runs` (names) that was trained on other data than `data`."""
    for name in runs:
        run = out / "runs" / name
        if (run / "config.json").exists():
            check_run_data(run, data)


def check_budget(data, n_val: int, train_subset, test_subset, seed: int) -> None:
    """The budget's sizes against the data (validation, training and test subsets), before
    anything in the study folder is written."""
    make_split(data, n_val, train_subset, seed)
    test_positions(data, test_subset, seed)


def check_detector(detector) -> Path | None:
    if detector is None:
        return None
    det = Path(detector)
    if not det.is_dir():
        raise InputError(f"--detector: {det} is not a folder (a `dnnlab detect` directory)")
    if not (det / "eval.md").exists() and not (det / "model.pt").exists():
        raise InputError(
            f"--detector: {det} holds neither model.pt nor eval.md; is it a "
            "`dnnlab detect` directory?"
        )
    return det


def run_variant(
    tcfg: TrainConfig, pcfg: ProbeConfig, wcfg: ProbeConfig, out: Path, overwrite, progress, log
):
    """Train (or resume, or skip) the run `tcfg` (runs/run_name(model, seed)) and probe it
    under `pcfg` (every layer) and `wcfg` (the last layers on the whole splits), in this
    process, holding the lock of its run directory (a worker process locks its own run,
    never the study)."""
    name = run_name(tcfg.model, tcfg.seed)
    run = out / "runs" / name
    with folder_lock(run, "variant"):
        t0 = time.perf_counter()
        device = device_name(tcfg.device)
        if (run / "summary.json").exists() and not overwrite:
            log(f"[{name}] trained already: {run / 'summary.json'}")
        else:
            # An interrupted run (even one stopped before its first checkpoint) continues.
            resume = run.exists() and not overwrite
            log(f"[{name}] {'resuming' if (run / 'last.pt').exists() else 'training'} in {run}")
            train(tcfg, run, resume=resume, overwrite=overwrite, progress=progress)
        add_stage_seconds(run, "train", time.perf_counter() - t0, device, overwrite)
        record_train_seconds(run)
        log(f"[{name}] probing")
        t0 = time.perf_counter()
        probe_run(run, pcfg, tcfg.data_root, overwrite=overwrite, progress=progress)
        log(f"[{name}] probing {', '.join(wcfg.layers)} on the whole val and test splits")
        probe_run(run, wcfg, tcfg.data_root, overwrite, progress, out=run / WHOLE_SPLITS)
        add_stage_seconds(run, "probe", time.perf_counter() - t0, device)


def run_finished(run: Path) -> bool:
    """Whether the run is done: adopted from a publication (finished or diverged there), or
    trained and probed, every layer and the whole splits (run_variant writes "probe" into
    its stages.json last; a run finished before the whole-split probe existed gets it)."""
    if (run / ADOPTED).exists():
        return True
    f = run / STAGES_FILE
    return (
        (run / "summary.json").exists()
        and (run / WHOLE_SPLITS / "probe.json").exists()
        and f.exists()
        and "probe" in read_json(f, ())
    )


def settled(out: Path, own: dict | None, runs, cfg: StudyConfig, published: dict | None) -> bool:
    """Whether the study in `out` is finished for these `runs`: each trained and probed,
    and its study.json (`own`) written by a command that got to its end (the "date" it
    writes last), listing them all and every run of its publication (`published`: one
    published by another folder must be added to the record), with the same CKA size (a
    new --cka-samples computes it)."""
    return (
        own is not None
        and own.get("date") is not None
        and own.get("cka_samples") == cfg.cka_samples
        and set(runs) | set(recorded_runs(published or {})) <= set(recorded_runs(own))
        and all(run_finished(out / "runs" / name) for name in runs)
    )


def add_stage_seconds(
    run: Path, stage: str, seconds: float, device: str, restart: bool = False
) -> None:
    """Add `seconds` of wall time to `stage` in the run's stages.json: the wall seconds each
    stage took, summed over the commands that built it (a cut-off study resumed), and
    "devices", those commands' devices (a study resumed in another session may run on
    another machine, and its seconds mean nothing without it)."""
    f = run / STAGES_FILE
    d = {} if restart or not f.exists() else read_json(f, (), StudyError)
    d[stage] = round(float(d.get(stage) or 0) + seconds, 1)
    d["devices"] = [*(x for x in d.get("devices", []) if x != device), device]
    atomic_write_json(f, d)


def record_train_seconds(run: Path) -> None:
    """stages.json's "train_epochs": the seconds of the epochs the run kept, summed from its
    metrics.json, whichever commands trained them (a command killed mid-run never adds its
    own "train" seconds, but its finished epochs are in metrics.json). "train" beside it is
    the commands' wall time, which also holds what was lost to kills and the test."""
    f = run / STAGES_FILE
    if not (run / "metrics.json").exists() or not f.exists():
        return
    rows = read_json(run / "metrics.json", error=StudyError)
    d = read_json(f, (), StudyError)
    d["train_epochs"] = round(sum(float(r["seconds"]) for r in rows), 1)
    atomic_write_json(f, d)


def stage_seconds(out: Path, runs) -> dict:
    """{run: {train, train_epochs, probe}} from each run's stages.json (what exists)."""
    got = {}
    for m in runs:
        f = out / "runs" / m / STAGES_FILE
        if f.exists():
            got[m] = read_json(f, (), StudyError)
    return got


def compare_base_bn(runs: Path, pcfg: ProbeConfig, samples: int, data_root, log) -> None:
    """CKA between the layers of runs/base and runs/bn on `samples` validation images (at
    most the probe's cap), under the probe's settings `pcfg`; recomputed by every study
    command that has runs to finish (cheap at that size), so it always matches the current
    checkpoints."""
    if samples == 0:
        return
    if not all((runs / m / "best.pt").exists() for m in ("base", "bn")):
        adopted = [m for m in ("base", "bn") if (runs / m / ADOPTED).exists()]
        if adopted:  # the weights stayed on the machine that trained them
            log(
                f"note: no CKA of base against bn: {' and '.join(adopted)} adopted from a "
                "publication, without weights"
            )
        return
    cap = min(samples, pcfg.max_per_split or samples)
    pcfg = ProbeConfig(max_memory=pcfg.max_memory, device=pcfg.device, max_per_split=cap)
    path = cka_between_runs(runs / "base", runs / "bn", pcfg, "val", data_root)
    n = read_json(path, ("n",))["n"]  # fewer than the cap when the split is smaller
    log(f"CKA base vs bn on {n} validation images: {path}")


def worker_env(cfg: StudyConfig, slot: int) -> dict:
    """The environment of worker `slot`: its share of the CPU threads and, with several GPUs
    visible, one of them (round-robin)."""
    env = dict(os.environ)
    src = str(Path(dnnlab.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in [env.get("PYTHONPATH")] if p])
    threads = max(1, (os.cpu_count() or 1) // min(cfg.jobs, len(study_runs(cfg))))
    env["OMP_NUM_THREADS"] = env["DNNLAB_THREADS"] = str(threads)
    if cfg.device == "cuda":
        n = torch.cuda.device_count()
        if n > 1:
            visible = env.get("CUDA_VISIBLE_DEVICES")
            ids = visible.split(",") if visible else [str(i) for i in range(n)]
            env["CUDA_VISIBLE_DEVICES"] = ids[slot % len(ids)]
    return env


def _run_workers(cfg: StudyConfig, out: Path, overwrite: bool, log, after_run) -> list[str]:
    """Each run in its own worker process, `cfg.jobs` at a time, `after_run(name)` called
    once each finishes; returns the failures."""
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    failures = []

    def one(item):
        slot, name = item
        if not overwrite and run_finished(out / "runs" / name):
            log(f"[{name}] finished already (trained and probed)")
            return
        path = logs / f"{name}.log"
        cmd = [sys.executable, "-m", "dnnlab.study.worker", str(out), name]
        if overwrite:
            cmd.append("--overwrite")
        log(f"[{name}] worker started; log: {path}")
        with open(path, "a") as fh:
            rc = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=worker_env(cfg, slot)
            ).returncode
        if rc == 0:
            log(f"[{name}] done")
            after_run(name)
        else:
            tail = path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            msg = f"[{name}] FAILED (exit {rc}): {tail[0]}; log: {path}"
            log(msg)
            failures.append(msg)

    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        list(pool.map(one, enumerate(study_runs(cfg))))
    return failures


def run_study(
    cfg: StudyConfig,
    out,
    overwrite: bool = False,
    progress: bool = False,
    log=print,
    detector: str | None = None,
    published=None,
    plan: bool = True,
    publish_to=None,
) -> dict:
    """Train, probe and report every variant of cfg.models, once per seed, under `out`;
    with `publish_to`, the report is written and the study published there (publish.py)
    each time a run finishes, and once more at the end, so a study that takes several
    sessions loses at most the runs in progress.

    Every input (settings, data, detector folder, published folder, the publication's
    folder, earlier records in `out`) is checked before any training starts; `out` is never
    one of them, and one process at a time writes it (its lock, held here; workers lock
    their own runs)."""
    out = Path(out).expanduser()  # as the write gate takes it
    inputs = [detector, published, cfg.data_root or default_root()]
    check_output(out, "--out", "study", inputs=inputs, replace=True)
    if publish_to is not None:
        check_publish_dest(out, publish_to, inputs)
    with folder_lock(out):
        return _run_study_locked(
            cfg, out, overwrite, progress, log, detector, published, plan, publish_to, inputs
        )


def _run_study_locked(
    cfg: StudyConfig,
    out: Path,
    overwrite,
    progress,
    log,
    detector,
    published,
    plan,
    publish_to,
    inputs,
) -> dict:
    """run_study once the study folder's lock is held."""
    det = check_detector(detector)
    pub = read_published(published) if published is not None else None
    data = load_cifar10(cfg.data_root)
    data_id = data_identity(data)
    fp = study_fingerprint(cfg, data_id)
    _check_same_study(out, cfg, fp, data_id, overwrite)
    if not overwrite:
        check_study_data(out, study_runs(cfg), data)
    runs = {run_name(m, s): train_config(cfg, m, s) for m in cfg.models for s in cfg.seeds}
    dest = None if publish_to is None else Path(publish_to).expanduser()
    published_study, adopting = None, []
    if dest is not None:
        # Now that the fingerprint is known: a study folder that is new (a new machine)
        # must not replace another study's publication; this study's it adopts in full.
        check_publish_dest(out, dest, inputs, fingerprint=fp)
        published_study = read_study(dest)
        check_publication(dest, published_study or {}, cfg, overwrite)
        if overwrite:
            published_study = None  # every run trained again: nothing goes on from it
        else:
            adopting = adoptable(dest, published_study, out)
    for seed in cfg.seeds:
        check_budget(data, cfg.n_val, cfg.train_subset, cfg.test_subset, seed)
    if cfg.cka_samples and not {"base", "bn"} <= set(cfg.models):
        log("note: no CKA of base against bn (--cka-samples): the study lacks base or bn")
    if plan:
        print_plan(runs, cfg.jobs, out, data, log, done=adopting)
    del data
    mark(out, "study")
    adopt(dest, published_study, out, adopting)
    if adopting:
        log(f"adopted from {dest} (published, not trained again): {', '.join(adopting)}")
    own = read_study(out)
    sections = [detector_section(det)] if det else []
    if not overwrite and not adopting and settled(out, own, runs, cfg, published_study):
        # Nothing to train, probe or time: study.json (its wall time and date) and the CKA
        # stay as the command that finished them wrote them. The report is written again
        # (--detector or --published may be new) and published if that changed it.
        log("every run is finished already: nothing to train, and study.json is left as it is")
        report = write_report(out, sections, published=pub)
        if publish_to is not None:
            log(published_summary(publish(out, publish_to, inputs=inputs), publish_to))
        return {"report": str(report), "wall_seconds": 0.0}
    # The records this command goes on from: the publication's (the runs adopted from it,
    # the commits and devices that built them) and the folder's own; the folder's runs are
    # the earlier commands' (other variants or seeds) and this one's.
    prev = own or published_study or {}
    history = [r for r in (published_study, own) if r]
    earlier = [] if overwrite else in_order(r for h in history for r in recorded_runs(h))
    record = {
        **asdict(cfg),
        "models": list(cfg.models),
        "seeds": list(cfg.seeds),
        "runs": earlier + [r for r in runs if r not in earlier],
        "recipe_settings": recipe_values(cfg),
        "data_identity": data_id,
        "fingerprint": fp,
        "device_name": device_name(cfg.device),
        "device_names": device_names(history, device_name(cfg.device)),
        "wall_seconds": prev.get("wall_seconds"),  # the earlier commands', if this is cut off
        "commits": code_commits(history),
    }
    atomic_write_json(out / "study.json", record)
    t_start = time.perf_counter()
    pcfg = probe_config(cfg)
    publishing = threading.Lock()

    def after_run(name: str) -> None:
        """Publish what is finished so far (the report says what is still missing), with
        the CKA of base against bn as soon as the second of them finishes: a study cut off
        later, or a machine lost with their weights, keeps it."""
        if publish_to is None:
            return
        with publishing:
            if name in ("base", "bn") and {"base", "bn"} <= set(cfg.models):
                compare_base_bn(out / "runs", pcfg, cfg.cka_samples, cfg.data_root, log)
            write_report(out, sections, published=pub)
            done = publish(out, publish_to, inputs=inputs)
            log(f"[{name}] {published_summary(done, publish_to)}")

    if cfg.jobs > 1 and len(runs) > 1:
        failures = _run_workers(cfg, out, overwrite, log, after_run)
    else:
        failures = []
        for name, tcfg in runs.items():
            if not overwrite and run_finished(out / "runs" / name):
                log(f"[{name}] finished already (trained and probed)")
                continue
            run_variant(tcfg, pcfg, whole_splits_config(cfg), out, overwrite, progress, log)
            after_run(name)
    t_cka = time.perf_counter()
    if not failures and {"base", "bn"} <= set(cfg.models):
        compare_base_bn(out / "runs", pcfg, cfg.cka_samples, cfg.data_root, log)
    t_report = time.perf_counter()
    wall = t_report - t_start
    # Wall seconds add up over the commands that built the study (a cut-off study resumed).
    record["wall_seconds"] = round(wall + (prev.get("wall_seconds") or 0), 1)
    record["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stages = {"variants": stage_seconds(out, record["runs"]), "cka": round(t_report - t_cka, 1)}
    record["stage_seconds"] = stages
    try:  # the report reads the settings study.json got at the start; its times come after
        report = write_report(out, sections, published=pub)
    finally:  # kept even when the report fails: a resumed study adds to them
        stages["report"] = round(time.perf_counter() - t_report, 1)
        atomic_write_json(out / "study.json", record)
    log(f"study done in {wall:.0f} s; report: {report}")
    if publish_to is not None:
        log(published_summary(publish(out, publish_to, inputs=inputs), publish_to))
    if failures:
        raise StudyError(f"{len(failures)} of {len(runs)} runs failed:\n  " + "\n  ".join(failures))
    return {"report": str(report), "wall_seconds": wall}


def in_order(items) -> list:
    """The items, each once, in the order they first come."""
    return list(dict.fromkeys(items))


def device_names(history: list[dict], here: str) -> list[str]:
    """The devices of the commands that built the study: the earlier commands' (the earlier
    study.json records' device_names, or their one device_name before that list existed)
    and this one's. Each run's own are in its stages.json."""
    names = (n for h in history for n in (h.get("device_names") or [h.get("device_name")]))
    return in_order([*(n for n in names if isinstance(n, str)), here])


def code_commits(history: list[dict]) -> list[str]:
    """The commits of dnnlab's code that built the study: the earlier commands' (from the
    earlier study.json records) and this one's, when it runs from a git checkout."""
    commits = [c for h in history for c in h.get("commits") or [] if isinstance(c, str)]
    here = git_commit(Path(dnnlab.__file__).resolve().parent, fallback=False)
    return in_order(commits + ([here] if here else []))


def main(args) -> int:
    """`dnnlab study`, from its parsed flags (an old recipe name is refused as a flag; the
    records that hold one are still read)."""
    given = given_flags(args, StudyConfig)
    check_recipe_flag(given)
    cfg = study_config(**given)
    run_study(
        cfg,
        args.out,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
        detector=args.detector,
        published=args.published,
        publish_to=args.publish,
    )
    if args.published:
        # The published studies are the real results: shown on the terminal, not only in
        # the report (the quick run beside them checks the pipeline).
        print("\n".join(published_section(read_published(args.published))))
    return 0
