"""The comparison with the course's published numbers: Spearman's rho against obvious code,
the conclusions' directions, and the budget study's report sections."""

import itertools
import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from dnnlab.cifar.config import parse_run_name
from dnnlab.study.config import study_config
from dnnlab.study.course import (
    COURSE_TEST_ACC,
    conclusions,
    rank_agreement,
    seed_agreement,
    seed_agreement_text,
)
from dnnlab.study.publish import publish, published_section, read_published
from dnnlab.study.report import write_report
from dnnlab.study.stats import spearman_exact
from dnnlab.study.study import run_study
from tests.fakes import make_image_tree
from tests.page_oracle import assert_page_says_what_markdown_says


def oracle_ranks(v):
    """Mean 1-based rank of each value among all, ties averaged, by counting."""
    return [sum(w < x for w in v) + (sum(w == x for w in v) + 1) / 2 for x in v]


def oracle_spearman(a, b):
    ra, rb = oracle_ranks(a), oracle_ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def spearman(a, b):
    return spearman_exact(a, b)["rho"]


@pytest.mark.slow
def test_spearman_against_oracle_with_and_without_ties():
    rng = random.Random(0)
    for n in (3, 5, 9):
        for _ in range(20):
            a = [rng.choice([1.0, 2.0, 3.0, 4.5]) for _ in range(n)]  # many ties
            b = [rng.random() for _ in range(n)]
            if len(set(a)) > 1:
                assert spearman(a, b) == pytest.approx(oracle_spearman(a, b), abs=1e-12)
    # Without ties: 1 - 6 sum d^2 / (n (n^2 - 1)), for every order of five.
    for perm in itertools.permutations(range(5)):
        d2 = sum((i - p) ** 2 for i, p in enumerate(perm))
        assert spearman(list(range(5)), list(perm)) == pytest.approx(1 - 6 * d2 / 120)
    assert spearman([1, 2], [2, 1]) is None  # too few pairs to rank
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # no ordering
    with pytest.raises(ValueError):
        spearman([1, 2, 3], [1, 2])


def test_seed_agreement_pairs_each_variants_first_and_second_seed():
    # Variants with one seed are left out; a third seed is not read.
    acc = {
        "base": [80.0, 81.0, 10.0],
        "bn": [82.0, 79.0],
        "gn": [84.0, 85.0],
        "ln": [83.0, 86.0],
        "wide": [90.0],
    }
    r, two = seed_agreement(acc)
    assert two == ["base", "bn", "gn", "ln"]
    first, second = [80.0, 82.0, 84.0, 83.0], [81.0, 79.0, 85.0, 86.0]
    assert r["rho"] == pytest.approx(oracle_spearman(first, second), abs=1e-12)
    assert r["rho"] == pytest.approx(0.6)  # ranks 1 2 4 3 against 2 1 3 4: 1 - 6 * 4 / 60
    text = seed_agreement_text(r, two)  # 0.6 < 0.8: said to be not reproducible
    assert "test accuracies 0.600 over 4 variants" in text
    assert "not reproducible at this budget" in text
    same = {m: [v[0], v[0] + 1] for m, v in acc.items()}  # the same order twice
    assert "not reproducible" not in seed_agreement_text(*seed_agreement(same))
    r, two = seed_agreement({"base": [1.0, 2.0], "bn": [3.0, 4.0], "wide": [5.0]})
    assert r["rho"] is None and two == ["base", "bn"]  # fewer than three: not measured
    assert seed_agreement_text(r, two).startswith("not measured")
    # Three variants, but one seed's accuracies all equal (a study at chance): no order.
    r, two = seed_agreement({"base": [10.0, 11.0], "bn": [10.0, 12.0], "gn": [10.0, 13.0]})
    assert r["rho"] is None and seed_agreement_text(r, two).startswith("undefined over 3")


def test_published_section_states_the_published_studys_seed_agreement():
    """The main job's published section gives the 10-epoch study's rank agreement between
    seeds 0 and 1, here recomputed from the published summaries by obvious code."""
    pub = Path(__file__).resolve().parents[1] / "docs" / "results" / "clipped-cpu"
    acc = {}
    for f in (pub / "runs").glob("*/summary.json"):
        variant, seed = parse_run_name(f.parent.name)
        test_acc = json.loads(f.read_text()).get("test_acc")
        if test_acc is not None:  # a diverged run has none
            acc.setdefault(variant, {})[seed] = test_acc
    two = sorted(m for m, v in acc.items() if 0 in v and 1 in v)
    assert len(two) >= 3  # seven variants had both seeds when this test was written
    rho = oracle_spearman([acc[m][0] for m in two], [acc[m][1] for m in two])
    label = next(x for x in published_section(read_published(pub)) if x.startswith("- "))
    assert "Seeds' rank agreement: Spearman's rho between the first and the second" in label
    assert f"test accuracies {rho:.3f} over {len(two)} variants" in label


def test_rank_agreement_and_conclusions_against_the_course():
    same = {m: v - 10 for m, v in COURSE_TEST_ACC.items()}  # shifted: same order
    r, both = rank_agreement({**same, "paths2": 50.0})  # not in the course's table
    assert r["rho"] == pytest.approx(1.0) and "paths2" not in both and len(both) == 9
    assert r["p"] == pytest.approx(2 / 362_880) and r["p_method"] == "exact"
    flipped = {m: -v for m, v in COURSE_TEST_ACC.items()}
    assert rank_agreement(flipped)[0]["rho"] == pytest.approx(-1.0)
    # Two seeds each, per-image results on 4 test images: bn always right where base is.
    correct = {
        "base": [[1, 0, 0, 1], [1, 1, 0, 0]],
        "bn": [[1, 1, 1, 1], [1, 1, 0, 1]],
        "noskip": None,  # no per-image records: no interval
    }
    acc = {"base": [50.0, 50.0], "bn": [100.0, 75.0], "noskip": [80.0, 70.0]}
    rows = {(r["variant"], r["against"]): r for r in conclusions(acc, correct)}
    assert rows["bn", "base"]["diff"] == pytest.approx(37.5)
    assert rows["bn", "base"]["course"] == pytest.approx(85.67 - 73.29)
    assert rows["bn", "base"]["low"] is not None and rows["bn", "base"]["verdict"] in (
        "confirms",
        "undecided",
    )
    assert rows["noskip", "base"]["verdict"] == "undecided (no per-image test results to pair)"
    assert rows["noskip", "base"]["diff"] == pytest.approx(25.0)
    # The course's conclusions whose variants are missing are named, not dropped.
    assert rows["gn", "base"] == {
        "question": "normalization: GroupNorm",
        "variant": "gn",
        "against": "base",
        "course": pytest.approx(84.86 - 73.29),
        "missing": ["gn"],
        "verdict": "not checked",
    }
    one_seed = conclusions({"base": [50.0], "bn": [60.0]}, {"base": None, "bn": None})
    assert one_seed[0]["verdict"] == "undecided (one seed)" and one_seed[0]["low"] is None


@pytest.fixture(scope="module")
def budget_study(tmp_path_factory):
    """A tiny budget study of base, bn and noskip, trained once for this module's tests;
    (cfg, folder). Tests that change the folder work on a copy (`own_copy`)."""
    root = tmp_path_factory.mktemp("budget")
    with pytest.MonkeyPatch.context() as mp:  # never the user's cache
        mp.setenv("DNNLAB_CACHE", str(root / "cache"))
        tree = make_image_tree(root / "tree", n_train=14, n_test=5)
        cfg = study_config(["base", "bn", "noskip"], recipe="budget", data_root=str(tree))
        cfg = replace(cfg, train_subset=60, epochs=1, n_val=20, test_subset=30, max_per_split=40)
        run_study(cfg, root / "s", log=lambda *_: None, plan=False)
    return cfg, root / "s"


def own_copy(budget_study, tmp_path):
    cfg, study = budget_study
    out = tmp_path / "s"
    shutil.copytree(study, out)
    return cfg, out


def record_settings(out, **changes):
    """Change the settings out/study.json records: the report and publish read them there."""
    f = out / "study.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), **changes}))


@pytest.mark.slow
def test_budget_study_report_has_the_course_comparison_and_all_variant_figure(
    budget_study, tmp_path
):
    cfg, out = own_copy(budget_study, tmp_path)
    md = (out / "report.md").read_text()
    assert "budget recipe, 1 epochs (a CPU budget, not the course's 100-epoch recipe)" in md
    assert "## Against the course's 100-epoch results" in md
    acc = {
        m: 100 * json.loads((out / "runs" / m / "summary.json").read_text())["test_acc"]
        for m in ("base", "bn", "noskip")
    }
    rho = rank_agreement(acc)[0]["rho"]
    if rho is None:
        assert "over these 3 variants: undefined" in md
    else:
        assert f"over these 3 variants: rho = {rho:.3f}, two-sided permutation p = " in md
    diff = acc["bn"] - acc["base"]
    assert f"| bn − base | {diff:+.2f} | – | +12.38 | undecided (one seed) |" in md
    assert "| normalization: GroupNorm | gn − base | – | – | +11.57 | not checked: " in md
    assert "Every variant is a single seed" in md
    assert (out / "figures" / "all_variants_si_csi.png").stat().st_size > 0
    record = json.loads((out / "study.json").read_text())
    assert set(record["stage_seconds"]["variants"]) == {"base", "bn", "noskip"}
    assert all(
        v["train"] > 0 and v["probe"] > 0 and 0 < v["train_epochs"] <= v["train"]
        for v in record["stage_seconds"]["variants"].values()
    )
    assert record["device_name"].startswith("CPU: ") and "report" in record["stage_seconds"]
    # A quick study has no such section: its numbers are not comparable.
    record_settings(out, quick=True)
    write_report(out)
    assert "Against the course's" not in (out / "report.md").read_text()
    # Published, the budget study comes first in another study's report, labelled with its
    # recipe, budget, precision and probe cap, and its rank agreement with the course.
    results = tmp_path / "results"
    record_settings(out, quick=False)
    publish(out, results / "budget-cpu", commit="abc123")
    record_settings(out, quick=True)
    write_report(out, published=read_published(results))
    md = (out / "report.md").read_text()
    assert md.startswith("## Published studies (measured results, read from the repository)")
    assert md.index("## Published studies") < md.index("# dnnlab CIFAR-10 architecture study")
    precision = json.loads((out / "runs" / "bn" / "config.json").read_text())["precision"]
    label = f"budget recipe: 1 epochs of 60 training images in {precision}, probe capped at 40"
    assert label in md and "commit abc123" in md
    if rho is not None:
        assert f"numbers: {rho:.3f} over 3 variants" in md


@pytest.mark.slow
def test_a_diverged_variant_is_reported_with_its_curve_and_published(budget_study, tmp_path):
    import math

    from dnnlab.cifar.config import TrainConfig
    from dnnlab.cifar.train import write_divergence

    cfg, out = own_copy(budget_study, tmp_path)
    run = out / "runs" / "paths2-shared"
    run.mkdir()
    (run / "config.json").write_text("{}")
    trace = {"loss": [2.3, 9.5, math.nan], "lr": [0.01, 0.05, 0.1]}
    write_divergence(run, TrainConfig(model="paths2-shared", recipe="budget"), 0, trace)
    both = ["base", "bn", "noskip", "paths2-shared"]
    record_settings(out, models=both, runs=both)
    write_report(out)
    md = (out / "report.md").read_text()
    assert "## Runs that did not train under this recipe (1)" in md
    assert "paths2-shared: the loss became non-finite at step 2 of epoch 1" in md
    assert "(learning rate 0.1), after 9.5 the step before" in md
    assert "Not ranked, as they diverged under this recipe: paths2-shared." in md
    assert "![paths2-shared: loss until it diverged](runs/paths2-shared/divergence.png)" in md
    assert_page_says_what_markdown_says(out)  # the loss curve embedded, the course's tables
    results = tmp_path / "results"
    publish(out, results / "budget-cpu", commit="abc123")
    rec = json.loads((results / "budget-cpu" / "study.json").read_text())
    assert rec["diverged_variants"] == ["paths2-shared"]
    got = sorted(p.name for p in (results / "budget-cpu" / "runs" / "paths2-shared").iterdir())
    assert got == ["config.json", "divergence.json", "divergence.png"]
    record_settings(out, quick=True)
    write_report(out, published=read_published(results))
    assert (
        "diverged under this recipe (no result): paths2-shared" in (out / "report.md").read_text()
    )
    assert_page_says_what_markdown_says(out)
