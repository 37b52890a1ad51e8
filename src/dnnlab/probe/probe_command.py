"""What `dnnlab probe` does with its flags: probe a run directory or any network (--model
with --data), list their layers (--layers list), and the follow-ups --cka-with and
--compare. The flags are parsed by dnnlab.cli; the tables are in dnnlab.probe.report."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from dnnlab.errors import InputError
from dnnlab.probe.anynet import AnyConfig, list_any, probe_any
from dnnlab.probe.cka_runs import check_same_val_images, cka_between_runs
from dnnlab.probe.compare import compare_probes
from dnnlab.probe.probe import ProbeConfig
from dnnlab.probe.report import layers_table, print_result
from dnnlab.probe.trained_run import list_run, probe_run
from dnnlab.settings import flag_name, from_args
from dnnlab.utils.lock import folder_lock
from dnnlab.utils.outputs import check_output, mark
from dnnlab.utils.paths import check_out_folder


def any_network(args) -> bool:
    """Whether the flags ask for any network (--model/--data) rather than a run directory;
    checks that exactly one of the two was given."""
    any_model = args.model is not None or args.data is not None
    if any_model and args.run:
        raise InputError("give either a run directory or --model with --data, not both")
    if not any_model and not args.run:
        raise InputError("give a run directory, or --model SPEC --data ROOT")
    if not any_model:  # --out, --weights...: --model's settings, silently ignored before
        for f in fields(AnyConfig):
            skip = f.name in ("model", "data") or not f.metadata.get("spec")
            if not skip and getattr(args, f.name, f.default) != f.default:
                raise InputError(
                    f"{flag_name(f)}: a setting of a --model probe; a run directory is "
                    "probed with its own network and data, into itself: leave it out"
                )
    check_follow_ups(args, any_model)
    return any_model


def check_follow_ups(args, any_model: bool) -> None:
    """--cka-with and --compare name folders that must exist, and hold what they are used
    for, before the probe starts: another trained run on the same validation images, and a
    probe's folder (not this probe's own: check_probe_outputs)."""
    if args.cka_with:
        if any_model:
            raise InputError("--cka-with compares two run directories; not with --model")
        for f in ("config.json", "best.pt", "split.json"):
            if not (Path(args.cka_with) / f).is_file():
                raise InputError(f"--cka-with: {args.cka_with} has no {f}; is it a trained run?")
        if Path(args.cka_with).resolve() == Path(args.run).resolve():
            raise InputError(f"--cka-with {args.cka_with}: the run itself; give another run")
        check_same_val_images(args.run, args.cka_with, args.max_per_split)
    if args.compare and not (Path(args.compare) / "probe.json").is_file():
        raise InputError(f"--compare {args.compare}: no probe.json there")


def is_listing(layers: str | None) -> bool:
    """--layers list: print the model's layers instead of probing them."""
    return layers is not None and layers.strip() == "list"


def any_config(args, listing: bool):
    """The AnyConfig of --model, --data and the flags generated from its fields (a listing
    needs no --data)."""
    if args.model is None or (args.data is None and not listing):
        raise InputError("--model and --data go together")
    return from_args(AnyConfig, args, model=args.model, data=args.data or "")


def list_layers(run, acfg) -> list:
    """Every layer of the run's model, or of acfg's model when acfg is given."""
    if acfg is not None:
        return list_any(acfg)
    return list_run(run)


def output_folder(args, acfg) -> tuple[Path, str, str]:
    """(the folder the probe writes, the flag that names it, its kind for the write gate):
    --out of any network, else the run directory itself."""
    if acfg is not None:
        return Path(acfg.out).expanduser(), "--out", "probe"
    return Path(args.run).expanduser(), "RUN", "train"


def check_probe_outputs(args, acfg, spill_dir=None) -> None:
    """The write gate (utils/outputs.py) on the output folder: one of dnnlab's (a run
    directory, or a new, empty or earlier --out) that writes over no input: --data,
    --weights, or the probe that --compare reads (the run directory is the probe's own
    folder by design); and a --spill-dir that cannot be a folder."""
    out, flag, kind = output_folder(args, acfg)
    if args.compare and Path(args.compare).resolve() == out.resolve():
        raise InputError(
            f"--compare {args.compare}: the folder this probe writes; give another probe's folder"
        )
    inputs = [args.compare] + ([acfg.data, acfg.weights] if acfg is not None else [])
    check_output(out, flag, kind, inputs=inputs)
    check_out_folder(spill_dir, "--spill-dir")


def probe(args, cfg, acfg, progress: bool):
    """(ProbeResult, output folder) of probing acfg's network, or else the run in args.run;
    its output folder checked against the inputs and locked while the probe writes it."""
    check_probe_outputs(args, acfg, cfg.spill_dir)
    out, flag, kind = output_folder(args, acfg)
    with folder_lock(out, flag):
        if acfg is not None:
            mark(out, kind)
            res, out, _ = probe_any(acfg, cfg, args.overwrite, progress)
            return res, out
        res = probe_run(args.run, cfg, args.data_root, args.overwrite, progress=progress)
        return res, out


def follow_ups(args, cfg, out: Path) -> Iterator[str]:
    """Run --cka-with and --compare after the probe, yielding a "wrote ..." line per file."""
    if args.cka_with:
        path = cka_between_runs(args.run, args.cka_with, cfg, "val", args.data_root)
        yield f"wrote {path} and {path.with_suffix('.png').name}"
    if args.compare:
        for path in compare_probes(out, Path(args.compare)):
            yield f"wrote {path}"


__all__ = ["any_config", "any_network", "follow_ups", "is_listing", "list_layers", "probe"]


def main(args) -> int:
    """`dnnlab probe`, from its parsed flags: list the layers (--layers list), or probe and
    print the table, then the follow-ups."""
    any_model = any_network(args)
    listing = is_listing(args.layers)
    cfg = from_args(ProbeConfig, args, layers=None if listing else args.layers)
    acfg = any_config(args, listing) if any_model else None
    if listing:
        print(layers_table(list_layers(args.run, acfg)))
        return 0
    res, out = probe(args, cfg, acfg, progress=sys.stderr.isatty())
    print_result(res, out)
    for line in follow_ups(args, cfg, out):
        print(line)
    return 0
