"""The budget recipe, bf16 on the CPU and the light augmentation, each against obvious code."""

import json

import pytest
import torch
import torch.nn.functional as F

import dnnlab.cifar.train as T
from dnnlab.cifar import recipe as R
from dnnlab.cifar.augment import flip_translate, to_input
from dnnlab.cli import main
from dnnlab.errors import ConfigError
from dnnlab.utils.machine import cpu_flags
from dnnlab.utils.precision import training_precision


def small(tree, **kw):
    base = dict(model="bn", n_val=20, data_root=str(tree), recipe="budget", epochs=2)
    return T.TrainConfig(**{**base, **kw})


def test_budget_fills_its_settings_and_refuses_contradictions():
    c = T.TrainConfig(recipe="budget")
    assert {k: getattr(c, k) for k in R.BUDGET} == R.BUDGET
    assert T.TrainConfig(recipe="budget", epochs=5).epochs == 5  # another budget
    assert T.TrainConfig(recipe="budget", lr=R.BUDGET["lr"]).lr == R.BUDGET["lr"]
    with pytest.raises(ConfigError, match=r"--step-size 30: contradicts --recipe budget"):
        T.TrainConfig(recipe="budget", step_size=30)
    with pytest.raises(ConfigError, match=r"--lr 0.5: contradicts --recipe budget"):
        T.TrainConfig(recipe="budget", lr=0.5)
    with pytest.raises(ConfigError, match="--augmentation: 'crop' is not one of"):
        T.TrainConfig(augmentation="crop")
    # corrected and course start from the course's values and take any flag.
    c = T.TrainConfig()
    assert {k: getattr(c, k) for k in R.COURSE} == R.COURSE
    assert T.TrainConfig(lr=0.3, schedule="linear").lr == 0.3
    with pytest.raises(ConfigError, match="--nesterov: Nesterov momentum needs"):
        T.TrainConfig(nesterov=True, momentum=0.0)


def test_budget_contradiction_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--recipe", "budget", "--step-size", "30", "--out", str(out)]) == 2
    assert "--step-size 30: contradicts --recipe budget" in capsys.readouterr().err
    assert not out.exists()
    rc = main(["study", "--recipe", "budget", "--epochs", "0", "--out", str(tmp_path / "s")])
    assert rc == 2 and "--epochs" in capsys.readouterr().err


def oracle_linear(step, total, warmup):
    """The schedule written out: warmup ramps to the peak, then a straight line to zero."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 1.0 - (step - warmup) / (total - warmup)


@pytest.mark.parametrize("total,warmup", [(10, 0), (10, 3), (7, 6), (1, 0)])
def test_linear_schedule_against_oracle(total, warmup):
    got = [R.linear_lr_factor(s, total, warmup) for s in range(total)]
    assert got == pytest.approx([oracle_linear(s, total, warmup) for s in range(total)])
    assert R.linear_lr_factor(total, total, warmup) == 0.0  # zero after the last step
    assert all(0 < g <= 1 for g in got)


def test_flip_translate_against_per_image_oracle():
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    got = flip_translate(x, torch.Generator().manual_seed(3), shift=2)
    flip = torch.rand(40, generator=gen) < 0.5
    dy = torch.randint(0, 5, (40,), generator=gen)
    dx = torch.randint(0, 5, (40,), generator=gen)
    for i in range(40):
        img = x[i].flip(-1) if flip[i] else x[i]
        padded = F.pad(img, (2, 2, 2, 2))
        crop = padded[:, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
        assert torch.equal(got[i], to_input(crop[None])[0]), i
    # Every shift and both flips occur: not a constant transform.
    assert flip.any() and (~flip).any() and len(set(dx.tolist())) == 5


def test_precision_follows_the_cpu_flags():
    cpu = torch.device("cpu")
    assert training_precision(True, cpu, {"avx2", "avx512_bf16"}) == (
        "bf16",
        "the CPU has avx512_bf16",
    )
    assert training_precision(True, cpu, {"amx_bf16"})[0] == "bf16"
    p, why = training_precision(True, cpu, {"avx2", "fma"})
    assert p == "fp32" and "training in fp32 instead" in why and "avx512_bf16" in why
    assert training_precision(False, cpu, {"avx512_bf16"}) == (
        "fp32",
        "bf16 turned off (--no-bf16)",
    )


def test_cpu_flags_read_from_a_cpuinfo_file(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx512_bf16 sse\n")
    assert cpu_flags(f) == {"fpu", "avx512_bf16", "sse"}
    assert cpu_flags(tmp_path / "missing") is None


@pytest.mark.slow
def test_budget_run_records_precision_and_refuses_another_epoch_count(tree, tmp_path):
    run = tmp_path / "r"
    s = T.train(small(tree), run, progress=False)
    c = json.loads((run / "config.json").read_text())
    want = training_precision(True, torch.device("cpu"))[0]
    assert c["precision"] == s["precision"] == want
    assert c["schedule"] == "linear" and c["lr"] == R.BUDGET["lr"] and c["step_size"] is None
    rows = json.loads((run / "metrics.json").read_text())
    # The lr column is each epoch's first step: rising in warmup or falling, never the peak
    # twice, and the saved scheduler has stepped once per batch.
    last = torch.load(run / "last.pt", weights_only=True)
    steps = T.steps_per_epoch(s["train_images"], small(tree).batch_size)
    assert last["scheduler"]["last_epoch"] == 2 * steps
    assert rows[0]["lr"] != rows[1]["lr"]
    with pytest.raises(T.RunError, match="--epochs 3: .* was started for 2 epochs"):
        T.train(small(tree, epochs=3), run, resume=True, progress=False)
    # The same count resumes (nothing to do); a new run with --overwrite is allowed.
    assert T.train(small(tree), run, resume=True, progress=False)["epochs"] == 2
    assert T.train(small(tree, epochs=1), run, overwrite=True, progress=False)["epochs"] == 1


def test_no_bf16_trains_in_fp32(tree, tmp_path):
    run = tmp_path / "r"
    s = T.train(small(tree, bf16=False, epochs=1), run, progress=False)
    c = json.loads((run / "config.json").read_text())
    assert s["precision"] == c["precision"] == "fp32" and c["bf16"] is False
    assert c["precision_reason"] == "bf16 turned off (--no-bf16)"


def test_a_diverging_run_keeps_its_loss_curve_and_stops_early(tree, tmp_path):
    run = tmp_path / "r"
    cfg = T.TrainConfig(
        model="base",
        epochs=2,
        batch_size=10,
        lr=10.0,
        momentum=0.99,
        n_val=20,
        data_root=str(tree),
        schedule="linear",
    )
    with pytest.raises(T.RunError, match=r"epoch 1: the training loss is nan .*divergence\.png"):
        T.train(cfg, run, progress=False)
    d = json.loads((run / "divergence.json").read_text())
    steps = d["steps"]
    bad = d["first_non_finite_step"]
    assert d["epoch"] == 1 and bad is not None and steps[bad]["loss"] in ("nan", "inf", "-inf")
    assert all(isinstance(s["loss"], float) for s in steps[:bad])  # finite until then
    # Stopped within one augmented chunk of the first bad step, not at the epoch's end.
    assert len(steps) <= (bad // T.AUG_CHUNK + 1) * T.AUG_CHUNK
    # Each step's learning rate is the one it ran with (the scheduler steps after it).
    assert [s["lr"] for s in steps[:2]] == pytest.approx(
        [10.0 * R.linear_lr_factor(i, 2 * 12, 0) for i in range(2)]
    )
    assert (run / "divergence.png").stat().st_size > 0
    assert not (run / "summary.json").exists() and not (run / "best.pt").exists()
