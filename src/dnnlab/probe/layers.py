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
            try:
                pat = re.compile(spec[3:])
            except re.error as e:
                msg = f"--layers {spec!r}: not a valid regular expression ({e})"
                raise LayerError(msg) from None
            found = [n for n in all_names if pat.fullmatch(n)]
            if not found:
                raise LayerError(f"no module name matches {spec[3:]!r}; modules: {all_names}")
            return found
        spec = [s.strip() for s in spec.split(",") if s.strip()]
        if not spec:
            raise LayerError(f"--layers {spec!r} names no layer; give names, re:REGEX or list")
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
    if output_key is not None and not any(i.note for i in infos.values()):
        raise LayerError(
            f"--output-key {output_key!r}: every probed layer returns a plain tensor, so the "
            "key picks nothing; it is for layers that return a tuple or a dict"
        )
    return list(infos.values())  # insertion order = order of first execution


@dataclass
class Trace:
    """One small forward pass, seen from the inside."""

    layers: list[LayerInfo]  # the probed layers, in execution order
    forward_bytes_per_sample: int  # every module's output, summed: a bound on a pass's memory
    chain: list[str] | None  # top-level children in order when each feeds the next, else None
    all_layers: list[LayerInfo]  # every module that ran, in execution order (for --layers list)


def trace(model: nn.Module, x: torch.Tensor, names, output_key=None) -> Trace:
    """Run `x` (a batch of at least one) once; describe the probed layers (as describe_layers),
    every module, the memory of a pass and whether the model is a chain of its children.

    A chain: the first child receives the model's input, each next child receives exactly the
    tensor the previous one returned, and the model returns the last child's output. Then the
    probe can restart a pass from any child's stored output.
    """
    infos = describe_layers(model, x, names, output_key)
    seen: dict[str, LayerInfo] = {}
    calls: list[tuple[str, object, object]] = []  # top-level (name, input, output) in order
    children = {id(m): n for n, m in model.named_children()}
    hooks = []
    total = {"bytes": 0}
    for name, mod in model.named_modules():
        if not name:
            continue

        def hook(m, inp, out, name=name):
            t, note = pick_tensor(out)
            if t is not None:
                total["bytes"] += t[0].numel() * t.element_size()
            if name not in seen:
                seen[name] = LayerInfo(
                    name,
                    int(t[0].numel()) if t is not None else 0,
                    tuple(t.shape[1:]) if t is not None else (),
                    note,
                )
            if id(m) in children and children[id(m)] == name:
                calls.append((name, inp[0] if len(inp) == 1 else None, out))

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
    per_sample = max(1, total["bytes"] // max(1, x.shape[0]))
    chain = None
    if calls and len({c[0] for c in calls}) == len(calls) and calls[0][1] is x:
        ok = all(calls[i + 1][1] is calls[i][2] for i in range(len(calls) - 1))
        if ok and calls[-1][2] is y and isinstance(y, torch.Tensor):
            chain = [c[0] for c in calls]
    return Trace(infos, int(per_sample), chain, list(seen.values()))
