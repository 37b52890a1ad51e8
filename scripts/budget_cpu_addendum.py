"""The published 3-epoch budget study (docs/results/budget-cpu), made verifiable: its
addendum and its manifest. Run once (issue 34); kept as the record of what was done.

The folder was published by `dnnlab study --publish` on 2026-12-03 (commit d58aa91, the
tool's own output), then its study.json was edited by hand in commit 74b67ae: `commits[1]`
and `commit` changed from the recorded "d1740ffe46af-dirty" to "d58aa914167d", and
`stage_seconds.cka` from 0.0 to 286.0 (`report` from 2.8 to 2.5). A record a person changed
is no longer evidence of what the tool did, so study.json was restored to d58aa91's bytes
(`git show d58aa91:docs/results/budget-cpu/study.json`), and what was computed or learnt
later goes into addendum.json, with its own record, here:

- the CKA of base against bn: the study skipped it (variants had failed); a session's script
  computed it afterwards from the same weights with dnnlab.probe.cka_runs, in 286 s on one
  thread under load. Its figure is runs/base/cka_with_bn_val.png.
- the code's commit: the publishing command ran from a checkout of d1740ff with changes
  not yet committed, which the session committed as d58aa91 (its account: RESULTS §10).
  git cannot confirm what the uncommitted changes were; both commits are named.
- each variant's training seconds as its epochs recorded them (metrics.csv, summed): the
  study's stages.json "train" holds one command's wall time, which for gn missed the epoch
  trained in the study's first folder (1660.7 against 2013.3 s).

Then manifest.json lists every file with its sha256 and the command that wrote it.

    python scripts/budget_cpu_addendum.py [--folder docs/results/budget-cpu]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from dnnlab.study.manifest import listed_files, write_manifest
from dnnlab.study.publish import writer_of
from dnnlab.utils.atomic import atomic_write_json

RESTORED_FROM = "d58aa914167d"  # the commit whose study.json the tool wrote
EDITED_IN = "74b67ae3eff3"  # the commit that changed it by hand
CKA_FIGURE = "runs/base/cka_with_bn_val.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default="docs/results/budget-cpu")
    folder = Path(ap.parse_args().folder)
    here = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    epochs = {}
    for metrics in sorted(folder.glob("runs/*/metrics.csv")):
        with open(metrics, newline="") as fh:
            rows = list(csv.DictReader(fh))
        epochs[metrics.parent.name] = round(sum(float(r["seconds"]) for r in rows), 1)
    addendum = {
        "what": "computed or learnt after this study was published; the tool's records in "
        "this folder are as it wrote them",
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "by": f"scripts/budget_cpu_addendum.py at commit {here}",
        "study_json": {
            "restored_from_commit": RESTORED_FROM,
            "hand_edit_undone": EDITED_IN,
            "why": "study.json was edited by hand after publication (commits, stage_seconds); "
            "it is restored to the bytes the tool wrote",
        },
        "cka_base_bn": {
            "file": CKA_FIGURE,
            "seconds": 286.0,
            "how": "dnnlab.probe.cka_runs.cka_between_runs on 1,000 validation images, from "
            "the study's base and bn weights, by the session's script after the study "
            "(which skipped it because variants had failed); one thread, machine under load",
        },
        "code_commit": {
            "recorded": "d1740ffe46af-dirty",
            "committed_as": RESTORED_FROM,
            "note": "the publishing command ran from d1740ff with uncommitted changes that "
            "the session committed as d58aa91; git cannot confirm the uncommitted state",
        },
        "train_seconds_from_epochs": {
            "seconds": epochs,
            "note": "each variant's epochs' seconds summed from its metrics.csv; stages.json's "
            "'train' is one command's wall time and misses work done in an earlier folder "
            "(gn: 1660.7 there)",
        },
    }
    atomic_write_json(folder / "addendum.json", addendum)
    writers = {rel: writer_of(rel) for rel in listed_files(folder)}
    writers["addendum.json"] = addendum["by"]
    writers[CKA_FIGURE] = (
        "dnnlab.probe.cka_runs (a session's script after the study; see addendum.json), "
        "copied by dnnlab study --publish"
    )
    m = write_manifest(
        folder, writers, commit=f"{RESTORED_FROM} (published); manifest by {addendum['by']}"
    )
    print(f"{folder}: addendum.json and manifest.json over {len(m['files'])} files")


if __name__ == "__main__":
    main()
