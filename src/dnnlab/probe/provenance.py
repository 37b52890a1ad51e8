"""Fingerprints of what made a probe row: weights, data, split, layer and settings.

A stored row is reused only when the fingerprint the probe would give it now is the same;
anything else (retrained weights, other images, another sample count) is recomputed.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from torch import nn


def _update_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def tensor_hash(*tensors) -> str:
    """sha256 (16 hex digits) of the tensors' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        _update_tensor(h, torch.as_tensor(np.asarray(t)) if not isinstance(t, torch.Tensor) else t)
    return h.hexdigest()[:16]


def model_hash(model: nn.Module) -> str:
    """Content hash of a model's state dict (parameters and buffers, with their names)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        _update_tensor(h, t)
    return h.hexdigest()[:16]


def split_identity(x, y) -> str:
    """What a split holds: a source's own `identity` (images read on the fly), or the hash of
    the input tensor and the labels."""
    ident = getattr(x, "identity", None)
    return tensor_hash(torch.as_tensor(y)) + ":" + (ident or tensor_hash(x))


def row_fingerprint(prov: dict) -> str:
    return hashlib.sha256(json.dumps(prov, sort_keys=True).encode()).hexdigest()[:16]


def stale_reason(old: dict, new: dict) -> str:
    """Which recorded input differs between two provenance records (for the user)."""
    if not old:
        return "it records no provenance (made by an older dnnlab)"
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    names = {"weights": "other weights", "data": "other data", "n": "another sample count"}
    return ", ".join(names.get(k, f"another {k}") for k in diff) or "nothing"
