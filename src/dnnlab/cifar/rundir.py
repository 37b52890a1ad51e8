"""A training run directory's records: reading them safely and tying a run to its data.

What a run records (config.json): every TrainConfig setting, plus `data_identity` (the
content hash of the CIFAR-10 tensors it was trained on, see data.py) and `data_source` (the
resolved path they were read from, for people). Checkpoints (best.pt, last.pt) hold plain
data only and are read with `torch.load(weights_only=True)`: a file that needs more is
refused, so opening a checkpoint cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path

from dnnlab.errors import DnnlabError


class RunError(DnnlabError, RuntimeError):
    """The run directory cannot be used as asked (finished, other settings, other data,
    or a damaged file)."""


def read_json(path) -> object:
    """A run's JSON record; a missing, unreadable or malformed file is a RunError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))  # an editor's byte-order mark
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: unreadable or not valid JSON ({e}); the run is damaged") from None


def read_json_dict(path, keys=()) -> dict:
    """read_json for a record that must be an object holding `keys`."""
    d = read_json(path)
    if not isinstance(d, dict):
        raise RunError(f"{path}: expected a JSON object, found {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise RunError(f"{path}: lacks {missing}; the run is damaged or not a dnnlab run")
    return d


def load_checkpoint(path, map_location="cpu") -> dict:
    """best.pt / last.pt as plain data, never unpickling arbitrary objects."""
    path = Path(path)
    from dnnlab.utils.safe_load import load_error_reason, load_plain

    try:
        ck = load_plain(path, map_location=map_location)
    except FileNotFoundError:
        raise RunError(f"{path}: missing") from None
    except Exception as e:  # UnpicklingError (not plain data), EOF, zip errors: say which file
        raise RunError(
            f"{path}: not a loadable dnnlab checkpoint of plain data ({load_error_reason(e)})"
        ) from None
    if not isinstance(ck, dict) or "model" not in ck:
        raise RunError(f"{path}: not a dnnlab checkpoint (no 'model' entry)")
    return ck


def data_record(data) -> dict:
    """What config.json records about the data a run was trained on."""
    return {"data_identity": data.identity, "data_source": data.source}


def check_run_data(run_dir, data) -> None:
    """Raise RunError unless `data` (a Cifar10) has the content run_dir was trained on.

    Call it wherever a run's split indices or weights meet data again (resume, probe,
    study), so indices are never applied to other images."""
    run_dir = Path(run_dir)
    cfg = read_json_dict(run_dir / "config.json")
    want = cfg.get("data_identity")
    if not want:
        raise RunError(
            f"{run_dir}/config.json records no data_identity, so the data it was "
            "trained on cannot be checked; train the run again"
        )
    if want != data.identity:
        raise RunError(
            f"{run_dir} was trained on other data: {cfg.get('data_source')} (identity {want}), "
            f"but {data.source} has identity {data.identity}; pass the run's data root"
        )
