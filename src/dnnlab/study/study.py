"""`dnnlab study`: train and probe a list of variants, then write the comparison report.

Everything is resumable: a variant whose run has summary.json is not trained again, an
interrupted run continues from last.pt, and a probe keeps the (split, layer) rows it has.
With `jobs` > 1 each variant is trained and probed by its own worker process
(dnnlab.study.worker), up to `jobs` at a time; a worker's failure is reported with its
variant and log, the others go on.

study.json records the settings, the fingerprint of the study's inputs (settings that change
results, and the data's identity), the device's name and the study's wall seconds. A rerun
with other settings or other data in the same folder is refused before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

import dnnlab
from dnnlab.cifar.data import default_root, load_cifar10
from dnnlab.cifar.plan import make_split, test_positions
from dnnlab.cifar.rundir import check_run_data
from dnnlab.cifar.train import TrainConfig, train
from dnnlab.errors import InputError
from dnnlab.probe.cka_runs import cka_between_runs
from dnnlab.probe.probe import ProbeConfig
from dnnlab.probe.trained_run import probe_run
from dnnlab.study.config import RESULT_KEYS, StudyConfig, probe_config, train_config
from dnnlab.study.plan import print_plan
from dnnlab.study.publish import git_commit, read_published
from dnnlab.study.records import StudyError, read_study
from dnnlab.study.report import detector_section, write_report
from dnnlab.utils.atomic import atomic_write_json
from dnnlab.utils.lock import folder_lock
from dnnlab.utils.machine import cpu_description
from dnnlab.utils.spare_inputs import check_outputs_spare_inputs


def data_identity(data) -> str:
    """The identity of the loaded CIFAR-10 content (dnnlab.cifar.data's content hash)."""
    return data.identity


def study_fingerprint(cfg: StudyConfig, data_id: str) -> str:
    """A short hash of everything that decides the study's numbers."""
    d = {k: getattr(cfg, k) for k in RESULT_KEYS}
    d["data"] = data_id
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def device_name(device: str) -> str:
    """The card's name (e.g. 'NVIDIA H200') or the CPU's, for the records."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_description()


def _check_same_study(out: Path, cfg: StudyConfig, fp: str, data_id: str, overwrite: bool) -> None:
    prev = read_study(out)
    if prev is None or overwrite:
        return
    diff = [k for k in RESULT_KEYS if prev.get(k) != getattr(cfg, k)]
    if "recipe" in diff and prev.get("recipe") is None and cfg.recipe == "corrected":
        diff.remove("recipe")  # a study from before recipes were recorded: corrected
    if "bf16" in diff and prev.get("bf16") is None:
        diff.remove("bf16")  # a study from before precision was a setting
    if diff:
        was = ", ".join(f"{k}={prev.get(k)!r}" for k in diff)
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


def check_study_data(out: Path, models, data) -> None:
    """Refuse a run of the study's `models` that was trained on other data than `data`."""
    for name in models:
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


def run_variant(tcfg: TrainConfig, pcfg: ProbeConfig, out: Path, overwrite, progress, log):
    """Train (or resume, or skip) the run `tcfg` and probe it under `pcfg` in this process,
    holding the lock of its run directory (a worker process locks its own run, never the
    study)."""
    name = tcfg.model
    run = out / "runs" / name
    with folder_lock(run, "variant"):
        t0 = time.perf_counter()
        if (run / "summary.json").exists() and not overwrite:
            log(f"[{name}] trained already: {run / 'summary.json'}")
        else:
            # An interrupted run (even one stopped before its first checkpoint) continues.
            resume = run.exists() and not overwrite
            log(f"[{name}] {'resuming' if (run / 'last.pt').exists() else 'training'} in {run}")
            train(tcfg, run, resume=resume, overwrite=overwrite, progress=progress)
        add_stage_seconds(run, "train", time.perf_counter() - t0, overwrite)
        log(f"[{name}] probing")
        t0 = time.perf_counter()
        probe_run(run, pcfg, tcfg.data_root, overwrite=overwrite, progress=progress)
        add_stage_seconds(run, "probe", time.perf_counter() - t0)


STAGES_FILE = "stages.json"


def add_stage_seconds(run: Path, stage: str, seconds: float, restart: bool = False) -> None:
    """Add `seconds` of wall time to `stage` in the run's stages.json: the wall seconds each
    stage took, summed over the commands that built it (a cut-off study resumed)."""
    f = run / STAGES_FILE
    try:
        d = {} if restart else json.loads(f.read_text())
    except (OSError, ValueError):
        d = {}
    d = d if isinstance(d, dict) else {}
    d[stage] = round(float(d.get(stage) or 0) + seconds, 1)
    atomic_write_json(f, d)


def stage_seconds(out: Path, models) -> dict:
    """{variant: {train, probe}} from each run's stages.json (what exists)."""
    got = {}
    for m in models:
        try:
            got[m] = json.loads((out / "runs" / m / STAGES_FILE).read_text())
        except (OSError, ValueError):
            continue
    return got


def compare_base_bn(runs: Path, pcfg: ProbeConfig, samples: int, data_root, log) -> None:
    """CKA between the layers of runs/base and runs/bn on `samples` validation images (at
    most the probe's cap), under the probe's settings `pcfg`; recomputed on every study
    command (cheap at that size), so it always matches the current checkpoints."""
    if samples == 0 or not all((runs / m / "best.pt").exists() for m in ("base", "bn")):
        return
    cap = min(samples, pcfg.max_per_split or samples)
    pcfg = ProbeConfig(max_memory=pcfg.max_memory, device=pcfg.device, max_per_split=cap)
    path = cka_between_runs(runs / "base", runs / "bn", pcfg, "val", data_root)
    n = json.loads(path.read_text())["n"]  # fewer than the cap when the split is smaller
    log(f"CKA base vs bn on {n} validation images: {path}")


def worker_env(cfg: StudyConfig, slot: int) -> dict:
    """The environment of worker `slot`: its share of the CPU threads and, with several GPUs
    visible, one of them (round-robin)."""
    env = dict(os.environ)
    src = str(Path(dnnlab.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in [env.get("PYTHONPATH")] if p])
    threads = max(1, (os.cpu_count() or 1) // min(cfg.jobs, len(cfg.models)))
    env["OMP_NUM_THREADS"] = env["DNNLAB_THREADS"] = str(threads)
    if cfg.device == "cuda":
        n = torch.cuda.device_count()
        if n > 1:
            visible = env.get("CUDA_VISIBLE_DEVICES")
            ids = visible.split(",") if visible else [str(i) for i in range(n)]
            env["CUDA_VISIBLE_DEVICES"] = ids[slot % len(ids)]
    return env


def _run_workers(cfg: StudyConfig, out: Path, overwrite: bool, log) -> list[str]:
    """Each variant in its own worker process, `cfg.jobs` at a time; returns the failures."""
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    failures = []

    def one(item):
        slot, name = item
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
        else:
            tail = path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            msg = f"[{name}] FAILED (exit {rc}): {tail[0]}; log: {path}"
            log(msg)
            failures.append(msg)

    with ThreadPoolExecutor(max_workers=cfg.jobs) as pool:
        list(pool.map(one, enumerate(cfg.models)))
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
) -> dict:
    """Train, probe and report every variant of cfg.models under `out`.

    Every input (settings, data, detector folder, published folder, earlier records in
    `out`) is checked before any training starts; `out` is never one of them, and one
    process at a time writes it (its lock, held here; workers lock their own runs)."""
    out = Path(out)
    check_outputs_spare_inputs(
        [detector, published, cfg.data_root or default_root()], out, owned=True
    )
    with folder_lock(out):
        return _run_study_locked(cfg, out, overwrite, progress, log, detector, published, plan)


def _run_study_locked(
    cfg: StudyConfig, out: Path, overwrite, progress, log, detector, published, plan
) -> dict:
    """run_study once the study folder's lock is held."""
    det = check_detector(detector)
    pub = read_published(published) if published is not None else None
    data = load_cifar10(cfg.data_root)
    data_id = data_identity(data)
    fp = study_fingerprint(cfg, data_id)
    _check_same_study(out, cfg, fp, data_id, overwrite)
    if not overwrite:
        check_study_data(out, cfg.models, data)
    runs = {m: train_config(cfg, m) for m in cfg.models}
    check_budget(data, cfg.n_val, cfg.train_subset, cfg.test_subset, runs[cfg.models[0]].seed)
    if cfg.cka_samples and not {"base", "bn"} <= set(cfg.models):
        log("note: no CKA of base against bn (--cka-samples): the study lacks base or bn")
    if plan:
        print_plan(runs, cfg.jobs, out, data, log)
    del data
    out.mkdir(parents=True, exist_ok=True)
    prev = read_study(out) or {}
    record = {
        **asdict(cfg),
        "models": list(cfg.models),
        "data_identity": data_id,
        "fingerprint": fp,
        "device_name": device_name(cfg.device),
        "wall_seconds": prev.get("wall_seconds"),  # the earlier commands', if this is cut off
        "commits": code_commits(prev),
    }
    atomic_write_json(out / "study.json", record)
    t_start = time.perf_counter()
    pcfg = probe_config(cfg)
    if cfg.jobs > 1 and len(cfg.models) > 1:
        failures = _run_workers(cfg, out, overwrite, log)
    else:
        failures = []
        for name in cfg.models:
            run_variant(runs[name], pcfg, out, overwrite, progress, log)
    t_cka = time.perf_counter()
    if not failures and {"base", "bn"} <= set(cfg.models):
        compare_base_bn(out / "runs", pcfg, cfg.cka_samples, cfg.data_root, log)
    t_report = time.perf_counter()
    wall = t_report - t_start
    # Wall seconds add up over the commands that built the study (a cut-off study resumed).
    record["wall_seconds"] = round(wall + (prev.get("wall_seconds") or 0), 1)
    record["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stages = {"variants": stage_seconds(out, cfg.models), "cka": round(t_report - t_cka, 1)}
    record["stage_seconds"] = stages
    try:  # the report reads the settings study.json got at the start; its times come after
        report = write_report(out, [detector_section(det)] if det else [], published=pub)
    finally:  # kept even when the report fails: a resumed study adds to them
        stages["report"] = round(time.perf_counter() - t_report, 1)
        atomic_write_json(out / "study.json", record)
    log(f"study done in {wall:.0f} s; report: {report}")
    if failures:
        raise StudyError(
            f"{len(failures)} of {len(cfg.models)} variants failed:\n  " + "\n  ".join(failures)
        )
    return {"report": str(report), "wall_seconds": wall}


def code_commits(prev: dict) -> list[str]:
    """The commits of dnnlab's code that built the study: the earlier commands' (from the
    previous study.json) and this one's, when it runs from a git checkout."""
    commits = [c for c in prev.get("commits") or [] if isinstance(c, str)]
    here = git_commit(Path(dnnlab.__file__).resolve().parent, fallback=False)
    return commits + ([here] if here and here not in commits else [])
