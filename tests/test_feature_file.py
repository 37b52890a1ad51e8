"""Features on disk (separability.featurefile): read by row blocks, the same answer as in
memory, every bad file named before any work."""

import json
import zipfile

import numpy as np
import pytest
import safetensors.torch
import torch

from dnnlab.cli import main
from dnnlab.errors import InputError
from dnnlab.separability import separability
from dnnlab.separability.featurefile import FeatureFile
from dnnlab.separability.io import open_features
from tests import oracle

ALL = "si,csi,hsi:3,soft:3,anti:3,knn:4,nc1"


def lattice(n=160, d=24, classes=4, seed=0):
    """Integer-lattice features: many exact distance ties, and exact duplicate rows."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(-2, 3, size=(n, d)).astype(np.float32) + y[:, None] * 0.5
    x[5] = x[6]
    x[40:44] = x[7]
    return x, y


def same_result(a, b):
    assert a.values == b.values
    assert a.per_class == b.per_class


@pytest.mark.parametrize("method", ["zscore", "minmax", "none"])
def test_file_equals_memory_every_measure(tmp_path, method):
    x, y = lattice()
    np.save(tmp_path / "x.npy", x)
    f = FeatureFile.open_npy(tmp_path / "x.npy")
    mem = separability(x, y, ALL, normalize_method=method, block=64)
    disk = separability(f, y, ALL, normalize_method=method, block=64)
    same_result(mem, disk)
    if method == "minmax":
        return  # 1/span rounds in float32 and breaks some of the lattice's exact ties
    want = oracle.measures(x, y, (1, 3), method)
    for k in ("si", "csi", "hsi:3", "soft:3", "anti:3"):
        assert disk[k] == pytest.approx(want[k], abs=1e-12)
    assert disk["knn:4"] == pytest.approx(oracle.knn_accuracy(x, y, 4, method)[0], abs=1e-12)


def test_linear_from_file_equals_memory(tmp_path):
    x, y = lattice(n=120, d=200)  # D > N: the dual form, which shares the search in memory
    xt, yt = lattice(n=50, d=200, seed=1)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", xt)
    mem = separability(x, y, "si,linear", test=(xt, yt))
    disk = separability(
        np.load(tmp_path / "x.npy", mmap_mode="r"),
        y,
        "si,linear",
        test=(np.load(tmp_path / "t.npy", mmap_mode="r"), yt),
    )
    assert disk.values == mem.values
    assert disk.per_class == mem.per_class
    assert "its Gram from the neighbour search" in mem.notes[0]  # in memory it shares


@pytest.mark.parametrize(
    "make",
    [
        lambda x: x.astype(np.float64),
        lambda x: x.astype(np.float16),
        lambda x: x.astype(np.int16),
        lambda x: x.astype(">f4"),
        lambda x: np.asfortranarray(x),
        lambda x: x.reshape(len(x), 4, 6),
    ],
    ids=["float64", "float16", "int16", "big-endian", "fortran", "3-d"],
)
def test_file_layouts(tmp_path, make):
    x, y = lattice()
    arr = make(x)
    np.save(tmp_path / "x.npy", arr)
    mem = separability(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("=")), y, ALL)
    same_result(mem, separability(FeatureFile.open_npy(tmp_path / "x.npy"), y, ALL, block=64))


def test_npz_members_and_memmap_views(tmp_path):
    x, y = lattice()
    np.savez(tmp_path / "d.npz", a=np.zeros(3), x=x)
    f = open_features(f"{tmp_path / 'd.npz'}:x", 1 << 30)
    assert isinstance(f, FeatureFile)
    mem = separability(x, y, ALL)
    same_result(mem, separability(f, y, ALL, block=64))
    np.save(tmp_path / "big.npy", np.concatenate([x, x]))
    view = np.load(tmp_path / "big.npy", mmap_mode="r")[len(x) :]  # starts inside the file
    same_result(mem, separability(view, y, ALL, block=64))


@pytest.mark.slow
def test_read_by_blocks_never_whole(tmp_path, monkeypatch):
    """The core never asks the file for more rows at once than its blocks and tiles."""
    x, y = lattice(n=600, d=16384)  # 39 MB: larger than one streamed chunk
    np.save(tmp_path / "x.npy", x)
    f = FeatureFile.open_npy(tmp_path / "x.npy")
    sizes = []
    read = FeatureFile._read

    def spy(self, i0, i1):
        sizes.append(i1 - i0)
        return read(self, i0, i1)

    monkeypatch.setattr(FeatureFile, "_read", spy)
    separability(f, y, ALL, block=64, max_memory="2GB")
    assert sizes and max(sizes) < 600


def test_rows_by_index_and_slices(tmp_path):
    x, _ = lattice(n=50, d=7)
    np.save(tmp_path / "x.npy", x)
    f = FeatureFile.open_npy(tmp_path / "x.npy")
    idx = torch.tensor([7, 3, 3, 4, 49, 0])
    assert torch.equal(f.index_select(0, idx), torch.from_numpy(x[idx.numpy()]))
    assert torch.equal(f[10:13], torch.from_numpy(x[10:13]))
    assert torch.equal(f[-1], torch.from_numpy(x[-1]))
    assert torch.equal(f[::7], torch.from_numpy(x[::7]))


def _write_bytes(p, data: bytes):
    p.write_bytes(data)
    return p


def _write_npy_then(tmp_path, arr, cut: int = 0, extra: bytes = b""):
    p = tmp_path / "x.npy"
    np.save(p, arr, allow_pickle=True)
    data = p.read_bytes()
    p.write_bytes((data[:-cut] if cut else data) + extra)
    return p


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda t: _write_npy_then(t, np.ones((10, 4), np.float32), cut=5), "truncated"),
        (lambda t: _write_npy_then(t, np.ones((10, 4), np.float32), extra=b"xx"), "header"),
        (lambda t: _write_npy_then(t, np.array([{"a": 1}] * 4, dtype=object)), "object"),
        (lambda t: _write_npy_then(t, np.array(["a", "b"])), "real numbers"),
        (lambda t: _write_npy_then(t, np.ones((3, 2), complex)), "real numbers"),
        (lambda t: _write_npy_then(t, np.float32(3)), "scalar"),
        (lambda t: _write_npy_then(t, np.zeros(3, [("a", "f4"), ("b", "i4")])), "real numbers"),
        (lambda t: _write_bytes(t / "x.npy", b"\x93NUMPY"), "cannot read"),
    ],
    ids=["truncated", "extra-bytes", "object", "strings", "complex", "scalar", "struct", "magic"],
)
def test_bad_npy_named_before_any_work(tmp_path, capsys, make, words):
    p = make(tmp_path)
    np.save(tmp_path / "y.npy", np.arange(10) % 2)
    assert main(["si", str(p), str(tmp_path / "y.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dnnlab si: error: ") and str(p) in err and words in err
    assert "Traceback" not in err


def test_truncated_npz_member_named(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.ones((100, 8), np.float32))
    with zipfile.ZipFile(p) as zf:
        info = zf.getinfo("x.npy")
    data = bytearray(p.read_bytes())
    # The central directory still says 100 x 8; the member's own header now says 200 rows.
    at = data.find(b"(100, 8)")
    data[at : at + 8] = b"(200, 8)"
    p.write_bytes(bytes(data))
    with pytest.raises(InputError, match="truncated or damaged"):
        FeatureFile.open_npz_member(p, "x")
    assert info.compress_type == zipfile.ZIP_STORED


def test_compressed_member_checked_against_budget_before_inflating(tmp_path, capsys):
    p = tmp_path / "d.npz"
    np.savez_compressed(p, x=np.zeros((4000, 1000), np.float32))  # 16 MB inflated, tiny here
    assert p.stat().st_size < 1_000_000
    np.save(tmp_path / "y.npy", np.arange(4000) % 2)
    assert main(["si", f"{p}:x", str(tmp_path / "y.npy"), "--max-memory", "8MB"]) == 2
    err = capsys.readouterr().err
    assert f"{p}:x" in err and "compressed" in err and "savez" in err
    # Within the budget it is inflated and measured (every column constant: named).
    assert main(["si", f"{p}:x", str(tmp_path / "y.npy"), "--max-memory", "1GB"]) == 2
    assert "constant" in capsys.readouterr().err


def test_whole_file_formats_bounded_by_the_budget(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(2000, 300))
    torch.save(torch.tensor(x), tmp_path / "x.pt")  # 4.8 MB
    np.save(tmp_path / "y.npy", np.arange(2000) % 3)
    assert main(["si", str(tmp_path / "x.pt"), str(tmp_path / "y.npy"), "--max-memory", "2MB"]) == 2
    err = capsys.readouterr().err
    assert "x.pt" in err and "more than the memory budget" in err and ".npy" in err
    # Read whole, it leaves the core the rest of the budget: 5 MB of features in 6 MB.
    assert main(["si", str(tmp_path / "x.pt"), str(tmp_path / "y.npy"), "--max-memory", "6MB"]) == 2
    assert "inputs read whole" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", x)
    argv = ["si", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--max-memory", "6MB"]
    assert main([*argv, "--json"]) == 0  # the same budget is enough for the file read by blocks
    got = json.loads(capsys.readouterr().out)
    assert got["si"] == separability(x, np.arange(2000) % 3)["si"]


def test_safetensors_feature_file(tmp_path, capsys):
    x, y = lattice()
    safetensors.torch.save_file(
        {"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "d.safetensors"
    )
    d = tmp_path / "d.safetensors"
    assert main(["si", f"{d}:x", f"{d}:y", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["si"] == separability(x, y)["si"]


def test_sparse_tensors_and_lists_in_pt_files(tmp_path, capsys):
    x, y = lattice(n=60, d=5)
    np.save(tmp_path / "y.npy", y)
    want = separability(x, y)["si"]
    torch.save(torch.from_numpy(x).to_sparse(), tmp_path / "coo.pt")
    torch.save(torch.from_numpy(x).to_sparse_csr(), tmp_path / "csr.pt")
    torch.save(x.tolist(), tmp_path / "list.pt")
    for name in ("coo.pt", "csr.pt", "list.pt"):
        assert main(["si", str(tmp_path / name), str(tmp_path / "y.npy"), "--json"]) == 0, name
        assert json.loads(capsys.readouterr().out)["si"] == want
    big = torch.sparse_coo_tensor(torch.tensor([[0, 59999], [0, 59999]]), [1.0, 2.0], (60000,) * 2)
    torch.save(big, tmp_path / "big.pt")  # 14.4 GB dense, a few bytes sparse
    assert main(["si", str(tmp_path / "big.pt"), str(tmp_path / "y.npy")]) == 2
    assert "sparse tensor of shape (60000, 60000)" in capsys.readouterr().err
    torch.save([[1.0, 2.0], [3.0]], tmp_path / "ragged.pt")
    torch.save(["a", "b"], tmp_path / "words.pt")
    for name, words in (("ragged.pt", "not a rectangular"), ("words.pt", "not of numbers")):
        assert main(["si", str(tmp_path / name), str(tmp_path / "y.npy")]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err


def test_a_loop_of_links_is_named(tmp_path, capsys):
    (tmp_path / "a.npy").symlink_to(tmp_path / "b.npy")
    (tmp_path / "b.npy").symlink_to(tmp_path / "a.npy")
    np.save(tmp_path / "y.npy", np.arange(4) % 2)
    for argv in (["a.npy", "y.npy"], ["y.npy", "a.npy"]):
        assert main(["si", *(str(tmp_path / a) for a in argv)]) == 2
        assert "loop of symbolic links" in capsys.readouterr().err
