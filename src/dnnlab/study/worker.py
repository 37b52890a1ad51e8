"""One study variant in its own process: `python -m dnnlab.study.worker STUDY_DIR VARIANT`.

Started by `run_study` when jobs > 1. It reads the study's settings from STUDY_DIR/study.json,
so a worker always runs exactly the study its parent recorded; DNNLAB_THREADS sets its share
of the CPU threads. Exit status 0 when the variant is trained and probed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from dnnlab.study.config import config_from_record, probe_config, train_config
from dnnlab.study.records import read_study
from dnnlab.study.study import run_variant


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dnnlab.study.worker")
    ap.add_argument("study_dir")
    ap.add_argument("variant")
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
    if args.variant not in cfg.models:
        print(f"{args.variant!r} is not a variant of the study in {out}", file=sys.stderr)
        return 2
    tcfg, pcfg = train_config(cfg, args.variant), probe_config(cfg)
    log = lambda m: print(m, flush=True)  # noqa: E731
    run_variant(tcfg, pcfg, out, args.overwrite, False, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
