"""Atomic writes: the user's umask, and leftovers of killed writers cleaned up."""

import os
import subprocess
import sys
import time

import pytest
import torch

from dnnlab.utils.atomic import (
    atomic_file,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    temp_folder_beside,
)


@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def test_outputs_follow_the_umask(tmp_path, umask):
    umask(0o022)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    umask(0o077)
    atomic_write_json(tmp_path / "b.json", {"x": 1})
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_a_folder_made_whole_then_renamed_keeps_the_umask(tmp_path, umask, mask):
    umask(mask)
    (tmp_path / "plain").mkdir()  # what any tool's mkdir gives under this umask
    tmp = temp_folder_beside(tmp_path / "sub" / "out")
    assert tmp.parent == tmp_path / "sub" and tmp.name.startswith(".out.")
    assert tmp.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    assert tmp.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's 0700


def test_stale_temporaries_of_ours_are_removed(tmp_path):
    dead = tmp_path / ".run.json.999999999.abcd_123.tmp"  # no such pid
    live_young = tmp_path / f".run.json.{os.getpid()}.zzzz_999.tmp"  # a writer still at work
    old_pidless = tmp_path / ".cifar10-x.pt.qwertyui.tmp"  # older layout, two hours old
    young_pidless = tmp_path / ".other.pt.asdfghjk.tmp"
    foreign = tmp_path / "notes.999999999.abcdefgh.tmp"  # not of our naming (no leading dot)
    for f in (dead, live_young, old_pidless, young_pidless, foreign):
        f.write_text("partial")
    two_hours_ago = time.time() - 7200
    os.utime(old_pidless, (two_hours_ago, two_hours_ago))
    atomic_write_text(tmp_path / "out.txt", "done")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"out.txt", live_young.name, young_pidless.name, foreign.name}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    target = tmp_path / "last.pt"
    atomic_torch_save({"epoch": 1}, target)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_torch_save({"epoch": 2, "bad": Unsaveable()}, target)
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_text_is_utf8_whatever_the_locale(tmp_path):
    # report.md holds "–" and "−" and report.html declares UTF-8: under the C locale,
    # text written in the locale's encoding would fail (or, elsewhere, be another encoding).
    out = tmp_path / "r.md"
    text = r"'a \u2013 b \u2212 c'"  # the code the child runs is ASCII, as argv must be
    code = "import sys; from dnnlab.utils.atomic import atomic_write_text as w; "
    code += f"w(sys.argv[1], {text})"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    subprocess.run([sys.executable, "-c", code, str(out)], env=env, check=True)
    assert out.read_bytes() == "a – b − c".encode()


def test_a_mode_that_is_not_a_whole_write_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'a'"):
        with atomic_file(tmp_path / "x", "a"):
            pass
    assert list(tmp_path.iterdir()) == []
