"""Reading weight and checkpoint files as plain data, and why a file could not be read, in
dnnlab's words.

Two formats, told apart by their content, not their name:
- .safetensors (a JSON header, then raw tensor bytes): read with safetensors, which only
  ever builds tensors;
- PyTorch's torch.save files, read with torch.load(weights_only=True), which refuses pickled
  objects other than tensors, numbers, strings, lists and dicts (they could run code). Its
  message ends by suggesting weights_only=False, the unsafe thing to do, so dnnlab states the
  reason itself.
Every such file dnnlab reads goes through `load_plain`, and every refusal is worded by
`load_error_reason`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import safetensors
import safetensors.torch
import torch


class EmptyFileError(ValueError):
    """A file of zero bytes (torch's own message for it names no reason)."""


class SparseTensorError(ValueError):
    """A file holding a sparse (or other not dense) tensor, which no reader of dnnlab's
    takes: refused by name rather than met as a traceback later."""


class SafetensorsFileError(ValueError):
    """A file that is (or says by its name it is) .safetensors but cannot be read as one."""


def is_safetensors(path) -> bool:
    """Whether the file's content is a safetensors file: 8 bytes giving the length of a JSON
    header that starts with '{' and fits in the file. A .safetensors file whose header does
    not fit raises SafetensorsFileError (truncated)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    if 8 + n <= size:
        return True
    if path.suffix.lower() == ".safetensors":
        raise SafetensorsFileError(
            f"its header says {n} bytes of metadata but the file has {size - 8} after the "
            "length: it is truncated"
        )
    return False


def load_plain(path, map_location="cpu", dense_only: bool = True):
    """The content of a weights or checkpoint file as plain data: a .safetensors file (by
    content) as a {name: tensor} dict, else torch.load with weights_only=True. An empty file
    raises EmptyFileError before either library sees it."""
    if Path(path).stat().st_size == 0:
        raise EmptyFileError("the file is empty (0 bytes)")
    if is_safetensors(path):
        return _load_safetensors(path, map_location)
    # An open file, not its name: torch.load hands any name ending in .safetensors to
    # safetensors, whatever the content. torch's warning on checking a sparse tensor is not
    # repeated: such a file is refused just below, in dnnlab's words.
    with open(path, "rb") as fh, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
        obj = torch.load(fh, map_location=map_location, weights_only=True)
    if dense_only:  # weights and records: a sparse tensor is refused (SparseTensorError)
        check_dense(obj)
    return obj


def check_dense(obj, where: str = "") -> None:
    """Raise SparseTensorError when `obj` (a tensor, or dicts and lists of them) holds a
    tensor that is not dense, naming where it is ("['model']['w']")."""
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided:
            at = f" at {where}" if where else ""
            raise SparseTensorError(
                f"it holds a {obj.layout} tensor{at}, not a dense one; dnnlab reads dense "
                "tensors only: save it with .to_dense()"
            )
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_dense(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_dense(v, f"{where}[{i}]")


def _load_safetensors(path, map_location) -> dict:
    device = str(torch.device(map_location)) if map_location is not None else "cpu"
    try:
        return safetensors.torch.load_file(path, device=device)
    except (safetensors.SafetensorError, json.JSONDecodeError, ValueError) as e:
        raise SafetensorsFileError(_first_line(e)) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def load_error_reason(e: BaseException) -> str:
    """One line: an empty file, code-carrying objects refused, or what else is wrong (not a
    PyTorch file, truncated, ...); never torch's advice to load with weights_only=False."""
    text = str(e).strip()
    if isinstance(e, EmptyFileError):
        return "the file is empty (0 bytes)"
    if isinstance(e, SparseTensorError):
        return text
    if isinstance(e, SafetensorsFileError):
        return f"it is not a readable safetensors file ({text})"
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
