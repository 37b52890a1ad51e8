"""The rest of issue 36's defect classes: inputs within their memory budget (5), the probe's
linear measure on one-sample classes (6), a resume message that names only what was given,
each fixed at its root. (The image decoder's tests: test_images.py; the readers' fuzzing:
test_fuzz_readers.py.)"""

import tracemalloc

import numpy as np
import pytest

from dnnlab.errors import InputError
from dnnlab.separability.io import load_array


def traced_peak(fn):
    """(fn(), the peak of Python and numpy allocations while it ran, in bytes)."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- 5: a budget bounds the reading ----------------------------------------------------------
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
    with pytest.raises(
        InputError, match=r"x.csv: 1,000 rows of 4 numbers take 31.25 KiB as float64, more than"
    ):
        open_features(str(path), budget=20_000)
    assert open_features(str(path), budget=40_000).shape == (1000, 4)
