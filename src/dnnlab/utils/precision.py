"""Whether a device computes bf16 natively, and so whether training autocasts to it.

bf16 autocast speeds up a CPU only where the instructions exist (avx512_bf16 or AMX);
elsewhere oneDNN emulates bf16 and is slower than fp32, so dnnlab trains in fp32 there and
says so once. CUDA devices autocast whenever the card supports bf16.
"""

from __future__ import annotations

import platform

import torch

from dnnlab.utils.machine import cpu_flags

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(dev: torch.device, flags: set[str] | None = None) -> tuple[bool, str]:
    """(native, why): whether `dev` computes bf16 natively, and a sentence saying how we know.

    `flags` stands in for the CPU's feature flags (tests); default: read from /proc/cpuinfo."""
    if dev.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"{torch.cuda.get_device_name(dev)} {'supports' if ok else 'lacks'} bf16"
    flags = cpu_flags() if flags is None else flags
    cpu = platform.processor() or platform.machine()
    if flags is None:
        return False, f"this CPU's bf16 support cannot be read ({cpu}, no /proc/cpuinfo)"
    found = [f for f in CPU_BF16_FLAGS if f in flags]
    if found:
        return True, f"the CPU has {' and '.join(found)}"
    return False, f"the CPU has neither {' nor '.join(CPU_BF16_FLAGS)}"


def training_precision(want_bf16: bool, dev: torch.device, flags=None) -> tuple[str, str]:
    """("bf16" or "fp32", why): the precision a run trains and evaluates in."""
    if not want_bf16:
        return "fp32", "bf16 turned off (--no-bf16)"
    ok, why = native_bf16(dev, flags)
    if ok:
        return "bf16", why
    return "fp32", f"bf16 asked for, but {why}: training in fp32 instead"


class highest_matmul_precision:
    """Force full-precision float32 matrix multiplies (no TF32) and restore the setting."""

    def __enter__(self):
        self.prev = torch.get_float32_matmul_precision()
        self.prev_cuda = torch.backends.cuda.matmul.allow_tf32
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.set_float32_matmul_precision(self.prev)
        torch.backends.cuda.matmul.allow_tf32 = self.prev_cuda
