"""Fingerprints of what made a probe row: weights, data, split, layer and settings.

A stored row is reused only when the fingerprint the probe would give it now is the same;
anything else (retrained weights, other images, another sample count) is recomputed.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from dnnlab.utils.records import content_hash


def _tensor_chunks(t: torch.Tensor):
    """What a tensor's hash is made of: its dtype and shape, then its bytes."""
    t = t.detach().cpu().contiguous()
    yield f"{t.dtype}{tuple(t.shape)}"
    yield t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def tensor_hash(*tensors) -> str:
    """sha256 (16 hex digits) of the tensors' dtypes, shapes and bytes."""
    return content_hash(
        c
        for t in tensors
        for c in _tensor_chunks(
            t if isinstance(t, torch.Tensor) else torch.as_tensor(np.asarray(t))
        )
    )


def model_hash(model: nn.Module) -> str:
    """Content hash of a model's state dict (parameters and buffers, with their names)."""
    return content_hash(
        c for name, t in sorted(model.state_dict().items()) for c in (name, *_tensor_chunks(t))
    )


def split_identity(x, y) -> str:
    """What a split holds: a source's own `identity` (images read on the fly), or the hash of
    the input tensor and the labels."""
    ident = getattr(x, "identity", None)
    return tensor_hash(torch.as_tensor(y)) + ":" + (ident or tensor_hash(x))


def row_fingerprint(prov: dict) -> str:
    return content_hash([json.dumps(prov, sort_keys=True)])


def stale_reason(old: dict, new: dict) -> str:
    """Which recorded input differs between two provenance records (for the user)."""
    if not old:
        return "it records no provenance (made by an older dnnlab)"
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    names = {"weights": "other weights", "data": "other data", "n": "another sample count"}
    return ", ".join(names.get(k, f"another {k}") for k in diff) or "nothing"
