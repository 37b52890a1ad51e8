import json

import numpy as np
import pytest
import torch

from dnnlab.cli import main
from dnnlab.separability import separability
from tests import oracle


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    x = rng.normal(size=(60, 4)) + y[:, None]
    return x, y


def run_json(capsys, *argv):
    assert main(["si", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_formats_agree(tmp_path, capsys, data):
    x, y = data
    want = separability(x, y, "si,csi,hsi:3").values
    per_class_want = oracle.measures_per_class(x, y, orders=(1, 3))  # float64 brute force
    assert all(set(v) == {"si", "csi", "hsi:3"} for v in per_class_want.values())
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "d.npz", feats=x, labels=y)
    torch.save({"f": torch.tensor(x), "l": torch.tensor(y)}, tmp_path / "d.pt")
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", header="a,b,c,d", comments="")
    (tmp_path / "y.csv").write_text("\n".join(str(v) for v in y) + "\n")
    for f, l in [
        ("x.npy", "y.npy"),
        ("d.npz:feats", "d.npz:labels"),
        ("d.pt:f", "d.pt:l"),
        ("x.csv", "y.csv"),
    ]:
        got = run_json(capsys, str(tmp_path / f), str(tmp_path / l), "--measures", "si,csi,hsi:3")
        for k in want:
            assert got[k] == pytest.approx(want[k]), (f, k)
        assert "per_class" in got
        assert got["per_class"] == {
            str(c): pytest.approx(v, abs=1e-12) for c, v in per_class_want.items()
        }, f


def test_string_labels_csv(tmp_path, capsys, data):
    x, y = data
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "y.csv").write_text("\n".join(["cat", "dog", "eel"][v] for v in y))
    got = run_json(capsys, str(tmp_path / "x.npy"), str(tmp_path / "y.csv"))
    assert set(got["per_class"]) == {"cat", "dog", "eel"}
    want = oracle.measures(x, y, orders=(1,))  # the same classes under other names
    assert (got["si"], got["csi"]) == (pytest.approx(want["si"]), pytest.approx(want["csi"]))
    per_class = oracle.measures_per_class(x, y)
    for name, code in (("cat", 0), ("dog", 1), ("eel", 2)):
        assert got["per_class"][name] == pytest.approx(per_class[code], abs=1e-12), name
    for name, code in (("cat", 0), ("dog", 1), ("eel", 2)):
        assert got["class_counts"][name] == int((y == code).sum())


def test_demo_prints_table(capsys):
    assert main(["si", "--demo", "digits"]) == 0
    out = capsys.readouterr().out
    assert "si" in out and "csi" in out and "1797" in out


@pytest.mark.parametrize(
    "setup,match",
    [
        (lambda p: p.joinpath("x.csv").write_text("1,2\n3,abc\n"), "row 2, column 2: 'abc'"),
        (lambda p: p.joinpath("x.csv").write_text("1,2\n3\n"), "row 2 has 1 fields"),
        (lambda p: p.joinpath("x.npy").write_bytes(b"garbage"), "cannot read"),
        (lambda p: np.savez(p / "x.npz", a=np.zeros(3), b=np.zeros(3)), "several arrays"),
        (lambda p: None, "no such file"),
    ],
)
def test_bad_files(tmp_path, capsys, setup, match):
    setup(tmp_path)
    np.save(tmp_path / "y.npy", np.arange(2))
    name = next((f.name for f in tmp_path.iterdir() if f.name.startswith("x")), "missing.npy")
    assert main(["si", str(tmp_path / name), str(tmp_path / "y.npy")]) == 2
    assert match in capsys.readouterr().err


def test_mismatched_counts_cli(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.arange(10.0).reshape(5, 2))
    np.save(tmp_path / "y.npy", np.zeros(4))
    assert main(["si", str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]) == 2
    assert "N=5 samples but labels have 4" in capsys.readouterr().err


def si_exit(tmp_path, capsys, x, y):
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    code = main(["si", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--json"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_continuous_labels_are_refused(tmp_path, capsys, data):
    x, _ = data
    code, out, err = si_exit(tmp_path, capsys, x, np.random.default_rng(1).random(60))
    assert code == 2 and out == ""
    assert "labels look continuous" in err and "y.npy" in err


def test_integral_float_labels_are_classes(tmp_path, capsys, data):
    x, y = data
    code, out, _ = si_exit(tmp_path, capsys, x, y.astype(np.float64))
    assert code == 0
    want = separability(x, y, "si,csi").values
    got = json.loads(out)
    assert got["si"] == pytest.approx(want["si"]) and got["csi"] == pytest.approx(want["csi"])


def test_constant_features_are_refused(tmp_path, capsys, data):
    _, y = data
    code, out, err = si_exit(tmp_path, capsys, np.full((60, 4), 3.0), y)
    assert code == 2 and out == ""
    assert "every feature column is constant" in err and "x.npy" in err


@pytest.mark.parametrize("header", ["label", "class"])
def test_labels_csv_header_is_not_a_class(tmp_path, capsys, data, header):
    x, y = data
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "y.csv").write_text(header + "\n" + "\n".join(map(str, y)) + "\n")
    got = run_json(capsys, str(tmp_path / "x.npy"), str(tmp_path / "y.csv"))
    assert set(got["per_class"]) == {"0", "1", "2"}
    names = ["cat", "dog", "eel"]
    (tmp_path / "y.csv").write_text(header + "\n" + "\n".join(names[v] for v in y) + "\n")
    got = run_json(capsys, str(tmp_path / "x.npy"), str(tmp_path / "y.csv"))
    assert set(got["per_class"]) == set(names)
    want = separability(x, y, "si,csi").values
    assert got["si"] == pytest.approx(want["si"])


def test_continuous_labels_csv_is_refused(tmp_path, capsys, data):
    x, _ = data
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "y.csv").write_text("\n".join(f"{v:.3f}" for v in np.linspace(0, 1, 60)))
    assert main(["si", str(tmp_path / "x.npy"), str(tmp_path / "y.csv")]) == 2
    assert "labels look continuous" in capsys.readouterr().err


@pytest.mark.parametrize(
    "x, argv, match",
    [
        (np.array([["a", "b"]] * 60), [], "features must be real numbers"),
        (
            np.where(
                np.arange(240).reshape(60, 4) == 9, np.nan, 1.0 * np.arange(240).reshape(60, 4)
            ),
            [],
            "1 samples hold NaN or Inf (first at position 2)",
        ),
        (np.arange(240.0).reshape(60, 4), ["--measures", "hsi:60"], "--measures: hsi:60 needs"),
        (np.arange(240.0).reshape(60, 4), ["--measures", "bogus"], "--measures: unknown"),
        (np.arange(240.0).reshape(60, 4), ["--max-memory", "lots"], "cannot read 'lots'"),
        (np.arange(240.0).reshape(60, 4), ["--device", "gpu"], "--device: 'gpu' is not"),
    ],
)
def test_meaningless_or_bad_si_inputs_are_named(tmp_path, capsys, data, x, argv, match):
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", data[1])
    assert main(["si", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), *argv]) == 2
    assert match in capsys.readouterr().err


def test_demo_without_scikit_learn_names_the_extra(monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_sklearn(name, *a, **kw):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError("No module named 'sklearn'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    assert main(["si", "--demo", "digits"]) == 2
    assert "pip install 'dnnlab[demo]'" in capsys.readouterr().err
