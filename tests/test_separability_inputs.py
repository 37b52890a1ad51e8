"""Inputs to separability and `dnnlab si` (separability.io, featurefile): numbers that would
silently be wrong or mean nothing (the scale of the features, classes of one sample), files
with a byte-order mark, pickles, named pipes, files that change while read, unusual tensors,
and reading within the memory budget; each measured right or refused by name."""

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import dnnlab
from dnnlab.cli import main
from dnnlab.errors import DnnlabError, InputError
from dnnlab.probe.probe import ProbeConfig, probe_model
from dnnlab.separability import separability
from dnnlab.separability.io import load_array
from tests import oracle
from tests.fakes import REASON, bad_pt, raises_naming, refused, unsafe_words

MEASURES = "si,csi,hsi:2,soft:3,knn:3,nc1"


def clustered(n=240, d=16, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return rng.normal(size=(n, d)) + y[:, None] * 0.6 + 3.0, y


@pytest.mark.slow
@pytest.mark.parametrize("method", ["zscore", "minmax"])
@pytest.mark.parametrize("c", [1e-38, 1e-120, 1e-200, 1e-300, 1e30, 1e150, 1e300])
def test_every_measure_is_scale_invariant(method, c):
    x, y = clustered()
    want = separability(x, y, MEASURES, normalize_method=method)
    got = separability(x * c, y, MEASURES, normalize_method=method)
    for k, v in want.values.items():
        if k == "nc1":
            assert got[k] == pytest.approx(v, rel=1e-6)
        else:
            assert got[k] == v, (k, c)
    # and the oracle agrees on the unscaled features
    assert want["si"] == oracle.measures(x, y, (1,), method)["si"]


def test_float32_features_near_the_bottom_of_their_range():
    x, y = clustered()
    want = separability(x.astype(np.float32), y, MEASURES)
    got = separability((x * 1e-36).astype(np.float32), y, MEASURES)
    assert got["si"] == want["si"] and got["csi"] == want["csi"]


def test_a_spread_beyond_float64_is_refused_with_the_reason():
    x, y = clustered()
    with pytest.raises(InputError, match="too small or too large for float64"):
        separability(x * 1e-315, y, "si")  # subnormal: 1 / spread overflows


def test_every_class_of_one_sample_is_named_not_measured(capsys):
    x = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.raises(InputError, match="every one of the 6 classes has a single sample"):
        separability(x, np.arange(6), "si,csi")
    r = separability(x, np.arange(6), "si,csi,knn:2", undefined="nan")
    assert all(np.isnan(v) for v in r.values.values())
    assert "single sample" in r.notes[0]
    assert main_si(capsys, x, np.arange(6)) == 2


def main_si(capsys, x, y):
    d = Path(tempfile.mkdtemp())
    np.save(d / "x.npy", np.asarray(x))
    np.save(d / "y.npy", np.asarray(y))
    rc = main(["si", str(d / "x.npy"), str(d / "y.npy")])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "UserWarning" not in err
    if rc:
        assert "single sample" in err or "one label" in err
    return rc


def test_a_k_too_large_for_the_smallest_class_is_noted_and_still_exact():
    # Two samples per class: each has one neighbour of its own class, never a majority of 5.
    x = np.random.default_rng(1).normal(size=(20, 4))
    y = np.arange(10).repeat(2)
    r = separability(x, y, "si,knn:2,knn:5")
    assert r.values["knn:5"] == oracle.knn_accuracy(x, y, 5)[0]
    notes = [n for n in r.notes if n.startswith("knn:")]
    assert len(notes) == 2 and "has 2 samples" in notes[0] and "knn:5" in notes[1], r.notes
    big = separability(*clustered(n=60), "knn:5")  # 20 a class: a majority is possible
    assert not [n for n in big.notes if n.startswith("knn:")]


def test_some_classes_of_one_sample_are_noted():
    x, y = clustered(n=60)
    y = y.copy()
    y[0] = 7  # class 7 has one sample
    r = separability(x, y, "si,csi")
    assert any("1 of the 4 classes has a single sample (first: '7')" in n for n in r.notes)


def test_one_label_note_without_a_raw_warning(capsys):
    assert main_si(capsys, np.random.default_rng(0).normal(size=(2, 3)), [1, 1]) == 0


def test_a_probe_split_of_singletons_gives_nan_rows_with_the_reason(tmp_path):
    x = torch.randn(2, 5)
    y = torch.tensor([0, 1])
    m = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(5, 4))
    res = probe_model(m, {"val": (x, y)}, ProbeConfig(layers="0,1"), out=tmp_path / "p")
    assert len(res.rows) == 2
    for r in res.rows:
        assert np.isnan(r["si"]) and np.isnan(r["csi"])
        assert "every one of the 2 classes has a single sample" in r["note"]


# -- every refused .pt explained, never "weights_only=False will likely succeed" ------
@pytest.mark.parametrize("kind", sorted(REASON))
def test_si_refuses_a_bad_pt_in_its_own_words(tmp_path, capsys, kind):
    labels = tmp_path / "y.npy"
    np.save(labels, np.arange(10) % 2)
    feats = bad_pt(tmp_path, kind)
    assert main(["si", str(feats), str(labels), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(feats) in err and REASON[kind] in err
    assert "weights_only" not in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


# -- files read wrong in silence ---------------------------------------------------
@pytest.mark.parametrize("header", [False, True])
def test_csv_with_a_byte_order_mark_reads_like_one_without(tmp_path, header):
    from dnnlab.separability.io import load_array

    rows = ["1.5,2", "3,4", "5,6.25"]
    text = "\n".join((["a,b"] if header else []) + rows) + "\n"
    plain, marked = tmp_path / "plain.csv", tmp_path / "marked.csv"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")  # Excel's "CSV UTF-8"
    a, b = load_array(str(plain)), load_array(str(marked))
    assert np.asarray(b).shape == (3, 2) and np.array_equal(np.asarray(a), np.asarray(b))
    labels = tmp_path / "labels.csv"
    labels.write_text("cat\ndog\ncat\n", encoding="utf-8-sig")
    assert list(np.asarray(load_array(str(labels), numeric=False))) == ["cat", "dog", "cat"]


def write_csv(path, rows, bom: bool) -> None:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8-sig" if bom else "utf-8")


# -- a byte-order mark on one file only is read, not blamed as a count mismatch ----------
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


def si_files(tmp_path, seed=0):
    """A .npy feature file of two well-apart classes and its labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(40) % 2
    np.save(tmp_path / "x.npy", rng.normal(size=(40, 5)) + 4 * y[:, None])
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "x.npy", tmp_path / "y.npy"


# -- an input that changes while it is read ----------------------------------------------
@pytest.mark.parametrize("how", ["renamed over", "rewritten in place"])
def test_si_refuses_a_feature_file_that_changes_while_it_is_read(
    tmp_path, capsys, monkeypatch, how
):
    si = importlib.import_module(
        "dnnlab.separability.si_command"
    )  # (dnnlab.separability is a function)

    x, y = si_files(tmp_path)
    other = tmp_path / "other.npy"
    np.save(other, np.random.default_rng(1).normal(size=(40, 5)))  # same shape, other data
    measure = si._measure

    def measure_then_change(*a, **kw):  # another process changes the file mid-run
        res = measure(*a, **kw)
        if how == "renamed over":
            os.replace(other, x)
        else:
            with open(x, "r+b") as fh:
                fh.seek(-8, os.SEEK_END)
                fh.write(b"\x00" * 8)
            os.utime(x, ns=(0, os.stat(x).st_mtime_ns + 1_000_000))
        return res

    monkeypatch.setattr(si, "_measure", measure_then_change)
    assert main(["si", str(x), str(y), "--no-progress"]) == 2
    got = capsys.readouterr()
    assert f"{x}: the file changed while dnnlab read it" in got.err and "Traceback" not in got.err
    assert got.out == ""  # no number printed


def test_a_feature_file_is_read_through_the_descriptor_it_was_opened_with(tmp_path):
    from dnnlab.separability.featurefile import FeatureFile

    x, _ = si_files(tmp_path)
    want = np.load(x)
    f = FeatureFile.open_npy(x)
    first = f[0:10].numpy()
    np.save(tmp_path / "new.npy", want + 100)
    os.replace(tmp_path / "new.npy", x)  # the name now leads to another file
    assert np.array_equal(np.concatenate([first, f[10:40].numpy()]), want)  # one version
    with pytest.raises(InputError, match="replaced by another file") as e:
        f.check_unchanged()
    assert str(x) in str(e.value)
    f.close()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["labels", "features"])
def test_si_refuses_a_named_pipe_at_once(tmp_path, which):
    """A FIFO as an input would make si wait for a writer forever: refused before reading."""
    import subprocess
    import sys

    x, y = si_files(tmp_path)
    pipe = x if which == "features" else y
    pipe.unlink()
    os.mkfifo(pipe)
    code = f"from dnnlab.cli import main; raise SystemExit(main(['si', {str(x)!r}, {str(y)!r}]))"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert f"{pipe}: a named pipe (FIFO), not a regular file" in p.stderr


# -- no message tells the user to load unsafely ------------------------------------------
@pytest.mark.parametrize("where", ["labels.npy", "labels.npz"])
def test_si_refuses_pickled_labels_without_advising_to_unpickle(tmp_path, capsys, where):
    x, _ = si_files(tmp_path)
    objects = np.array(["cat", "dog"] * 20, dtype=object)  # saved as a pickle
    path = tmp_path / where
    if where.endswith(".npy"):
        np.save(path, objects, allow_pickle=True)
    else:
        np.savez(path, y=objects)
    err = refused(["si", x, path, "--no-progress"], capsys, path, "could run code")
    assert unsafe_words(err) == []


# -- messages and settings that say what is so -------------------------------------------
def test_a_label_message_shows_the_value_not_numpys_repr(tmp_path, capsys):
    x, _ = si_files(tmp_path)
    y = (np.arange(40) % 2).astype(np.float32)
    y[3] = 1.5
    np.save(tmp_path / "y.npy", y)
    err = refused(["si", x, tmp_path / "y.npy"], capsys, "(1.5 at position 3")
    assert "np." not in err


def test_a_pickle_named_safetensors_is_refused_for_what_it_is(tmp_path, capsys):
    import pickle

    x, y = si_files(tmp_path)
    fake = tmp_path / "x.safetensors"
    with open(fake, "wb") as fh:
        pickle.dump({"x": np.load(x)}, fh, protocol=4)
    err = refused(["si", fake, y], capsys, fake, "a Python pickle (pickle.dump)")
    assert "warning" not in err and "Unsupported operand" not in err


def unusual(kind: str):
    """(features, labels) tensors of 20 samples of two classes, one of them unusual."""
    import torch

    x, y = torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), torch.arange(20) % 2
    return {
        "float8 features": lambda: (x.to(torch.float8_e4m3fn), y),
        "bf16 labels": lambda: (x, y.to(torch.bfloat16)),
        "bf16 features": lambda: (x.to(torch.bfloat16), y),
        "quantized features": lambda: (torch.quantize_per_tensor(x, 0.1, 0, torch.qint8), y),
        "meta features": lambda: (x.to("meta"), y),
        "nested features": lambda: (torch.nested.nested_tensor([x[:3], x[:5]]), y),
        "complex labels": lambda: (x, y.to(torch.complex64)),
    }[kind]()


# -- no traceback from an unusual input --------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's own on making these tensors
@pytest.mark.parametrize(
    "kind, refusal",
    [
        ("float8 features", None),  # exact in float32: measured
        ("bf16 features", None),
        ("bf16 labels", None),
        ("quantized features", "a quantized tensor"),
        ("meta features", "a meta tensor"),
        ("nested features", "a nested (ragged) tensor"),
        ("complex labels", "complex numbers"),
    ],
)
def test_si_on_unusual_tensors_measures_or_refuses_by_name(tmp_path, capsys, kind, refusal):
    import json

    import torch

    x, y = unusual(kind)
    torch.save(x, tmp_path / "x.pt")
    torch.save(y, tmp_path / "y.pt")
    argv = ["si", tmp_path / "x.pt", tmp_path / "y.pt", "--json", "--no-progress"]
    if refusal is None:
        assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
        plain = [str(tmp_path / "p.npy"), str(tmp_path / "q.npy")]
        np.save(plain[0], x.float().numpy())
        np.save(plain[1], y.long().numpy())
        got = json.loads(capsys.readouterr().out)
        assert main(["si", *plain, "--json", "--no-progress"]) == 0
        want = json.loads(capsys.readouterr().out)
        assert (got["si"], got["csi"]) == (want["si"], want["csi"])  # the values as they are
    else:
        named = tmp_path / ("y.pt" if "labels" in kind else "x.pt")
        refused(argv, capsys, f"{named}: {refusal}")


SRC = str(Path(dnnlab.__file__).resolve().parents[1])  # the code under test, in a child too


def traced_peak(fn):
    """(fn(), the peak of Python and numpy allocations while it ran, in bytes)."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- a budget bounds the reading ----------------------------------------------------------
def test_naming_one_npz_member_reads_only_that_member(tmp_path):
    x = np.arange(12.0).reshape(4, 3)
    big = np.zeros((4000, 4000))  # 128 MB inflated, a few hundred KB compressed
    np.savez_compressed(tmp_path / "f.npz", X=x, big=big)
    got, peak = traced_peak(lambda: load_array(f"{tmp_path / 'f.npz'}:X"))
    assert np.array_equal(got, x)
    assert peak < big.nbytes / 100  # was 128 MB: every member inflated to pick one


def test_a_csv_is_parsed_into_its_array_not_held_as_text(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 80))
    path = tmp_path / "x.csv"
    np.savetxt(path, x, delimiter=",", fmt="%.17g")  # every float64 exactly
    got, peak = traced_peak(lambda: load_array(str(path)))
    assert np.array_equal(got, x)
    # The result and a row at a time: was about 6x the file (every cell a Python string).
    assert peak < 1.2 * got.nbytes < path.stat().st_size


def test_a_csv_whose_numbers_exceed_the_budget_is_refused_before_it_is_parsed(tmp_path):
    from dnnlab.separability.io import open_features

    path = tmp_path / "x.csv"
    path.write_text("1,2,3,4\n" * 1000)  # 8 KB of text, 32 KB of float64
    with raises_naming(InputError, "x.csv", "1,000 rows of 4 numbers", "31.25 KiB"):
        open_features(str(path), budget=20_000)
    assert open_features(str(path), budget=40_000).shape == (1000, 4)


def copies_of_two_rows(folder: Path, n: int, d: int, seed: int = 0):
    """X.npy of n rows, each one of two distinct rows, and y.npy of two random labels."""
    rng = np.random.default_rng(seed)
    two = rng.normal(size=(2, d)).astype(np.float32)
    which = rng.integers(0, 2, n)
    np.save(folder / "x.npy", two[which])
    y = rng.integers(0, 2, n)
    np.save(folder / "y.npy", y)
    return folder / "x.npy", folder / "y.npy", which, y


def test_copies_of_two_rows_are_measured_by_the_lowest_index_rule(tmp_path):
    """Among neighbours at equal distance the lowest index wins (docs/separability.md): each
    row's k nearest are the k lowest-indexed other copies of it."""
    from dnnlab.separability import separability
    from dnnlab.separability.io import open_features
    from dnnlab.separability.knn import SearchStats

    x_path, _, which, y = copies_of_two_rows(tmp_path, 1500, 256)
    k = 3
    nearest = np.empty((len(y), k), dtype=np.int64)
    for g in (0, 1):
        members = np.flatnonzero(which == g)
        for i in members:
            nearest[i] = members[members != i][:k]
    same = y[nearest] == y[:, None]
    st = SearchStats()
    res = separability(
        open_features(str(x_path), 100 << 20), y, ["si", "hsi:3"], max_memory="100MB", stats=st
    )
    assert res["si"] == pytest.approx(same[:, 0].mean(), abs=1e-12)
    assert res["hsi:3"] == pytest.approx(same.all(1).mean(), abs=1e-12)
    assert st.duplicate_rows == len(y) - 2 * (k + 1)  # only each row's first k+1 copies searched


def run_si(args, out_file: Path, timeout: float):
    """`dnnlab si ARGS` in its own process: (exit status, its output, seconds, its peak
    resident memory in bytes, the kernel's own count: wait4's ru_maxrss)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dnnlab", "si", *map(str, args), "--no-progress"]
    t0 = time.perf_counter()
    with open(out_file, "w+b") as fh:
        p = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                p.kill()
                os.wait4(p.pid, 0)
                pytest.fail(f"dnnlab si {' '.join(map(str, args))}: no answer after {timeout} s")
            time.sleep(0.05)
        p.returncode = os.waitstatus_to_exitcode(status)
        fh.seek(0)
        out = fh.read().decode()
    return p.returncode, out, time.perf_counter() - t0, usage.ru_maxrss * 1024


@pytest.mark.slow
def test_copies_of_two_rows_answer_within_the_budget_at_once(tmp_path):
    """A scaled version of the issue's 20,000 x 16,384 file of two distinct rows under
    --max-memory 100MB (benchmarks/bench_si_file.py --distinct 2 runs the full size): the
    search was every row against every row, each row again against all in the fallback with
    half the file as its tied candidates (2.5 GB, no answer after 300 s)."""
    x, y, _, _ = copies_of_two_rows(tmp_path, 4000, 4096)  # 64 MB of features
    small = tmp_path / "small"
    small.mkdir()
    sx, sy, _, _ = copies_of_two_rows(small, 20, 4, seed=1)
    budget = ["--max-memory", "100MB"]
    code, out, _, interpreter = run_si([sx, sy, *budget], tmp_path / "out", 60)
    assert code == 0, out
    code, out, secs, peak = run_si([x, y, *budget], tmp_path / "out", 60)
    assert code == 0, out
    assert "si " in out
    assert peak - interpreter < 100e6, f"{(peak - interpreter) / 1e6:.0f} MB above the interpreter"


# -- non-finite features and bad settings, named ---------------------------------------
def test_non_finite_features_are_a_dnnlab_error():
    x = np.ones((6, 3))
    x[2, 1] = np.nan
    with pytest.raises(DnnlabError, match="NaN or Inf in 1 rows"):
        separability(x, [0, 0, 0, 1, 1, 1])


def test_si_alpha_and_memory_name_their_flag(tmp_path, capsys):
    x, y = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x, np.random.default_rng(0).normal(size=(20, 3)))
    np.save(y, np.arange(20) % 2)
    assert main(["si", str(x), str(y), "--alpha", "inf"]) == 2
    assert "--alpha must be a finite number > 0" in capsys.readouterr().err
    assert main(["si", str(x), str(y), "--max-memory", "0"]) == 2
    assert "--max-memory: " in capsys.readouterr().err
    assert main(["si", str(x), str(y), "--max-memory", "1KB"]) == 2
    err = capsys.readouterr().err
    assert "0.00 GiB" not in err and "1000 B is too small" in err
