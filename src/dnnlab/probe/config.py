"""The probe's settings (ProbeConfig: flags and --help come from its declarations) and the
images per forward pass they give on a device."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from dnnlab.errors import ConfigError
from dnnlab.separability import DEFAULT_MEASURES, parse_measures
from dnnlab.separability.normalize import NORMALIZATIONS
from dnnlab.settings import setting, validate
from dnnlab.utils.device import DEVICE_HELP
from dnnlab.utils.sizes import parse_size

# Default images per forward pass: on this 2-core CPU a `base` pass with every layer hooked
# ran 15-25 % faster at 64 than at 500 (docs/RESULTS.md, section 7); a GPU wants large passes.
CPU_BATCH, GPU_BATCH = 64, 500
# A trained run's splits: a stratified 20% of its training images, its validation images and
# the test set; the probe's default, and the names any images' splits take (probe.images).
SPLITS = ("train20", "val", "test")

# The probe's memory budget (ProbeConfig.max_memory), split in this one place: the most of it
# each part may take, as 1/N of the budget. The features held get what is left (plan.py).
BUDGET_SHARES = {
    "forward": 8,  # one forward pass's activations (plan.plan_budget)
    "core": 4,  # the separability core's working memory, also at most plan.CORE_WORKSPACE
    "cka": 4,  # a CKA split's Grams; CkaMatrix keeps half of its budget in memory
    "cka_runs": 2,  # CKA between two runs, the only work of `--cka-with` once the probe is done
}


def budget_share(budget: int, part: str) -> int:
    """Bytes of `budget` that `part` (a key of BUDGET_SHARES) may take."""
    return budget // BUDGET_SHARES[part]


def _check_regex(layers) -> None:
    if isinstance(layers, str) and layers.startswith("re:"):
        try:
            re.compile(layers[3:])
        except re.error as e:
            msg = f"--layers {layers!r}: not a valid regular expression ({e})"
            raise ConfigError(msg) from None


@dataclass
class ProbeConfig:
    splits: tuple[str, ...] = setting(SPLITS, "splits to probe, comma-separated")
    max_per_split: int | None = setting(
        None, "stratified cap on each split's samples", low=2, default_text="default: all"
    )
    layers: list[str] | str | None = setting(
        None,
        "comma-separated module names (dotted), re:REGEX, or 'list' to print the layers "
        "with their output shapes and stop; default: the top-level children in execution order",
    )
    measures: str = setting(",".join(DEFAULT_MEASURES), "measures, e.g. si,csi,hsi:3")
    normalize: str = setting("zscore", "per-feature normalization", choices=NORMALIZATIONS)
    max_memory: str | int = setting(
        "4GB",
        "what the probe may add to the process's memory (features, the core, forward "
        "passes), a size > 0 such as 4GB or 512MiB; a layer that does not fit streams "
        "through a file",
    )
    device: str = setting("cpu", DEVICE_HELP)
    batch_size: int | None = setting(
        None,
        f"images per forward pass, at most (default {CPU_BATCH} on a CPU, whose caches "
        f"hold a small pass's activations, {GPU_BATCH} on a GPU; fewer if the budget needs it)",
        low=1,
        high=65_536,
    )
    output_key: str | None = setting(None, "tuple index or dict key to probe in an output")
    memmap: str | None = setting(
        None,
        "write every layer's features to a memory-mapped file of this type (default: "
        "only layers that do not fit, as float32; float16 halves the disk and rounds values)",
        choices=("float16", "float32"),
    )
    spill_dir: str | None = setting(
        None,
        "folder for the feature files of layers that do not fit (default: the output "
        "folder, else the system's temporary folder)",
    )
    per_class: bool = setting(False, "also per-class values (in probe.json)")
    cka_splits: str = setting(
        "",
        "CKA between all probed layers on these splits, e.g. val (17 layers on 5,000 "
        "samples take about 10 minutes on 2 CPU cores)",
    )

    def __post_init__(self):
        if isinstance(self.splits, str):
            self.splits = tuple(s.strip() for s in self.splits.split(",") if s.strip())
        self.splits = tuple(self.splits)
        if not self.splits:
            raise ConfigError("--splits: names no split; give e.g. train20,val,test")
        if len(set(self.splits)) != len(self.splits):
            raise ConfigError(f"--splits: {','.join(self.splits)} names a split twice")
        validate(self)
        try:
            parse_measures(self.measures)
        except ValueError as e:
            raise ConfigError(f"--measures: {e}") from None
        try:
            parse_size(self.max_memory)
        except ValueError as e:
            raise ConfigError(f"--max-memory: {e}") from None
        unknown = [c for c in self.cka_split_names if c not in self.splits]
        if unknown:
            raise ConfigError(
                f"--cka-splits: {', '.join(unknown)} is not among the probed splits "
                f"({','.join(self.splits)})"
            )
        _check_regex(self.layers)

    @property
    def cka_split_names(self) -> list[str]:
        """The splits named in cka_splits, in order."""
        return [c for c in (x.strip() for x in self.cka_splits.split(",")) if c]


def forward_batch(cfg: ProbeConfig, dev: torch.device) -> int:
    """Images per forward pass: cfg.batch_size, else the device's default."""
    return cfg.batch_size or (CPU_BATCH if dev.type == "cpu" else GPU_BATCH)
