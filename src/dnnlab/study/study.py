"""`dnnlab study`: train and probe a list of variants, then write the comparison report.

Everything is resumable: a variant whose run has summary.json is not trained again, an
interrupted run continues from last.pt, and a probe keeps the (split, layer) rows it has.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from dnnlab.cifar.models import VARIANTS
from dnnlab.cifar.train import TrainConfig, train
from dnnlab.probe.probe import ProbeConfig
from dnnlab.probe.run import probe_run
from dnnlab.utils.atomic import atomic_write_json


@dataclass
class StudyConfig:
    models: tuple[str, ...] = tuple(VARIANTS)
    quick: bool = False
    device: str = "cpu"
    data_root: str | None = None
    # Full recipe by default; the quick budget (below) is for a 2-core CPU in < 20 minutes.
    train_subset: int | None = None
    epochs: int = 100
    n_val: int = 5000
    test_subset: int | None = None
    max_per_split: int | None = None
    probe_memory: str = "4GB"
    compile: bool = False


QUICK = dict(train_subset=1000, epochs=3, n_val=500, test_subset=1000, max_per_split=300)


def study_config(models=None, quick=False, **kw) -> StudyConfig:
    cfg = StudyConfig(models=tuple(models) if models else tuple(VARIANTS), quick=quick, **kw)
    if quick:
        cfg = replace(cfg, **QUICK)
    unknown = [m for m in cfg.models if m not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown model {unknown}; choose from: {', '.join(VARIANTS)}")
    return cfg


def _check_same_study(out: Path, cfg: StudyConfig, overwrite: bool) -> None:
    f = out / "study.json"
    if not f.exists() or overwrite:
        return
    prev = json.loads(f.read_text())
    mine = asdict(cfg)
    keys = ("quick", "train_subset", "epochs", "n_val", "test_subset", "max_per_split")
    diff = [k for k in keys if prev.get(k) != mine.get(k)]
    if diff:
        was = ", ".join(f"{k}={prev.get(k)}" for k in diff)
        raise RuntimeError(
            f"{out} holds a study with other settings ({was}); use another --out, or "
            "--overwrite to replace it"
        )


def run_study(cfg: StudyConfig, out, overwrite: bool = False, progress: bool = False,
              log=print, detector: str | None = None) -> dict:  # fmt: skip
    """Train, probe and report every variant of cfg.models under `out`."""
    from dnnlab.study.report import detector_section, write_report

    out = Path(out)
    _check_same_study(out, cfg, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "study.json", asdict(cfg))
    t_start = time.perf_counter()
    for name in cfg.models:
        run = out / "runs" / name
        tcfg = TrainConfig(model=name, epochs=cfg.epochs, n_val=cfg.n_val,
                           train_subset=cfg.train_subset, test_subset=cfg.test_subset,
                           device=cfg.device, data_root=cfg.data_root,
                           compile=cfg.compile)  # fmt: skip
        if (run / "summary.json").exists() and not overwrite:
            log(f"[{name}] trained already: {run / 'summary.json'}")
        else:
            # An interrupted run (even one stopped before its first checkpoint) continues.
            resume = run.exists() and not overwrite
            log(f"[{name}] {'resuming' if (run / 'last.pt').exists() else 'training'} in {run}")
            train(tcfg, run, resume=resume, overwrite=overwrite, progress=progress)
        pcfg = ProbeConfig(max_memory=cfg.probe_memory, device=cfg.device)
        log(f"[{name}] probing")
        probe_run(run, pcfg, cfg.data_root, cfg.max_per_split, overwrite=overwrite,
                  progress=progress)  # fmt: skip
    extra = [detector_section(Path(detector))] if detector else []
    report = write_report(out, cfg, extra)
    log(f"study done in {time.perf_counter() - t_start:.0f} s; report: {report}")
    return {"report": str(report)}
