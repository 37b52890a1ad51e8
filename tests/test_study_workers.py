"""The study's runs in worker processes (--jobs): the same results as one after another, and
a failing worker named while the others go on."""

import json
from dataclasses import replace

import pytest

from dnnlab.study.study import StudyError, run_study
from dnnlab.utils.outputs import mark
from tests.fakes import quiet, tiny_study_config


def _runs_equal(a, b):
    for m in ("base", "noskip"):
        sa = json.loads((a / "runs" / m / "summary.json").read_text())
        sb = json.loads((b / "runs" / m / "summary.json").read_text())
        for k in ("train_images", "test_images", "best_epoch", "recipe", "params"):
            assert sa[k] == sb[k], (m, k)
        for k in ("best_val_acc", "test_acc", "test_loss"):
            assert sa[k] == pytest.approx(sb[k], abs=1e-4), (m, k)
        ra = json.loads((a / "runs" / m / "probe.json").read_text())["rows"]
        rb = json.loads((b / "runs" / m / "probe.json").read_text())["rows"]
        assert [(r["split"], r["layer"], r["n"]) for r in ra] == [
            (r["split"], r["layer"], r["n"]) for r in rb
        ]
        for x, y in zip(ra, rb, strict=True):
            assert x["si"] == pytest.approx(y["si"], abs=0.05), (m, x["layer"])
        assert (a / "runs" / m / "split.json").read_text() == (
            b / "runs" / m / "split.json"
        ).read_text()


@pytest.mark.slow
def test_two_concurrent_workers_give_the_sequential_results(tree, tmp_path):
    cfg = tiny_study_config(tree, ["base", "noskip"], epochs=2)
    seq, par = tmp_path / "seq", tmp_path / "par"
    run_study(cfg, seq, log=quiet, plan=False)
    lines = []
    run_study(replace(cfg, jobs=2), par, log=lines.append)
    assert any(line.startswith("plan: 2 runs (base, noskip), 2 epochs") for line in lines)
    assert any("expected training time" in line for line in lines)
    assert (par / "logs" / "base.log").exists() and (par / "logs" / "noskip.log").exists()
    _runs_equal(seq, par)
    assert json.loads((par / "study.json").read_text())["jobs"] == 2


@pytest.mark.slow
def test_a_failing_worker_is_named_and_the_others_go_on(tree, tmp_path):
    out = tmp_path / "s"
    # noskip's run folder is a file: its worker fails, base's goes on.
    mark(out, "study")  # a study folder of dnnlab's, one of whose runs went wrong
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "noskip").write_text("not a run folder")
    lines = []
    with pytest.raises(StudyError) as e:
        run_study(
            tiny_study_config(tree, ["base", "noskip"], jobs=2), out, log=lines.append, plan=False
        )
    err = str(e.value)
    assert "1 of 2 runs failed" in err and "[noskip] FAILED" in err
    assert str(out / "logs" / "noskip.log") in err
    assert any(line == "[base] done" for line in lines)
    assert (out / "runs" / "base" / "probe.json").exists()
    assert (out / "report.html").exists()
