"""Any model for the probe: a network from a name (torchvision:NAME, timm:NAME) or a user
factory (module.path:function, path/to/file.py:function), its weights from a file, and the
input it expects.

torchvision and timm models are built with random weights: nothing is downloaded, and
--weights loads a file (.safetensors or PyTorch, read as plain data). timm is the optional
extra `dnnlab[timm]`, imported only when a timm: spec is given.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
from pathlib import Path

import torch
import torchvision
from torch import nn

from dnnlab.errors import InputError
from dnnlab.utils.paths import check_in_file
from dnnlab.utils.safe_load import load_error_reason, load_plain, without_unsafe_advice
from dnnlab.utils.weights import check_weight_values, load_fitting

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _constructor_args(spec: str, args: list[str]) -> dict:
    """'k=v,k2=v2' parts after NAME -> {k: literal v}; errors name the spec."""
    kwargs = {}
    for a in ",".join(args).split(","):
        if not a.strip():
            continue
        if "=" not in a:
            raise InputError(f"--model {spec!r}: constructor argument {a!r} is not k=v")
        k, v = a.split("=", 1)
        kwargs[k.strip()] = _value(v.strip())
    return kwargs


def _unknown_name(spec: str, library: str, name: str, known: list[str]) -> InputError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return InputError(f"--model {spec!r}: {library} has no model {name!r}{hint}")


def _torchvision_model(spec: str) -> nn.Module:
    name, *args = spec[len("torchvision:") :].split(":")
    kwargs = _constructor_args(spec, args)
    known = torchvision.models.list_models()
    if name not in known:
        raise _unknown_name(spec, "torchvision", name, known)
    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except Exception as e:  # arguments the constructor rejects, in whatever way it does
        raise _rejected(spec, e) from None


def _timm():
    """The timm module, or an error naming the extra that installs it."""
    # Here, not at the top: timm is an optional extra (dnnlab[timm]), and it would add
    # 0.4-0.5 s to this module's import for every model, not only the `timm:` ones
    # (benchmarks/lazy_imports.py, docs/RESULTS.md §9).
    try:
        import timm
    except ImportError:
        raise InputError(
            "--model timm:...: timm is not installed; install it with "
            "pip install 'dnnlab[timm]' (or pip install timm)"
        ) from None
    return timm


def _timm_model(spec: str) -> nn.Module:
    """timm:NAME[.TAG][:k=v,...] with random weights (pretrained=False: nothing is
    downloaded; --weights loads a file)."""
    timm = _timm()
    name, *args = spec[len("timm:") :].split(":")
    kwargs = _constructor_args(spec, args)
    if "pretrained" in kwargs:
        raise InputError(
            f"--model {spec!r}: nothing is downloaded here; drop pretrained= and pass the "
            "weights file with --weights"
        )
    if "checkpoint_path" in kwargs:  # timm would read the file itself, not as plain data
        raise InputError(
            f"--model {spec!r}: checkpoint_path= has timm read the file itself; drop it and "
            "pass the file with --weights, which reads it as plain data"
        )
    known = timm.list_models()
    if name.split(".")[0] not in known:
        raise _unknown_name(spec, "timm", name, known)
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as e:  # arguments the constructor rejects, in whatever way it does
        raise _rejected(spec, e) from None


def _rejected(spec: str, e: Exception) -> InputError:
    """The library's refusal of a model's constructor arguments, in one line (an assert
    without a message names its type only), never its advice to load unsafely."""
    text = without_unsafe_advice(str(e)) if str(e).strip() else "no reason given"
    return InputError(f"--model {spec!r}: the library rejects it ({type(e).__name__}: {text})")


def model_from_spec(spec: str) -> nn.Module:
    """An nn.Module from SPEC (see the module docstring); errors name the spec."""
    if spec.startswith("torchvision:"):
        return _torchvision_model(spec)
    if spec.startswith("timm:"):
        return _timm_model(spec)
    if ":" not in spec:
        raise InputError(
            f"--model {spec!r}: expected torchvision:NAME, timm:NAME or module.path:function"
        )
    where, func = spec.rsplit(":", 1)
    try:
        if where.endswith(".py") or Path(where).is_file():
            path = Path(where)
            if not path.is_file():
                raise InputError(f"--model {spec!r}: no file {where}")
            mspec = importlib.util.spec_from_file_location(f"_dnnlab_user_{path.stem}", path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except InputError:
        raise
    except Exception as e:  # the user's code may fail in any way while importing
        raise InputError(
            f"--model {spec!r}: cannot import {where} ({type(e).__name__}: {e})"
        ) from None
    factory = getattr(module, func, None)
    if not callable(factory):
        raise InputError(f"--model {spec!r}: {where} has no function {func!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise InputError(
            f"--model {spec!r}: {func}() returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def load_state(path: str, key: str | None) -> dict:
    """The state dict in a weights file: a .safetensors or torch file, told apart by content
    and read as plain data (utils.safe_load.load_plain). key: the entry holding the state
    dict (torch files: {"model": {...}}), or the prefix of its names in a flat file
    ("model" takes "model.conv1.weight" as "conv1.weight")."""
    p = check_in_file(path, "--weights")
    try:
        obj = load_plain(p)
    except Exception as e:  # pickle, zip, safetensors and torch errors: not plain weights
        raise InputError(
            f"--weights {path}: cannot be read as plain weights ({load_error_reason(e)})"
        ) from None
    if key is not None:
        obj = _select(obj, key, path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        cands = [k for k, v in obj.items() if isinstance(v, dict)] if isinstance(obj, dict) else []
        hint = f"; name one with --weights-key ({', '.join(map(str, cands))})" if cands else ""
        raise InputError(f"--weights {path}: does not hold a state dict (name -> tensor){hint}")
    return obj


def _select(obj, key: str, path: str) -> dict:
    """obj[key], or the entries named KEY.rest as rest; errors list what the file holds."""
    if isinstance(obj, dict) and key in obj:
        return obj[key]
    prefix = key + "."
    if isinstance(obj, dict):
        sub = {k[len(prefix) :]: v for k, v in obj.items() if str(k).startswith(prefix)}
        if sub:
            return sub
    keys = sorted({str(k).split(".")[0] for k in obj}) if isinstance(obj, dict) else []
    raise InputError(f"--weights-key {key!r}: not in {path} (keys or prefixes: {keys[:20]})")


def fit_weights(model: nn.Module, state: dict, where: str) -> None:
    """load_state_dict, but a mismatch names the first offending key and both shapes, and
    meta, quantized, complex, integer or non-finite weights are refused by name first."""
    check_weight_values(model, state, where, InputError)
    load_fitting(model, state, where, InputError)


def input_defaults(spec: str, model: nn.Module):
    """(image size or None, mean, std) a model expects when the flags do not say: ImageNet's
    at 224 for torchvision models, timm's data config (input size, mean, std) for timm
    models, else 0.5 and the images' own size."""
    if spec.startswith("torchvision:"):
        return 224, IMAGENET_MEAN, IMAGENET_STD
    if spec.startswith("timm:"):
        conf = _timm().data.resolve_data_config(model=model)
        return int(conf["input_size"][-1]), tuple(conf["mean"]), tuple(conf["std"])
    return None, (0.5,) * 3, (0.5,) * 3


def check_size(model: nn.Module, size: int, spec: str) -> None:
    """One forward pass of one blank image: an image size the network cannot take is named."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except RuntimeError as e:
        msg = str(e).splitlines()[0]
        raise InputError(
            f"--image-size {size}: too small (or wrong) for {spec}: a forward pass fails ({msg})"
        ) from None
