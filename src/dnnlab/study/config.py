"""The study's settings (StudyConfig), its --quick budget, and each variant's TrainConfig.

The training settings a study passes on to every variant (epochs, n_val, the subsets, the
recipe, the device...) are TrainConfig's, and its probe cap (max_per_split) is ProbeConfig's:
their defaults, ranges, flags and help are taken from those declarations (--help adds what
--quick sets), and `train_config` and `probe_config` hand each one over by name.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace

from dnnlab.cifar.config import TrainConfig, run_name
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


def shared_setting(owner, name: str, default=MISSING):
    """`owner`'s setting `name` (TrainConfig's or ProbeConfig's: its range, flag and help, and
    its default unless the study gives its own) as a StudyConfig field; --help adds what
    --quick sets it to, if anything."""
    f = next(f for f in fields(owner) if f.name == name)
    spec = f.metadata["spec"]
    if default is not MISSING:
        spec = replace(spec, default_text=f"default {default}")
    else:
        default = f.default
    if name in QUICK:
        text = spec.default_text or default_text(f)
        spec = replace(spec, default_text=f"{text}; --quick: {QUICK[name]}")
    return field(default=default, metadata={"spec": spec})


# The study's probe sample for every layer: 2,000 images per split (200 a class). The last
# layers are also probed on the whole validation and test splits (whole_splits_config), into
# the run's WHOLE_SPLITS folder.
STUDY_PROBE_CAP = 2000
LAST_LAYERS = ("avgpool", "fc1", "fc2")
WHOLE_SPLITS = "whole-splits"


@dataclass
class StudyConfig:
    models: tuple[str, ...] = setting(
        tuple(VARIANTS), "comma-separated variants (see `dnnlab models`)"
    )
    seeds: tuple[int, ...] = setting(
        (0,),
        "training seeds, comma-separated: every variant is trained once per seed (its run is "
        "runs/VARIANT for seed 0, runs/VARIANT-seedK for seed K)",
    )
    quick: bool = setting(False, "a budget that finishes on a 2-core CPU in under 20 minutes")
    device: str = shared_setting(TrainConfig, "device")
    data_root: str | None = shared_setting(TrainConfig, "data_root")
    recipe: str = shared_setting(TrainConfig, "recipe")
    # Full budget by default; the quick budget (QUICK) is for a 2-core CPU in < 20 minutes.
    train_subset: int | None = shared_setting(TrainConfig, "train_subset")
    epochs: int | None = shared_setting(TrainConfig, "epochs")
    n_val: int = shared_setting(TrainConfig, "n_val")
    test_subset: int | None = shared_setting(TrainConfig, "test_subset")
    max_per_split: int | None = shared_setting(ProbeConfig, "max_per_split", STUDY_PROBE_CAP)
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
    compile: bool = shared_setting(TrainConfig, "compile")
    bf16: bool = shared_setting(TrainConfig, "bf16")
    # The recipe factorial's two factors beside the recipe (issue 35): the head, and the
    # course's StepLR shortened to the study's epochs.
    softmax_head: bool = shared_setting(TrainConfig, "softmax_head")
    step_size: int | None = shared_setting(TrainConfig, "step_size")
    jobs: int = setting(
        1, "variants trained and probed at once, one worker process each", low=1, high=64
    )

    def __post_init__(self):
        self.recipe = recipe_name(self.recipe)
        if self.epochs is None:
            self.epochs = SETTINGS[self.recipe]["epochs"]
        self.models = tuple(self.models)
        self.seeds = tuple(_seed(s) for s in self.seeds)
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
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            named = ",".join(map(str, self.seeds)) or "nothing"
            raise ConfigError(f"--seeds: {named}: give distinct seeds, comma-separated")
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


def _seed(text) -> int:
    """One --seeds item as TrainConfig's seed (a whole number in its range)."""
    spec = next(f for f in fields(TrainConfig) if f.name == "seed").metadata["spec"]
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"--seeds: {text!r} is not a whole number") from None
    if not spec.low <= value <= spec.high:
        raise ConfigError(f"--seeds: {value} is out of range; it must be {spec.describe()}")
    return value


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
    "softmax_head",
    "step_size",
)
# Settings added after studies were first recorded: a study.json without one had its
# default then (recipe: corrected, bf16: off before it was a setting, and so on).
LATER_KEYS = {"recipe": "corrected", "bf16": None, "softmax_head": False, "step_size": None}


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


def train_config(cfg: StudyConfig, name: str, seed: int = 0) -> TrainConfig:
    """The TrainConfig of variant `name` with `seed`: the study's TRAIN_SETTINGS, the rest
    TrainConfig's defaults (its recipe's values)."""
    return TrainConfig(model=name, seed=seed, **{k: getattr(cfg, k) for k in TRAIN_SETTINGS})


def study_runs(cfg: StudyConfig) -> list[str]:
    """The run names of the study's variants and seeds, variant by variant."""
    return [run_name(m, s) for m in cfg.models for s in cfg.seeds]


def probe_config(cfg: StudyConfig) -> ProbeConfig:
    """The ProbeConfig each variant's probe (and the CKA of base against bn) runs under."""
    return ProbeConfig(
        max_memory=cfg.probe_memory,
        device=cfg.device,
        measures=cfg.measures,
        max_per_split=cfg.max_per_split,
    )


def whole_splits_config(cfg: StudyConfig) -> ProbeConfig:
    """The study's second probe of each run: SI and CSI of the last layers (records.
    LAST_LAYERS) on every validation and test image, whatever --max-per-split caps."""
    return ProbeConfig(
        max_memory=cfg.probe_memory,
        device=cfg.device,
        measures="si,csi",
        max_per_split=None,
        splits=("val", "test"),
        layers=list(LAST_LAYERS),
    )
