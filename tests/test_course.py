"""The comparison with the course's published numbers: Spearman's rho against obvious code,
the conclusions' directions, and the budget study's report sections."""

import itertools
import json
import random
import shutil
from dataclasses import replace

import pytest

from dnnlab.study.config import study_config
from dnnlab.study.course import COURSE_TEST_ACC, conclusions, rank_agreement, spearman
from dnnlab.study.publish import publish, read_published
from dnnlab.study.report import write_report
from dnnlab.study.study import run_study
from tests.fakes import make_image_tree


def oracle_ranks(v):
    """Mean 1-based rank of each value among all, ties averaged, by counting."""
    return [sum(w < x for w in v) + (sum(w == x for w in v) + 1) / 2 for x in v]


def oracle_spearman(a, b):
    ra, rb = oracle_ranks(a), oracle_ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


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


def test_rank_agreement_and_conclusions_against_the_course():
    same = {m: v - 10 for m, v in COURSE_TEST_ACC.items()}  # shifted: same order
    rho, both = rank_agreement({**same, "paths2": 50.0})  # not in the course's table
    assert rho == pytest.approx(1.0) and "paths2" not in both and len(both) == 9
    flipped = {m: -v for m, v in COURSE_TEST_ACC.items()}
    assert rank_agreement(flipped)[0] == pytest.approx(-1.0)
    rows = conclusions({"base": 70.0, "bn": 75.0, "noskip": 71.0})
    got = {(r["variant"], r["against"]): r for r in rows}
    assert set(got) == {("bn", "base"), ("noskip", "base")}
    assert got["bn", "base"]["same_direction"] and got["bn", "base"]["study"] == 5.0
    assert got["bn", "base"]["course"] == pytest.approx(85.67 - 73.29)
    assert not got["noskip", "base"]["same_direction"]  # the course found noskip worse


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
    rho, _ = rank_agreement(acc)
    if rho is None:
        assert "Spearman's rho: undefined" in md
    else:
        assert f"over these 3 variants: rho = {rho:.3f}" in md
    assert f"| bn − base | {acc['bn'] - acc['base']:+.2f} | +12.38 |" in md
    assert (out / "figures" / "all_variants_si_csi.png").stat().st_size > 0
    record = json.loads((out / "study.json").read_text())
    assert set(record["stage_seconds"]["variants"]) == {"base", "bn", "noskip"}
    assert all(
        v["train"] > 0 and v["probe"] > 0 for v in record["stage_seconds"]["variants"].values()
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


def test_a_diverged_variant_is_reported_with_its_curve_and_published(budget_study, tmp_path):
    import math

    from dnnlab.cifar.config import TrainConfig
    from dnnlab.cifar.epoch import write_divergence

    cfg, out = own_copy(budget_study, tmp_path)
    run = out / "runs" / "paths2-shared"
    run.mkdir()
    (run / "config.json").write_text("{}")
    trace = {"loss": [2.3, 9.5, math.nan], "lr": [0.01, 0.05, 0.1]}
    write_divergence(run, TrainConfig(model="paths2-shared", recipe="budget"), 0, trace)
    record_settings(out, models=["base", "bn", "noskip", "paths2-shared"])
    write_report(out)
    md = (out / "report.md").read_text()
    assert "## Variants that did not train under this recipe" in md
    assert "paths2-shared: the loss became non-finite at step 2 of epoch 1" in md
    assert "(learning rate 0.1), after 9.5 the step before" in md
    assert "Not ranked, as they diverged under this recipe: paths2-shared." in md
    assert "![paths2-shared: loss until it diverged](runs/paths2-shared/divergence.png)" in md
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
