"""Every reader of an outside file, fuzzed: random bytes, truncations and byte mutations of a
valid .npy, .npz, .pt, .safetensors, .csv, VOC XML and image file give a result or one named
refusal (a DnnlabError), never another exception, a hang (each example has a deadline) or a
crash. Bounded (max_examples, deadline) to run in well under a minute on two cores."""

import atexit
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dnnlab.detect.voc import Problems, parse_voc
from dnnlab.errors import DnnlabError
from dnnlab.separability.io import load_array, open_features
from dnnlab.utils.images import open_rgb

# Hypothesis' examples cannot take pytest's tmp_path: one folder for the session, removed
# when the session's interpreter exits.
FOLDER = Path(tempfile.mkdtemp(prefix="dnnlab-fuzz-"))
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)
BUDGET = 64 << 20  # a sparse tensor or an .npz member claiming more is refused, not made


def _bytes_of(suffix: str, write) -> bytes:
    path = FOLDER / f"seed{suffix}"
    write(path)
    return path.read_bytes()


def _seeds() -> dict[str, bytes]:
    """One valid file of each format the readers take, small enough to mutate quickly."""
    from safetensors.torch import save_file

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    img = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    png, jpg, deep, tif = io.BytesIO(), io.BytesIO(), io.BytesIO(), io.BytesIO()
    img.save(png, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF Orientation: turned for display
    img.save(jpg, "JPEG", exif=exif)
    Image.fromarray(rng.integers(0, 65535, (8, 8), dtype=np.uint16)).save(deep, "PNG")
    Image.fromarray(rng.normal(size=(8, 8)).astype(np.float32)).save(tif, "TIFF")
    return {
        ".npy": _bytes_of(".npy", lambda p: np.save(p, x)),
        ".npz": _bytes_of(".npz", lambda p: np.savez_compressed(p, X=x, y=np.arange(6))),
        ".pt": _bytes_of(".pt", lambda p: torch.save({"X": torch.from_numpy(x)}, p)),
        ".safetensors": _bytes_of(
            ".safetensors", lambda p: save_file({"X": torch.from_numpy(x)}, str(p))
        ),
        ".csv": ("a,b,c\n" + "".join(f"{r[0]},{r[1]},{r[2]}\n" for r in x.tolist())).encode(),
        ".xml": (
            b"<annotation><filename>photo.png</filename><size><width>8</width><height>8"
            b"</height></size><object><name>cat</name><bndbox><xmin>1</xmin><ymin>2</ymin>"
            b"<xmax>6</xmax><ymax>7</ymax></bndbox></object></annotation>"
        ),
        ".png": png.getvalue(),
        ".jpg": jpg.getvalue(),
        "-16bit.png": deep.getvalue(),
        "-float.tif": tif.getvalue(),
    }


SEEDS = _seeds()
# A mutated size field can declare millions of pixels: PIL decodes them (slowly) up to its
# decompression-bomb limit and refuses more. A low limit keeps every example quick; the
# refusal beyond it is PIL's own, the same path as at the default limit.
PIXELS_LIMIT = 1 << 16
(FOLDER / "photo.png").write_bytes(SEEDS[".png"])  # the image the fuzzed XML names


@st.composite
def damaged(draw, seed: bytes):
    """Random bytes, a truncation, or a few bytes of `seed` replaced."""
    how = draw(st.sampled_from(["random", "truncated", "mutated"]))
    if how == "random":
        return draw(st.binary(max_size=2 * len(seed)))
    if how == "truncated":
        return seed[: draw(st.integers(0, len(seed) - 1))]
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _read(suffix: str, data: bytes):
    """Every reader of a file of this kind, on `data`."""
    path = FOLDER / f"fuzzed{suffix}"
    path.write_bytes(data)
    if suffix.endswith((".png", ".jpg", ".tif")):
        np.asarray(open_rgb(data, "fuzzed"))
        np.asarray(open_rgb(path))
        return
    if suffix == ".xml":
        item = parse_voc(path, Problems())  # problems are counted, never raised
        assert item is None or item.boxes("cat").shape[1] == 4
        return
    load_array(str(path), numeric=False, max_bytes=BUDGET)
    features = open_features(str(path) + (":X" if suffix == ".npz" else ""), BUDGET)
    if hasattr(features, "close"):  # a FeatureFile: its rows are read as well
        try:
            features.index_select(0, torch.arange(min(2, features.shape[0])))
        finally:
            features.close()


@pytest.mark.parametrize("suffix", list(SEEDS))
@settings(
    max_examples=60,
    deadline=2000,  # ms: a reader waiting on nothing is a hang
    derandomize=True,  # the same examples every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_a_damaged_file_is_read_or_refused_by_name(suffix, data, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PIXELS_LIMIT)
    content = data.draw(damaged(SEEDS[suffix]))
    try:
        _read(suffix, content)
    except DnnlabError as e:
        assert str(e).strip(), "a refusal says why"


def teardown_module():
    for p in FOLDER.iterdir():
        os.unlink(p)
    FOLDER.rmdir()
