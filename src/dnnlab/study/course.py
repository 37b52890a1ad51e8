"""What the course published, and how far a study's accuracies agree with it.

The course trained each variant for 100 epochs (SGD 0.01, StepLR 40/0.1) and reported one
test accuracy per variant; dnnlab quotes those numbers, it does not measure them. A study
under another recipe (the CPU budget) is compared with them by rank (Spearman's rho over the
variants both have) and by the direction of each of the course's conclusions (a pair of
variants: which one is more accurate).
"""

from __future__ import annotations

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


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (scipy's; ties share their mean rank). None below three
    pairs or when one list is constant: there is no ordering to compare."""
    # Here, not at the top: scipy.stats adds 0.55-0.85 s to the import of every study command
    # (benchmarks/lazy_imports.py, docs/RESULTS.md §9), and only the finished report compares ranks.
    from scipy.stats import spearmanr

    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} values against {len(b)}")
    if len(a) < 3 or len(set(a)) == 1 or len(set(b)) == 1:
        return None
    return float(spearmanr(a, b).statistic)


def rank_agreement(test_acc: dict[str, float]) -> tuple[float | None, list[str]]:
    """(rho, variants): Spearman's rho between `test_acc` (%, or fractions: ranks only)
    and the course's numbers, over the variants both have."""
    both = [m for m in COURSE_TEST_ACC if m in test_acc]
    return spearman([test_acc[m] for m in both], [COURSE_TEST_ACC[m] for m in both]), both


def conclusions(test_acc: dict[str, float]) -> list[dict]:
    """Each course conclusion whose two variants the study has: both differences in points
    (the study's `test_acc` in %) and whether they point the same way."""
    rows = []
    for question, m, against in CONCLUSIONS:
        if m not in test_acc or against not in test_acc:
            continue
        ours = test_acc[m] - test_acc[against]
        course = COURSE_TEST_ACC[m] - COURSE_TEST_ACC[against]
        rows.append(
            {
                "question": question,
                "variant": m,
                "against": against,
                "study": ours,
                "course": course,
                "same_direction": (ours > 0) == (course > 0) and ours != 0,
            }
        )
    return rows
