"""`dnnlab si`: the separability of a feature file with its labels, every input checked
before the neighbour search."""

from __future__ import annotations

import json
import math
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from dnnlab.errors import BudgetError, ConfigError, InputError
from dnnlab.separability.checks import check_inputs
from dnnlab.separability.featurefile import FeatureFile
from dnnlab.separability.io import load_array, open_features
from dnnlab.separability.linear import DEFAULT_ALPHA
from dnnlab.separability.measures import TrivialMeasure, separability
from dnnlab.separability.normalize import NORMALIZATIONS
from dnnlab.separability.vocabulary import DEFAULT_MEASURES, parse_measures
from dnnlab.settings import from_args, setting, validate
from dnnlab.utils.device import DEVICE_HELP, check_device, check_device_name
from dnnlab.utils.distributed import init_distributed
from dnnlab.utils.sizes import MEASURE_MEMORY, format_size, parse_size


@dataclass
class SiConfig:
    """`dnnlab si`'s settings; its flags and --help are generated from these declarations."""

    measures: str = setting(
        ",".join(DEFAULT_MEASURES), "e.g. si,csi,hsi:3,soft:3,anti:3,knn:5,nc1,linear"
    )
    alpha: float | None = setting(
        None,
        "ridge regularization of `linear`",
        low=0,
        low_open=True,
        default_text=f"default {DEFAULT_ALPHA}",
    )
    normalize: str = setting("zscore", "per-feature normalization", choices=NORMALIZATIONS)
    device: str | None = setting(None, DEVICE_HELP, default_text="default: cpu")
    max_memory: str | int = setting(
        MEASURE_MEMORY, "memory budget for the whole command, a size > 0 such as 2GB"
    )
    json: bool = setting(False, "print one JSON object")
    progress: bool = setting(True, "show a progress bar (on a terminal)")
    demo: str | None = setting(
        None, "run on scikit-learn's bundled digits instead of FEATURES LABELS", choices=("digits",)
    )

    def __post_init__(self):
        a = self.alpha
        if a is not None and not (isinstance(a, (int, float)) and math.isfinite(a) and a > 0):
            raise ConfigError(f"--alpha must be a finite number > 0; got {a}")
        validate(self)
        try:
            parse_measures(self.measures)
        except ValueError as e:  # parse_measures says what is wrong with the list
            raise ConfigError(f"--measures: {e}") from None
        try:
            parse_size(self.max_memory)
        except ValueError as e:
            raise ConfigError(f"--max-memory: {e}") from None
        if self.device is not None:
            check_device_name(self.device)


def _si_data(cfg: SiConfig, features: str | None, labels: str | None, budget: int):
    """(features, labels) of --demo digits or of the FEATURES and LABELS files, checked;
    features in a .npy (or uncompressed .npz member) stay on disk (io.open_features)."""
    if cfg.demo:
        if features or labels:
            raise InputError("give either --demo or FEATURES LABELS, not both")
        digits = _load_digits()
        return digits.data, digits.target
    if not (features and labels):
        raise InputError("need FEATURES and LABELS files (or --demo digits)")
    x = open_features(features, budget)
    y = load_array(labels, numeric=False)
    check_inputs(x, y, features, labels)
    return x, y


def _load_digits():
    """scikit-learn's bundled digits; scikit-learn is an optional extra (dnnlab[demo]), so it
    is imported only here; it would also add 0.7-0.9 s to this module's import
    (benchmarks/lazy_imports.py)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError(
            "--demo digits needs scikit-learn: pip install 'dnnlab[demo]' (or scikit-learn)"
        ) from None
    return load_digits()


def _si_checks(cfg: SiConfig, test: list[str] | None, x_shape, budget: int):
    """Check each measure's order against the features' N samples, that `linear` has --test
    and --test has `linear` and features shaped like FEATURES; returns the (features, labels)
    of --test, checked, or None."""
    n = x_shape[0]
    wanted = parse_measures(cfg.measures)
    for m in wanted:
        if m.order >= n:
            raise ConfigError(
                f"--measures: {m.name} needs fewer than the N={n} samples "
                "(a sample has only N-1 neighbours)"
            )
    linear = any(m.kind == "linear" for m in wanted)
    if linear and not test:
        raise ConfigError("--measures: linear needs a test set to score on: --test FEATURES LABELS")
    if not test:
        return None
    if not linear:
        raise ConfigError(
            "--test: a test set is only used by the measure linear; add it to --measures"
        )
    tx, ty = open_features(test[0], budget), load_array(test[1], numeric=False)
    check_inputs(tx, ty, test[0], test[1])
    if tuple(tx.shape[1:]) != tuple(x_shape[1:]):
        raise ConfigError(
            f"--test {test[0]}: its samples have shape {tuple(tx.shape[1:])}, the features' "
            f"{tuple(x_shape[1:])}; the classifier scores features shaped like those it was "
            "fitted on"
        )
    return tx, ty


def _held_bytes(a) -> int:
    """Bytes an input holds in memory (0 for a FeatureFile, read by blocks)."""
    if isinstance(a, torch.Tensor):
        return a.element_size() * a.numel()
    return a.nbytes if isinstance(a, np.ndarray) else 0


def _left_for_core(flag: str, budget: int, held) -> int:
    """The budget less what the loaded inputs hold: --max-memory bounds the whole command."""
    inputs = sum(_held_bytes(a) for a in held)
    if inputs >= budget:
        raise ConfigError(
            f"--max-memory {flag}: the inputs read whole already hold {format_size(inputs)}; "
            "save the features as .npy to have them read by blocks, or raise --max-memory"
        )
    return budget - inputs


def si_command(
    cfg: SiConfig, features: str | None, labels: str | None, test: list[str] | None
) -> int:
    """`dnnlab si`: check every input (FEATURES, LABELS and --test's two files), then
    measure and print (rank 0 only)."""
    budget = parse_size(cfg.max_memory)
    x, y = _si_data(cfg, features, labels, budget)
    test_set = _si_checks(cfg, test, tuple(x.shape), budget)
    if cfg.demo and not cfg.json:
        print(f"demo: scikit-learn digits, {x.shape[0]} images of 8x8 pixels, 10 classes")
    core_budget = _left_for_core(cfg.max_memory, budget, [x, *(test_set or ())])
    if cfg.device is not None:
        check_device(cfg.device)
    rank, _ = init_distributed(cfg.device)
    try:
        with warnings.catch_warnings():  # the result's notes say it, in dnnlab's words
            warnings.simplefilter("ignore", TrivialMeasure)
            res = _measure(cfg, x, y, test_set, core_budget)
    except BudgetError as e:
        held = budget - core_budget
        if not held:
            raise BudgetError(f"--max-memory {cfg.max_memory}: {e}", e.least) from None
        # The core's figure is what it needs beside the inputs held whole: add them.
        least = held + e.least if e.least else 0
        whole = f"; so --max-memory {format_size(least, up=True)} in all" if least else ""
        raise BudgetError(
            f"--max-memory {cfg.max_memory} less the {format_size(held)} the inputs read whole "
            f"hold: {e}{whole}",
            least,
        ) from None
    for source in (x, *(test_set or ())):  # every block read came from one version
        if isinstance(source, FeatureFile):
            source.check_unchanged()
            source.close()
    if rank == 0:
        print(json.dumps(res.to_dict()) if cfg.json else res)
    return 0


def _measure(cfg: SiConfig, x, y, test, max_memory: int):
    """separability() with the command's settings."""
    return separability(
        x,
        y,
        cfg.measures,
        normalize_method=cfg.normalize,
        device=cfg.device,
        max_memory=max_memory,
        progress=cfg.progress and sys.stderr.isatty(),
        test=test,
        alpha=cfg.alpha,
    )


def main(args) -> int:
    """`dnnlab si`, from its parsed flags."""
    return si_command(from_args(SiConfig, args), args.features, args.labels, args.test)
