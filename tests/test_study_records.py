"""A study across seeds and sessions: runs per seed, the report's means and intervals, stage
seconds that survive a kill, publication after every run, and published folders that prove
they are untouched (manifest.json)."""

import hashlib
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import dnnlab.cifar.train as T
from dnnlab.cifar.config import parse_run_name, run_name
from dnnlab.cli import main
from dnnlab.errors import InputError
from dnnlab.study.config import study_config
from dnnlab.study.manifest import MANIFEST, ManifestError, read_manifest, verify, write_manifest
from dnnlab.study.publish import publish, published_section, read_published
from dnnlab.study.study import StudyError, run_study
from tests.fakes import quiet, tiny_study_config
from tests.page_oracle import assert_page_says_what_markdown_says

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """base and bn, seeds 0 and 1, published after every run: (cfg, study, publication)."""
    root = tmp_path_factory.mktemp("seeded")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DNNLAB_CACHE", str(root / "cache"))
        from tests.fakes import make_image_tree

        tree = make_image_tree(root / "tree", n_train=14, n_test=5)
        # Not quick: a quick study has no comparison with the course.
        cfg = tiny_study_config(
            tree, ["base", "bn"], False, seeds=(0, 1), measures="si,csi", cka_samples=0
        )
        cfg = replace(cfg, test_subset=None)  # every run tests the same images: paired
        published = []
        run_study(
            cfg,
            root / "s",
            log=lambda m: published.append(m) if "published" in m else None,
            plan=False,
            publish_to=root / "results" / "seeded",
        )
    assert len(published) == 5  # after each of the 4 runs, and at the end
    return cfg, root / "s", root / "results" / "seeded"


@pytest.mark.slow
def test_run_names_round_trip():
    assert run_name("bn", 0) == "bn" and run_name("paths2-shared", 3) == "paths2-shared-seed3"
    assert parse_run_name("paths2-shared-seed3") == ("paths2-shared", 3)
    assert parse_run_name("conv4-1x1") == ("conv4-1x1", 0)
    with pytest.raises(Exception, match="--seeds: 'x' is not a whole number"):
        study_config(["bn"], seeds=("x",))
    with pytest.raises(Exception, match="--seeds: 1,1: give distinct seeds"):
        study_config(["bn"], seeds=("1", "1"))


@pytest.mark.slow
def test_seeds_give_runs_means_and_intervals(seeded):
    cfg, out, _ = seeded
    record = json.loads((out / "study.json").read_text())
    assert record["runs"] == ["base", "base-seed1", "bn", "bn-seed1"]
    for r in record["runs"]:
        c = json.loads((out / "runs" / r / "config.json").read_text())
        assert (c["model"], c["seed"]) == parse_run_name(r)
        pred = json.loads((out / "runs" / r / "test_predictions.json").read_text())
        s = json.loads((out / "runs" / r / "summary.json").read_text())
        right = sum(p == y for p, y in zip(pred["predictions"], pred["labels"], strict=True))
        assert right / len(pred["labels"]) == pytest.approx(s["test_acc"])
    md = (out / "report.md").read_text()
    assert "Training seeds: seeds 0, 1 for base, bn." in md
    assert "| base | 2 |" in md and " ± " in md
    # The course's conclusion with its interval and a verdict; the others named as unchecked.
    line = next(x for x in md.splitlines() if x.startswith("| normalization: BatchNorm"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3].startswith("[") and cells[5] in ("confirms", "contradicts", "undecided")
    assert "| normalization: GroupNorm | gn − base | – | – | +11.57 | not checked: no " in md
    assert "Reproducibility of the ranking: not measured" in md
    assert "## Last layers on the whole validation and test splits" in md
    assert "| bn | 2 | val | avgpool |" in md and "| 0.883 |" in md
    assert_page_says_what_markdown_says(out)


@pytest.mark.slow
def test_a_study_grows_by_seeds_and_resumed_settings_are_checked(seeded, tmp_path):
    cfg, study, _ = seeded
    out = tmp_path / "s"
    shutil.copytree(study, out)
    said = []
    run_study(replace(cfg, models=("base",), seeds=(2,)), out, log=said.append)
    assert any(m.startswith("plan: 1 runs (base-seed2)") for m in said)  # the plan names runs
    record = json.loads((out / "study.json").read_text())
    assert record["runs"] == ["base", "base-seed1", "bn", "bn-seed1", "base-seed2"]
    assert "seeds 0, 1, 2 for base; seeds 0, 1 for bn" in (out / "report.md").read_text()
    # Another commit's recipe under the same name: refused by name, nothing trained.
    f = out / "study.json"
    f.write_text(json.dumps({**record, "recipe_settings": {**record["recipe_settings"], "lr": 9}}))
    with pytest.raises(StudyError, match="recipe_settings"):
        run_study(replace(cfg, models=("base",), seeds=(3,)), out, log=quiet, plan=False)
    assert not (out / "runs" / "base-seed3").exists()


@pytest.mark.slow
def test_stage_seconds_count_the_epochs_of_a_killed_command(tree, tmp_path, monkeypatch):
    cfg = tiny_study_config(tree, ["base"], epochs=2, measures="si", cka_samples=0)
    real = T.save_epoch
    calls = []

    def killed_after_one(*a, **k):
        real(*a, **k)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the process dies after epoch 1 was saved

    monkeypatch.setattr(T, "save_epoch", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, tmp_path / "s", log=quiet, plan=False)
    run_study(cfg, tmp_path / "s", log=quiet, plan=False)
    run = tmp_path / "s" / "runs" / "base"
    epochs = json.loads((run / "metrics.json").read_text())
    stages = json.loads((run / "stages.json").read_text())
    assert len(epochs) == 2
    # "train" is the resumed command's wall time only; "train_epochs" holds both epochs.
    assert stages["train_epochs"] == pytest.approx(sum(r["seconds"] for r in epochs), abs=0.06)
    assert stages["train_epochs"] > epochs[1]["seconds"]
    record = json.loads((tmp_path / "s" / "study.json").read_text())
    assert record["stage_seconds"]["variants"]["base"]["train_epochs"] == stages["train_epochs"]


@pytest.mark.slow
def test_the_manifest_refuses_one_changed_byte_anywhere(seeded, tmp_path, capsys):
    _, _, pub = seeded
    assert verify(pub)["files"]
    files = json.loads((pub / MANIFEST).read_text())["files"]
    assert {"study.json", "report.md", "runs/bn-seed1/summary.json"} <= set(files)
    for rel in files:
        copy = tmp_path / rel.replace("/", "_")
        shutil.copytree(pub, copy)
        data = bytearray((copy / rel).read_bytes())
        data[len(data) // 2] ^= 1
        (copy / rel).write_bytes(bytes(data))
        said = f"1 file changed since it was published.*: {re.escape(rel)};"
        with pytest.raises(ManifestError, match=said):
            verify(copy)
        shutil.rmtree(copy)
    extra = tmp_path / "extra"
    shutil.copytree(pub, extra)
    (extra / "runs" / "bn" / "notes.txt").write_text("mine")
    with pytest.raises(ManifestError, match="1 file not listed .*: runs/bn/notes.txt"):
        verify(extra)
    # Every problem at once, each file named; and `dnnlab verify` goes on to the next folder.
    (extra / "report.md").unlink()
    (extra / "study.json").write_text("{}")
    with pytest.raises(ManifestError) as e:
        verify(extra)
    for said in (
        "1 file listed in",
        "but missing: report.md",
        "changed since it was published (its sha256 is not the one recorded): study.json",
        "not listed (a published folder holds only what was published): runs/bn/notes.txt",
    ):
        assert said in str(e.value), str(e.value)
    assert main(["verify", str(extra), str(pub)]) == 1
    out, err = capsys.readouterr()
    assert f"{pub}: ok" in out and f"{extra}: does not match" in err and "1 of 2" in err
    (extra / "runs" / "bn" / "notes.txt").unlink()
    (extra / "study.json").write_bytes((pub / "study.json").read_bytes())
    with pytest.raises(ManifestError, match="1 file listed in .* but missing: report.md;"):
        verify(extra)
    (extra / MANIFEST).unlink()
    with pytest.raises(ManifestError, match="manifest.json: missing"):
        verify(extra)
    # read_published shows nothing from a refused folder, and says why.
    got = read_published(tmp_path)
    assert got["studies"] == [] and "manifest.json: missing" in got["refused"][0]["why"]


@pytest.mark.slow
def test_publish_replaces_only_its_own_publication_of_the_same_study(seeded, tmp_path):
    cfg, study, pub = seeded
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(InputError, match="--publish .*mine: a folder dnnlab did not make"):
        publish(study, mine)
    assert (mine / "thesis.tex").read_text() == "years of work"
    with pytest.raises(InputError, match="--publish"):
        publish(study, cfg.data_root, inputs=[cfg.data_root])  # the study's own data
    # Another study's publication (another fingerprint) is not replaced either.
    other = tmp_path / "other"
    shutil.copytree(pub, other)
    f = other / "study.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "fingerprint": "0" * 16}))
    with pytest.raises(InputError, match="not an untouched"):  # the edit breaks its manifest
        publish(study, other)
    writers = {k: v["writer"] for k, v in read_manifest(other)["files"].items()}
    write_manifest(other, writers, "abc")  # as if the tool had published another study there
    with pytest.raises(InputError, match="holds the publication of another study"):
        publish(study, other)
    # The same study's publication is updated, and keeps the user's umask: here one from
    # before report.html was published (as the tool would have written it).
    again = tmp_path / "again"
    shutil.copytree(pub, again)
    (again / "report.html").unlink()
    m = read_manifest(again)
    files = {k: v["writer"] for k, v in m["files"].items() if k != "report.html"}
    write_manifest(again, files, m["commit"])
    assert publish(study, again) == (["base", "base-seed1", "bn", "bn-seed1"], True)
    assert (again / "report.html").exists()
    assert verify(again) and (again.stat().st_mode & 0o777) != 0o700


@pytest.mark.slow
def test_the_published_budget_study_passes_its_manifest():
    m = verify(REPO / "docs" / "results" / "budget-cpu")
    assert m["files"]["study.json"]["writer"].startswith("dnnlab study")
    assert "addendum.json" in m["files"]
    study = json.loads((REPO / "docs" / "results" / "budget-cpu" / "study.json").read_text())
    assert study["commits"][-1] == "d1740ffe46af-dirty"  # as the tool wrote it
    assert study["stage_seconds"]["cka"] == 0.0


@pytest.mark.slow
def test_the_all_variant_figure_draws_no_line_across_missing_layers():
    import math

    from dnnlab.study.overlay import _curves
    from dnnlab.utils.plots import pyplot

    plt = pyplot()
    layers = [f"l{i}" for i in range(7)]
    series = {
        "base": [{"layer": n, "si": 0.1 * i} for i, n in enumerate(layers)],
        # wide has the first two layers and the last: nothing between them is drawn.
        "wide": [{"layer": n, "si": 0.5} for n in ("l0", "l1", "l6")],
    }
    fig, ax = plt.subplots()
    _curves(ax, series, "si", layers, first_layers=True)
    wide = ax.lines[1].get_ydata()
    assert [math.isnan(v) for v in wide] == [False, False, True, True, True, True, False]
    plt.close(fig)


def fake_cell(root, name, results):
    """A folder shaped like a published study: runs/<run>/summary.json and
    test_predictions.json for {run: per-image 0/1 list} (labels all 0; a 1 is right)."""
    for run, correct in results.items():
        d = root / name / "runs" / run
        d.mkdir(parents=True)
        (d / "summary.json").write_text("{}")
        pred = {
            "positions": list(range(len(correct))),
            "labels": [0] * len(correct),
            "predictions": [0 if c else 1 for c in correct],
        }
        (d / "test_predictions.json").write_text(json.dumps(pred))
    return root / name


@pytest.mark.slow
def test_the_factorial_interaction_is_the_four_term_contrast(tmp_path):
    from dnnlab.study.factorial import factorial, factorial_lines
    from dnnlab.study.stats import contrast

    course = {
        "bn": [1, 1, 1, 1, 1, 1, 0, 0],
        "bn-seed1": [1, 1, 1, 1, 1, 0, 0, 0],
        "base": [1, 1, 0, 0, 0, 0, 0, 0],
        "base-seed1": [1, 0, 1, 0, 0, 0, 0, 0],
        "paths4-shared": [1, 1, 1, 0, 0, 0, 0, 0],
        "paths4-shared-seed1": [1, 1, 1, 1, 0, 0, 0, 0],
    }
    study = {
        "bn": [1, 1, 1, 1, 1, 0, 0, 0],
        "bn-seed1": [1, 1, 1, 1, 0, 1, 0, 0],
        "base": [1, 1, 1, 1, 0, 0, 0, 0],
        "base-seed1": [1, 1, 1, 0, 1, 0, 0, 0],
    }
    folders = {
        "factorial-course-softmax": fake_cell(tmp_path, "factorial-course-softmax", course),
        "clipped-cpu": fake_cell(tmp_path, "clipped-cpu", study),
    }
    r = factorial(folders)
    # Gains by hand: course (75 + 62.5)/2 - (25 + 25)/2 = 43.75; study 62.5 - 50 = 12.5.
    assert r["cells"]["course's", "softmax"]["diff"] == pytest.approx(43.75)
    assert r["cells"]["study's", "logits"]["diff"] == pytest.approx(12.5)
    assert r["cells"]["course's", "logits"] is None
    i = r["interaction"]
    assert i["diff"] == pytest.approx(31.25)
    arr = {k: [v[k], v[k + "-seed1"]] for v in (course,) for k in ("bn", "base")}
    brr = {k: [v[k], v[k + "-seed1"]] for v in (study,) for k in ("bn", "base")}
    want = contrast([(1, arr["bn"]), (-1, arr["base"]), (-1, brr["bn"]), (1, brr["base"])])
    assert (i["low"], i["high"]) == pytest.approx((want["low"], want["high"]))
    text = "\n".join(factorial_lines(r))
    assert "| course's | logits | – | – | – | not published yet | – |" in text
    assert "| course's | softmax | 25.00 | 68.75 | +43.75 |" in text  # mean accuracies by hand
    assert "Interaction (course's recipe − study's recipe) of the gain: +31.25 points" in text
    # The course cell's paths4-shared against its base: (37.5 + 50)/2 - 25 = 18.75 points,
    # checked against the course's +9.53.
    other = r["others"][("course's", "softmax"), "paths4-shared"]
    assert other["diff"] == pytest.approx(18.75)
    assert "| course's | softmax | paths4-shared − base | +18.75 |" in text
    # Without the study's cell there is no interaction, and the report says why.
    r = factorial({"factorial-course-softmax": folders["factorial-course-softmax"]})
    assert r["interaction"] is None and "clipped-cpu" in r["why"]


@pytest.mark.slow  # its fixture is a study of four runs
def test_a_study_in_progress_says_what_is_still_to_come(seeded, tmp_path):
    _, _, pub = seeded
    assert read_published(pub.parent)["studies"][0]["missing"] == []  # all four published
    # A finished study's own wall time, from study.json (the commands that reached their end).
    finished = "\n".join(published_section(read_published(pub.parent)))
    assert " min wall over the commands that ran to their end (" in finished
    # The study's own folder, given in place of the folder of studies: that one study.
    assert read_published(pub)["studies"] == read_published(pub.parent)["studies"]
    part = shutil.copytree(pub, tmp_path / "results" / "part")
    shutil.rmtree(part / "runs" / "bn-seed1")  # as published before its last run finished
    writers = {
        rel: e["writer"]
        for rel, e in read_manifest(part)["files"].items()
        if not rel.startswith("runs/bn-seed1/")
    }
    write_manifest(part, writers, "abc")
    got = read_published(tmp_path / "results")
    assert got["studies"][0]["missing"] == ["bn-seed1"] and got["studies"][0]["planned"] == 4
    text = "\n".join(published_section(got))
    assert "IN PROGRESS: 3 of the 4 runs it plans are finished, still to come: bn-seed1" in text
    # The study.json of a study still running has no date or wall time yet (here: removed
    # from the copy, as the running study publishes it): the latest publication's date.
    st = json.loads((part / "study.json").read_text())
    st = {k: v for k, v in st.items() if k not in ("date", "wall_seconds")}
    (part / "study.json").write_text(json.dumps(st))
    # Each published run's seconds as a study cut off across sessions records them (train:
    # its commands' wall time; probe), with a stage that is not counted.
    for i, m in enumerate(("base", "base-seed1", "bn")):
        stages = {"train": 5000.0 + 400 * i, "train_epochs": 4000.0, "probe": 300.0}
        (part / "runs" / m / "stages.json").write_text(json.dumps(stages))
    writers = {rel: e["writer"] for rel, e in read_manifest(part)["files"].items()}
    write_manifest(part, writers, "abc")
    text = "\n".join(published_section(read_published(tmp_path / "results")))
    assert "wall time recorded when it ends (" in text and "undated" not in text
    assert ", published 20" in text
    # The runs' own seconds, summed (train + probe): what the study cost even when the
    # commands that trained it were cut off (and never wrote wall_seconds).
    assert "(4.8 h of training and probing summed over its published runs" in text  # 17,100 s


@pytest.mark.slow  # its fixture is a study of four runs
def test_the_published_section_shows_the_course_conclusions_with_intervals(seeded):
    """What the main job prints first: the published study's conclusions table, the same
    rows as the study's own report (computed from the published records alone)."""
    _, study, pub = seeded
    text = "\n".join(published_section(read_published(pub.parent)))
    own = (study / "report.md").read_text()
    row = next(line for line in own.splitlines() if line.startswith("| normalization: BatchNorm"))
    assert re.search(r"\[[-+]\d+\.\d\d, [-+]\d+\.\d\d\]", row)  # two seeds: an interval
    assert row in text and "### The course's conclusions: corrected recipe, 1 epochs" in text


@pytest.mark.slow  # its fixture is a study of four runs
def test_a_factorial_cell_is_shown_in_the_factorial_section_only(seeded, tmp_path):
    """A published factorial cell (base and bn under a changed recipe) is listed with what
    it changes and shown in the factorial's section, not as another study's columns and
    conclusions beside the main study's."""
    _, _, pub = seeded
    shutil.copytree(pub, tmp_path / "results" / "clipped-cpu")
    cell = shutil.copytree(pub, tmp_path / "results" / "factorial-course-softmax")
    st = json.loads((cell / "study.json").read_text())
    (cell / "study.json").write_text(json.dumps({**st, "softmax_head": True, "step_size": 4}))
    writers = {rel: e["writer"] for rel, e in read_manifest(cell)["files"].items()}
    write_manifest(cell, writers, "abc")
    text = "\n".join(published_section(read_published(tmp_path / "results")))
    assert text.count("Test ACC (corrected)") == 1
    assert text.count("### The course's conclusions") == 1
    assert "with the course's double-softmax head, its StepLR every 4 epochs" in text
    assert "### Recipe factorial" in text
    # The same runs in both cells: no interaction, computed.
    assert "Interaction (course's recipe − study's recipe) of the gain: +0.00 points" in text


@pytest.mark.slow  # its fixture is a study of four runs
def test_the_weights_stay_out_but_their_hashes_are_published(seeded):
    _, study, pub = seeded
    w = json.loads((pub / "weights.json").read_text())
    assert w["published"] is False and set(w["runs"]) == {"base", "base-seed1", "bn", "bn-seed1"}
    best = w["runs"]["bn-seed1"]["best.pt"]
    assert Path(best["path"]) == (study / "runs" / "bn-seed1" / "best.pt").resolve()
    assert best["sha256"] == hashlib.sha256(Path(best["path"]).read_bytes()).hexdigest()
    assert not list(pub.rglob("*.pt"))
    text = "\n".join(published_section(read_published(pub.parent)))
    assert "weights not published: where they were and their sha256 in weights.json" in text


def test_a_run_name_that_is_a_path_is_refused():
    from dnnlab.study.records import recorded_runs

    assert recorded_runs({"runs": ["base", "bn-seed2"]}) == ["base", "bn-seed2"]
    assert recorded_runs({"models": ["wide"]}) == ["wide"]  # a record from before seeds
    for bad in ("../../etc", "base/../../x", "..", "base-seed1/..", "/etc"):
        with pytest.raises(InputError, match="study.json: .* is not a run name but a path"):
            recorded_runs({"runs": ["base", bad]})


def test_probe_csv_reads_back_as_probe_json_rows(tmp_path):
    """A run adopted from an older publication has probe.csv alone: its rows read back as
    probe.json's, numbers to the CSV's 6 significant digits (SI and CSI, counts over n, exact
    at the probe's sizes); a malformed row is refused naming the file and the row."""
    import math

    from dnnlab.probe.probe import ProbeConfig, write_tables
    from dnnlab.study.records import read_probe_csv

    rows = [
        {
            "split": "val",
            "layer": "conv1",
            "dim": 32768,
            "n": 2000,
            "si": 1237 / 2000,
            "csi": 1999 / 2000,
            "knn:5": 0.6415,
            "nc1": 7.539328467,
            "seconds": 7.601,
            "note": 'a note, with a comma and "quotes"',
        },
        {
            "split": "test",
            "layer": "avgpool",
            "dim": 256,
            "n": 2000,
            "si": 0.7505,
            "csi": 0.7799,
            "knn:5": 0.8,
            "nc1": float("nan"),
            "seconds": 16.37,
            "note": "",
        },
    ]
    write_tables(tmp_path, rows, ProbeConfig(measures="si,csi,knn:5,nc1"))
    back = read_probe_csv(tmp_path / "probe.csv")
    assert [r.keys() for r in back] == [r.keys() for r in rows]
    for r, b in zip(rows, back, strict=True):
        assert (b["split"], b["layer"], b["note"], b["dim"], b["n"]) == (
            r["split"],
            r["layer"],
            r["note"],
            r["dim"],
            r["n"],
        )
        assert b["si"] == r["si"] and b["csi"] == r["csi"]
        for k in ("knn:5", "nc1", "seconds"):
            assert (math.isnan(b[k]) and math.isnan(r[k])) or b[k] == pytest.approx(r[k], rel=1e-5)
    lines = (tmp_path / "probe.csv").read_text().splitlines()
    (tmp_path / "probe.csv").write_text("\n".join([lines[0], lines[1] + ",extra", lines[2]]))
    with pytest.raises(InputError, match=r"probe\.csv: row 2 has more or fewer cells"):
        read_probe_csv(tmp_path / "probe.csv")
    (tmp_path / "probe.csv").write_text("\n".join([lines[0], lines[1].replace(",2000,", ",x,", 1)]))
    with pytest.raises(InputError, match=r"probe\.csv: row 2, column 'n': 'x' is not a number"):
        read_probe_csv(tmp_path / "probe.csv")
