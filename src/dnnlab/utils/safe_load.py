"""Reading .pt files as plain data, and why a file could not be read, in dnnlab's words.

torch.load(weights_only=True) refuses pickled objects other than tensors, numbers, strings,
lists and dicts (they could run code). Its message ends by suggesting weights_only=False,
which is the unsafe thing to do, so dnnlab states the reason itself. Every .pt file dnnlab
reads goes through `load_plain`, and every refusal is worded by `load_error_reason`.
"""

from __future__ import annotations

from pathlib import Path


class EmptyFileError(ValueError):
    """A file of zero bytes (torch's own message for it names no reason)."""


def load_plain(path, map_location="cpu"):
    """The content of a .pt file as plain data (torch.load with weights_only=True); an empty
    file raises EmptyFileError before torch sees it."""
    import torch

    if Path(path).stat().st_size == 0:
        raise EmptyFileError("the file is empty (0 bytes)")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_error_reason(e: BaseException) -> str:
    """One line: an empty file, code-carrying objects refused, or what else is wrong (not a
    PyTorch file, truncated, ...); never torch's advice to load with weights_only=False."""
    text = str(e).strip()
    if isinstance(e, EmptyFileError):
        return "the file is empty (0 bytes)"
    if any(w in text for w in CODE_CARRYING):
        return (
            "it holds objects other than plain data (tensors, numbers, strings, lists, "
            "dicts), which dnnlab refuses to unpickle because they could run code"
        )
    detail = [ln.strip() for ln in text.splitlines() if ln.strip() and _plain(ln)]
    first = detail[0][:200] if detail else ""
    what = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return f"it is not a readable PyTorch file of plain data ({what})"


# torch's words for a pickle that names a class or function (one that could run code).
CODE_CARRYING = ("Unsupported global", "Unsupported class", "GLOBAL ")
# torch's advice and boilerplate, never repeated: it suggests the unsafe load.
_ADVICE = (
    "weights_only",
    "Weights only load failed",
    "documentation of torch.load",
    "file an issue",
)


def _plain(line: str) -> bool:
    """Whether a line of torch's message is a fact about the file, not advice."""
    return not any(w in line for w in _ADVICE)
