"""The study's settings (StudyConfig), its --quick budget, and each variant's TrainConfig.

The training settings a study passes on to every variant (epochs, n_val, the subsets, the
recipe, the device...) are TrainConfig's: their defaults, ranges and flags are taken from
its declarations, and `train_config` hands each one over by name. Only the help text is the
study's own, where it says what --quick sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from dnnlab.cifar.config import TrainConfig
from dnnlab.cifar.models import VARIANTS
from dnnlab.cifar.recipe import SETTINGS, check_recipe_flag, recipe_name
from dnnlab.errors import ConfigError
from dnnlab.probe.probe import ProbeConfig
from dnnlab.separability import parse_measures
from dnnlab.settings import setting, validate

# The --quick budget: a 2-core CPU in under 20 minutes.
QUICK = dict(train_subset=1000, epochs=3, n_val=500, test_subset=1000, max_per_split=300)


def _train_setting(name: str, help: str | None = None):
    """TrainConfig's setting `name` (its default, range and flag) as a StudyConfig field;
    `help`, when given, is what the study's --help says of it instead."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    spec = f.metadata["spec"]
    if help is not None:
        spec = replace(spec, help=help, default_text=None)
    return field(default=f.default, metadata={"spec": spec})


@dataclass
class StudyConfig:
    models: tuple[str, ...] = setting(
        tuple(VARIANTS), "comma-separated variants (see `dnnlab models`)"
    )
    quick: bool = setting(False, "a budget that finishes on a 2-core CPU in under 20 minutes")
    device: str = _train_setting("device")
    data_root: str | None = _train_setting("data_root", "CIFAR-10 source (default $DNNLAB_DATA)")
    recipe: str = _train_setting("recipe")
    # Full budget by default; the quick budget (QUICK) is for a 2-core CPU in < 20 minutes.
    train_subset: int | None = _train_setting(
        "train_subset",
        f"train on a stratified subset this large (--quick: {QUICK['train_subset']})",
    )
    epochs: int | None = _train_setting(
        "epochs",
        f"epochs per variant (the recipe's: {SETTINGS['corrected']['epochs']}, budget "
        f"{SETTINGS['budget']['epochs']}; --quick: {QUICK['epochs']})",
    )
    n_val: int = _train_setting("n_val", f"validation images (--quick: {QUICK['n_val']})")
    test_subset: int | None = _train_setting(
        "test_subset", f"test on a stratified subset this large (--quick: {QUICK['test_subset']})"
    )
    max_per_split: int | None = setting(
        None, f"stratified cap on each probe split (--quick: {QUICK['max_per_split']})", low=2
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
    compile: bool = _train_setting("compile", "torch.compile the models (GPU runs)")
    bf16: bool = _train_setting(
        "bf16", "bf16 autocast in training where the device computes bf16 natively (see train)"
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


# The settings each variant's TrainConfig takes from the study: those both declare.
TRAIN_SETTINGS = tuple(
    f.name for f in fields(StudyConfig) if f.name in {t.name for t in fields(TrainConfig)}
)

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
    """Variant `name`'s TrainConfig: the study's TRAIN_SETTINGS, the rest TrainConfig's
    defaults (its recipe's values)."""
    return TrainConfig(model=name, **{k: getattr(cfg, k) for k in TRAIN_SETTINGS})


def probe_config(cfg: StudyConfig) -> ProbeConfig:
    """The ProbeConfig each variant's probe (and the CKA of base against bn) runs under."""
    return ProbeConfig(max_memory=cfg.probe_memory, device=cfg.device, measures=cfg.measures)
