"""The study's settings (StudyConfig), its --quick budget, and each variant's TrainConfig.

The training settings a study passes on to every variant (epochs, n_val, the subsets, the
recipe, the device...) are TrainConfig's, and its probe cap (max_per_split) is ProbeConfig's:
their defaults, ranges, flags and help are taken from those declarations (--help adds what
--quick sets), and `train_config` and `probe_config` hand each one over by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from dnnlab.cifar.config import TrainConfig
from dnnlab.cifar.models import VARIANTS
from dnnlab.cifar.recipe import SETTINGS, recipe_name
from dnnlab.errors import ConfigError, InputError
from dnnlab.probe.probe import ProbeConfig
from dnnlab.separability import parse_measures
from dnnlab.separability.cka import CKA_LEAST
from dnnlab.settings import default_text, setting, validate
from dnnlab.utils.device import check_device_name
from dnnlab.utils.sizes import parse_size

# The --quick budget: a 2-core CPU in under 20 minutes.
QUICK = dict(train_subset=1000, epochs=3, n_val=500, test_subset=1000, max_per_split=300)


def _shared_setting(owner, name: str):
    """`owner`'s setting `name` (TrainConfig's or ProbeConfig's: its default, range, flag and
    help) as a StudyConfig field; --help adds what --quick sets it to, if anything."""
    f = next(f for f in fields(owner) if f.name == name)
    spec = f.metadata["spec"]
    if name in QUICK:
        spec = replace(spec, default_text=f"{default_text(f)}; --quick: {QUICK[name]}")
    return field(default=f.default, metadata={"spec": spec})


@dataclass
class StudyConfig:
    models: tuple[str, ...] = setting(
        tuple(VARIANTS), "comma-separated variants (see `dnnlab models`)"
    )
    quick: bool = setting(False, "a budget that finishes on a 2-core CPU in under 20 minutes")
    device: str = _shared_setting(TrainConfig, "device")
    data_root: str | None = _shared_setting(TrainConfig, "data_root")
    recipe: str = _shared_setting(TrainConfig, "recipe")
    # Full budget by default; the quick budget (QUICK) is for a 2-core CPU in < 20 minutes.
    train_subset: int | None = _shared_setting(TrainConfig, "train_subset")
    epochs: int | None = _shared_setting(TrainConfig, "epochs")
    n_val: int = _shared_setting(TrainConfig, "n_val")
    test_subset: int | None = _shared_setting(TrainConfig, "test_subset")
    max_per_split: int | None = _shared_setting(ProbeConfig, "max_per_split")
    probe_memory: str | int = setting(
        ProbeConfig.max_memory, "probe memory budget (the probe's default)", cli=False
    )
    measures: str = setting(
        "si,csi,knn:5,nc1,linear", "probe measures per layer (see `dnnlab probe --help`)"
    )
    cka_samples: int = setting(
        1000,
        "validation images (stratified, at most --max-per-split) for the CKA of base against "
        "bn; 0: none",
        low=0,
    )
    compile: bool = _shared_setting(TrainConfig, "compile")
    bf16: bool = _shared_setting(TrainConfig, "bf16")
    jobs: int = setting(
        1, "variants trained and probed at once, one worker process each", low=1, high=64
    )

    def __post_init__(self):
        self.recipe = recipe_name(self.recipe)
        if self.epochs is None:
            self.epochs = SETTINGS[self.recipe]["epochs"]
        self.models = tuple(self.models)
        validate(self)
        check_device_name(self.device)
        try:
            parse_size(self.probe_memory)
        except InputError as e:  # only study.json sets it
            raise ConfigError(f"probe_memory: {e}") from None
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
        cka = min(self.cka_samples, self.max_per_split or self.cka_samples)
        if self.cka_samples and {"base", "bn"} <= set(self.models) and cka < CKA_LEAST:
            capped = (
                f" (--max-per-split {self.max_per_split} caps it)"
                if cka != self.cka_samples
                else ""
            )
            raise ConfigError(
                f"--cka-samples: the CKA of base against bn would use {cka} images{capped}; "
                f"it needs at least {CKA_LEAST}, or 0 for none"
            )


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


def study_config(models=None, quick: bool = False, **given) -> StudyConfig:
    """The StudyConfig of the `given` settings (`dnnlab study` passes the flags given), of
    `models` (default: every variant); with `quick`, QUICK's budget fills in the settings not
    given."""
    if models is not None:
        given["models"] = tuple(models)
    return StudyConfig(quick=quick, **{**(QUICK if quick else {}), **given})


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
    return ProbeConfig(
        max_memory=cfg.probe_memory,
        device=cfg.device,
        measures=cfg.measures,
        max_per_split=cfg.max_per_split,
    )
