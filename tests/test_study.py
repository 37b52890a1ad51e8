import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import replace

import pytest
import torch

import dnnlab.study.study as S
from dnnlab.cifar.train import RunError, TrainConfig, train
from dnnlab.cli import main
from dnnlab.errors import ConfigError, InputError
from dnnlab.probe.probe import ProbeConfig
from dnnlab.probe.trained_run import probe_run
from dnnlab.study.config import study_config
from dnnlab.study.manifest import read_manifest, verify, write_manifest
from dnnlab.study.publish import publish, read_published
from dnnlab.study.report import write_report
from dnnlab.study.study import StudyError, run_study
from tests.fakes import (
    cli,
    make_image_tree,
    quiet,
    raises_naming,
    refused_to_write_over,
    tiny_study_config,
)
from tests.page_oracle import assert_page_says_what_markdown_says


@pytest.mark.slow
def test_probe_run_and_checkpoint_mismatch(tree, tmp_path, capsys):
    run = tmp_path / "run"
    train(
        TrainConfig(
            model="base", epochs=1, batch_size=32, n_val=20, train_subset=50, data_root=str(tree)
        ),
        run,
        progress=False,
    )
    assert main(["probe", str(run), "--max-per-split", "40", "--layers", "conv1,elu4,avgpool"]) == 0
    out = capsys.readouterr().out
    assert "avgpool" in out and "train20" in out
    rows = json.loads((run / "probe.json").read_text())["rows"]
    assert {(r["split"], r["layer"]) for r in rows} == {
        (s, l) for s in ("train20", "val", "test") for l in ("conv1", "elu4", "avgpool")
    }
    assert [r["n"] for r in rows if r["layer"] == "conv1"] == [10, 20, 40]  # 20% of 50 = 10
    for f in ("si_train20.png", "si_val_test.png", "csi_train20.png", "csi_val_test.png"):
        assert (run / f).exists()
    assert main(["probe", str(run), "--layers", "conv9"]) == 2
    assert "valid layers" in capsys.readouterr().err
    # A checkpoint whose weights belong to another architecture: name the first bad key.
    ck = torch.load(run / "best.pt", weights_only=True)
    ck["model"]["conv4.weight"] = torch.zeros(256, 128, 1, 1)
    torch.save(ck, run / "best.pt")
    with raises_naming(RunError, "'conv4.weight'", "(256, 128, 1, 1)", "checkpoint"):
        probe_run(run, ProbeConfig(splits=("val",), max_per_split=20))


@pytest.mark.slow
def test_study_trains_probes_reports_and_resumes(tree, tmp_path):
    cfg = tiny_study_config(tree, ["base", "noskip"])
    out = tmp_path / "study"
    run_study(cfg, out, log=lambda *_: None)
    md = (out / "report.md").read_text()
    assert "QUICK" in md and "| Model | Seeds | Val ACC | Test ACC | SI Val | CSI Val |" in md
    assert "## Skip connection" in md and "| noskip |" in md and "73.29" in md
    # The budget comes from the runs' records: 60 training images, 20 validation images.
    assert "60 training images, 1 epochs, 20 validation images, test on 30 images" in md
    rec = json.loads((out / "study.json").read_text())
    assert rec["recipe"] == "corrected" and rec["fingerprint"] and rec["wall_seconds"] > 0
    assert rec["device_name"].startswith("CPU")
    page = (out / "report.html").read_text()
    # The skip comparison (the only one with two variants here) and the last layers on the
    # whole splits.
    assert page.count("<table>") == 2
    assert page.count("data:image/png;base64,") >= 3
    assert_page_says_what_markdown_says(out)  # rendered from report.md: the same tables
    # A second run finds everything done and trains nothing.
    stamp = (out / "runs" / "base" / "best.pt").stat().st_mtime_ns
    run_study(cfg, out, log=lambda *_: None)
    assert (out / "runs" / "base" / "best.pt").stat().st_mtime_ns == stamp
    # Other settings in the same directory are refused rather than mixed in.
    with pytest.raises(RuntimeError, match="other settings"):
        run_study(replace(cfg, epochs=2), out, log=lambda *_: None)
    check_in_chromium(out / "report.html", tmp_path)


@pytest.mark.slow
def test_a_failed_report_keeps_the_study_times(tree, tmp_path, monkeypatch):
    def broken_report(*_, **__):
        raise OSError("disk full")

    out = tmp_path / "study"
    monkeypatch.setattr(S, "write_report", broken_report)
    with pytest.raises(OSError, match="disk full"):
        run_study(tiny_study_config(tree, ["base"]), out, log=quiet)
    rec = json.loads((out / "study.json").read_text())
    assert rec["wall_seconds"] > 0 and set(rec["stage_seconds"]) == {"variants", "cka", "report"}
    assert rec["stage_seconds"]["variants"]["base"]["train"] > 0
    monkeypatch.undo()
    # Resumed with one more variant (base is finished and not touched): the times add up.
    run_study(tiny_study_config(tree, ["base", "noskip"]), out, log=quiet)
    again = json.loads((out / "study.json").read_text())
    assert again["wall_seconds"] > rec["wall_seconds"]
    assert again["stage_seconds"]["variants"]["base"] == rec["stage_seconds"]["variants"]["base"]
    assert (out / "report.html").exists()


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def check_in_chromium(page, tmp_path):
    exe = chromium()
    if not exe:
        pytest.skip(
            "Debian's chromium is not installed and scripts/test.sh could not install "
            "it here, so the rendered report was not checked in a browser"
        )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome'}",
        "--virtual-time-budget=5000",
    ]
    dom = subprocess.run(
        [exe, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    m = re.search(r'data-check="([^"]*)"', dom)
    assert m, "the report's self-check did not run in the browser"
    n_img, n_tables = page.read_text().count("<img "), page.read_text().count("<table>")
    assert n_tables == 2  # the skip comparison and the last layers on the whole splits
    assert m.group(1) == f"ok {n_img} images {n_tables} tables"
    shot = tmp_path / "report.png"
    subprocess.run(
        [exe, *flags, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 10_000


@pytest.mark.slow
def test_report_figures_are_the_recorded_ones(tree, tmp_path):
    """No subset asked: the report says what the run used (120 of this tiny data), not the
    full set's 45,000 that the settings imply."""
    out = tmp_path / "s"
    run_study(tiny_study_config(tree, ["base"], train_subset=None), out, log=quiet, plan=False)
    md = (out / "report.md").read_text()
    assert "120 training images" in md and "45000" not in md


def test_study_inputs_are_checked_before_any_work(tree, tmp_path, capsys):
    out = tmp_path / "s"
    with pytest.raises(SystemExit) as e:
        main(["study", "--models", "", "--out", str(out), "--data-root", str(tree)])
    assert e.value.code == 2 and "names nothing" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--models: names no variant"):
        study_config([])
    with pytest.raises(ConfigError, match="unknown model 'vgg'; choose from: base, bn"):
        study_config(["base", "vgg"])
    assert main(cli("study", models="base", out=out, data_root=tree, detector="/nonexistent")) == 2
    assert "--detector: /nonexistent is not a folder" in capsys.readouterr().err
    assert main(cli("study", models="base", out=out, data_root=tree, epochs="0")) == 2
    assert "--epochs: 0 is out of range" in capsys.readouterr().err
    assert main(cli("study", models="base", out=out, data_root=tree, jobs="0")) == 2
    assert "--jobs: 0 is out of range" in capsys.readouterr().err
    assert not out.exists()
    # CKA of base against bn needs 4 images: a cap below that is refused before any training,
    # and is no concern when the study has no CKA.
    for flags in (dict(cka_samples="3"), dict(max_per_split="2")):
        assert main(cli("study", models="base,bn", out=out, data_root=tree, **flags)) == 2
        assert "--cka-samples: the CKA of base against bn would use" in capsys.readouterr().err
    assert not out.exists()
    assert study_config(["base", "bn"], max_per_split=2, cka_samples=0).max_per_split == 2
    assert study_config(["base", "noskip"], max_per_split=2).max_per_split == 2


@pytest.mark.slow
def test_rerun_with_other_data_is_refused(tree, tmp_path):
    out = tmp_path / "s"
    cfg = tiny_study_config(tree, ["base"])
    run_study(cfg, out, log=quiet, plan=False)
    other = make_image_tree(tmp_path / "other", n_train=14, n_test=5, seed=7)
    stamp = (out / "runs" / "base" / "best.pt").stat().st_mtime_ns
    with pytest.raises(StudyError, match="other data"):
        run_study(replace(cfg, data_root=str(other)), out, log=quiet, plan=False)
    assert (out / "runs" / "base" / "best.pt").stat().st_mtime_ns == stamp


def test_report_and_publish_need_the_study_record(tmp_path):
    """The report and a publication are made from the folder's records: without study.json,
    or with one whose settings are not a study's, they name the file and write nothing."""
    out = tmp_path / "s"
    (out / "runs").mkdir(parents=True)
    for make in (lambda: write_report(out), lambda: publish(out, tmp_path / "pub")):
        with pytest.raises(StudyError, match=r"study\.json: missing"):
            make()
    (out / "study.json").write_text(json.dumps({"models": ["nope"], "epochs": 1}))
    with pytest.raises(StudyError, match=r"study\.json: settings that are not a study's"):
        write_report(out)
    # Settings left out are not filled with defaults (a quick study would report as a full one).
    full = dict(models=["base"], quick=True, train_subset=60, epochs=1, n_val=20)
    full.update(test_subset=30, max_per_split=40, measures="si")
    for record, what in (
        ({"epochs": 1}, "(no models, quick, train_subset, n_val, test_subset"),
        ({**full, "models": "base"}, "(models: 'base' is not a list of variant names)"),
        ({**full, "measures": 5}, "(measures (--measures): 5 is not text)"),
        ({**full, "recipe": ["budget"]}, "(recipe (--recipe): ['budget'] is not one of"),
        ({**full, "probe_memory": "lots"}, "(probe_memory: cannot read 'lots' as a size"),
        ({**full, "device": "gpu"}, "(device (--device): 'gpu' is not cpu, cuda or cuda:N)"),
        # probe_memory has no flag: named by its key alone; non-finite and huge numbers are
        # refused as the others, not with an OverflowError or a ValueError.
        ({**full, "probe_memory": None}, "(probe_memory: a value is required)"),
        ({**full, "probe_memory": float("nan")}, "(probe_memory: a memory size must be a"),
        ({**full, "epochs": 10**400}, f"(epochs (--epochs): {10**400} is out of range"),
    ):
        (out / "study.json").write_text(json.dumps(record, allow_nan=True))
        for make in (lambda: write_report(out), lambda: publish(out, tmp_path / "pub")):
            with pytest.raises(StudyError, match=re.escape(what)):
                make()
    assert not (out / "report.md").exists() and not (tmp_path / "pub").exists()


def test_report_links_extra_figures_from_where_it_is(tmp_path):
    """The detector's photos are linked relative to report.md, inside the study folder or
    beside it (the main job keeps its detector beside the study), and embedded in the HTML."""
    from PIL import Image

    out = tmp_path / "s"
    (out / "runs").mkdir(parents=True)
    record = dict(models=["base"], quick=True, train_subset=60, epochs=1, n_val=20)
    record.update(test_subset=30, max_per_split=40, measures="si")
    (out / "study.json").write_text(json.dumps(record))
    inside, beside = out / "det" / "a.jpg", tmp_path / "s-detector" / "photos" / "b.jpg"
    odd = tmp_path / "s-detector" / "photos" / "cat (1).jpg"  # a link ends at ' ' or ')'
    odd.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(odd)
    for pic in (inside, beside):
        pic.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(pic)
    write_report(out, [("Cat detector (R-CNN style)", "AP50 0.9", [inside, beside, odd])])
    md = (out / "report.md").read_text()
    assert "![a](det/a.jpg)" in md and "![b](../s-detector/photos/b.jpg)" in md
    assert "(../s-detector/photos/cat%20%281%29.jpg)" in md
    for link in ("det/a.jpg", "../s-detector/photos/b.jpg"):
        assert (out / link).is_file()
    # Each embedded in the page from the file its link names (the oracle reads the files).
    page = assert_page_says_what_markdown_says(out)
    assert [alt for alt, _ in page["images"]] == ["a", "b", "cat (1)"]


@pytest.mark.slow
def test_report_leaves_out_runs_whose_records_do_not_match(tree, tmp_path):
    out = tmp_path / "s"
    cfg = tiny_study_config(tree, ["base", "noskip"])
    run_study(cfg, out, log=quiet, plan=False)
    c = json.loads((out / "runs" / "noskip" / "config.json").read_text())
    (out / "runs" / "noskip" / "config.json").write_text(json.dumps({**c, "epochs": 7}))
    write_report(out)
    md = (out / "report.md").read_text()
    assert "| noskip |" not in md and "## Skip connection" not in md
    assert "Left out of the tables: `noskip`" in md and "epochs=7" in md


@pytest.mark.slow
def test_published_tables_and_publish(tree, tmp_path):
    out = tmp_path / "s"
    cfg = tiny_study_config(tree, ["base", "noskip"])
    empty = tmp_path / "results"
    empty.mkdir()
    run_study(cfg, out, log=quiet, plan=False, published=empty)
    assert "No study results are published yet" in (out / "report.md").read_text()
    # Publish this study as if it were a full one; then a quick report shows its table.
    done = publish(out, empty / "full-study-corrected", commit="abc123")
    assert done == (["base", "noskip"], True)
    pub = empty / "full-study-corrected"
    assert sorted(p.name for p in (pub / "runs" / "base").iterdir() if p.suffix != ".png") == [
        "config.json",
        "metrics.csv",
        "probe.csv",
        "probe.json",
        "stages.json",
        "summary.json",
        "test_predictions.json",
        "whole-splits",
    ]
    assert sorted(p.name for p in (pub / "runs" / "base" / "whole-splits").glob("probe.*")) == [
        "probe.csv",
        "probe.json",
    ]
    assert not list(pub.rglob("*.pt"))
    assert verify(pub)["files"]["runs/base/config.json"]["writer"].startswith("dnnlab train")
    assert (pub / "report.html").exists() and (pub / "report.md").exists()
    rec = json.loads((pub / "study.json").read_text())
    assert rec["commit"] == "abc123" and rec["published_variants"] == ["base", "noskip"]
    # A published file changed by hand: the folder is refused, named, and nothing is shown.
    s = json.loads((pub / "runs" / "noskip" / "summary.json").read_text())
    (pub / "runs" / "noskip" / "summary.json").write_text(json.dumps({**s, "recipe": "course"}))
    p = read_published(empty)
    why = p["refused"][0]["why"]
    assert p["studies"] == [] and "1 file changed since it was published" in why
    assert "runs/noskip/summary.json" in why
    write_report(out, published=p)
    md = (out / "report.md").read_text()
    assert "Refused, nothing shown from it: " in md and "| base | 73.29 |" not in md
    # A run whose summary does not match its study (in a folder whose manifest lists it as
    # it is) is left out of the published table.
    m = read_manifest(pub)
    write_manifest(pub, {k: v["writer"] for k, v in m["files"].items()}, "abc123")
    p = read_published(empty)
    assert [st["recipe"] for st in p["studies"]] == ["corrected"]
    assert set(p["studies"][0]["rows"]) == {"base"} and p["studies"][0]["left_out"] == ["noskip"]
    base_summary = json.loads((out / "runs" / "base" / "summary.json").read_text())
    write_report(out, published=p)
    md = (out / "report.md").read_text()
    assert "## Published studies (measured results, read from the repository)" in md
    assert "corrected recipe: QUICK budget, 1 epochs of" in md and "commit abc123" in md
    assert f"| base | 73.29 | {100 * base_summary['test_acc']:.2f} |" in md
    assert "left out (records do not match): noskip" in md


@pytest.mark.slow
def test_a_lost_study_folder_goes_on_from_its_publication(tree, tmp_path, monkeypatch):
    """A new session's machine has lost the study folder (weights and all); the publication
    is in the repository. The same study command on a new --out adopts the published runs
    (no training, no probing: their weights are gone), trains only what is missing, and
    publishes all of them, with the first machine's weights entries."""
    cfg = tiny_study_config(tree, ["base", "noskip"])
    pub = tmp_path / "results" / "study"
    run_study(cfg, tmp_path / "first", log=quiet, plan=False, publish_to=pub)
    before = json.loads((pub / "study.json").read_text())
    weights = json.loads((pub / "weights.json").read_text())["runs"]
    # As a publication from before probe.json was published: probe.csv alone (the manifest
    # rewritten as the tool writes it, so the folder is an untouched publication).
    (pub / "runs" / "noskip" / "probe.json").unlink()
    m = read_manifest(pub)
    files = {k: v["writer"] for k, v in m["files"].items() if k != "runs/noskip/probe.json"}
    write_manifest(pub, files, m.get("commit"))
    report = (tmp_path / "first" / "report.md").read_text()

    def no_training(*_, **__):
        raise AssertionError("a published run was trained again")

    monkeypatch.setattr(S, "train", no_training)
    monkeypatch.setattr(S, "probe_run", no_training)
    out = tmp_path / "second"
    seen = []
    run_study(cfg, out, log=seen.append, plan=False, publish_to=pub)
    assert "[base] finished already (trained and probed)" in seen
    # The same report from the published records (probe.csv's rows for noskip).
    assert (out / "report.md").read_text() == report
    after = json.loads((pub / "study.json").read_text())
    assert after["published_variants"] == ["base", "noskip"]
    assert after["commits"] == before["commits"] and after["runs"] == before["runs"]
    assert json.loads((pub / "weights.json").read_text())["runs"] == weights
    adopted = json.loads((out / "runs" / "base" / "adopted.json").read_text())
    assert adopted["publication"] == str(pub.resolve()) and adopted["weights"] == weights["base"]
    # A third variant: only it is trained; the two adopted runs stay published.
    monkeypatch.undo()
    run_study(
        replace(cfg, models=("base", "noskip", "bn")), out, log=quiet, plan=False, publish_to=pub
    )
    after = json.loads((pub / "study.json").read_text())
    assert after["published_variants"] == ["base", "noskip", "bn"]
    assert json.loads((pub / "weights.json").read_text())["runs"]["base"] == weights["base"]
    assert (out / "runs" / "bn" / "best.pt").exists()
    assert not (out / "runs" / "bn" / "adopted.json").exists()
    # A command of fewer variants (a later seed, say) on a new folder adopts every published
    # run, not only its own, so its publication keeps them all; it trains nothing here.
    monkeypatch.setattr(S, "train", no_training)
    run_study(cfg, tmp_path / "fifth", log=quiet, plan=False, publish_to=pub)
    after = json.loads((pub / "study.json").read_text())
    assert after["published_variants"] == ["base", "noskip", "bn"]
    monkeypatch.undo()
    # A study folder that lacks a published run cannot publish over it (first has no bn),
    # and --overwrite (every run trained again) is refused a folder that publishes runs.
    with raises_naming(InputError, "--publish", "bn", "drop"):
        publish(tmp_path / "first", pub)
    with raises_naming(InputError, "--publish", "--overwrite", "3 runs"):
        run_study(cfg, out, overwrite=True, log=quiet, plan=False, publish_to=pub)
    # Refused before any work: another study's publication (a new folder must not replace
    # it), and a run the new folder holds unfinished while the publication has it finished.
    with raises_naming(InputError, "--publish", str(pub), "another study"):
        run_study(replace(cfg, epochs=2), tmp_path / "third", log=quiet, plan=False, publish_to=pub)
    assert not (tmp_path / "third" / "runs").exists()
    shutil.copytree(tmp_path / "first", tmp_path / "fourth")  # base cut off before the end:
    (tmp_path / "fourth" / "runs" / "base" / "summary.json").unlink()
    with raises_naming(InputError, "--publish", "base", "unfinished"):  # before any work
        run_study(cfg, tmp_path / "fourth", log=quiet, plan=False, publish_to=pub)
    assert after == json.loads((pub / "study.json").read_text())


@pytest.mark.slow
def test_a_finished_study_run_again_leaves_its_records_and_publication_as_they_are(
    tree, tmp_path, monkeypatch
):
    """A study command whose runs are all finished (a later session's start of a study that
    ended) trains, probes and times nothing: study.json keeps the wall time and date of the
    command that finished it, the CKA is not computed again, and the publication (its
    manifest and date too) is not replaced, because nothing in it would change."""
    cfg = tiny_study_config(tree, ["base", "bn"])
    out, pub = tmp_path / "s", tmp_path / "pub"
    run_study(cfg, out, log=quiet, plan=False, publish_to=pub)
    files = [out / "study.json", out / "report.md", pub / "study.json", pub / "manifest.json"]
    before = {f: f.read_bytes() for f in files}
    inode = (pub / "manifest.json").stat().st_ino  # a publication swapped in is a new file

    def no_work(*_, **__):
        raise AssertionError("a finished study did work again")

    for name in ("train", "probe_run", "cka_between_runs"):
        monkeypatch.setattr(S, name, no_work)
    seen = []
    run_study(cfg, out, log=seen.append, plan=False, publish_to=pub)
    assert any("nothing to train, and study.json is left as it is" in x for x in seen)
    assert f"{pub} left as it was: it holds these 2 runs already (base, bn)" in seen
    assert {f: f.read_bytes() for f in files} == before
    assert (pub / "manifest.json").stat().st_ino == inode
    assert publish(out, pub) == (["base", "bn"], False)  # the same files: left as it is
    publish(out, pub, commit="0123456789ab")  # by a later commit: the same records, likewise
    assert (pub / "manifest.json").stat().st_ino == inode
    assert json.loads((pub / "study.json").read_text())["commit"] != "0123456789ab"
    # Not finished for a command that must add to the record: a run that the publication
    # holds and the folder's record lacks (published by another folder), another CKA size.
    own, runs = json.loads(before[out / "study.json"]), ["base", "bn"]
    assert S.settled(out, own, runs, cfg, json.loads(before[pub / "study.json"]))
    assert not S.settled(out, own, runs, cfg, {"runs": [*runs, "noskip"]})
    assert not S.settled(out, own, runs, replace(cfg, cka_samples=7), None)
    # A report with new inputs (the published studies shown first) is written and
    # published, though nothing was trained.
    shutil.copytree(pub, tmp_path / "others" / "pub")
    run_study(cfg, out, log=quiet, plan=False, publish_to=pub, published=tmp_path / "others")
    assert (out / "report.md").read_bytes() != before[out / "report.md"]
    assert (pub / "report.md").read_bytes() == (out / "report.md").read_bytes()
    assert (out / "study.json").read_bytes() == before[out / "study.json"]
    inode = (pub / "manifest.json").stat().st_ino
    # A command cut off after its runs finished, before its end (no "date" yet), is not
    # finished: the next command ends it and writes its record, publishing that.
    rec = json.loads(before[out / "study.json"])
    del rec["date"]
    (out / "study.json").write_text(json.dumps(rec))
    monkeypatch.undo()  # the CKA is computed again: the cut-off command may not have got to it
    for name in ("train", "probe_run"):
        monkeypatch.setattr(S, name, no_work)
    run_study(cfg, out, log=quiet, plan=False, publish_to=pub)
    again = json.loads((out / "study.json").read_text())
    assert again["date"] and again["wall_seconds"] > rec["wall_seconds"]
    assert json.loads((pub / "study.json").read_text())["date"] == again["date"]
    assert (pub / "manifest.json").stat().st_ino != inode


@pytest.mark.slow
def test_base_bn_cka_is_published_once_both_finish(tree, tmp_path, monkeypatch):
    """A study published run by run has the CKA of base against bn as soon as both are
    finished, not only when the whole study ends: cut off in its third run, the publication
    holds it."""
    real = S.run_variant

    def cut_off_in_noskip(tcfg, *args, **kw):
        if tcfg.model == "noskip":
            raise KeyboardInterrupt
        return real(tcfg, *args, **kw)

    monkeypatch.setattr(S, "run_variant", cut_off_in_noskip)
    pub = tmp_path / "pub"
    with pytest.raises(KeyboardInterrupt):
        run_study(
            tiny_study_config(tree, ["base", "bn", "noskip"]),
            tmp_path / "s",
            log=quiet,
            plan=False,
            publish_to=pub,
        )
    assert (pub / "runs" / "base" / "cka_with_bn_val.png").exists()
    assert "## Representation similarity: base against bn" in (pub / "report.md").read_text()


@pytest.mark.slow
def test_quick_fills_only_the_budget_flags_not_given(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(S, "run_study", lambda cfg, out, **kw: seen.update(cfg=cfg, **kw))
    out = str(tmp_path / "s")
    assert (
        main(
            cli(
                "study",
                quick=True,
                val_size="20",
                models="base,wide",
                recipe="course",
                out=out,
                published="docs/results",
            )
        )
        == 0
    )
    cfg = seen["cfg"]
    assert (cfg.n_val, cfg.train_subset, cfg.epochs, cfg.test_subset, cfg.max_per_split) == (
        20,
        1000,
        3,
        1000,
        300,
    )
    assert cfg.models == ("base", "wide") and cfg.recipe == "course" and cfg.quick
    assert seen["published"] == "docs/results"
    assert main(["study", "--out", out]) == 0
    assert (seen["cfg"].epochs, seen["cfg"].train_subset, seen["cfg"].quick) == (100, None, False)


@pytest.mark.slow
def test_report_has_the_measures_beyond_si_and_base_bn_cka(tree, tmp_path):
    cfg = tiny_study_config(tree, ["base", "bn"])
    out = tmp_path / "study"
    run_study(cfg, out, log=lambda *_: None)
    rows = json.loads((out / "runs" / "bn" / "probe.json").read_text())["rows"]
    for key in ("si", "csi", "knn:5", "nc1", "linear"):
        assert all(key in r for r in rows), key
    # Two images a class per split here: linear is measured; NC1 is a number or, where a
    # layer's class means coincide, NaN with the reason in the row's note.
    assert all(0 <= r["linear"] <= 1 for r in rows)
    assert all(r["nc1"] >= 0 or "nc1" in r["note"] for r in rows)
    cka = json.loads((out / "runs" / "base" / "cka_with_bn_val.json").read_text())
    for run, key in (("base", "a"), ("bn", "b")):
        sha = hashlib.sha256((out / "runs" / run / "best.pt").read_bytes()).hexdigest()
        assert cka["checkpoint_sha256"][key] == sha
    md = (out / "report.md").read_text()
    assert "## Representation similarity: base against bn" in md
    assert "![Normalization: per layer](figures/compare_normalization.png)" in md
    # Wide network compares wide with base and bn: without wide there is nothing to show.
    assert "## Normalization" in md and "## Wide network" not in md
    assert (out / "figures" / "compare_normalization.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_cut_off_study_keeps_the_earlier_commands_times(tree, tmp_path, monkeypatch):
    def cut_off(*_, **__):
        raise KeyboardInterrupt

    out = tmp_path / "study"
    run_study(tiny_study_config(tree, ["base"]), out, log=quiet)
    done = json.loads((out / "study.json").read_text())
    monkeypatch.setattr(S, "run_variant", cut_off)
    # A second command with one more variant (base is finished), cut off in noskip.
    with pytest.raises(KeyboardInterrupt):
        run_study(tiny_study_config(tree, ["base", "noskip"]), out, log=quiet)
    cut = json.loads((out / "study.json").read_text())
    assert cut["wall_seconds"] == done["wall_seconds"]  # not None: the first command's time
    monkeypatch.undo()
    run_study(tiny_study_config(tree, ["base", "noskip"]), out, log=quiet)  # resumed
    assert json.loads((out / "study.json").read_text())["wall_seconds"] > done["wall_seconds"]


def test_overwrite_is_refused_a_publication_of_diverged_runs_only(tree, tmp_path):
    # A diverged run is published (its curve, counted), so a study trained again from the
    # start would drop it from the folder as it would a finished one.
    cfg = tiny_study_config(tree, ["base", "paths2-shared"])
    published = {"published_variants": [], "diverged_variants": ["paths2-shared"]}
    with raises_naming(InputError, "--publish", "--overwrite", "1 run (paths2-shared)"):
        S.check_publication(tmp_path, published, cfg, overwrite=True)
    S.check_publication(tmp_path, published, cfg, overwrite=False)  # adopted, not refused
    S.check_publication(tmp_path, {}, cfg, overwrite=True)  # nothing published yet


# -- no command writes over one of its inputs, with or without --overwrite -------------
def test_study_never_writes_over_its_inputs(tree, tmp_path, capsys):
    det = tmp_path / "det"
    det.mkdir()
    (det / "model.pt").write_bytes(b"x")
    pub = tmp_path / "published"
    pub.mkdir()
    base = ["study", "--models", "base", "--data-root", tree, "--quick"]
    refused_to_write_over([*base, "--out", det, "--detector", det], capsys, det)
    refused_to_write_over(
        [*base, "--out", tmp_path / "s", "--published", pub, "--publish", pub], capsys, pub
    )
    refused_to_write_over(
        [*base, "--out", tmp_path / "s", "--publish", tmp_path / "s"], capsys, "--publish"
    )
    refused_to_write_over(
        [*base, "--out", tmp_path / "s", "--publish", tmp_path, "--overwrite"], capsys
    )
    assert not (tmp_path / "s").exists() and sorted(os.listdir(det)) == ["model.pt"]


def test_study_checks_the_budget_against_the_data_before_writing(tree, tmp_path):
    cfg = study_config(["base"], quick=True, data_root=str(tree), train_subset=99_999, n_val=20)
    with pytest.raises(ConfigError, match="--train-subset: 99999 is more than"):
        run_study(cfg, tmp_path / "s", log=lambda *_: None)
    assert not (tmp_path / "s" / "study.json").exists()
