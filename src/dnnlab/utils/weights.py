"""Loading a state dict into a model, with a mismatch named by its first offending key, and
the values of weights from outside checked before they are loaded."""

from __future__ import annotations

import torch


def load_fitting(
    model,
    state: dict,
    where: str,
    error=ValueError,
    source="the file",
    why="these weights do not fit this model",
) -> None:
    """model.load_state_dict(state), but a missing, misshapen or extra key raises `error`
    naming `where`, the key and both shapes, and `why` it matters."""
    own = model.state_dict()
    for k, v in own.items():
        if k not in state:
            raise error(
                f"{where}: {source} lacks {k!r} {tuple(v.shape)}, which the model has; {why}"
            )
        if tuple(state[k].shape) != tuple(v.shape):
            raise error(
                f"{where}: {k!r} is {tuple(state[k].shape)} in {source} but "
                f"{tuple(v.shape)} in the model; {why}"
            )
    extra = [k for k in state if k not in own]
    if extra:
        raise error(f"{where}: {source} has {extra[0]!r}, which the model lacks; {why}")
    model.load_state_dict(state)


def check_weight_values(model, state: dict, where: str, error=ValueError) -> None:
    """Raise `error` naming `where` and the first offending entry of `state` (weights from a
    file, for `model`) that load_state_dict would load as something they are not: a meta
    tensor (a shape without values); a quantized, complex or integer tensor for a
    floating-point parameter, or a floating-point one for an integer buffer (it would be
    cast silently, and the network measured with other weights than the file's); NaN or
    infinite values (every output would be NaN, or no detection at all)."""
    own = model.state_dict()
    for k, v in state.items():
        if not isinstance(v, torch.Tensor) or k not in own:
            continue  # load_fitting names keys the model lacks
        if v.is_meta:
            raise error(
                f"{where}: {k!r} is a meta tensor (a shape without values): the file holds no "
                "weights for it; save the weights after they were materialized"
            )
        mine = own[k]
        real = not (v.is_quantized or v.is_complex())
        if not real or v.is_floating_point() != mine.is_floating_point():
            raise error(
                f"{where}: {k!r} is {v.dtype} in the file but {mine.dtype} in the model; "
                "dnnlab does not cast weights of another kind (quantized, complex or integer "
                "values would be measured as other weights): save them as floating point"
            )
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise error(
                f"{where}: {k!r} holds {bad} non-finite value(s) (NaN or infinity) of "
                f"{v.numel()}; such weights give NaN outputs: use weights saved before the "
                "training diverged"
            )
