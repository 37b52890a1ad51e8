"""benchmarks/full_study_gpu.sh, the prepared GPU script of the full study, run on the CPU."""

import subprocess
import sys

import pytest

from tests.fakes import make_image_tree


@pytest.mark.slow
def test_full_study_gpu_script_logic_on_the_cpu(tmp_path):
    """benchmarks/full_study_gpu.sh end to end on a tiny CPU budget: both recipes published,
    the throughput ratio printed, one archive without weights."""
    import os
    import tarfile
    from pathlib import Path

    from tests.fakes import make_tar

    repo = Path(__file__).resolve().parents[1]
    tree = make_image_tree(tmp_path / "tree", n_train=8, n_test=3)
    data = make_tar(tree, tmp_path / "fake.tar.gz")
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "COMPILE": "0",
        "EPOCHS": "1",
        "STUDY_ARGS": "--val-size 20 --test-subset 30 --max-per-split 40",
        "TRAIN_ARGS": "--val-size 20",
        "MODELS": "base,noskip",
        "JOBS": "2",
        "ALONE_EPOCHS": "2",
        "DATA": str(data),
        "OUT": str(tmp_path / "o"),
        "WORK": str(tmp_path / "w"),
        "PYTHON": sys.executable,
        "DNNLAB_CACHE": str(tmp_path / "cache"),
    }
    r = subprocess.run(
        ["bash", str(repo / "benchmarks" / "full_study_gpu.sh")],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "ratio concurrent / alone:" in r.stdout
    assert "== CUDA tests" in r.stdout  # run (all skipped on a CPU) or said to be skipped
    with tarfile.open(tmp_path / "o" / "full-study.tar.gz") as tf:
        names = tf.getnames()
    assert not [n for n in names if n.endswith(".pt")]
    for recipe in ("corrected", "course"):
        for f in (
            "study.json",
            "report.md",
            "report.html",
            "runs/base/summary.json",
            "runs/noskip/probe.csv",
            "runs/base/metrics.csv",
            "runs/base/config.json",
        ):
            assert f"published/full-study-{recipe}/{f}" in names, (recipe, f)
    assert "throughput.txt" in names and "info.txt" in names
