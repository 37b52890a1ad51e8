"""Why a file could not be read as plain data, in dnnlab's words.

torch.load(weights_only=True) refuses pickled objects other than tensors, numbers, strings,
lists and dicts (they could run code). Its message ends by suggesting weights_only=False,
which is the unsafe thing to do, so dnnlab states the reason itself.
"""

from __future__ import annotations

import pickle


def load_error_reason(e: BaseException) -> str:
    """One line: code-carrying objects refused, or what else went wrong (truncated, ...)."""
    text = str(e).strip()
    if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in text:
        return (
            "it holds objects other than plain data (tensors, numbers, strings, lists, "
            "dicts), which dnnlab refuses to unpickle because they could run code"
        )
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
