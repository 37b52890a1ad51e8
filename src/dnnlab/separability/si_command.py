"""`dnnlab si`: the separability of a feature file with its labels, every input checked
before the neighbour search."""

from __future__ import annotations

import json
import math
import sys
import warnings

import numpy as np
import torch

from dnnlab.errors import BudgetError, ConfigError, InputError
from dnnlab.separability.checks import check_inputs
from dnnlab.separability.io import load_array, open_features
from dnnlab.separability.measures import TrivialMeasure, separability
from dnnlab.separability.vocabulary import parse_measures
from dnnlab.utils.device import check_device
from dnnlab.utils.distributed import init_distributed
from dnnlab.utils.sizes import format_size, parse_size


def _si_data(args, budget: int):
    """(features, labels) of --demo digits or of the FEATURES and LABELS files, checked;
    features in a .npy (or uncompressed .npz member) stay on disk (io.open_features)."""
    if args.demo:
        if args.features or args.labels:
            raise InputError("give either --demo or FEATURES LABELS, not both")
        digits = _load_digits()
        x, y = digits.data, digits.target
        if not args.json:
            print(f"demo: scikit-learn digits, {x.shape[0]} images of 8x8 pixels, 10 classes")
        return x, y
    if not (args.features and args.labels):
        raise InputError("need FEATURES and LABELS files (or --demo digits)")
    x = open_features(args.features, budget)
    y = load_array(args.labels, numeric=False)
    check_inputs(x, y, args.features, args.labels)
    return x, y


def _load_digits():
    """scikit-learn's bundled digits; scikit-learn is an optional extra (dnnlab[demo]), so it
    is imported only here."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError(
            "--demo digits needs scikit-learn: pip install 'dnnlab[demo]' (or scikit-learn)"
        ) from None
    return load_digits()


def _si_checks(args, n: int, budget: int):
    """Check --measures (each one's order below the n samples), --alpha, and that `linear`
    has --test; returns the (features, labels) of --test, checked, or None."""
    try:
        wanted = parse_measures(args.measures)
    except ValueError as e:  # parse_measures says what is wrong with the list
        raise ConfigError(f"--measures: {e}") from None
    for m in wanted:
        if m.order >= n:
            raise ConfigError(
                f"--measures: {m.name} needs fewer than the N={n} samples "
                "(a sample has only N-1 neighbours)"
            )
    if args.alpha is not None and not args.alpha > 0:
        raise ConfigError(f"--alpha must be a number > 0; got {args.alpha}")
    if any(m.kind == "linear" for m in wanted) and not args.test:
        raise ConfigError("--measures: linear needs a test set to score on: --test FEATURES LABELS")
    if not args.test:
        return None
    tx, ty = open_features(args.test[0], budget), load_array(args.test[1], numeric=False)
    check_inputs(tx, ty, args.test[0], args.test[1])
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


def si_command(args) -> int:
    """`dnnlab si`: check every input, then measure and print (rank 0 only)."""
    try:
        budget = parse_size(args.max_memory)
    except ValueError as e:
        raise ConfigError(f"--max-memory: {e}") from None
    if args.alpha is not None and not (math.isfinite(args.alpha) and args.alpha > 0):
        raise ConfigError(f"--alpha must be a finite number > 0; got {args.alpha}")
    x, y = _si_data(args, budget)
    test = _si_checks(args, len(y), budget)
    core_budget = _left_for_core(args.max_memory, budget, [x, *(test or ())])
    if args.device is not None:
        check_device(args.device)
    rank, _ = init_distributed(args.device)
    try:
        with warnings.catch_warnings():  # the result's notes say it, in dnnlab's words
            warnings.simplefilter("ignore", TrivialMeasure)
            res = _measure(args, x, y, test, core_budget)
    except BudgetError as e:
        if core_budget == budget:
            raise
        raise BudgetError(
            f"--max-memory {args.max_memory} less the {format_size(budget - core_budget)} the "
            f"inputs read whole hold: {e}"
        ) from None
    if rank == 0:
        print(json.dumps(res.to_dict()) if args.json else res)
    return 0


def _measure(args, x, y, test, max_memory: int):
    """separability() with the command's settings."""
    return separability(
        x,
        y,
        args.measures,
        normalize_method=args.normalize,
        device=args.device,
        max_memory=max_memory,
        progress=not args.no_progress and sys.stderr.isatty(),
        test=test,
        alpha=args.alpha,
    )
