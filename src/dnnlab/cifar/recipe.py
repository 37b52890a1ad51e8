"""The two training recipes: `corrected` (dnnlab's default) and `course` (the course's protocol).

Both use the same hyperparameters (SGD 0.01, momentum 0.9, StepLR 40/0.1, 100 epochs, batch
256). `course` reproduces the course's protocol wherever it changes the numbers:

- the head: Softmax inside the model, then CrossEntropyLoss (a double softmax), for every
  network but `wide`, whose course network has no Softmax;
- "best" weights: the course kept a reference to the live state dict, so the weights it
  tested were the last epoch's; `course` tests (and stores as best.pt) the last epoch's;
- validation images: the course's validation subset came from the augmented training
  dataset, so they are flipped and rotated like training images, drawn anew every epoch;
- the probe's train20: drawn stratified from all 50,000 training images, validation ones
  included (`dnnlab.probe.run.run_splits` reads `train20_pool`).

The course's split was unseeded, so its exact images cannot be reproduced; `course` uses
dnnlab's seeded split. docs/cifar.md says what each difference does to the numbers.
"""

from __future__ import annotations

import torch

from dnnlab.errors import ConfigError

RECIPES = ("corrected", "course")
# issue 12 named the course's recipe "seed"; "seed" now means the random seed only.
ALIASES = {"seed": "course"}
RECIPE_HELP = (
    "training protocol: corrected (dnnlab's) or course (the course's double "
    "softmax, last-epoch weights, augmented validation, train20 from all 50,000 "
    "training images); seed is accepted as another name for course"
)


def recipe_name(text: str) -> str:
    """The canonical recipe name for `text` (an alias maps to its recipe)."""
    name = ALIASES.get(text, text)
    if name not in RECIPES:
        raise ConfigError(
            f"--recipe: {text!r} is not one of {', '.join(RECIPES)} "
            f"(or {', '.join(ALIASES)}, another name for course)"
        )
    return name


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
