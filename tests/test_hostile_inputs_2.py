"""The second round of an outside tester's defect classes (issue 24), each fixed at its
root: a bad image never stops a data set (4), a bad path is a named refusal before any work,
never a traceback (5), a byte-order mark on one file only (9), runs that must match their
records (11), and no leftovers or small lies (12)."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dnnlab.cli import main
from tests.fakes import (
    HOLD,
    TINY_TRAIN_ARGS,
    fake_build,
    free_port,
    image_folder,
    refused,
    snapshot,
    write_voc,
)


def truncate(path, keep: float = 0.8) -> None:
    """Cut an image file short, as an interrupted copy or download leaves it (its header
    whole: only decoding every pixel finds it)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


class FakeDetector:
    """Detects one fixed box in any photo: `detect run` without a trained model."""

    config = SimpleNamespace(target="cat")

    def detect(self, img):
        return SimpleNamespace(boxes=np.array([[1.0, 1, 9, 9]]), scores=np.array([0.9]), seconds=0)


# -- 4: a bad file never stops a data set ---------------------------------------------------
@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_build_counts_a_truncated_photo_and_goes_on(tmp_path, capsys, ext):
    voc = tmp_path / "voc"
    voc.mkdir()
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    write_voc(voc, "b", [("cat", (20, 20, 90, 80))])
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(voc / f"b.{ext}", quality=95)
    text = (voc / "b.xml").read_text().replace("b.jpg", f"b.{ext}")
    (voc / "b.xml").write_text(text)
    truncate(voc / f"b.{ext}")
    out = tmp_path / "det"
    argv = ["detect", "build", voc, "--out", out, "--workers", "1", "--ss-max-side", "0"]
    assert main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    assert "unreadable image" in printed and f"b.{ext}" in printed
    index = (out / "index.csv").read_text()
    assert "a.jpg" in index and f"b.{ext}" not in index


def test_detect_run_and_eval_count_a_truncated_photo(tmp_path):
    from dnnlab.detect.output import run_detector
    from dnnlab.detect.voc import Problems, read_voc_dir
    from dnnlab.utils.images import UnreadableImage, open_rgb

    photos = tmp_path / "photos"
    photos.mkdir()
    write_voc(photos, "good", [("cat", (10, 10, 60, 50))])
    write_voc(photos, "cut", [("cat", (10, 10, 60, 50))])
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(photos / "cut.jpg", quality=95)
    truncate(photos / "cut.jpg")
    with pytest.raises(UnreadableImage, match="cut.jpg: unreadable image"):
        open_rgb(photos / "cut.jpg")
    res = run_detector([photos / "good.jpg", photos / "cut.jpg"], FakeDetector(), tmp_path / "o")
    assert "detections" in res[0] and "unreadable image" in res[1]["error"]
    assert sorted(os.listdir(tmp_path / "o")) == ["good.jpg", "good.json"]
    problems = Problems()  # eval's reading: counted and named, the rest go on
    assert [i.image.name for i in read_voc_dir(photos, problems)] == ["good.jpg"]
    assert "cut.jpg" in problems.examples["unreadable image"][0]


@pytest.mark.parametrize("tar", [False, True])
def test_probe_leaves_out_a_truncated_image_and_names_it(tmp_path, capsys, user_file, tar):
    data = image_folder(tmp_path / "imgs", n=6)
    for name in ("train/a/0.png", "test/b/3.png"):
        truncate(data / name)
    if tar:
        import tarfile

        with tarfile.open(tmp_path / "imgs.tar.gz", "w:gz") as tf:
            tf.add(data, arcname="imgs")
        data = tmp_path / "imgs.tar.gz"
    out = tmp_path / "out"
    argv = ["probe", "--model", f"{user_file}:make", "--data", data, "--out", out]
    assert main([str(a) for a in [*argv, "--layers", "early"]]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "unreadable image(s) left out" in captured.err and "3.png" in captured.err
    probe = json.loads((out / "probe.json").read_text())
    assert {r["split"]: r["n"] for r in probe["rows"]}["test"] == 17  # 18 less the bad one


# -- 5: a bad path is a named refusal before any work, never a traceback --------------------
def out_is_file_cases(tmp_path, tree, user_file):
    """(argv, the path the refusal names) for every output folder given as a file."""
    voc = tmp_path / "voc"
    voc.mkdir()
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    f = tmp_path / "afile.txt"
    f.write_text("mine")
    under = f / "sub"
    probe = ["probe", "--model", f"{user_file}:make", "--data", tree]
    return f, [
        (["train", "--model", "base", "--epochs", "1", "--data-root", tree, "--out", f], f),
        (["train", "--model", "base", "--data-root", tree, "--out", under], under),
        ([*probe, "--out", f], f),
        ([*probe, "--out", tmp_path / "p", "--spill-dir", f], f),
        ([*probe, "--out", tmp_path / "p", "--spill-dir", under], under),
        (["study", "--models", "base", "--data-root", tree, "--out", f], f),
        (["study", "--models", "base", "--data-root", tree, "--publish", f], f),
        (["detect", "build", voc, "--out", f], f),
        (["detect", "build", voc, "--out", under], under),
        (["detect", "run", voc / "a.jpg", "--out", f, "--model", voc], f),
        (["detect", "eval", f, "--model", voc], f),
        (["detect", "eval", voc, "--model", f], f),
        (["detect", "eval", voc, "--model", voc, "--draw", f], f),
        (["detect", "train", f], f),
    ]


def test_an_output_folder_that_is_a_file_is_refused_naming_it(tree, tmp_path, capsys, user_file):
    f, cases = out_is_file_cases(tmp_path, tree, user_file)
    before = sorted(os.listdir(tmp_path))
    for argv, named in cases:
        refused(argv, capsys, named)
        assert f.read_text() == "mine" and sorted(os.listdir(tmp_path)) == before, argv


def test_a_loop_of_links_is_named_as_one(tmp_path, capsys, user_file, tree):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "gone").symlink_to(tmp_path / "nothing")
    probe = ["probe", "--model", f"{user_file}:make"]
    for argv, why in (
        ([*probe, "--data", tmp_path / "a", "--out", tmp_path / "o"], "loop of symbolic links"),
        ([*probe, "--data", tree, "--weights", tmp_path / "b", "--out", tmp_path / "o"], "loop"),
        ([*probe, "--data", tmp_path / "gone", "--out", tmp_path / "o"], "broken symbolic link"),
        (["detect", "build", tree, "--out", tmp_path / "a"], "loop of symbolic links"),
        (["detect", "eval", tmp_path / "a", "--model", tree], "loop of symbolic links"),
        (["detect", "eval", tree, "--model", tmp_path / "a"], "loop of symbolic links"),
        (["detect", "run", tree, "--model", tmp_path / "b", "--out", tmp_path / "o"], "loop"),
        (["detect", "train", tmp_path / "a"], "loop of symbolic links"),
        (["detect", "show", tmp_path / "gone"], "broken symbolic link"),
        (["train", "--data-root", tmp_path / "a", "--out", tmp_path / "o"], "loop"),
    ):
        err = refused(argv, capsys)
        assert why in err and "no such file" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_a_sparse_tensor_is_refused_by_name(tmp_path, capsys, user_file, tree, layout):
    dense = torch.zeros(60, 3)
    dense[::7, 1] = 1.0
    sparse = dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()
    feats = tmp_path / "x.pt"
    torch.save(sparse, feats)
    np.save(tmp_path / "y.npy", np.arange(60) % 2)
    # Features: made dense (within the budget) and measured like the dense file.
    torch.save(dense, tmp_path / "dense.pt")
    got = [
        main(["si", str(f), str(tmp_path / "y.npy"), "--json"])
        for f in (feats, tmp_path / "dense.pt")
    ]
    outs = capsys.readouterr().out.splitlines()
    assert got == [0, 0] and json.loads(outs[0])["si"] == json.loads(outs[1])["si"]
    w = tmp_path / "w.pt"
    torch.save({"early.weight": sparse}, w)
    argv = ["probe", "--model", f"{user_file}:make", "--data", tree, "--weights", w]
    err = refused([*argv, "--out", tmp_path / "o"], capsys, w, "['early.weight']")
    assert "sparse" in err and "UserWarning" not in err
    assert not (tmp_path / "o").exists()


# -- a trained run (conftest.finished), for the records of classes 5 and 11 ------------------


def edit_json(path, **changes):
    d = json.loads(path.read_text())
    path.write_text(json.dumps({**d, **changes}))


def probe_run(run):
    return ["probe", run, "--splits", "val", "--layers", "conv1", "--max-per-split", "10"]


def resume(run, tree):
    return ["train", "--out", run, "--resume", "--epochs", "2", "--data-root", tree]


@pytest.mark.parametrize(
    "train, val, why",
    [
        ([0, 1, 2, 10_000], [3, 4], "not positions among 140 images"),
        ([0, 1, -1], [3, 4], "not positions among 140 images"),
        ([0, 1, 2], [], "not positions among 140 images"),
        ([0, 1, 2, 2], [3, 4], "repeat an image"),
        ([0, 1, 2, 3], [3, 4], "in both train and val"),
    ],
)
def test_a_bad_split_record_is_named_by_probe_and_resume(run, tree, capsys, train, val, why):
    (run / "split.json").write_text(json.dumps({"train": train, "val": val}))
    before = snapshot(run)
    for argv in (probe_run(run), resume(run, tree)):
        err = refused(argv, capsys, run / "split.json")
        assert why in err, err
    assert snapshot(run) == before


# -- 11: a run's files must match its records ----------------------------------------------
def edit_checkpoint(path, **changes):
    ck = torch.load(path, weights_only=True)
    ck["config"] = {**ck["config"], **changes}
    torch.save(ck, path)


@pytest.mark.parametrize("change", [{"seed": 1}, {"lr": 0.5}, {"model": "bn"}])
def test_probe_refuses_weights_of_another_run(run, tree, capsys, change):
    edit_checkpoint(run / "best.pt", **change)  # e.g. best.pt of a run with another split
    before = snapshot(run)
    err = refused(probe_run(run), capsys, run / "best.pt", next(iter(change)))
    assert "config.json" in err
    assert snapshot(run) == before


@pytest.mark.parametrize("change", [{"lr": 0.5}, {"model": "bn"}, {"seed": 3}, {"momentum": 0.5}])
def test_resume_refuses_an_edited_config(run, tree, capsys, change):
    edit_json(run / "config.json", **change)
    before = snapshot(run)
    err = refused(resume(run, tree), capsys, run / "config.json", next(iter(change)))
    assert "edited" in err and "not a loadable" not in err
    assert snapshot(run) == before


@pytest.mark.parametrize("keep", [["best.pt", "metrics.json"], ["best.pt"], ["metrics.json"]])
def test_resume_without_last_pt_never_starts_over(run, tree, capsys, keep):
    for name in ("last.pt", "summary.json", "best.pt", "metrics.json"):
        if name not in keep:
            (run / name).unlink()
    before = snapshot(run)
    err = refused(resume(run, tree), capsys, run / "last.pt")
    assert "epoch 1" in err
    assert snapshot(run) == before


def test_resume_of_a_run_killed_before_its_first_epoch_starts_it(run, tree):
    for name in ("last.pt", "summary.json", "best.pt", "metrics.json", "metrics.csv"):
        (run / name).unlink()
    assert main([str(a) for a in resume(run, tree)]) == 0
    assert len(json.loads((run / "metrics.json").read_text())) == 2


# -- 12: no leftovers, no small lies ------------------------------------------------------
@pytest.mark.parametrize("stop", [KeyboardInterrupt, "error"])
def test_an_overwrite_stopped_in_its_first_epoch_puts_the_old_run_back(
    run, tree, capsys, monkeypatch, stop
):
    import dnnlab.cifar.train as T
    from dnnlab.cifar.rundir import RunError

    def stopped(*a, **k):
        raise stop() if stop is KeyboardInterrupt else RunError("a failure in epoch 1")

    monkeypatch.setattr(T, "run_epoch", stopped)
    before = snapshot(run)
    argv = [
        "train",
        *TINY_TRAIN_ARGS,
        "--seed",
        "5",
        "--data-root",
        tree,
        "--out",
        run,
        "--overwrite",
    ]
    assert main([str(a) for a in argv]) == (130 if stop is KeyboardInterrupt else 2)
    err = capsys.readouterr().err
    assert f"back in {run}" in err and "Traceback" not in err, err
    assert snapshot(run) == before
    assert not [n for n in os.listdir(run.parent) if n.endswith(".old")]  # none left behind


def test_a_replaced_run_a_killed_overwrite_left_is_put_back(run, tree, capsys):
    before = snapshot(run)
    hidden = run.with_name(".r.999999999.old")  # a pid no process has
    run.rename(hidden)
    run.mkdir()  # the killed replacement had written only its config
    (run / "config.json").write_text(json.dumps({"model": "base"}))
    argv = ["train", "--out", run, "--resume", "--data-root", tree]
    assert main([str(a) for a in argv]) == 0  # the put-back run is finished: nothing to do
    assert f"back in {run}" in capsys.readouterr().err
    assert snapshot(run) == before and not hidden.exists()


def test_a_failed_probe_leaves_no_output_folder(tmp_path, capsys, user_file):
    data = image_folder(tmp_path / "imgs", splits=("",), n=10)  # its split is drawn here
    out = tmp_path / "out"
    argv = ["probe", "--model", f"{user_file}:make", "--data", data, "--out", out]
    refused([*argv, "--layers", "nosuchlayer"], capsys, "nosuchlayer")
    assert not out.exists()
    out.mkdir()
    refused([*argv, "--layers", "nosuchlayer"], capsys, "nosuchlayer")
    assert os.listdir(out) == []  # a folder the user made is kept, and holds nothing new


def test_detect_run_that_writes_nothing_says_so_and_makes_no_folder(tmp_path, capsys):
    from dnnlab.detect.output import print_run, run_detector

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path / "o"
    results = run_detector([bad], FakeDetector(), out)
    assert print_run(results, out) == 1
    printed = capsys.readouterr()
    assert "nothing written" in printed.out and "annotated images" not in printed.out
    assert "bad.jpg: unreadable image" in printed.err
    assert not out.exists()


def test_a_python_warning_is_one_line_without_a_source_path(tmp_path, capsys, monkeypatch):
    import warnings

    import dnnlab.cli as cli

    def warns(args):
        warnings.warn("a library's remark\nwith a second line", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(cli, "cmd_models", warns)
    assert main(["models"]) == 0
    err = capsys.readouterr().err
    assert err == "dnnlab models: warning: a library's remark\n", err


# -- torchrun: a folder lock refused to rank 0 ends every rank ------------------------------
def _lock_worker(rank, world, port, folder, out):
    import torch.distributed as dist

    from dnnlab.utils.lock import job_lock

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with job_lock(folder, rank, world):
            dist.barrier()  # where the other ranks waited for ever before
            out[rank] = "granted"
    except Exception as e:
        out[rank] = f"{type(e).__name__}: {e}"
    finally:
        dist.destroy_process_group()


def test_a_lock_refused_to_rank_0_reaches_every_rank(tmp_path):
    import subprocess
    import sys

    import torch.multiprocessing as mp

    folder = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", HOLD, str(folder)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "held"
        with mp.Manager() as m:
            out = m.dict()
            mp.spawn(_lock_worker, args=(2, free_port(), str(folder), out), nprocs=2)
            got = dict(out)
    finally:
        p.kill()
        p.wait()
    assert got[0] == got[1] and got[1].startswith("FolderBusy") and f"pid {p.pid}" in got[1]


# -- detect eval: one writer of MODEL/evals (and of --draw) ----------------------------------
def test_detect_eval_refuses_records_another_process_writes(tmp_path, holder):
    from dnnlab.detect.evaluate import evaluate_once
    from dnnlab.utils.lock import FolderBusy

    voc, model = tmp_path / "voc", tmp_path / "model"
    voc.mkdir()
    model.mkdir()
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    for held, draw in ((model / "evals", None), (tmp_path / "drawn", tmp_path / "drawn")):
        p = holder(held)
        with pytest.raises(FolderBusy, match=f"pid {p.pid}"):
            evaluate_once(voc, model, FakeDetector(), draw_dir=draw)
        p.kill()
        p.wait()
    assert os.listdir(model) == [] and not (tmp_path / "drawn").exists()


# -- 9: a byte-order mark on one file only is read, not blamed as a count mismatch ----------
def write_csv(path, rows, bom: bool) -> None:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8-sig" if bom else "utf-8")


@pytest.mark.parametrize("header", [False, True])
@pytest.mark.parametrize("marked", ["features", "labels", "both"])
def test_si_reads_a_byte_order_mark_on_either_file_alone(tmp_path, capsys, header, marked):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)).round(3)
    y = ["cat", "dog", "bird"] * 4
    feats = [",".join(map(str, r)) for r in x]
    labs = list(y)
    if header:
        feats, labs = ["a,b,c", *feats], ["label", *labs]
    runs = {}
    for bom in (False, True):
        d = tmp_path / str(bom)
        d.mkdir()
        write_csv(d / "x.csv", feats, bom and marked in ("features", "both"))
        write_csv(d / "y.csv", labs, bom and marked in ("labels", "both"))
        argv = ["si", d / "x.csv", d / "y.csv", "--json", "--no-progress"]
        assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
        runs[bom] = json.loads(capsys.readouterr().out)
        runs[bom].pop("seconds")
    assert runs[True] == runs[False] and runs[True]["n"] == 12


def test_records_a_user_saved_with_a_byte_order_mark_read_the_same(tmp_path):
    from dnnlab.cifar.rundir import read_json
    from dnnlab.detect.build import read_index

    det = fake_build(tmp_path / "det", tmp_path / "a.jpg")
    plain = read_index(det)
    text = (det / "index.csv").read_text()
    (det / "index.csv").write_text(text, encoding="utf-8-sig")  # re-saved by a spreadsheet
    assert read_index(det) == plain
    (tmp_path / "c.json").write_text('{"lr": 0.1}', encoding="utf-8-sig")
    assert read_json(tmp_path / "c.json") == {"lr": 0.1}


def test_probe_with_too_few_readable_images_says_so(tmp_path, capsys, user_file):
    data = image_folder(tmp_path / "imgs", n=2)
    for f in sorted((data / "test").rglob("*.png"))[1:]:
        f.write_bytes(b"not an image")  # one readable test image of six
    out = tmp_path / "out"
    argv = ["probe", "--model", f"{user_file}:make", "--data", data, "--out", out]
    refused(argv, capsys, "'test'", "1 readable image(s)", "5 unreadable", "a/1.png")
    assert not out.exists()
