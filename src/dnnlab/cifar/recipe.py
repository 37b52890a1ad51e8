"""The four training recipes: `corrected` (dnnlab's default), `course` (the course's
protocol), `budget` (the 3-epoch CPU budget of the published budget study) and `clipped`
(the 10-epoch study's: the budget's settings with the gradients' norm clipped, the one
setting that trained every variant).

`corrected` and `course` use the course's hyperparameters (COURSE: SGD 0.01, momentum 0.9,
StepLR 40/0.1, 100 epochs, batch 256, the course's flip + rotation augmentation); any of them
may be changed with its flag. `course` reproduces the course's protocol wherever it changes
the numbers:

- the head: Softmax inside the model, then CrossEntropyLoss (a double softmax), for every
  network but `wide`, whose course network has no Softmax;
- "best" weights: the course kept a reference to the live state dict, so the weights it
  tested were the last epoch's; `course` tests (and stores as best.pt) the last epoch's;
- validation images: the course's validation subset came from the augmented training
  dataset, so they are flipped and rotated like training images, drawn anew every epoch;
- the probe's train20: drawn stratified from all 50,000 training images, validation ones
  included (`dnnlab.probe.trained_run.run_splits` reads `train20_pool`).

The course's split was unseeded, so its exact images cannot be reproduced; `course` uses
dnnlab's seeded split. docs/cifar.md says what each difference does to the numbers.

`budget` is `corrected`'s protocol under BUDGET's hyperparameters, one set for every variant,
chosen on the validation split (docs/RESULTS.md, "budget recipe"); three of the eleven
variants diverged under it. `clipped` is BUDGET with the gradients' global norm clipped to 1
and 10 epochs, chosen on the validation split over the family's extremes (docs/RESULTS.md
§14, benchmarks/recipe_search.py): the one candidate of three with no divergence. Both
recipes' settings are fixed: a flag that contradicts one is refused, except --epochs
(another budget; the schedule follows it, so a run cannot be resumed with another count).
"""

from __future__ import annotations

import torch

from dnnlab.errors import ConfigError

RECIPES = ("corrected", "course", "budget", "clipped")
# Issue 12 named the course's recipe "seed"; "seed" now means the random seed only. The old
# name is read from records (config.json) written then; the flags do not take it.
ALIASES = {"seed": "course"}
RECIPE_HELP = (
    "training protocol: corrected (dnnlab's), course (the course's double "
    "softmax, last-epoch weights, augmented validation, train20 from all 50,000 "
    "training images), budget (3 epochs of bf16 training that fit the whole study on a "
    "small CPU) or clipped (the budget's settings with gradient-norm clipping, 10 epochs: "
    "the recipe that trains every variant), see docs/cifar.md"
)

SCHEDULES = ("step", "linear")
AUGMENTATIONS = ("flip-rotate", "flip-translate")

# The hyperparameters the recipes start from, side by side: (course, budget). A TrainConfig
# setting left unset (None) takes its recipe's value; the course's are the course project's.
# The budget recipe was chosen on the validation split (docs/RESULTS.md, "budget recipe"):
# a linear warmup then linear decay to zero per step (Li, Yumer and Ramanan, "Budgeted
# Training", ICLR 2020), light augmentation, label smoothing; its epochs fit the eleven
# variants' training and probing into the time stated there on a 2-core CPU.
_COURSE_AND_BUDGET = {
    "epochs": (100, 3),
    "batch_size": (256, 128),
    "lr": (0.01, 0.1),
    "momentum": (0.9, 0.9),
    "nesterov": (False, True),
    "weight_decay": (0.0, 5e-4),
    "label_smoothing": (0.0, 0.1),
    "schedule": ("step", "linear"),
    "step_size": (40, None),
    "gamma": (0.1, None),
    "warmup_epochs": (0.0, 0.3),
    "augmentation": ("flip-rotate", "flip-translate"),
    "grad_clip": (None, None),
}
COURSE = {k: course for k, (course, _) in _COURSE_AND_BUDGET.items()}
BUDGET = {k: budget for k, (_, budget) in _COURSE_AND_BUDGET.items()}
# The 10-epoch study's recipe: of the candidates screened on paths4-shared (seed 0, through
# the learning-rate peak) only clipping trained it (peak 0.05 and a one-epoch warmup
# diverged); clip1 then trained 7 variants x 3 seeds without a divergence (RESULTS §14).
CLIPPED = {**BUDGET, "epochs": 10, "grad_clip": 1.0}
SETTINGS = {"corrected": COURSE, "course": COURSE, "budget": BUDGET, "clipped": CLIPPED}
# The recipes whose settings are fixed, and the one setting a run may change (its budget).
FIXED = ("budget", "clipped")
FIXED_FREE = ("epochs",)


def recipe_default_text(name: str) -> str:
    """What --help says of a recipe setting's default: 'default 0.01; budget recipe 0.1'."""
    text = "default none" if COURSE[name] is None else f"default {COURSE[name]}"
    for recipe in FIXED:
        value = SETTINGS[recipe][name]
        if value != COURSE[name]:
            text += f"; {recipe} recipe {'none' if value is None else value}"
    return text


def recipe_settings(recipe: str, given: dict[str, object]) -> dict[str, object]:
    """The recipe's hyperparameters with the `given` ones (not None) over them.

    The FIXED recipes' are fixed: a given value that differs is a ConfigError naming its
    flag. Keys are TrainConfig field names; `flag(name)` is the flag's spelling."""
    table = SETTINGS[recipe]
    out = {}
    for name, default in table.items():
        value = given.get(name)
        if value is None:
            out[name] = default
            continue
        if recipe in FIXED and name not in FIXED_FREE and value != default:
            flag = "--" + name.replace("_", "-")
            fixed = "no such setting" if default is None else f"{default}"
            raise ConfigError(
                f"{flag} {value}: contradicts --recipe {recipe}, which fixes it ({fixed}); "
                "use --recipe corrected to set it yourself"
            )
        out[name] = value
    return out


def check_recipe_flag(given: dict) -> None:
    """Refuse an old recipe name given as a flag (records written with it still read)."""
    text = given.get("recipe")
    if text in ALIASES:
        raise ConfigError(
            f"--recipe {text}: that recipe is now called {ALIASES[text]}; 'seed' is the random "
            "seed only (--seed)"
        )


def recipe_name(text: str) -> str:
    """The canonical recipe name for `text` (an alias maps to its recipe)."""
    if not isinstance(text, str):
        raise ConfigError(f"--recipe: {text!r} is not one of {', '.join(RECIPES)}")
    name = ALIASES.get(text, text)
    if name not in RECIPES:
        raise ConfigError(f"--recipe: {text!r} is not one of {', '.join(RECIPES)}")
    return name


def linear_lr_factor(step: int, total: int, warmup: int) -> float:
    """The linear schedule's multiplier of the peak learning rate at optimizer step `step`
    (0-based) of `total`: rising linearly over the first `warmup` steps, then falling
    linearly to zero at the last step (Budgeted Training's linear decay when warmup is 0)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def softmax_head(recipe: str, model: str, requested: bool) -> bool:
    """Whether the network ends in a Softmax: asked for, or the course's (not for wide)."""
    return requested or (recipe == "course" and model != "wide")


def tests_last_weights(recipe: str) -> bool:
    """True when the tested ("best") weights are the last epoch's, as in the course."""
    return recipe == "course"


def val_generator(recipe: str, seed: int, epoch: int) -> torch.Generator | None:
    """The generator that augments validation images in `epoch` (course), or None.

    Derived from (seed, epoch) alone, so a resumed run augments exactly as an uninterrupted one.
    """
    if recipe != "course":
        return None
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)


def train20_pool(recipe: str, train_idx: torch.Tensor, n_all: int) -> torch.Tensor:
    """The training-image indices the probe's 20 % subset is drawn from."""
    if recipe == "course":
        return torch.arange(n_all)
    return train_idx
