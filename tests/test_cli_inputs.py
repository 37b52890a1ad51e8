"""Refusals every command shares (dnnlab.utils.paths, spare_inputs, lock): an output
that would write over an input, an output folder that is a file, a loop of links, a
sparse tensor, a named pipe, a folder another process holds, and records re-saved with a
byte-order mark: each named in one line before any work."""

import json
import os

import numpy as np
import pytest
import torch

from dnnlab.cli import main
from tests.fakes import busy, fake_build, refused, write_voc


# -- no command writes over one of its inputs, with or without --overwrite -------------
def test_output_clash_rules(tmp_path):
    from dnnlab.utils.spare_inputs import output_clash

    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"x")
    (tmp_path / "link").symlink_to(d)
    assert "is the input" in output_clash([d], tmp_path / "link")
    assert "is the folder of the input" in output_clash([d / "a.jpg"], d)
    assert "would replace the input" in output_clash([d / "a.jpg"], files=[tmp_path / "link/a.jpg"])
    assert "replaced as a whole" in output_clash([d / "a.jpg"], tmp_path, owned=True)
    assert output_clash([d / "a.jpg"], tmp_path) is None  # writes beside, never over
    assert output_clash([d], d / "sub") is None  # a new folder inside an input folder
    assert output_clash([d / "a.jpg"], tmp_path / "out", [tmp_path / "out/a.jpg"]) is None


# -- one writer per folder; a killed writer never leaves it locked ---------------------
@pytest.mark.slow
def test_probe_study_and_detect_build_refuse_a_held_folder(tree, tmp_path, capsys, holder):
    out = tmp_path / "out"
    p = holder(out)
    probe = ["probe", "--model", "torchvision:resnet18", "--data", tree, "--out", out]
    busy(probe, capsys, out, p.pid)
    busy(["study", "--models", "base", "--data-root", tree, "--out", out], capsys, out, p.pid)
    voc = tmp_path / "voc"
    voc.mkdir()
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    busy(["detect", "build", voc, "--out", out], capsys, out, p.pid)
    run = tmp_path / "r"
    q = holder(run)
    (run / "config.json").parent.mkdir()
    busy(["probe", run], capsys, run, q.pid)
    assert not out.exists()


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


# -- a bad path is a named refusal before any work, never a traceback --------------------
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


# -- a byte-order mark on one file only is read, not blamed as a count mismatch ----------
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


FIFO_READERS = """
import os, sys
from pathlib import Path
from dnnlab.detect.voc import Problems, read_voc_dir
from dnnlab.cli import main
from dnnlab.errors import InputError
from dnnlab.probe.anymodel import load_state
from dnnlab.utils.images import UnreadableImage, open_rgb
d = Path(sys.argv[1])
problems = Problems()
assert read_voc_dir(d / "voc", problems) == []
print(problems.summary())
for read in (lambda: open_rgb(d / "voc" / "b.jpg"), lambda: load_state(str(d / "w.pt"), None)):
    try:
        read()
    except InputError as e:
        print(e)
"""


# -- an input that changes while it is read ----------------------------------------------
@pytest.mark.slow
def test_every_reader_refuses_a_named_pipe_without_waiting(tmp_path):
    """A VOC annotation, an image and a weights file that are named pipes: each is a named
    input problem or refusal, never a wait for a writer that never comes."""
    import subprocess
    import sys

    (tmp_path / "voc").mkdir()
    for fifo in ("voc/a.xml", "voc/b.jpg", "w.pt"):
        os.mkfifo(tmp_path / fifo)
    p = subprocess.run(
        [sys.executable, "-c", FIFO_READERS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "not a regular file" in lines[0] and "a.xml: a named pipe (FIFO)" in lines[0]
    assert (
        lines[1]
        == f"{tmp_path / 'voc/b.jpg'}: unreadable image (a named pipe (FIFO), not a regular file)"
    )
    assert lines[2].startswith(f"--weights {tmp_path / 'w.pt'}: a named pipe (FIFO)")


# -- a flag is read only by its whole name ---------------------------------------------
@pytest.mark.parametrize(
    "argv, flag",
    [
        (["detect", "train", "DIR", "--over"], "--over"),  # not --overwrite
        (["study", "--out", "OUT", "--over"], "--over"),
        (["train", "--out", "OUT", "--epoch", "3"], "--epoch"),  # not --epochs
    ],
)
def test_an_abbreviated_flag_is_refused_not_expanded(argv, flag, capsys):
    """argparse would read `--over` as `--overwrite` (which replaces a folder): dnnlab's
    parsers take whole names only, so the abbreviation is named and nothing runs."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert f"unrecognized arguments: {flag}" in capsys.readouterr().err
