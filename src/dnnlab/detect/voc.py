"""Pascal-VOC annotations and their images, read defensively.

A bad file never stops the data set: each problem is recorded in a `Problems` tally (with
the file named) and the rest carries on.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dnnlab.errors import InputError
from dnnlab.utils.images import IMAGE_EXT, UnreadableImage, open_rgb
from dnnlab.utils.steady import special_reason


@dataclass
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels (floats)
    difficult: bool = False


@dataclass
class VocImage:
    xml: Path | None
    image: Path
    width: int
    height: int
    objects: list[VocObject]
    dropped: list[str] = field(default_factory=list)  # class names of unusable boxes

    def boxes(self, target: str, include_difficult: bool = True) -> np.ndarray:
        return np.array(
            [
                o.box
                for o in self.objects
                if o.name == target and (include_difficult or not o.difficult)
            ],
            dtype=np.float32,
        ).reshape(-1, 4)

    def other_boxes(self, target: str) -> np.ndarray:
        return np.array(
            [o.box for o in self.objects if o.name != target], dtype=np.float32
        ).reshape(-1, 4)


@dataclass
class Problems:
    """Counts and examples of what was wrong with the input, for the summary."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, where: str, detail: str = "") -> None:
        self.counts[kind] += 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < 5:
            ex.append(f"{where}: {detail}" if detail else where)

    def summary(self) -> str:
        if not self.counts:
            return "no problems found in the input"
        lines = [
            f"{n} x {k}" + (f" (e.g. {self.examples[k][0]})" if self.examples.get(k) else "")
            for k, n in sorted(self.counts.items())
        ]
        return "input problems: " + "; ".join(lines)

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": self.examples}

    @classmethod
    def from_dict(cls, d: dict) -> Problems:
        return cls(Counter(d.get("counts", {})), dict(d.get("examples", {})))


def load_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8 RGB (grayscale, palette and RGBA converted); a file that cannot be
    decoded whole is an UnreadableImage naming it."""
    return np.asarray(open_rgb(path))


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image decoded whole: a truncated file is found here, as an
    input problem, not later in the middle of the work."""
    return open_rgb(path).size


def _check_size(root, displayed: tuple[int, int], problems: Problems, where: str) -> None:
    """Count an XML whose <size> is not the image as displayed. Boxes are read in that frame
    (EXIF orientation applied, as LabelImg and CVAT show the photo to the annotator); a
    <size> of the stored frame (width and height swapped by a rotating EXIF tag) or of
    another image says the boxes may have been drawn elsewhere. <size> is optional."""
    try:
        size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
    except (TypeError, ValueError):  # absent or not an integer: the image's own size rules
        return
    if size != displayed:
        problems.add(
            "<size> is not the image as displayed",
            where,
            f"<size> {size[0]}x{size[1]}, image {displayed[0]}x{displayed[1]} after EXIF "
            "orientation (boxes are read in that frame)",
        )


def _find_image(xml_path: Path, filename: str | None) -> Path | None:
    cands = []
    if filename:
        cands.append(xml_path.parent / Path(filename).name)
    cands += [xml_path.with_suffix(ext) for ext in IMAGE_EXT]
    cands += [xml_path.with_suffix(ext.upper()) for ext in IMAGE_EXT]
    return next((c for c in cands if c.is_file()), None)


def _num(node, tag, where):
    """A box coordinate: a finite number, else ValueError (NaN and inf are no pixel)."""
    text = node.findtext(tag)
    if text is None:
        raise ValueError(f"<{tag}> missing")
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"<{tag}> is {text!r}, not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"<{tag}> is {text.strip()!r}, not a finite number")
    return v


def parse_voc(xml_path: Path, problems: Problems) -> VocImage | None:
    """One annotation; None (with the problem recorded) when it cannot be used."""
    where = str(xml_path)
    special = special_reason(xml_path)
    if special is not None:  # a named pipe would make the parser wait forever
        problems.add("not a regular file", where, special)
        return None
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        problems.add("malformed XML", where, str(e))
        return None
    try:
        img = _find_image(xml_path, root.findtext("filename"))
    except (OSError, ValueError) as e:  # e.g. a <filename> longer than the system allows
        problems.add("unusable <filename>", where, str(e)[:200])
        return None
    if img is None:
        problems.add("XML without its image", where, f"no image {root.findtext('filename')!r}")
        return None
    try:
        width, height = _image_size(img)
    except UnreadableImage as e:
        problems.add("unreadable image", str(img), e.reason)
        return None
    _check_size(root, (width, height), problems, where)
    objects, dropped = [], []
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        try:
            if bb is None:
                raise ValueError("<bndbox> missing")
            x1, y1 = _num(bb, "xmin", where), _num(bb, "ymin", where)
            x2, y2 = _num(bb, "xmax", where), _num(bb, "ymax", where)
        except ValueError as e:
            problems.add("bad box (dropped)", f"{where} object {k}", str(e))
            dropped.append(name)
            continue
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            problems.add(
                "box outside the image (clipped)",
                f"{where} object {k}",
                f"({x1}, {y1}, {x2}, {y2}) in {width}x{height}",
            )
        if cx2 <= cx1 or cy2 <= cy1:
            problems.add(
                "box of zero area (dropped)", f"{where} object {k}", f"({x1}, {y1}, {x2}, {y2})"
            )
            dropped.append(name)
            continue
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
        _add_object(objects, VocObject(name, (cx1, cy1, cx2, cy2), difficult), problems, where, k)
    return VocImage(xml_path, img, width, height, objects, dropped)


def _add_object(objects: list[VocObject], new: VocObject, problems, where: str, k: int) -> None:
    """Append `new` (object number k of the file `where`), unless an object of the same class
    with the identical box (as clipped) is already there: such a copy (a double click in an
    annotation tool) would be a second target no detection can match, halving recall and
    AP. It is merged into the first, counted and named among the input problems; the
    merged object is difficult only when both copies are."""
    for j, o in enumerate(objects):
        if o.name == new.name and o.box == new.box:
            problems.add(
                "duplicated object (merged)",
                f"{where} object {k}",
                f"the same {new.name!r} box as an earlier object {new.box}",
            )
            objects[j] = VocObject(o.name, o.box, o.difficult and new.difficult)
            return
    objects.append(new)


def read_voc_dir(folder, problems: Problems, target: str = "cat") -> list[VocImage]:
    """Every usable annotated image of a folder; each problem is counted in `problems`.

    A photo whose `target` box was unusable is dropped (its target would be unlabelled:
    every box on it would count as a negative, and every detection as false).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a directory of VOC XML files and images")
    xmls = sorted(folder.glob("*.xml"))
    if not xmls:
        raise InputError(f"{folder}: no .xml annotations found")
    out = []
    for x in xmls:
        item = parse_voc(x, problems)
        if item is None:
            continue
        if target in item.dropped:
            problems.add(f"photo with an unusable {target!r} box (photo dropped)", str(x))
            continue
        if not any(o.name == target for o in item.objects):
            problems.add(
                f"image without a {target!r} object (all proposals negative)", str(item.image)
            )
        out.append(item)
    return out
