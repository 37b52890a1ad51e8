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

import io
import itertools
import json
import pickletools
import warnings
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from dnnlab.utils.steady import special_reason


class EmptyFileError(ValueError):
    """A file of zero bytes (torch's own message for it names no reason)."""


class SparseTensorError(ValueError):
    """A file holding a sparse (or other not dense) tensor, which no reader of dnnlab's
    takes: refused by name rather than met as a traceback later."""


class SpecialFileError(ValueError):
    """A named pipe, device or socket where a file was expected: reading it could wait
    forever (utils/steady.py)."""


class PlainPickleError(ValueError):
    """A Python pickle that torch.save did not write (pickle.dump, joblib, ...): torch's
    weights_only reader meets it with a protocol warning and "Unsupported operand"."""


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
    raises EmptyFileError, and a named pipe or device SpecialFileError, before either library
    sees it."""
    special = special_reason(path)
    if special is not None:
        raise SpecialFileError(f"it is {special}, not a regular file")
    if Path(path).stat().st_size == 0:
        raise EmptyFileError("the file is empty (0 bytes)")
    if is_safetensors(path):
        return _load_safetensors(path, map_location)
    with open(path, "rb") as fh:
        if is_plain_pickle(fh.read(4096)):
            raise PlainPickleError(
                "it is a Python pickle (pickle.dump), not a file torch.save or safetensors "
                "wrote; dnnlab does not unpickle it, since unpickling can run code: save the "
                "tensors with torch.save or safetensors"
            )
    # An open file, not its name: torch.load hands any name ending in .safetensors to
    # safetensors, whatever the content. torch's warning on checking a sparse tensor is not
    # repeated: such a file is refused just below, in dnnlab's words.
    with open(path, "rb") as fh, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
        obj = torch.load(fh, map_location=map_location, weights_only=True)
    if dense_only:  # weights and records: a sparse tensor is refused (SparseTensorError)
        check_dense(obj)
    return obj


# torch.save's legacy (not zip) format pickles this magic number first (a LONG1 opcode).
_TORCH_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def is_plain_pickle(head: bytes) -> bool:
    """Whether a file beginning with `head` (its first KiBs) is a pickle that torch.save did
    not write: its first opcodes read as pickle's (PROTO, maybe FRAME, ...), but they do not
    pickle the magic number torch's legacy format begins with. (torch.save's usual format
    is a zip archive, which begins with "PK".)"""
    if head[:1] != b"\x80":
        return False
    try:  # three opcodes that read as a pickle's, without running any of them
        list(itertools.islice(pickletools.genops(io.BytesIO(head)), 3))
    except (ValueError, EOFError):  # e.g. "at position 2, opcode ' ' unknown"
        return False
    rest = head[2:]
    if rest[:1] == b"\x95":  # FRAME: an 8-byte length, then the opcodes
        rest = rest[9:]
    return not rest.startswith(_TORCH_MAGIC)


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


def load_error_reason(e: BaseException, what: str = "a readable PyTorch file of plain data") -> str:
    """One line: an empty file, code-carrying objects refused, or what else is wrong (not
    `what`, truncated, ...); never a library's advice to load unsafely (torch's
    weights_only=False, numpy's allow_pickle=True)."""
    text = str(e).strip()
    if isinstance(e, EmptyFileError):
        return "the file is empty (0 bytes)"
    if isinstance(e, (SparseTensorError, SpecialFileError, PlainPickleError)):
        return text
    if isinstance(e, SafetensorsFileError):
        return f"it is not a readable safetensors file ({text})"
    if any(w in text for w in CODE_CARRYING):
        return (
            "it holds objects other than plain data (tensors, numbers, strings, lists, "
            "dicts), which dnnlab refuses to unpickle because they could run code"
        )
    detail = [ln.strip() for ln in text.splitlines() if ln.strip() and _plain(ln)]
    first = detail[0] if detail else ""
    if len(first) > 200:  # cut at a clause, never inside a parenthesis left open
        first = first[:200]
        if first.count("(") > first.count(")"):
            first = first[: first.rfind("(")].rstrip()
        first += " ..."
    kind = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return f"it is not {what} ({kind})"


def without_unsafe_advice(text: str) -> str:
    """A library's message with every sentence that advises an unsafe load left out (for
    errors dnnlab passes on, such as a model constructor's that read a file itself)."""
    sentences = [s.strip() for ln in text.splitlines() for s in ln.split(". ")]
    kept = [s for s in sentences if s and _plain(s)]
    return ". ".join(kept).rstrip(".")[:300] or "(no reason given)"


# torch's and numpy's words for a pickle that names a class or function, or holds Python
# objects (either could run code when unpickled).
CODE_CARRYING = (
    "Unsupported global",
    "Unsupported class",
    "GLOBAL ",
    "Object arrays cannot be loaded",
)
# The libraries' advice and boilerplate, never repeated: it suggests the unsafe load.
_ADVICE = (
    "weights_only",
    "allow_pickle",
    "Weights only load failed",
    "documentation of torch.load",
    "file an issue",
    "unsafe",
    "is trusted",
)


def _plain(line: str) -> bool:
    """Whether a line of a library's message is a fact about the file, not advice."""
    return not any(w.lower() in line.lower() for w in _ADVICE)
