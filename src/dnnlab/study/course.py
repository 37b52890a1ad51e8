"""What the course published, and how far a study's accuracies agree with it.

The course trained each variant for 100 epochs (SGD 0.01, StepLR 40/0.1) and reported one
test accuracy per variant; dnnlab quotes those numbers, it does not measure them. A study
under another recipe is compared with them by rank (Spearman's rho over the variants both
have, with its permutation p-value) and on each of the course's conclusions (a pair of
variants: which one is more accurate), as a difference with its interval and a verdict
(stats.py).
"""

from __future__ import annotations

import numpy as np

from dnnlab.study.records import per_image_correct
from dnnlab.study.stats import difference, p_text, spearman_exact

# The course's reported test accuracies (%), quoted for reference; not measured by dnnlab.
COURSE_TEST_ACC = {
    "base": 73.29,
    "bn": 85.67,
    "gn": 84.86,
    "ln": 85.24,
    "noskip": 59.75,
    "conv4-1x1": 72.18,
    "paths2-shared": 80.05,
    "paths4-shared": 82.82,
    "wide": 85.37,
}
# The course's conclusions, each a (question, variant, against) pair: the course found
# `variant` more or less accurate than `against` by COURSE_TEST_ACC's difference.
CONCLUSIONS = (
    ("normalization: BatchNorm", "bn", "base"),
    ("normalization: GroupNorm", "gn", "base"),
    ("normalization: LayerNorm", "ln", "base"),
    ("skip connection removed", "noskip", "base"),
    ("1x1 convolution for conv4", "conv4-1x1", "base"),
    ("two shared paths", "paths2-shared", "base"),
    ("four shared paths", "paths4-shared", "base"),
    ("four against two shared paths", "paths4-shared", "paths2-shared"),
    ("wide network against bn", "wide", "bn"),
)


# The course's SI at the last feature layer where its write-up states one: bn on the
# validation split at avgpool (quoted, not measured here; the course's probe sample is not
# stated, so it is shown beside dnnlab's whole-split figure rather than tested against it).
COURSE_SI = {("bn", "val", "avgpool"): 0.883}
# The course's table names its multi-path networks GP2 and GP4: the course's code summed one
# path's output 2 or 4 times (shared weights), which dnnlab calls paths2-shared and
# paths4-shared; paths2 and paths4 (independent paths) have no course row.
COURSE_NAMES = {"paths2-shared": "GP2", "paths4-shared": "GP4"}


def rank_agreement(test_acc: dict[str, float]) -> tuple[dict, list[str]]:
    """(stats.spearman_exact's {rho, p, n, p_method}, variants): Spearman's rho between
    `test_acc` and the course's numbers over the variants both have, with its permutation
    p-value."""
    both = [m for m in COURSE_TEST_ACC if m in test_acc]
    return spearman_exact([test_acc[m] for m in both], [COURSE_TEST_ACC[m] for m in both]), both


# The study's own ranking is called reproducible when two seeds' orderings correlate at
# least this much (issue 35's aim); below it a report draws no conclusion from the ranking.
REPRODUCIBLE_RHO = 0.8


def seed_agreement(acc_seeds: dict[str, list[float]]) -> tuple[dict, list[str]]:
    """(stats.spearman_exact's {rho, p, n, p_method}, variants): Spearman's rho between the
    first and the second seed's test accuracies over the variants that have two seeds (the
    study's own reproducibility); ({"rho": None}, variants) with fewer than three."""
    two = [m for m, v in acc_seeds.items() if len(v) >= 2]
    if len(two) < 3:
        return {"rho": None, "p": None, "n": len(two), "p_method": None}, two
    return spearman_exact([acc_seeds[m][0] for m in two], [acc_seeds[m][1] for m in two]), two


def seed_agreement_text(r: dict, two: list[str]) -> str:
    """What seed_agreement's (r, two) says, in the words of both the study's report and the
    main job's published section: rho with its p-value, and below REPRODUCIBLE_RHO that the
    ranking is not reproducible at this budget."""
    if len(two) < 3:
        return "not measured (fewer than three variants have two seeds)"
    if r["rho"] is None:
        return f"undefined over {len(two)} variants (one seed's accuracies are all equal: no order)"
    method = "exact" if r["p_method"] == "exact" else f"from {r['p_method']}"
    text = (
        f"Spearman's rho between the first and the second seed's test accuracies {r['rho']:.3f} "
        f"over {len(two)} variants (two-sided permutation {p_text(r['p'])}, {method})"
    )
    if r["rho"] < REPRODUCIBLE_RHO:
        text += (
            f"; below {REPRODUCIBLE_RHO}: the ranking is not reproducible at this budget, so no "
            "conclusion is drawn from the order of the variants"
        )
    return text


def conclusions(acc: dict[str, list[float]], correct: dict[str, object]) -> list[dict]:
    """Every course conclusion, checked where the study has both variants: the difference of
    their mean test accuracies (points), its 95 % interval and the verdict (stats.difference).

    `acc`: {variant: per-seed test accuracies in %}; `correct`: {variant: a (seeds, N) 0/1
    array of its runs' per-image results on the same test images, or None when its runs
    recorded none or tested other images}. A conclusion whose variants are missing is
    returned as not checked, naming them."""
    rows = []
    for question, m, against in CONCLUSIONS:
        course = COURSE_TEST_ACC[m] - COURSE_TEST_ACC[against]
        row = {"question": question, "variant": m, "against": against, "course": course}
        missing = [v for v in (m, against) if v not in acc]
        if missing:
            rows.append({**row, "missing": missing, "verdict": "not checked"})
            continue
        paired = correct.get(m) is not None and correct.get(against) is not None
        if paired and np.shape(correct[m])[1] == np.shape(correct[against])[1]:
            rows.append({**row, **difference(correct[m], correct[against], course)})
            continue
        d = float(np.mean(acc[m]) - np.mean(acc[against]))
        one = min(len(acc[m]), len(acc[against])) < 2
        why = "one seed" if one else "no per-image test results to pair"
        rows.append({**row, "diff": d, "low": None, "high": None, "verdict": f"undecided ({why})"})
    return rows


# What the table of conclusions_table means, said once (the study's report and the
# published studies' section show it).
CONCLUSIONS_TEXT = (
    "Each of the course's conclusions as the difference of mean test accuracies "
    "(points), with its 95 % interval from the seed-to-seed variance and a paired "
    "bootstrap over the test images (docs/cifar.md, 'What the numbers can carry'). "
    "Verdict: confirms or contradicts when the interval lies on one side of zero, "
    "undecided when it holds zero; a single seed gives no interval."
)


def conclusions_table(folder, seeds, acc_seeds) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the table of the course's conclusions for the study in
    `folder` (a study folder or a publication: its runs' test_predictions.json give the
    paired part): difference, interval, course's difference, verdict. `seeds`: {variant:
    its runs}; `acc_seeds`: {variant: its runs' test accuracies in %}."""
    correct = {}
    for m, rs in seeds.items():
        got = per_image_correct(folder, rs)
        correct[m] = None if got is None else got[1]
    head = ["Course's conclusion", "pair", "this study (points)", "95 % interval"]
    head += ["course (points)", "verdict"]
    rows = []
    for c in conclusions(acc_seeds, correct):
        pair = f"{c['variant']} − {c['against']}"
        if "missing" in c:
            why = f"not checked: no finished run of {', '.join(c['missing'])}"
            rows.append([c["question"], pair, "–", "–", f"{c['course']:+.2f}", why])
            continue
        interval = "–" if c["low"] is None else f"[{c['low']:+.2f}, {c['high']:+.2f}]"
        rows.append(
            [c["question"], pair, f"{c['diff']:+.2f}", interval, f"{c['course']:+.2f}"]
            + [c["verdict"]]
        )
    return head, rows
