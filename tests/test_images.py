"""The one image decoder (utils/images.open_rgb) and its readers: the detector's photos and
VOC boxes, the probe's image folders and the CIFAR-10 image-folder tree all see an image as
it is displayed (EXIF orientation applied) and as 8-bit RGB by its mode's real range."""

import io
import tarfile
import warnings

import numpy as np
import pytest
from PIL import Image

from dnnlab.utils.images import UnreadableImage, open_rgb

ORIENTATION = 0x0112  # the EXIF tag


def saved(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(open_rgb(data, "test image"))


# -- every mode to 8-bit RGB, by its range ---------------------------------------------------
def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white():
    a = np.array([[0, 257 * 10, 257 * 128, 65535]], dtype=np.uint16)
    data = saved(Image.fromarray(a), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"  # what PIL reads a 16-bit PNG as
    out = pixels(data)
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 10, 128, 255]  # PIL's convert gave [0, 255, 255, 255]
    assert (out == out[..., :1]).all()  # grey stays grey


def test_a_big_endian_16_bit_tiff_is_scaled_the_same():
    a = np.array([[0, 257 * 10, 257 * 128, 65535]], dtype=">u2")
    im = Image.fromarray(a)
    assert im.mode == "I;16B"
    assert pixels(saved(im, "TIFF"))[0, :, 0].tolist() == [0, 10, 128, 255]


def test_a_16_bit_pgm_read_as_mode_i_is_scaled_by_the_16_bit_range():
    a = np.array([[0, 257 * 3, 257 * 200, 65535]], dtype=np.uint16)
    data = saved(Image.fromarray(a), "PPM")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert pixels(data)[0, :, 0].tolist() == [0, 3, 200, 255]


def test_32_bit_integers_beyond_16_bits_use_the_images_own_range():
    a = np.array([[-1000, 0, 99000, 199000]], dtype=np.int32)  # -1000 .. 199000
    out = pixels(saved(Image.fromarray(a), "TIFF"))[0, :, 0]
    expect = np.rint((a[0] + 1000) * 255 / 200000).astype(int)
    assert out.tolist() == expect.tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize(
    "values, expect",
    [
        ([0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),  # the float convention: 0..1
        ([-2.0, 0.0, 2.0, 6.0], [0, 64, 128, 255]),  # outside it: the image's own range
    ],
)
def test_float_images_by_their_range(values, expect):
    a = np.array([values], dtype=np.float32)
    assert pixels(saved(Image.fromarray(a), "TIFF"))[0, :, 0].tolist() == expect


def test_a_constant_wide_image_is_grey_and_zero_is_black():
    for a in (np.full((2, 2), 7.5, np.float32), np.full((2, 2), -3, np.int32)):
        assert (pixels(saved(Image.fromarray(a), "TIFF")) == 128).all()
    assert (pixels(saved(Image.fromarray(np.zeros((2, 2), np.float32)), "TIFF")) == 0).all()


def test_float_pixels_without_a_value_are_an_unreadable_image_named():
    a = np.array([[0.0, np.nan, 1.0]], dtype=np.float32)
    with pytest.raises(UnreadableImage, match=r"^photo.tif: unreadable image \(float pixels"):
        open_rgb(saved(Image.fromarray(a), "TIFF"), "photo.tif")


def test_transparent_pixels_are_white_whatever_colour_they_store():
    la = Image.fromarray(np.array([[[40, 0], [40, 255], [40, 128]]], dtype=np.uint8))
    assert la.mode == "LA"
    out = pixels(saved(la, "PNG"))[0, :, 0]
    assert out.tolist() == [255, 40, 147]  # 40 * 128/255 + 255 * 127/255 = 147.1
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    assert pixels(saved(rgba, "PNG"))[0].tolist() == [[255, 255, 255], [10, 20, 30]]


def test_a_palette_image_with_a_transparent_index_shows_white_there():
    p = Image.new("P", (3, 1))
    p.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * 759)
    p.putdata([0, 1, 2])  # index 0 (black in the palette) is the transparent one
    data = saved(p, "PNG", transparency=0)
    im = Image.open(io.BytesIO(data))
    assert im.mode == "P" and im.info["transparency"] == 0
    assert pixels(data)[0].tolist() == [[255, 255, 255], [200, 10, 10], [10, 200, 10]]
    gif = saved(p, "GIF", transparency=0)  # GIF keeps its transparency the same way
    assert pixels(gif)[0].tolist() == [[255, 255, 255], [200, 10, 10], [10, 200, 10]]


def test_cmyk_bilevel_and_greyscale_become_rgb():
    cmyk = Image.new("CMYK", (2, 1), (255, 0, 0, 0))  # pure cyan
    cmyk.putpixel((1, 0), (0, 0, 0, 255))  # pure black ink
    assert pixels(saved(cmyk, "TIFF"))[0].tolist() == [[0, 255, 255], [0, 0, 0]]
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    assert pixels(saved(one, "PNG"))[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    grey = Image.new("L", (1, 1), 77)
    assert pixels(saved(grey, "PNG")).tolist() == [[[77, 77, 77]]]


# -- EXIF orientation: the image as displayed -------------------------------------------------
# How to store an image D so that a viewer shows D, for each EXIF orientation (the tag says
# how the stored pixels are turned for display; these are the inverse turns, in numpy).
STORE_FOR = {
    1: lambda d: d,
    2: lambda d: d[:, ::-1],  # mirrored left-right
    3: lambda d: d[::-1, ::-1],  # turned 180 degrees
    4: lambda d: d[::-1],  # mirrored top-bottom
    5: lambda d: d.transpose(1, 0, 2),  # mirrored over the main diagonal
    6: lambda d: np.rot90(d, 1),  # shown turned 90 degrees clockwise: stored anticlockwise
    7: lambda d: np.rot90(d, 2).transpose(1, 0, 2),  # mirrored over the other diagonal
    8: lambda d: np.rot90(d, -1),  # shown turned anticlockwise: stored clockwise
}


def stored_with_orientation(displayed: np.ndarray, orientation: int, fmt="PNG", **kw):
    stored = Image.fromarray(np.ascontiguousarray(STORE_FOR[orientation](displayed)))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return saved(stored, fmt, exif=exif, **kw)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    displayed = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10  # 3 wide, 2 high
    out = pixels(stored_with_orientation(displayed, orientation))
    assert out.tolist() == displayed.tolist()


def test_an_orientation_outside_the_standard_or_a_mangled_exif_reads_as_stored():
    d = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    exif = Image.Exif()
    exif[ORIENTATION] = 9  # no such orientation
    assert pixels(saved(Image.fromarray(d), "PNG", exif=exif)).tolist() == d.tolist()
    png = saved(Image.fromarray(d), "PNG", exif=b"Exif\x00\x00MM\x00*garbage")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert pixels(png).tolist() == d.tolist()
    assert not seen  # PIL's "Corrupt EXIF data" named no file: the pixels were read whole


# -- every reader uses it ----------------------------------------------------------------------
def blocks(h, w, box, inside=(230, 40, 30), outside=(60, 60, 60)) -> np.ndarray:
    """An h x w photo, one colour inside `box` (x1, y1, x2, y2), another elsewhere."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = outside
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = inside
    return img


def test_voc_boxes_are_read_in_the_photo_as_displayed(tmp_path):
    """A phone's portrait JPEG: stored 160 wide and 96 high with Orientation 6 (displayed 96
    wide, 160 high); the annotator drew the cat where the viewer showed it."""
    from dnnlab.detect.voc import Problems, load_rgb, parse_voc
    from tests.fakes import OBJ, XML

    box = (16, 96, 80, 144)  # in the displayed frame: below the stored frame's height (96)
    shown = blocks(160, 96, box)
    (tmp_path / "cat.jpg").write_bytes(stored_with_orientation(shown, 6, "JPEG", quality=95))
    obj = OBJ.format(name="cat", x1=box[0], y1=box[1], x2=box[2], y2=box[3])
    (tmp_path / "cat.xml").write_text(XML.format(fn="cat.jpg", w=96, h=160, objs=obj))
    problems = Problems()
    item = parse_voc(tmp_path / "cat.xml", problems)
    assert (item.width, item.height) == (96, 160)
    assert item.boxes("cat").tolist() == [list(map(float, box))]  # not clipped to 96 high
    assert not problems.counts, problems.summary()
    img = load_rgb(item.image)  # the pixels the detector reads: the cat is inside the box
    assert img.shape == (160, 96, 3)
    x1, y1, x2, y2 = box
    assert np.abs(img[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4].astype(int) - (230, 40, 30)).max() < 12
    assert np.abs(img[4:80, 4:90].astype(int) - 60).max() < 12

    # The same XML with the stored frame's <size>: counted, the boxes still read as displayed.
    (tmp_path / "cat.xml").write_text(XML.format(fn="cat.jpg", w=160, h=96, objs=obj))
    problems = Problems()
    item = parse_voc(tmp_path / "cat.xml", problems)
    assert problems.counts["<size> is not the image as displayed"] == 1
    assert "<size> 160x96, image 96x160" in problems.examples[next(iter(problems.examples))][0]
    assert item.boxes("cat").tolist() == [list(map(float, box))]


def test_the_probes_image_folders_and_tars_read_through_the_decoder(tmp_path):
    from dnnlab.probe.images import _Tree

    shown = blocks(20, 12, (0, 0, 12, 5))  # 12 wide, 20 high, a red band at the top
    for cls in ("a", "b"):
        (tmp_path / "tree" / cls).mkdir(parents=True)
        (tmp_path / "tree" / cls / "x.png").write_bytes(stored_with_orientation(shown, 8))
    sixteen = Image.fromarray(np.full((4, 4), 257 * 100, np.uint16))
    sixteen.save(tmp_path / "tree" / "a" / "deep.png")
    with tarfile.open(tmp_path / "tree.tar", "w") as tf:
        tf.add(tmp_path / "tree", arcname="tree")
    for root in (tmp_path / "tree", tmp_path / "tree.tar"):
        tree = _Tree(root)
        assert np.asarray(tree.read("a/x.png")).tolist() == shown.tolist()
        assert (np.asarray(tree.read("a/deep.png")) == 100).all()


def test_the_cifar_image_tree_reads_through_the_decoder(tmp_path):
    from dnnlab.cifar.data import load_cifar10
    from tests.fakes import make_image_tree

    tree = make_image_tree(tmp_path / "t", n_train=1, n_test=1)
    (tree / "train" / "cat" / "0000.jpg").unlink()
    Image.fromarray(np.full((32, 32), 257 * 100, np.uint16)).save(tree / "train/cat/0000.png")
    shown = blocks(32, 32, (0, 0, 32, 8))  # a red band at the top, stored turned
    (tree / "train" / "dog" / "0000.jpg").unlink()
    (tree / "train" / "dog" / "0000.png").write_bytes(stored_with_orientation(shown, 6))
    c10 = load_cifar10(tree)
    cat, dog = (c10.train_x[c10.train_y == c].numpy()[0] for c in (3, 5))
    assert (cat == 100).all()  # was 255: clipped to white
    assert cat.shape == (3, 32, 32)
    assert dog.transpose(1, 2, 0).tolist() == shown.tolist()
