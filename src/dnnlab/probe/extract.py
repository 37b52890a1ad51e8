"""Forward extraction: a group's layer outputs taken by hooks during forward passes, cut
short after its last layer, or started from a stored output of the layer before it."""

from __future__ import annotations

import numpy as np
import torch

from dnnlab.probe.layers import pick_tensor


class _StopForward(Exception):
    """Raised by the hook of a group's last layer: nothing after it is needed."""


@torch.no_grad()
def extract_group(
    model, x, group, batch_size, device, input_fn, output_key, store, start=None, progress=None
):
    """Forward passes over x, cut short after the group's last layer (in execution order);
    fill store[name] (N x dim) for each layer of the group.

    start: (modules, boundary, shape): run only `modules` in turn on the stored output
    `boundary` (N x prod(shape)) of the module before them, instead of the whole model.
    """
    modules = dict(model.named_modules())
    pos = {"start": 0}
    hooks = []
    last = group[-1].name
    for info in group:

        def hook(_m, _i, out, name=info.name):
            if name in pos["seen"]:
                return  # a module called twice in one pass is probed at its first call
            pos["seen"].add(name)
            t, _ = pick_tensor(out, output_key)
            s = pos["start"]
            dst = torch.from_numpy(store[name][s : s + t.shape[0]])  # torch copies in threads
            dst.copy_(t.detach().reshape(t.shape[0], -1))
            if name == last:
                raise _StopForward

        hooks.append(modules[info.name].register_forward_hook(hook))
    n = len(x)
    try:
        for s in range(0, n, batch_size):
            pos["start"], pos["seen"] = s, set()
            try:
                if start is None:
                    model(input_fn(x[s : s + batch_size].to(device)))
                else:
                    mods, boundary, shape = start
                    h = torch.from_numpy(np.asarray(boundary[s : s + batch_size]))
                    h = h.reshape(-1, *shape).to(device)
                    for m in mods:
                        h = m(h)
            except _StopForward:
                pass
            if progress is not None:
                progress(min(batch_size, n - s))
    finally:
        for h in hooks:
            h.remove()
