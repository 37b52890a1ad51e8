"""scripts/main.sh, the README's main job, wired as the commands it calls accept.

The job itself takes half an hour with real data, so this runs the script with a stand-in
`dnnlab` that records each call; the real commands' checks on those calls are then applied.
A main job that put the detector inside the study folder (which the study refuses, as it
may replace that folder as a whole) failed only at its last step, after the detector's
build and training."""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dnnlab.utils.spare_inputs import output_clash

ROOT = Path(__file__).resolve().parents[1]

# Records its arguments; `detect build` and `detect train` leave what main.sh looks for.
FAKE_DNNLAB = """#!{python}
import json, sys
from pathlib import Path
args = sys.argv[1:]
with open({log!r}, "a") as fh:
    fh.write(json.dumps(args) + "\\n")
if args[:2] == ["detect", "build"]:
    out = Path(next(a for a in args if a.startswith("--out=")).removeprefix("--out="))
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.csv").write_text("")
if args[:2] == ["detect", "train"]:
    (Path(args[2]) / "model.pt").write_text("")
"""


def flag(args: list[str], name: str) -> str:
    """The value of `name` in a recorded call, given as `--name=VALUE` (so that a value
    starting with '-' is not read as a flag) or `--name VALUE`."""
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a[len(name) + 1 :]
        if a == name:
            return args[i + 1]
    raise AssertionError(f"{name} not in {args}")


def fake_checkout(tmp_path) -> tuple[Path, Path]:
    """(a copy of the repository's scripts with a ready .venv whose `dnnlab` is the
    stand-in, the file the stand-in logs its calls to)."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for f in ("main.sh", "env.sh"):
        shutil.copy2(ROOT / "scripts" / f, repo / "scripts" / f)
    shutil.copy2(ROOT / "pyproject.toml", repo / "pyproject.toml")
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    stamp = hashlib.sha256((repo / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (repo / ".venv" / ".dnnlab-stamp").write_text(stamp + "\n")  # env.sh: set up already
    log = tmp_path / "calls.jsonl"
    fake = venv_bin / "dnnlab"
    fake.write_text(FAKE_DNNLAB.format(python=sys.executable, log=str(log)))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return repo, log


@pytest.mark.slow
@pytest.mark.parametrize(
    "study_out, cats_name, n_photos",
    [
        (None, "cats", 4),
        ("my-study/", "cats", 4),
        ("my-study//", "cats", 4),
        ("my-study/./", "cats", 4),  # the same folder: its detector beside it, not inside
        # Spaces in the cat set's path; a folder whose listing overflows a pipe (`ls | head`
        # under pipefail ended the job on SIGPIPE after the detector's training).
        ("my study", "my cats", 3000),
        ("-study", "cats", 4),  # a name argparse would read as a flag after a space
    ],
)
def test_main_job_calls_fit_together(tmp_path, study_out, cats_name, n_photos):
    repo, log = fake_checkout(tmp_path)
    cats = tmp_path / cats_name
    (cats / "valid").mkdir(parents=True)
    for i in range(n_photos):
        (cats / "valid" / f"photo {i:05d}.jpg").write_bytes(b"")
    env = {
        **os.environ,
        "DNNLAB_DATA": str(tmp_path / "cifar.tar.gz"),
        "DNNLAB_CATS": str(cats),
        "DNNLAB_BACKBONE": str(tmp_path / "w.pth"),
    }
    env.pop("DNNLAB_STUDY_OUT", None)
    if study_out:
        env["DNNLAB_STUDY_OUT"] = study_out
    res = subprocess.run(
        ["bash", "scripts/main.sh"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[:2] for c in calls] == [
        ["detect", "build"],
        ["detect", "train"],
        ["detect", "eval"],
        ["detect", "run"],
        ["reproduce", "docs/results/budget-cpu/runs/base"],  # no 10-epoch run in the copy
    ]
    study = calls[-1]
    assert flag(study, "--epochs") == "1"
    out, detector = repo / flag(study, "--out"), repo / flag(study, "--detector")
    published = repo / flag(study, "--published")
    assert detector == repo / flag(calls[0], "--out")
    assert f"--out={flag(study, '--out')}" in study  # one word: "-study" is no flag
    run = calls[3]
    photos = [a for a in run[2:] if not a.startswith("--")]
    assert len(photos) == 3 and all(Path(p).is_file() for p in photos)
    # reproduce's own check before any work.
    assert output_clash([detector, published, env["DNNLAB_DATA"]], out, owned=True) is None


@pytest.mark.parametrize("study_out", ["/", ".", "./", "..", "my-study/..", "/."])
def test_main_job_refuses_a_study_folder_without_a_name(tmp_path, study_out):
    repo, log = fake_checkout(tmp_path)
    env = {
        **os.environ,
        "DNNLAB_DATA": str(tmp_path / "cifar.tar.gz"),
        "DNNLAB_STUDY_OUT": study_out,
    }
    res = subprocess.run(
        ["bash", "scripts/main.sh"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert res.returncode == 2
    assert f"DNNLAB_STUDY_OUT={study_out}: name the main job's own folder" in res.stderr
    assert not log.exists()  # refused before any command ran


def test_main_job_reproduces_the_10_epoch_run_once_published(tmp_path):
    repo, log = fake_checkout(tmp_path)
    (repo / "docs/results/clipped-cpu/runs/base").mkdir(parents=True)
    env = {**os.environ, "DNNLAB_DATA": str(tmp_path / "cifar.tar.gz")}
    env.pop("DNNLAB_CATS", None)
    env.pop("DNNLAB_STUDY_OUT", None)
    res = subprocess.run(
        ["bash", "scripts/main.sh"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[:2] for c in calls] == [["reproduce", "docs/results/clipped-cpu/runs/base"]]
    assert flag(calls[0], "--out") == "main-job"
