"""One training run's settings (TrainConfig), each declared once with its help text and
range; unset recipe settings take their recipe's value (recipe.py)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from dnnlab.cifar import recipe as R
from dnnlab.cifar.models import VARIANTS
from dnnlab.errors import ConfigError
from dnnlab.settings import setting, validate
from dnnlab.utils.device import DEVICE_HELP, check_device_name

__all__ = ["RESUMABLE_CHANGES", "TrainConfig", "parse_run_name", "run_name"]


def _recipe_setting(name: str, help: str, **limits):
    """A recipe hyperparameter: unset (None) by default, so it takes its recipe's value
    (recipe.SETTINGS: COURSE for corrected and course, BUDGET, CLIPPED), which config.json
    then records; --help shows both recipes' values."""
    return setting(None, help, default_text=R.recipe_default_text(name), **limits)


@dataclass
class TrainConfig:
    """One training run's settings; every default is the course project's recipe."""

    model: str = setting("base", "a variant from `dnnlab models`")
    # The recipe's hyperparameters (see _recipe_setting).
    epochs: int | None = _recipe_setting("epochs", "training epochs", low=1, high=100_000)
    batch_size: int | None = _recipe_setting(
        "batch_size", "training batch size", low=1, high=65_536
    )
    lr: float | None = _recipe_setting(
        "lr", "peak SGD learning rate", low=0, high=10, low_open=True
    )
    momentum: float | None = _recipe_setting(
        "momentum", "SGD momentum", low=0, high=1, high_open=True
    )
    nesterov: bool | None = _recipe_setting("nesterov", "Nesterov momentum")
    weight_decay: float | None = _recipe_setting("weight_decay", "SGD weight decay", low=0, high=1)
    label_smoothing: float | None = _recipe_setting(
        "label_smoothing", "cross-entropy label smoothing", low=0, high=1, high_open=True
    )
    schedule: str | None = _recipe_setting(
        "schedule",
        "learning-rate schedule: step (StepLR, per epoch) or linear (linear warmup, then "
        "linear decay to zero at the last step)",
        choices=R.SCHEDULES,
    )
    step_size: int | None = _recipe_setting(
        "step_size", "StepLR: epochs between learning-rate drops", low=1, high=100_000
    )
    gamma: float | None = _recipe_setting(
        "gamma", "StepLR: learning-rate factor at each drop", low=0, high=1, low_open=True
    )
    warmup_epochs: float | None = _recipe_setting(
        "warmup_epochs", "linear schedule: epochs of linear warmup from zero", low=0, high=100_000
    )
    augmentation: str | None = _recipe_setting(
        "augmentation",
        "training augmentation: flip-rotate (the course's: flip, rotation within 10 degrees) "
        "or flip-translate (flip, shift by up to 2 pixels)",
        choices=R.AUGMENTATIONS,
    )
    grad_clip: float | None = _recipe_setting(
        "grad_clip",
        "clip the gradients' global L2 norm to this before each SGD step (none: no clipping)",
        low=0,
        high=1e6,
        low_open=True,
    )
    n_val: int = setting(
        5000,
        "validation images held out of the training set (stratified)",
        low=1,
        high=49_999,
        flag="--val-size",
    )
    train_subset: int | None = setting(None, "train on a stratified subset this large", low=1)
    test_subset: int | None = setting(
        None, "test on a stratified part of the test set (quick runs only)", low=1
    )
    seed: int = setting(
        0, "random seed (split, initialization, data order, augmentation)", low=0, high=2**32 - 1
    )
    softmax_head: bool = setting(
        False, "the course project's double softmax (softmax in the model, then cross-entropy)"
    )
    device: str = setting("cpu", DEVICE_HELP)
    compile: bool = setting(False, "torch.compile the model (GPU runs)")
    bf16: bool = setting(
        True,
        "bf16 autocast in training and evaluation where the device computes bf16 natively "
        "(CUDA; a CPU with avx512_bf16 or AMX); fp32 elsewhere, said once and recorded",
    )
    data_root: str | None = setting(None, "CIFAR-10 source; none: $DNNLAB_DATA")
    eval_batch_size: int = setting(1024, "batch size for validation and test", low=1, high=65_536)
    recipe: str = setting("corrected", R.RECIPE_HELP, choices=R.RECIPES)

    def __post_init__(self):
        self.recipe = R.recipe_name(self.recipe)
        # The given values, before any recipe check names one. What the recipe fills in
        # needs no check here: tests/test_recipe.py checks every recipe's values.
        validate(self)
        given = {k: getattr(self, k) for k in R.COURSE}
        for k, v in R.recipe_settings(self.recipe, given).items():
            setattr(self, k, v)
        if self.schedule == "step" and (self.step_size is None or self.gamma is None):
            raise ConfigError("--schedule step: needs --step-size and --gamma")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("--nesterov: Nesterov momentum needs --momentum above 0")
        if self.model not in VARIANTS:
            raise ConfigError(
                f"--model: {self.model!r} is not a model; choose one of: {', '.join(VARIANTS)}"
            )
        if self.softmax_head and self.model == "wide":
            raise ConfigError(
                "--softmax-head: the course's wide network has no Softmax, so "
                "model 'wide' has no softmax head"
            )
        check_device_name(self.device)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """From a run's config.json (which also holds data_identity and data_source)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Settings a resumed run may change: where it runs, and how long (more epochs continue it).
# Any other difference from the saved run is refused. data_root may name another copy of
# the same data (its content identity is checked); config.json keeps the original root.
RESUMABLE_CHANGES = ("device", "compile", "eval_batch_size", "data_root", "epochs")


def run_name(variant: str, seed: int) -> str:
    """The folder under runs/ of `variant` trained with `seed` (seed 0's is the variant's
    name, as in every study before seeds)."""
    return variant if seed == 0 else f"{variant}-seed{seed}"


def parse_run_name(name: str) -> tuple[str, int]:
    """(variant, seed) of a run folder's name (run_name's inverse)."""
    variant, sep, seed = name.rpartition("-seed")
    if sep and seed.isdigit() and variant in VARIANTS:
        return variant, int(seed)
    return name, 0
