import json
import re
import shutil
import subprocess
from dataclasses import replace

import pytest
import torch

from dnnlab.cifar.train import RunError, TrainConfig, train
from dnnlab.cli import main
from dnnlab.probe.probe import ProbeConfig
from dnnlab.probe.run import probe_run
from dnnlab.study.study import run_study, study_config


def tiny(tree, models):
    cfg = study_config(models, quick=True, data_root=str(tree))
    return replace(cfg, train_subset=60, epochs=1, n_val=20, test_subset=30, max_per_split=40)


def test_probe_run_and_checkpoint_mismatch(tree, tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig(model="base", epochs=1, batch_size=32, n_val=20, train_subset=50,
                      data_root=str(tree)), run, progress=False)  # fmt: skip
    assert main(["probe", str(run), "--max-per-split", "40", "--layers", "conv1,elu4,avgpool"]) == 0
    out = capsys.readouterr().out
    assert "avgpool" in out and "train20" in out
    rows = json.loads((run / "probe.json").read_text())["rows"]
    assert {(r["split"], r["layer"]) for r in rows} == {
        (s, l) for s in ("train20", "val", "test") for l in ("conv1", "elu4", "avgpool")}
    assert [r["n"] for r in rows if r["layer"] == "conv1"] == [10, 20, 40]  # 20% of 50 = 10
    for f in ("si_train20.png", "si_val_test.png", "csi_train20.png", "csi_val_test.png"):
        assert (run / f).exists()
    assert main(["probe", str(run), "--layers", "conv9"]) == 2
    assert "valid layers" in capsys.readouterr().err
    # A checkpoint whose weights belong to another architecture: name the first bad key.
    ck = torch.load(run / "best.pt", weights_only=False)
    ck["model"]["conv4.weight"] = torch.zeros(256, 128, 1, 1)
    torch.save(ck, run / "best.pt")
    with pytest.raises(RunError, match=r"'conv4.weight' is \(256, 128, 1, 1\) in the checkpoint"):
        probe_run(run, ProbeConfig(splits=("val",)), max_per_split=20)


def test_study_trains_probes_reports_and_resumes(tree, tmp_path):
    cfg = tiny(tree, ["base", "noskip"])
    out = tmp_path / "study"
    run_study(cfg, out, log=lambda *_: None)
    md = (out / "report.md").read_text()
    assert "QUICK" in md and "| Model | Val ACC | Test ACC | SI Val | CSI Val |" in md
    assert "## Skip connection" in md and "| noskip |" in md and "73.29" in md
    page = (out / "report.html").read_text()
    assert page.count("<table>") == 1  # only the skip comparison has two variants here
    assert page.count("data:image/png;base64,") >= 3
    # A second run finds everything done and trains nothing.
    stamp = (out / "runs" / "base" / "best.pt").stat().st_mtime_ns
    run_study(cfg, out, log=lambda *_: None)
    assert (out / "runs" / "base" / "best.pt").stat().st_mtime_ns == stamp
    # Other settings in the same directory are refused rather than mixed in.
    with pytest.raises(RuntimeError, match="other settings"):
        run_study(replace(cfg, epochs=2), out, log=lambda *_: None)
    check_in_chromium(out / "report.html", tmp_path)


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def check_in_chromium(page, tmp_path):
    exe = chromium()
    if not exe:
        pytest.skip("Debian's chromium is not installed and scripts/test.sh could not install "
                    "it here, so the rendered report was not checked in a browser")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([exe, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout  # fmt: skip
    m = re.search(r'data-check="([^"]*)"', dom)
    assert m, "the report's self-check did not run in the browser"
    n_img = page.read_text().count("<img ")
    assert m.group(1) == f"ok {n_img} images 1 tables"
    shot = tmp_path / "report.png"
    subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1200,2000",
                    page.as_uri()], capture_output=True, timeout=120)  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 10_000
