"""The recipe factorial (issue 35): does the course's normalization gain come from its recipe?

Four cells, each a published study of base and bn (10 epochs, seeds 0 and 1) under one
optimizer and one head (scripts/cpu_study.sh runs them):

| folder under docs/results | optimizer | head |
|---|---|---|
| clipped-cpu (the main study) | the study's (`--recipe clipped`) | logits |
| factorial-clipped-softmax | the study's | the course's double softmax |
| factorial-course-logits | the course's (SGD 0.01, momentum 0.9, StepLR(4) in 10 epochs) | logits |
| factorial-course-softmax | the course's | the course's double softmax |

In each cell, the normalization gain is bn − base (points, mean over seeds). The
interaction is (bn − base under the course's optimizer and head) − (bn − base under the
study's): a four-term contrast of mean accuracies on the same test images
(stats.contrast: seed variance plus a paired bootstrap over the images). An interval above
zero says the course's recipe inflates the normalization gain: part of it is its recipe's
(the un-normalized base trains worse under it), not normalization's alone.
"""

from __future__ import annotations

from pathlib import Path

from dnnlab.study.course import COURSE_TEST_ACC
from dnnlab.study.markup import md_grid
from dnnlab.study.records import per_image_correct, runs_by_variant
from dnnlab.study.stats import contrast

# (optimizer, head) -> the published folder's name
CELLS = {
    ("study's", "logits"): "clipped-cpu",
    ("study's", "softmax"): "factorial-clipped-softmax",
    ("course's", "logits"): "factorial-course-logits",
    ("course's", "softmax"): "factorial-course-softmax",
}
COURSE_CELL = ("course's", "softmax")
STUDY_CELL = ("study's", "logits")


def cell_results(folder: Path, variants=None) -> dict:
    """{variant: (positions, (seeds, N) correct)} for each variant of a published (verified)
    folder (of `variants`, None: all) whose runs all have paired per-image results."""
    runs = [p.name for p in (folder / "runs").glob("*") if (p / "summary.json").exists()]
    got = {}
    for v, names in runs_by_variant(runs).items():
        if variants is not None and v not in variants:
            continue
        r = per_image_correct(folder, names)
        if r is not None:
            got[v] = r
    return got


def factorial(folders: dict[str, Path]) -> dict:
    """The normalization gain in each cell present and the interaction, from the published
    folders `folders` ({folder name: path}, those that passed their manifest check).

    Returns {"cells": {cell: contrast or None}, "means": {cell: {"base": %, "bn": %} or
    None}, "others": {(cell, variant): contrast of variant − base, with the course's verdict}
    for a cell's other variants, "interaction": contrast or None, "why": text when the
    interaction cannot be computed}."""
    # The main study's cell is read for base and bn only (its other variants are its own
    # report's); a factorial cell's other variants are checked below.
    everything = {
        cell: cell_results(folders[name], ("base", "bn") if cell == STUDY_CELL else None)
        for cell, name in CELLS.items()
        if name in folders
    }
    # A cell counts once both base and bn have paired results.
    results = {
        cell: everything[cell] if {"base", "bn"} <= set(everything.get(cell, ())) else None
        for cell in CELLS
    }
    cells = {
        cell: None
        if r is None
        else contrast([(1, r["bn"][1]), (-1, r["base"][1])], course_diff=None)
        for cell, r in results.items()
    }
    means = {
        cell: None if r is None else {v: 100 * float(r[v][1].mean()) for v in ("base", "bn")}
        for cell, r in results.items()
    }
    # The factorial's other runs (paths4-shared under the course's recipe): the course's
    # conclusion about them, checked within their cell.
    others = {
        (cell, v): contrast(
            [(1, r[v][1]), (-1, r["base"][1])],
            course_diff=COURSE_TEST_ACC[v] - COURSE_TEST_ACC["base"],
        )
        for cell, r in everything.items()
        if "base" in r
        for v in r
        if v not in ("base", "bn") and v in COURSE_TEST_ACC and r[v][0] == r["base"][0]
    }
    got = {"cells": cells, "means": means, "others": others, "interaction": None, "why": None}
    course, study = results[COURSE_CELL], results[STUDY_CELL]
    if course is None or study is None:
        missing = [CELLS[c] for c in (COURSE_CELL, STUDY_CELL) if results[c] is None]
        return {**got, "why": f"not published yet: {missing}"}
    positions = {tuple(r[v][0]) for r in (course, study) for v in ("base", "bn")}
    if len(positions) != 1:
        return {**got, "why": "the cells tested other images"}
    terms = [
        (1, course["bn"][1]),
        (-1, course["base"][1]),
        (-1, study["bn"][1]),
        (1, study["base"][1]),
    ]
    return {**got, "interaction": contrast(terms, course_diff=None)}


def factorial_lines(result: dict) -> list[str]:
    """Markdown lines: the gain per cell and the interaction with what it means."""
    rows = []
    for cell, c in result["cells"].items():
        if c is None:
            rows.append([*cell, "–", "–", "–", "not published yet", "–"])
            continue
        m = result["means"][cell]
        interval = "one seed" if c["low"] is None else f"[{c['low']:+.2f}, {c['high']:+.2f}]"
        rows.append(
            [
                *cell,
                f"{m['base']:.2f}",
                f"{m['bn']:.2f}",
                f"{c['diff']:+.2f}",
                interval,
                f"{c['seeds'][0]}, {c['seeds'][1]}",
            ]
        )
    header = ["optimizer", "head", "base %", "bn %", "bn − base (points)", "95 % interval"]
    course = COURSE_TEST_ACC["bn"] - COURSE_TEST_ACC["base"]
    lines = [
        "### Recipe factorial: is the course's normalization gain its recipe's?",
        "",
        md_grid([*header, "seeds (bn, base)"], rows),
        "",
        # What a cell's budget cannot tell: the course trained 100 epochs.
        f"Mean test accuracies over seeds. The course's own runs, 100 epochs of its recipe: "
        f"base {COURSE_TEST_ACC['base']:.2f} %, bn {COURSE_TEST_ACC['bn']:.2f} % "
        f"({course:+.2f}). A cell whose base is far below the course's has measured how "
        "fast its recipe trains each network, not what it becomes: its gain, and the "
        "interaction, hold for its budget only.",
        "",
    ]
    if result["others"]:
        rows = [
            [
                *cell,
                f"{v} − base",
                f"{c['diff']:+.2f}",
                "one seed" if c["low"] is None else f"[{c['low']:+.2f}, {c['high']:+.2f}]",
                f"{COURSE_TEST_ACC[v] - COURSE_TEST_ACC['base']:+.2f}",
                c["verdict"],
            ]
            for (cell, v), c in result["others"].items()
        ]
        header = ["optimizer", "head", "pair", "points", "95 % interval", "course", "verdict"]
        lines += [
            "The course's conclusions about the cells' other variants, within their cell:",
            "",
            md_grid(header, rows),
            "",
        ]
    i = result["interaction"]
    if i is None:
        lines += [f"Interaction: not computed ({result['why']}).", ""]
        return lines
    head = f"Interaction (course's recipe − study's recipe) of the gain: {i['diff']:+.2f} points"
    if i["low"] is None:
        lines += [head + "; one seed in a cell, so no interval and no verdict.", ""]
    elif i["low"] > 0:
        lines += [
            head + f", 95 % interval [{i['low']:+.2f}, {i['high']:+.2f}]: the gain is larger "
            "under the course's recipe, so part of the course's normalization gain comes "
            "from its recipe, not from normalization alone.",
            "",
        ]
    elif i["high"] < 0:
        lines += [
            head + f", 95 % interval [{i['low']:+.2f}, {i['high']:+.2f}]: the gain is smaller "
            "under the course's recipe than under the study's.",
            "",
        ]
    else:
        lines += [
            head + f", 95 % interval [{i['low']:+.2f}, {i['high']:+.2f}] holds zero: "
            "undecided; this budget cannot say whether the recipe changes the gain.",
            "",
        ]
    return lines
