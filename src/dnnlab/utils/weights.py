"""Loading a state dict into a model, with a mismatch named by its first offending key."""

from __future__ import annotations


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
