"""Which modules to probe, in the order they execute, and what their outputs look like."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from dnnlab.errors import InputError


class LayerError(InputError):
    """A layer that does not exist, or whose output holds no tensor."""


@dataclass
class LayerInfo:
    name: str
    dim: int  # features per sample, flattened
    shape: tuple[int, ...]  # per-sample output shape
    note: str = ""  # how a tuple/dict output was reduced to one tensor


def pick_tensor(output, key=None) -> tuple[torch.Tensor | None, str]:
    """The tensor to probe from a module's output: itself, the first tensor, or output[key]."""
    if isinstance(output, torch.Tensor):
        return output, ""
    if isinstance(output, dict):
        if key is not None:
            if key not in output:
                return None, f"no key {key!r} in its dict output (keys: {sorted(output)})"
            return (output[key] if isinstance(output[key], torch.Tensor) else None), f"key {key!r}"
        for k, v in output.items():
            if isinstance(v, torch.Tensor):
                return v, f"first tensor of its dict output (key {k!r})"
        return None, "its dict output holds no tensor"
    if isinstance(output, (tuple, list)):
        if key is not None:
            try:
                v = output[int(key)]
            except (ValueError, IndexError):
                return None, f"no item {key!r} in its {type(output).__name__} output"
            return (v if isinstance(v, torch.Tensor) else None), f"item {key}"
        for i, v in enumerate(output):
            if isinstance(v, torch.Tensor):
                return v, f"first tensor of its {type(output).__name__} output (item {i})"
        return None, f"its {type(output).__name__} output holds no tensor"
    return None, f"its output is a {type(output).__name__}"


def resolve_layers(model: nn.Module, spec=None) -> list[str]:
    """None -> top-level children; a list of dotted names; or 're:PATTERN' over all modules."""
    all_names = [n for n, _ in model.named_modules() if n]
    if spec is None or spec == [] or spec == "":
        return [n for n, _ in model.named_children()]
    if isinstance(spec, str):
        if spec.startswith("re:"):
            pat = re.compile(spec[3:])
            found = [n for n in all_names if pat.fullmatch(n)]
            if not found:
                raise LayerError(f"no module name matches {spec[3:]!r}; modules: {all_names}")
            return found
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in spec if s not in all_names]
    if unknown:
        raise LayerError(f"no layer named {unknown}; valid layers: {all_names}")
    return list(spec)


def describe_layers(model, x, names, output_key=None) -> list[LayerInfo]:
    """Run one batch; record each layer's per-sample output shape, in execution order."""
    modules = dict(model.named_modules())
    infos: dict[str, LayerInfo] = {}
    errors: list[str] = []
    hooks = []
    for n in names:
        def hook(_m, _i, out, n=n):
            if n in infos:
                return
            t, note = pick_tensor(out, output_key)
            if t is None:
                errors.append(f"layer {n!r} has no tensor output to probe: {note}")
                infos[n] = LayerInfo(n, 0, (), note)
                return
            infos[n] = LayerInfo(n, int(t[0].numel()), tuple(t.shape[1:]), note)

        hooks.append(modules[n].register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if errors:
        raise LayerError("; ".join(errors))
    missing = [n for n in names if n not in infos]
    if missing:
        raise LayerError(f"layers never ran in a forward pass: {missing}")
    return list(infos.values())  # insertion order = order of first execution
