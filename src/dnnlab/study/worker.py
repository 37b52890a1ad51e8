"""One study run in its own process: `python -m dnnlab.study.worker STUDY_DIR RUN` (RUN: a
variant, or VARIANT-seedK, cifar.config.run_name).

Started by `run_study` when jobs > 1. It reads the study's settings from STUDY_DIR/study.json,
so a worker always runs exactly the study its parent recorded; DNNLAB_THREADS sets its share
of the CPU threads. Exit status 0 when the run is trained and probed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from dnnlab.cifar.config import parse_run_name
from dnnlab.study.config import (
    config_from_record,
    probe_config,
    study_runs,
    train_config,
    whole_splits_config,
)
from dnnlab.study.records import read_study
from dnnlab.study.study import run_variant


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dnnlab.study.worker")
    ap.add_argument("study_dir")
    ap.add_argument("run")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    if os.environ.get("DNNLAB_THREADS"):
        torch.set_num_threads(int(os.environ["DNNLAB_THREADS"]))
    out = Path(args.study_dir)
    rec = read_study(out)
    if rec is None:
        print(f"{out}/study.json: missing; the worker runs only inside a study", file=sys.stderr)
        return 2
    cfg = config_from_record(rec)
    if args.run not in study_runs(cfg):
        print(f"{args.run!r} is not a run of the study in {out}", file=sys.stderr)
        return 2
    tcfg, pcfg = train_config(cfg, *parse_run_name(args.run)), probe_config(cfg)
    log = lambda m: print(m, flush=True)  # noqa: E731
    run_variant(tcfg, pcfg, whole_splits_config(cfg), out, args.overwrite, False, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
