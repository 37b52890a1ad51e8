"""The compute device a command was asked for, checked before any work."""

from __future__ import annotations

import re

import torch

from dnnlab.errors import ConfigError

DEVICE_FORM = re.compile(r"^(cpu|cuda(:\d+)?)$")
# The help text of every --device flag.
DEVICE_HELP = "cpu, cuda or cuda:N"


def check_device_name(name: str, flag: str = "--device") -> None:
    """Raise ConfigError naming `flag` unless `name` is cpu, cuda or cuda:N."""
    if not isinstance(name, str) or not DEVICE_FORM.match(name):
        raise ConfigError(f"{flag}: {name!r} is not cpu, cuda or cuda:N")


def check_device(name: str, flag: str = "--device"):
    """The torch.device for `name`; ConfigError when it is malformed or absent here."""
    check_device_name(name, flag)
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {name}: CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA devices"
            )
    return dev
