"""The write gate (utils/outputs.py): no command writes into, replaces or deletes a file or
folder it did not create (issue 36, item 1).

The table below holds, for every command-line flag that names a folder a command writes
(utils/outputs.WRITING_FLAGS), a command line that writes there. Each row is pointed at a
folder of the user's (no marker, holding files, one of them named as an output), with and
without --overwrite, and at a file of the user's: the command must refuse in one line
naming the flag, before any work, and leave every byte as it was. The table is complete by
construction: the parsers are walked, and every option that names a path must be in the
table or in NOT_WRITTEN (with what it is), so a new writing flag cannot skip the gate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

import pytest

from dnnlab.cli import build_parser, main
from dnnlab.errors import InputError
from dnnlab.utils.atomic import umask
from dnnlab.utils.outputs import (
    MARKER,
    WRITING_FLAGS,
    check_output,
    is_ours,
    mark,
    remove_ours,
    replacing,
)
from tests.fakes import TINY_TRAIN_ARGS, write_voc

# Options that name a path the command only reads (or a value that is not a path at all,
# whose help happens to say "file" or "folder").
NOT_WRITTEN = {
    ("si", "FEATURES"),
    ("si", "LABELS"),
    ("si", "--test"),
    ("si", "--demo"),  # a flag: scikit-learn's digits instead of files
    ("probe", "--memmap"),  # a dtype (the spill files go to --spill-dir)
    ("probe", "--data-root"),
    ("probe", "--data"),
    ("probe", "--model"),  # a model spec, or a module file to import
    ("probe", "--weights"),
    ("probe", "--weights-key"),
    ("probe", "--cka-with"),  # RUN_B, read; the CKA is written into RUN
    ("probe", "--compare"),  # read; the overlay is written into the probe's own folder
    ("probe", "--output-key"),
    ("probe", "--max-memory"),  # a size (its help names the spill folder)
    ("probe", "--val-fraction"),  # a fraction (its help names the class folders)
    ("train", "--data-root"),
    ("study", "--data-root"),
    ("study", "--detector"),
    ("study", "--published"),
    ("detect build", "VOC_DIR"),
    ("detect train", "--backbone-weights"),
    ("detect run", "IMAGES"),
    ("detect run", "--model"),
    ("detect eval", "VOC_DIR"),
    ("verify", "FOLDERS"),
    ("reproduce", "RUN"),
    ("reproduce", "--data-root"),
    ("reproduce", "--published"),
    ("reproduce", "--detector"),
}

# What a path-naming option's help says, and what its name says.
PATH_HELP = re.compile(r"folder|director|\bfiles?\b|\bdir\b|\bpaths?\b|write|here", re.I)
PATH_NAME = re.compile(
    r"^(--(out|draw|publish|save|data|weights|.*-(dir|root|path|file|with))|[A-Z_]+)$"
)


def options():
    """(command, flag, help) for every option of every command that takes a value; a
    positional argument is named by its dest in capitals, as the messages name it."""

    def walk(parser, name):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for n, sub in a.choices.items():
                    yield from walk(sub, f"{name} {n}".strip())
            elif not isinstance(a, argparse._HelpAction) and a.nargs != 0:
                flag = a.option_strings[-1] if a.option_strings else a.dest.upper()
                yield name, flag, a.help or ""

    yield from walk(build_parser(), "")


def test_every_flag_naming_a_path_is_in_the_table_or_read_only():
    seen = set()
    for cmd, flag, helptext in options():
        seen.add((cmd, flag))
        if not helptext or PATH_HELP.search(helptext) or PATH_NAME.search(flag):
            assert (cmd, flag) in WRITING_FLAGS or (cmd, flag) in NOT_WRITTEN, (
                f"`dnnlab {cmd} {flag}` names a path: add it to utils/outputs.WRITING_FLAGS "
                "(and to ROWS here) if the command writes there, else to NOT_WRITTEN"
            )
    assert set(WRITING_FLAGS) <= seen and NOT_WRITTEN <= seen  # no stale entries
    assert set(WRITING_FLAGS) == set(ROWS)  # every writing flag is walked below


# -- the table: commands x writing flags ----------------------------------------------------
# Each row: the argv (a function of the inputs `ins` and the target T) and the name of a file
# the command would write into T (planted in the user's folder under that name).
ROWS = {
    ("train", "--out"): (
        lambda ins, t: ["train", *TINY_TRAIN_ARGS, "--data-root", ins["tree"], "--out", t],
        "metrics.csv",
    ),
    ("probe", "RUN"): (lambda ins, t: ["probe", t], "probe.csv"),
    ("probe", "--out"): (
        lambda ins, t: (
            ["probe", "--model", f"{ins['user_file']}:make", "--data", ins["tree"]] + ["--out", t]
        ),
        "probe.csv",
    ),
    ("probe", "--spill-dir"): (
        lambda ins, t: (
            ["probe", "--model", f"{ins['user_file']}:make", "--data", ins["tree"]]
            + ["--out", ins["tmp"] / "p", "--spill-dir", t]
        ),
        "000-layer.npy",
    ),
    ("study", "--out"): (
        lambda ins, t: ["study", "--models", "base", "--data-root", ins["tree"], "--out", t],
        "report.md",
    ),
    ("study", "--publish"): (
        lambda ins, t: (
            ["study", "--models", "base", "--data-root", ins["tree"]]
            + ["--out", ins["tmp"] / "s", "--publish", t]
        ),
        "report.html",
    ),
    ("detect build", "--out"): (
        lambda ins, t: ["detect", "build", ins["voc"], "--out", t],
        "index.csv",
    ),
    ("detect train", "DIR"): (lambda ins, t: ["detect", "train", t], "model.pt"),
    ("detect show", "DIR"): (lambda ins, t: ["detect", "show", t], "samples_positive.png"),
    ("detect run", "--out"): (
        lambda ins, t: (
            ["detect", "run", ins["voc"] / "a.jpg", "--model", ins["model"]] + ["--out", t]
        ),
        "a.jpg",
    ),
    ("detect eval", "--draw"): (
        lambda ins, t: ["detect", "eval", ins["voc"], "--model", ins["model"], "--draw", t],
        "a.jpg",
    ),
    ("detect eval", "--model"): (
        lambda ins, t: ["detect", "eval", ins["voc"], "--model", t],
        "evals",
    ),
    ("reproduce", "--out"): (
        lambda ins, t: (
            ["reproduce", ins["tmp"] / "pub" / "runs" / "base", "--data-root", ins["tree"]]
            + ["--out", t]
        ),
        "reproduction.json",
    ),
}


def has_overwrite(cmd: str) -> bool:
    return any(f == "--overwrite" for c, f, _ in options_all() if c == cmd)


def options_all():
    """Every option string of every command, flags without a value too."""

    def walk(parser, name):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for n, sub in a.choices.items():
                    yield from walk(sub, f"{name} {n}".strip())
            else:
                for s in a.option_strings:
                    yield name, s, a.help or ""

    yield from walk(build_parser(), "")


@pytest.fixture
def ins(tmp_path, tree, user_file):
    """The inputs the rows read: the fake CIFAR tree, a user model file, a VOC folder and a
    detector folder of dnnlab's (marked; its model.pt is never loaded: the refusals come
    first)."""
    voc, model = tmp_path / "voc", tmp_path / "model"
    voc.mkdir()
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    mark(model, "detect build")
    (model / "model.pt").write_bytes(b"never loaded")
    return {"tree": tree, "user_file": user_file, "voc": voc, "model": model, "tmp": tmp_path}


def tree_bytes(root) -> dict:
    """Every path under root (folders too) with its bytes (None for a folder)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        out[dirpath] = None
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[p] = fh.read()
    return out


def users_folder(tmp_path, output_name: str):
    """A folder of the user's: no marker, a file of theirs and one named as an output."""
    t = tmp_path / "mine"
    t.mkdir()
    (t / "notes.txt").write_text("my notes")
    (t / output_name).write_bytes(b"mine, named as an output")
    return t


def refused_in_one_line(argv, capsys, flag: str, path) -> None:
    t0 = time.perf_counter()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dnnlab ") and ": error: " in lines[0], err
    assert flag in lines[0] and str(path) in lines[0], (flag, err)
    assert time.perf_counter() - t0 < 20, argv  # refused before any work


@pytest.mark.parametrize("row", sorted(ROWS), ids=" ".join)
def test_no_command_writes_into_a_users_folder(row, ins, tmp_path, capsys):
    cmd, flag = row
    argv_of, output_name = ROWS[row]
    t = users_folder(tmp_path, output_name)
    before = tree_bytes(tmp_path)
    if WRITING_FLAGS[row] == "scratch":
        # --spill-dir is a parent for a new folder of the probe's own, made and removed
        # by it: a folder of the user's may be that parent, and is left as it was.
        from dnnlab.probe.spill import SpillFolder

        s = SpillFolder(t)
        s.array("layer", (3, 2), "float32")[:] = 1
        s.close()
        assert tree_bytes(tmp_path) == before
        return
    for extra in ([], ["--overwrite"]) if has_overwrite(cmd) else ([],):
        refused_in_one_line([*argv_of(ins, t), *extra], capsys, flag, t)
        assert tree_bytes(tmp_path) == before, extra


@pytest.mark.parametrize("row", sorted(ROWS), ids=" ".join)
def test_no_command_writes_over_a_users_file(row, ins, tmp_path, capsys):
    cmd, flag = row
    argv_of, _ = ROWS[row]
    f = tmp_path / "mine.txt"
    f.write_text("mine")
    before = tree_bytes(tmp_path)
    for extra in ([], ["--overwrite"]) if has_overwrite(cmd) else ([],):
        refused_in_one_line([*argv_of(ins, f), *extra], capsys, flag, f)
        assert tree_bytes(tmp_path) == before, extra


@pytest.mark.parametrize("row", sorted(ROWS), ids=" ".join)
def test_a_quoted_home_path_is_the_folder_checked_and_written(
    row, ins, tmp_path, capsys, monkeypatch
):
    # '~/mine' quoted reaches dnnlab unexpanded: the gate must judge the folder that would
    # be written (HOME/mine, the user's), not let a literal ./~/mine be made beside it.
    cmd, flag = row
    argv_of, output_name = ROWS[row]
    if WRITING_FLAGS[row] == "scratch":
        return
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    mine = users_folder(home, output_name)
    monkeypatch.setenv("HOME", str(home))  # matplotlib may write its cache there too
    monkeypatch.chdir(cwd)
    before = tree_bytes(mine)
    refused_in_one_line([*argv_of(ins, "~/mine")], capsys, flag, mine)
    assert tree_bytes(mine) == before
    assert not any(cwd.iterdir())  # no literal ./~/mine


# -- the gate's own promises ----------------------------------------------------------------
def test_a_marked_or_recorded_folder_is_ours_and_nothing_else(tmp_path):
    t = tmp_path / "t"
    t.mkdir()
    (t / "config.json").write_text('{"something": "else"}')  # another tool's config.json
    assert not is_ours(t, "train")
    with pytest.raises(InputError, match="--out .*did not make"):
        check_output(t, "--out", "train", overwrite=True)
    # A user's config.json with a "model" key is not a run (the outside test's data loss:
    # train --overwrite deleted the folder around it).
    (t / "config.json").write_text('{"model": "my-resnet", "lr": 0.1}')
    assert not is_ours(t, "train")
    with pytest.raises(InputError, match="--out .*did not make"):
        check_output(t, "--out", "train", overwrite=True, replace=True)
    run = '{"model": "base", "seed": 0, "recipe": "budget", "data_identity": "d3cbda2f0ce4cad5"}'
    (t / "config.json").write_text(run)  # a run made before the marker
    assert is_ours(t, "train") and not is_ours(t, "study")
    assert check_output(t, "--out", "train") == t
    (t / "config.json").unlink()
    mark(t, "train")
    assert json.loads((t / MARKER).read_text())["command"] == "train"
    # The marker names its command: a run folder is not a study's or a reproduction's.
    assert is_ours(t, "train") and not is_ours(t, "study") and not is_ours(t, "reproduce")
    (t / MARKER).write_text("not json")  # a damaged marker proves nothing
    assert not is_ours(t, "train")
    (t / MARKER).unlink()
    mark(t, "train")
    (t / "x.csv").write_text("old")
    with pytest.raises(InputError, match="--overwrite"):  # a file of an output's name
        check_output(t, "--out", "train", files=[t / "x.csv"])
    check_output(t, "--out", "train", files=[t / "x.csv"], overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_output(empty, "--out", "detect run")  # a new or empty folder is fine


def test_remove_ours_deletes_only_what_the_marker_proves(tmp_path):
    users = tmp_path / "users"
    users.mkdir()
    (users / "a").write_text("mine")
    with pytest.raises(InputError, match="not a folder dnnlab made"):
        remove_ours(users, "train")
    with pytest.raises(InputError, match="not a folder dnnlab made"):
        remove_ours(users / "a", "detect build", within=users)
    assert (users / "a").read_text() == "mine"
    ours = mark(tmp_path / "ours", "detect build")
    (ours / "model.pt").write_text("x")
    with pytest.raises(InputError):
        remove_ours(users / "a", "detect build", within=ours)  # not inside it
    remove_ours(ours / "model.pt", "detect build", within=ours)
    assert not (ours / "model.pt").exists()
    remove_ours(ours, "detect build")
    assert not ours.exists()


def test_replacing_swaps_only_a_complete_folder_of_ours_with_the_umask(tmp_path):
    dest = tmp_path / "pub"
    with replacing(dest, "detect run") as tmp:
        (tmp / "a").write_text("1")
    assert (dest / "a").read_text() == "1" and (dest / MARKER).is_file()
    assert os.stat(dest).st_mode & 0o777 == 0o777 & ~umask()  # not mkdtemp's 0700
    with pytest.raises(RuntimeError), replacing(dest, "detect run") as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("cut short")
    assert (dest / "a").read_text() == "1"  # the failed replacement changed nothing
    with replacing(dest, "detect run") as tmp:
        (tmp / "b").write_text("2")
    assert sorted(os.listdir(dest)) == [MARKER, "b"]
    assert sorted(os.listdir(tmp_path)) == ["pub"]  # no temporary or old copy left
    users = tmp_path / "users"
    users.mkdir()
    (users / "a").write_text("mine")
    with pytest.raises(InputError, match="not a folder dnnlab made"), replacing(users, "study"):
        pass
    assert os.listdir(users) == ["a"] and sorted(os.listdir(tmp_path)) == ["pub", "users"]


def test_a_folder_of_another_command_is_named_as_such(tmp_path):
    folder = mark(tmp_path / "run", "train")
    (folder / "config.json").write_text("{}")
    with pytest.raises(InputError, match="a folder `dnnlab train` made, not `dnnlab reproduce`"):
        check_output(folder, "--out", "reproduce")
