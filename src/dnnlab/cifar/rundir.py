"""A training run directory: its records, what a call will do with it, and its lifecycle.

What a run records (config.json): every TrainConfig setting, plus `data_identity` (the
content hash of the CIFAR-10 tensors it was trained on, see data.py) and `data_source` (the
resolved path they were read from, for people). Checkpoints (best.pt, last.pt) hold plain
data only and are read with `torch.load(weights_only=True)`: a file that needs more is
refused, so opening a checkpoint cannot run code. A checkpoint is checked against the
config.json of the run it sits in, and split.json and metrics.json as they are read.

What a call will do (plan_run), decided before any file is touched: the directory's state
against the request (new, resumed, extended, replaced, or finished already), with the
settings a resumed run keeps (check_resumed_settings) and the checkpoint it resumes from.

The lifecycle: config.json and split.json written once every input is checked
(prepare_run_dir), a resumed run's completed rows kept (resumed_rows), and a run that
--overwrite replaces moved aside to `.OUT.PID.old` and put back if the new run stops before
its first epoch is saved (put_back_on_failure, put_back, recover_replaced).

These are the library under `dnnlab train` (train.py), which calls them in order; they
assume the settings themselves were checked (TrainConfig).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from dnnlab.cifar.config import RESUMABLE_CHANGES, TrainConfig, run_name
from dnnlab.cifar.data import make_split
from dnnlab.cifar.models import VARIANTS, build_model
from dnnlab.errors import ConfigError, DnnlabError
from dnnlab.settings import flag_name, given_as
from dnnlab.utils.atomic import (
    atomic_write_json,
    atomic_write_text,
    pid_alive,
    remove_stale_temporaries,
)
from dnnlab.utils.lock import folder_lock
from dnnlab.utils.outputs import MARKER, mark, remove_ours
from dnnlab.utils.records import read_json
from dnnlab.utils.safe_load import load_error_reason, load_plain
from dnnlab.utils.weights import load_fitting


class RunError(DnnlabError, RuntimeError):
    """The run directory cannot be used as asked (finished, other settings, other data,
    or a damaged file)."""


def read_run_config(run_dir) -> TrainConfig:
    """A run's config.json as a TrainConfig; a damaged or invalid one is a RunError naming it."""
    f = Path(run_dir) / "config.json"
    d = read_json(f, ("model",), RunError)
    try:
        return TrainConfig.from_dict(d)
    except (ConfigError, TypeError) as e:
        raise RunError(f"{f}: not a valid run configuration ({e})") from None


def load_checkpoint(path, map_location="cpu") -> dict:
    """best.pt / last.pt as plain data, never unpickling arbitrary objects."""
    path = Path(path)
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


def load_weights(model, state: dict, where: str) -> None:
    """load_state_dict, but a mismatch names the first offending key and both shapes."""
    if not isinstance(state, dict):
        raise RunError(f"{where}: the checkpoint's model entry is not a state dict")
    load_fitting(
        model, state, where, RunError, "the checkpoint", "it was saved from another architecture"
    )


def load_model_checkpoint(path, model_name: str | None = None, map_location="cpu", run=None):
    """Load best.pt/last.pt into a fresh model; a checkpoint of another model is an error,
    and so (with `run`, its run directory) one that run's config.json does not record."""
    ckpt = load_checkpoint(path, map_location)
    if run is not None:
        check_checkpoint_record(ckpt, Path(run), Path(path))
    arch = ckpt.get("arch")
    if arch not in VARIANTS:
        raise RunError(f"{path}: checkpoint of unknown model {arch!r}")
    if model_name is not None and arch != model_name:
        raise RunError(f"{path}: checkpoint is of model {arch!r}, not {model_name!r}")
    model = build_model(arch, softmax_head=ckpt.get("softmax_head", False))
    load_weights(model, ckpt["model"], f"{path} (model {arch!r})")
    return model, ckpt


def _comparable(v):
    """A setting's value as JSON has it (tuples as lists), so that records compare."""
    return json.loads(json.dumps(v))


def check_checkpoint_record(ck: dict, out: Path, path: Path) -> None:
    """Raise RunError unless the checkpoint at `path` was saved by the run that out's
    config.json records: every setting its own config holds (those a resume may change
    aside) equal to config.json's. A checkpoint of another run (another seed: another
    split) or a hand-edited config.json is named, never trained on or measured."""
    saved = ck.get("config")
    if not isinstance(saved, dict):
        raise RunError(f"{path}: records no config, so its run cannot be checked")
    record = read_json(out / "config.json", (), RunError)
    diffs = [
        f"{f.name} {_comparable(record.get(f.name))!r} in config.json, "
        f"{_comparable(saved[f.name])!r} in {path.name}"
        for f in fields(TrainConfig)
        if f.name not in RESUMABLE_CHANGES
        and f.name in saved
        and _comparable(record.get(f.name)) != _comparable(saved[f.name])
    ]
    if diffs:
        raise RunError(
            f"{path} was not saved by the run {out / 'config.json'} records: "
            f"{'; '.join(diffs[:3])}. Either file was edited or copied from another run: "
            "restore config.json (or the checkpoint), or train the run again"
        )


def data_record(data) -> dict:
    """What config.json records about the data a run was trained on."""
    return {"data_identity": data.identity, "data_source": data.source}


def check_run_data(run_dir, data) -> None:
    """Raise RunError unless `data` (a Cifar10) has the content run_dir was trained on.

    Call it wherever a run's split indices or weights meet data again (resume, probe,
    study), so indices are never applied to other images."""
    run_dir = Path(run_dir)
    cfg = read_json(run_dir / "config.json", (), RunError)
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


def read_split(out: Path, data, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A run's split.json, checked: lists of indices into data's training images, and the
    split the run's seed, --val-size and --train-subset draw (data.make_split): a split.json
    copied from another run or edited is named, never trained on or measured."""
    f = out / "split.json"
    n_train = data.train_y.numel()
    s = read_json(f, ("train", "val"), RunError)
    try:
        tr = torch.tensor(s["train"], dtype=torch.long)
        va = torch.tensor(s["val"], dtype=torch.long)
    except (TypeError, ValueError, RuntimeError) as e:
        raise RunError(f"{f}: the indices are not lists of integers ({e})") from None
    for name, idx in (("train", tr), ("val", va)):
        if idx.ndim != 1 or idx.numel() == 0 or idx.min() < 0 or idx.max() >= n_train:
            raise RunError(f"{f}: the {name} indices are not positions among {n_train} images")
        if idx.unique().numel() != idx.numel():
            raise RunError(f"{f}: the {name} indices repeat an image; the file was edited")
    both = tr[torch.isin(tr, va)]
    if both.numel():
        raise RunError(
            f"{f}: {both.numel()} image(s) are in both train and val (e.g. index "
            f"{int(both[0])}), so val would measure images the weights were trained on; "
            "the file was edited: restore it, or train the run again"
        )
    want_tr, want_va = make_split(data, cfg.n_val, cfg.train_subset, cfg.seed)
    if not (torch.equal(tr, want_tr) and torch.equal(va, want_va)):
        raise RunError(
            f"{f}: not the split that seed {cfg.seed}, val size {cfg.n_val} and train subset "
            f"{cfg.train_subset} draw ({tr.numel()} train and {va.numel()} val indices, "
            f"{want_tr.numel()} and {want_va.numel()} drawn); the file was edited or copied "
            "from another run: restore it, or train the run again"
        )
    return tr, va


def check_nothing_lost(out: Path) -> None:
    """A run resumed without last.pt starts from epoch 1: refused when the run has done
    more (best.pt, or epochs in metrics.json), which starting over would overwrite."""
    rows = (
        read_json(out / "metrics.json", error=RunError) if (out / "metrics.json").exists() else []
    )
    done = len(rows) if isinstance(rows, list) else 0
    if (out / "best.pt").exists() or done:
        raise RunError(
            f"{out / 'last.pt'}: missing, but the run has "
            f"{f'{done} epoch(s) in metrics.json' if done else 'a best.pt'}; resuming would "
            "start again from epoch 1 and replace them. Restore last.pt, or use --overwrite "
            "(or another --out) for a new run"
        )


METRIC_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")


def write_metrics(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_KEYS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "metrics.csv", buf.getvalue())
    atomic_write_json(out / "metrics.json", rows)


def resumed_rows(out: Path, ck: dict | None) -> list[dict]:
    """The metrics rows of the epochs last.pt completed (none for a new run)."""
    if ck is None:
        return []
    f = out / "metrics.json"
    rows = read_json(f, error=RunError)
    if not isinstance(rows, list) or len(rows) < ck["epoch"]:
        raise RunError(f"{f}: holds fewer epochs than last.pt's {ck['epoch']}; the run is damaged")
    rows = rows[: ck["epoch"]]
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or set(r) != set(METRIC_KEYS) or r["epoch"] != i + 1:
            raise RunError(f"{f}: row {i + 1} is not epoch {i + 1}'s metrics; the file was edited")
    # The best epoch's validation accuracy is in both: a metrics.json of another run differs.
    try:
        best = int(ck["best_epoch"])
    except (KeyError, TypeError, ValueError):
        raise RunError(f"{out / 'last.pt'}: damaged checkpoint (no best epoch)") from None
    if 1 <= best <= len(rows) and rows[best - 1]["val_acc"] != ck["best_val_acc"]:
        raise RunError(
            f"{f}: epoch {best}'s val_acc is {rows[best - 1]['val_acc']}, but last.pt records "
            f"{ck['best_val_acc']} for its best epoch {best}; the file was edited or copied from "
            "another run: restore it, or train the run again"
        )
    return rows


@dataclass
class RunPlan:
    """What train() will do with the run directory, decided before any file is touched."""

    resume_from: dict | None = None  # last.pt's content
    best_from: dict | None = None  # best.pt's content, when a resumed run has one
    saved: dict | None = None  # the run's config.json
    replace: bool = False  # move the old run aside (--overwrite)
    extend: bool = False  # a finished run continued to more epochs


def _settings_changed(saved: TrainConfig, cfg: TrainConfig, names=None) -> list[str]:
    """'--flag NEW (the run has OLD)' for each setting a resumed run cannot take over (of
    `names` only, when given); a switch as 'NAME on (with/without --FLAG; the run was
    with/without --FLAG)'."""
    out = []
    for f in fields(TrainConfig):
        if f.name in RESUMABLE_CHANGES or (names is not None and f.name not in names):
            continue
        a, b = getattr(saved, f.name), getattr(cfg, f.name)
        if a != b and isinstance(a, bool):  # a switch: named by the flag that sets it
            state = "on" if b else "off"
            out.append(f"{f.name} {state} ({given_as(f, b)}; the run was {given_as(f, a)})")
        elif a != b and a is None:  # unset in the run: e.g. --train-subset (all images)
            out.append(f"{flag_name(f)} {b} (the run was without {flag_name(f)})")
        elif a != b:
            out.append(f"{flag_name(f)} {b} (the run has {a})")
    return out


def plan_run(cfg: TrainConfig, out: Path, resume: bool, overwrite: bool, dev) -> RunPlan | dict:
    """Check the run directory against the request; returns a plan, or the finished
    run's summary when there is nothing to do. Raises RunError before touching anything."""
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is not a directory")
    has = out.is_dir() and any(p.name != MARKER for p in out.iterdir())  # the gate's marker
    cfg_file = out / "config.json"
    if not has:
        return RunPlan()
    if not cfg_file.exists():
        raise RunError(
            f"{out} is not empty and holds no config.json, so it is not a dnnlab run "
            "directory; choose another --out"
        )
    if overwrite and not resume:
        return RunPlan(replace=True)  # a damaged run can be replaced too
    saved = read_run_config(out)
    saved_d = read_json(cfg_file, (), RunError)
    done = out / "summary.json"
    if not resume:
        if done.exists():
            raise RunError(
                f"{out} holds a finished run; pass --overwrite to replace it, or choose "
                "another --out"
            )
        raise RunError(
            f"{out} is not empty: pass --resume to continue that run, or --overwrite to start again"
        )
    check_resumed_settings(out, saved, cfg)
    ck, completed = _resume_point(cfg, out, saved, dev)
    best, best_path = None, out / "best.pt"
    if ck is not None and best_path.exists():
        best = load_checkpoint(best_path, dev)
        check_checkpoint_record(best, out, best_path)
    plan = RunPlan(resume_from=ck, best_from=best, saved=saved_d)
    if done.exists():
        summary = read_json(done, ("epochs",), RunError)
        if summary["epochs"] == cfg.epochs and completed == cfg.epochs:
            return summary
        plan.extend = True  # honoured: more epochs continue the finished run
    return plan


def check_resumed_settings(out: Path, saved: TrainConfig, cfg: TrainConfig, given=None) -> None:
    """Refuse a resumed run asked to change a setting it keeps. given: the names of the
    settings the user gave (dnnlab train's flags); only they are compared and named, and
    before the run's own settings are merged with them (`train.requested_config`):
    merged first, a recipe check named the run's settings as if given ('--batch-size 64:
    contradicts --recipe budget' for `--resume --recipe budget`). Without `given` (train()
    called with a whole config) every setting is compared."""
    if (given is None or "model" in given) and saved.model != cfg.model:
        raise RunError(f"{out} is a run of {saved.model!r}, not {cfg.model!r}")
    changed = _settings_changed(saved, cfg, given)
    if changed:
        raise RunError(
            f"{out}: a resumed run keeps its settings, but {'; '.join(changed)}. Resume "
            "without them, or use --overwrite or another --out"
        )


def _resume_point(cfg: TrainConfig, out: Path, saved: TrainConfig, dev) -> tuple[dict | None, int]:
    """(last.pt's content or None, the epochs it completed) of a run to resume: the
    checkpoint checked against the run's record, the epochs asked against the run's."""
    last = out / "last.pt"
    ck = load_checkpoint(last, dev) if last.exists() else None
    if ck is not None:
        check_checkpoint_record(ck, out, last)
    else:
        check_nothing_lost(out)
    try:
        completed = int(ck["epoch"]) if ck else 0
    except (KeyError, TypeError, ValueError):
        raise RunError(f"{last}: damaged checkpoint (no epoch number)") from None
    if cfg.schedule != "step" and cfg.epochs != saved.epochs:
        raise RunError(
            f"--epochs {cfg.epochs}: {out} was started for {saved.epochs} epochs, and its "
            f"{cfg.schedule} schedule decays the learning rate to zero over exactly those; "
            "resuming with another count would change the run. Use --overwrite (or another "
            "--out) for a new run"
        )
    if cfg.epochs < completed:
        raise RunError(
            f"--epochs {cfg.epochs}: {out} has already completed {completed} epochs; a run "
            "cannot be shortened"
        )
    return ck, completed


def prepare_run_dir(
    cfg: TrainConfig, out: Path, plan: RunPlan, data, idx: dict, old: Path, precision: tuple
):
    """Move a replaced run aside to `old`, reopen a finished one, and write config.json and
    (for a new run) split.json {train, val: indices}."""
    if plan.replace:
        out.rename(old)
        print(
            f"[{run_name(cfg.model, cfg.seed)}] the run being replaced is kept in {old} until "
            "the new run's first epoch is saved",
            flush=True,
        )
    if plan.extend:
        remove_ours(out / "summary.json", "train", within=out)
    mark(out, "train")
    record = {**asdict(cfg), "precision": precision[0], "precision_reason": precision[1]}
    if plan.saved is not None:  # the run keeps the data root it was trained from
        record["data_root"] = plan.saved.get("data_root")
    atomic_write_json(out / "config.json", {**record, **data_record(data)})
    if not (out / "split.json").exists():
        split_record = {"train": idx["train"].tolist(), "val": idx["val"].tolist()}
        atomic_write_json(out / "split.json", split_record)


@contextmanager
def put_back_on_failure(old: Path, out: Path, replacing: bool) -> Iterator[None]:
    """While `replacing` (an --overwrite, on rank 0): whatever stops the block (an error,
    Ctrl-C) before the new run's first epoch is saved puts the replaced run back."""
    try:
        yield
    except BaseException as e:
        if replacing and put_back(old, out) and isinstance(e, KeyboardInterrupt):
            # What to do next is no longer --resume (that continues the run put back).
            e.add_note("run it again with --overwrite to replace that run")
        raise


def put_back(old: Path, out: Path) -> bool:
    """An --overwrite stopped before its new run saved an epoch: the replaced run, kept in
    `old`, goes back into `out` (the new run has no epoch to lose), and the user is told.
    Returns whether it was put back."""
    if not old.is_dir():
        return False  # already deleted: the new run has its first epoch
    if (out / "last.pt").exists():  # the new run has an epoch: old's deletion was cut short
        remove_ours(old, "train")
        return False
    # The new run, which has no epoch. A kill just after the old run was moved aside can
    # leave it holding only the marker's temporary (not yet the marker): ours, with no
    # marker to prove it, so it goes by the writer's pid.
    remove_stale_temporaries(out)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    elif out.exists():
        remove_ours(out, "train")
    old.rename(out)
    print(
        f"dnnlab train: an --overwrite stopped before its new run's first epoch was saved: "
        f"the run it was replacing is back in {out}",
        file=sys.stderr,
        flush=True,
    )
    return True


def left_replaced(out) -> list[Path]:
    """The `.OUT.PID.old` folders that a killed `train --overwrite` of `out` left (their
    process gone: nothing else will ever delete or restore them)."""
    out = Path(out)
    found = []
    for old in sorted(out.parent.glob(f".{out.name}.*.old")):
        pid = old.name[len(out.name) + 2 : -len(".old")]
        if old.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            found.append(old)
    return found


def put_back_left_replaced(out) -> None:
    """recover_replaced under the run's lock, by one process (rank 0 of a torchrun job):
    called before anything reads or judges the run directory (its settings, the write
    gate), which a killed --overwrite may have left half made."""
    if os.environ.get("RANK", "0") == "0" and left_replaced(out):
        with folder_lock(out):
            recover_replaced(out)


def recover_replaced(out) -> None:
    """Put back each replaced run a killed `train --overwrite` left. Called under the run's
    lock, so no live process is replacing it."""
    for old in left_replaced(out):
        put_back(old, Path(out))
