"""The study's settings (StudyConfig), its --quick budget, and each variant's TrainConfig."""

from __future__ import annotations

from dataclasses import dataclass, fields

from dnnlab.cifar.config import TrainConfig
from dnnlab.cifar.models import VARIANTS
from dnnlab.cifar.recipe import RECIPE_HELP, RECIPES, SETTINGS, check_recipe_flag, recipe_name
from dnnlab.errors import ConfigError
from dnnlab.probe.probe import ProbeConfig
from dnnlab.separability import parse_measures
from dnnlab.settings import setting, validate
from dnnlab.utils.device import DEVICE_HELP


@dataclass
class StudyConfig:
    models: tuple[str, ...] = setting(
        tuple(VARIANTS), "comma-separated variants (see `dnnlab models`)"
    )
    quick: bool = setting(False, "a budget that finishes on a 2-core CPU in under 20 minutes")
    device: str = setting("cpu", DEVICE_HELP)
    data_root: str | None = setting(None, "CIFAR-10 source (default $DNNLAB_DATA)")
    recipe: str = setting("corrected", RECIPE_HELP, choices=RECIPES)
    # Full budget by default; the quick budget (QUICK) is for a 2-core CPU in < 20 minutes.
    train_subset: int | None = setting(
        None, "train on a stratified subset this large (--quick: 1000)", low=1
    )
    epochs: int | None = setting(
        None, "epochs per variant (the recipe's: 100, budget 3; --quick: 3)", low=1, high=100_000
    )
    n_val: int = setting(
        5000, "validation images (--quick: 500)", low=1, high=49_999, flag="--val-size"
    )
    test_subset: int | None = setting(
        None, "test on a stratified subset this large (--quick: 1000)", low=1
    )
    max_per_split: int | None = setting(
        None, "stratified cap on each probe split (--quick: 300)", low=2
    )
    probe_memory: str = setting(
        ProbeConfig.max_memory, "probe memory budget (the probe's default)", cli=False
    )
    measures: str = setting(
        "si,csi,knn:5,nc1,linear", "probe measures per layer (see `dnnlab probe --help`)"
    )
    cka_samples: int = setting(
        1000, "validation images (stratified) for the CKA of base against bn; 0: none", low=0
    )
    compile: bool = setting(False, "torch.compile the models (GPU runs)")
    bf16: bool = setting(
        True, "bf16 autocast in training where the device computes bf16 natively (see train)"
    )
    jobs: int = setting(
        1, "variants trained and probed at once, one worker process each", low=1, high=64
    )

    def __post_init__(self):
        self.recipe = recipe_name(self.recipe)
        if self.epochs is None:
            self.epochs = SETTINGS[self.recipe]["epochs"]
        self.models = tuple(self.models)
        validate(self)
        if not self.models:
            raise ConfigError(
                f"--models: names no variant; give a comma-separated list of {', '.join(VARIANTS)}"
            )
        unknown = [m for m in self.models if m not in VARIANTS]
        if unknown:
            raise ConfigError(
                f"--models: unknown model {', '.join(map(repr, unknown))}; "
                f"choose from: {', '.join(VARIANTS)}"
            )
        try:
            parse_measures(self.measures)
        except ValueError as e:
            raise ConfigError(f"--measures: {e}") from None
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"--models: a variant is named twice in {','.join(self.models)}")


QUICK = dict(train_subset=1000, epochs=3, n_val=500, test_subset=1000, max_per_split=300)


# The settings that change a study's numbers: two studies agree when these and the data do.
RESULT_KEYS = (
    "quick",
    "recipe",
    "train_subset",
    "epochs",
    "n_val",
    "test_subset",
    "max_per_split",
    "measures",
    "bf16",
)


def study_config(models=None, quick=False, **kw) -> StudyConfig:
    if quick:
        kw = {**QUICK, **kw}
    return StudyConfig(
        models=tuple(VARIANTS) if models is None else tuple(models), quick=quick, **kw
    )


def config_from_flags(given: dict) -> StudyConfig:
    """The StudyConfig of the flags given on the command line: with --quick, QUICK's budget
    fills in the flags not given."""
    check_recipe_flag(given)
    return StudyConfig(**{**(QUICK if given.get("quick") else {}), **given})


def config_from_record(d: dict) -> StudyConfig:
    """The StudyConfig a study.json records."""
    names = {f.name for f in fields(StudyConfig)}
    return StudyConfig(
        **{k: (tuple(v) if k == "models" else v) for k, v in d.items() if k in names}
    )


def train_config(cfg: StudyConfig, name: str) -> TrainConfig:
    return TrainConfig(
        model=name,
        epochs=cfg.epochs,
        n_val=cfg.n_val,
        train_subset=cfg.train_subset,
        test_subset=cfg.test_subset,
        device=cfg.device,
        data_root=cfg.data_root,
        compile=cfg.compile,
        recipe=cfg.recipe,
        bf16=cfg.bf16,
    )
