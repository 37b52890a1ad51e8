"""The `dnnlab` command: one subcommand per capability. This module only parses flags
(generated from the config dataclasses where they exist) and hands them to the modules
that do the work and print its results."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from dnnlab.utils.device import DEVICE_HELP
from dnnlab.utils.terminal import OneLineErrors, one_line_warning, silence_stdout, stdout_gone


def _parser(sub, name: str, description: str | None = None):
    """Command `name`'s parser, with its line of `dnnlab --help` (HELP)."""
    return sub.add_parser(name, help=HELP[name], description=description)


def _add_si(sub) -> None:
    from dnnlab.separability.si_command import SiConfig
    from dnnlab.settings import add_flags

    p = _parser(
        sub,
        "si",
        "Separation Index family of FEATURES (N x ...) with LABELS (N values).",
    )
    p.add_argument(
        "features",
        nargs="?",
        help="features file: .npy or .npz[:NAME] (read by row blocks), .pt[:NAME], "
        ".safetensors[:NAME], .csv",
    )
    p.add_argument(
        "labels", nargs="?", help="labels file: .npy, .npz[:NAME], .pt, .safetensors, .csv"
    )
    p.add_argument(
        "--test",
        nargs=2,
        metavar=("FEATURES", "LABELS"),
        help="test set on which `linear` (fitted on FEATURES LABELS) is scored",
    )
    add_flags(p, SiConfig)
    p.set_defaults(func=cmd_si)


def cmd_si(args) -> int:
    from dnnlab.separability.si_command import SiConfig, si_command
    from dnnlab.settings import from_args

    return si_command(from_args(SiConfig, args), args.features, args.labels, args.test)


def _add_models(sub) -> None:
    p = _parser(sub, "models")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from dnnlab.cifar.models import models_table

    print(models_table())
    return 0


class _Unset:
    """Marks a train or study flag that was not given, so --resume can keep the run's own
    value and --quick can fill in its budget."""

    def __repr__(self) -> str:
        return "unset"


UNSET = _Unset()


def _add_train(sub) -> None:
    from dataclasses import fields

    from dnnlab.cifar.train import TrainConfig
    from dnnlab.settings import add_flags

    p = _parser(
        sub,
        "train",
        "Train one variant; defaults are the course project's recipe (SGD 0.01, "
        "momentum 0.9, StepLR 40/0.1, 100 epochs, batch 256). Every setting is checked "
        "before any work; --resume keeps the run's saved settings.",
    )
    p.add_argument("--out", required=True, help="run directory")
    add_flags(p, TrainConfig)
    p.add_argument("--download", action="store_true", help="fetch torchvision's CIFAR10")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run with its saved settings; --epochs N (at least the "
        "epochs done) continues it to N epochs, any other changed setting is refused",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (only after every input has been checked)",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="K",
        help="run only the schedule's first K epochs (the learning rate follows the whole "
        "schedule) and leave the run unfinished; --resume continues it",
    )
    p.set_defaults(func=cmd_train, **{f.name: UNSET for f in fields(TrainConfig)})


def _given(args, cls) -> dict:
    """The settings of config class `cls` given on the command line (the parser's defaults
    for the rest are UNSET: train, study and the detect commands)."""
    from dataclasses import fields

    return {
        f.name: getattr(args, f.name)
        for f in fields(cls)
        if getattr(args, f.name, UNSET) is not UNSET
    }


def cmd_train(args) -> int:
    from dnnlab.cifar.train import TrainConfig, train_command

    train_command(
        _given(args, TrainConfig),
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        download=args.download,
        progress=sys.stderr.isatty(),
        stop_after=args.stop_after,
    )
    return 0


def _add_probe(sub) -> None:
    from dnnlab.probe.anynet import AnyConfig
    from dnnlab.probe.probe import ProbeConfig
    from dnnlab.settings import add_flags

    p = _parser(
        sub,
        "probe",
        "Probe a run directory's best weights: SI and CSI of each layer's output "
        "on train20 (a stratified 20% of the training split), val and test. Or probe any "
        "network (--model) on an image folder or CIFAR-10 (--data).",
    )
    p.add_argument("run", nargs="?", help="a `dnnlab train` run directory (or --model/--data)")
    add_flags(p, ProbeConfig)
    p.add_argument("--data-root", default=None, help="a run's CIFAR-10 source, if moved")
    p.add_argument("--overwrite", action="store_true", help="replace earlier probe results")
    g = p.add_argument_group("any network on any images")
    g.add_argument(
        "--model",
        default=None,
        help="torchvision:NAME[:k=v,...] or module.path:function (returns a module)",
    )
    g.add_argument(
        "--data",
        default=None,
        help="image folders (train/<class>/, test/<class>/, or only <class>/), "
        "CIFAR-10 in any form `dnnlab train` reads, or a .tar.gz of a tree",
    )
    add_flags(g, AnyConfig, exclude=("model", "data"))
    p.add_argument(
        "--cka-with",
        metavar="RUN_B",
        default=None,
        help="also CKA between the same layers of RUN and RUN_B on val",
    )
    p.add_argument(
        "--compare",
        default=None,
        help="another probe's output folder: overlay its SI/CSI per layer",
    )
    p.set_defaults(func=cmd_probe)


def cmd_probe(args) -> int:
    from dnnlab.probe import probe_command as command
    from dnnlab.probe.probe import ProbeConfig
    from dnnlab.probe.report import layers_table, print_result
    from dnnlab.settings import from_args

    any_model = command.any_network(args)
    listing = command.is_listing(args.layers)
    cfg = from_args(ProbeConfig, args, layers=None if listing else args.layers)
    acfg = command.any_config(args, listing) if any_model else None
    if listing:
        print(layers_table(command.list_layers(args.run, acfg)))
        return 0
    res, out = command.probe(args, cfg, acfg, progress=sys.stderr.isatty())
    print_result(res, out)
    for line in command.follow_ups(args, cfg, out):
        print(line)
    return 0


def _add_study(sub) -> None:
    from dataclasses import fields

    from dnnlab.settings import add_flags
    from dnnlab.study.config import StudyConfig

    p = _parser(
        sub,
        "study",
        "Train and probe a list of variants (skipping finished work), then write "
        "report.md and a self-contained report.html. Prints its plan (variants, epochs, "
        "expected minutes) before any work. --quick sets the budget's flags not given.",
    )
    add_flags(p, StudyConfig)
    p.add_argument("--out", default="study", help="study directory (default: study/)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier study")
    p.add_argument(
        "--detector",
        default=None,
        help="a `dnnlab detect` directory whose evaluations and photos/ join the report",
    )
    p.add_argument(
        "--published",
        default=None,
        help="a folder of published full studies (each with study.json and runs/) "
        "whose tables the report shows beside this study's",
    )
    p.add_argument(
        "--publish",
        default=None,
        help="copy the results (no weights) with a manifest into this folder each time a run "
        "finishes, and at the end; it must be new or this study's earlier publication",
    )
    p.set_defaults(func=cmd_study, **{f.name: UNSET for f in fields(StudyConfig)})


def cmd_study(args) -> int:
    from dnnlab.cifar.recipe import check_recipe_flag
    from dnnlab.study.config import StudyConfig, study_config
    from dnnlab.study.study import run_study

    given = _given(args, StudyConfig)
    check_recipe_flag(given)  # an old recipe name, refused as a flag (records still read)
    cfg = study_config(**given)
    run_study(
        cfg,
        args.out,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
        detector=args.detector,
        published=args.published,
        publish_to=args.publish,
    )
    if args.published:
        # The published studies are the real results: shown on the terminal, not only in
        # the report (the quick run beside them checks the pipeline).
        from dnnlab.study.publish import published_section, read_published

        print("\n".join(published_section(read_published(args.published))))
    return 0


def _add_detect(sub) -> None:
    from dnnlab.detect import config as c
    from dnnlab.settings import add_flags

    det = _parser(sub, "detect")
    dsub = det.add_subparsers(dest="detect_command", required=True)
    preset = dict(
        choices=sorted(c.PRESETS),
        default=None,
        help="a named set of settings for the flags not given (course: the original "
        "course project's); a flag given explicitly wins",
    )

    p = dsub.add_parser("build", help="proposals, IoU labels and the box index")
    p.add_argument("voc_dir", help="folder of VOC .xml files and their images")
    p.add_argument("--out", required=True, help="detector directory")
    p.add_argument("--target", default="cat", help="the class to detect (a VOC <name>)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild a folder that holds a trained detector (which is removed)",
    )
    add_flags(p, c.ProposalConfig)
    add_flags(p, c.BuildConfig)
    p.set_defaults(func=cmd_detect_build, **_unset(c.ProposalConfig, c.BuildConfig))

    p = dsub.add_parser("train", help="the box features, the head and the box regressors")
    p.add_argument("dir", help="detector directory made by `detect build`")
    p.add_argument("--overwrite", action="store_true", help="replace a trained model.pt")
    p.add_argument("--preset", **preset)
    sections = (c.FeatureSpec, c.HeadConfig, c.RegressorConfig, c.DetectTrainConfig)
    for cls in sections:
        add_flags(p, cls)
    p.set_defaults(func=cmd_detect_train, **_unset(*sections))

    p = dsub.add_parser("show", help="grids of positive and negative samples")
    p.add_argument("dir")
    p.set_defaults(func=cmd_detect_show)

    for name, helptext in (("run", "detect in photos"), ("eval", "AP50 / mAP on a VOC folder")):
        p = dsub.add_parser(name, help=helptext)
        if name == "run":
            p.add_argument("images", nargs="+")
            p.add_argument("--out", default="detections")
        else:
            p.add_argument("voc_dir")
            p.add_argument("--json", action="store_true")
            p.add_argument("--draw", default=None, help="also write annotated images here")
        where = "--out" if name == "run" else "--draw"
        p.add_argument(
            "--overwrite",
            action="store_true",
            help=f"replace files already in {where} that have an output's name",
        )
        p.add_argument("--model", required=True, help="detector directory with model.pt")
        p.add_argument("--preset", **preset)
        add_flags(p, c.DetectionConfig)
        p.add_argument("--device", default="cpu", help=DEVICE_HELP)
        func = cmd_detect_run if name == "run" else cmd_detect_eval
        p.set_defaults(func=func, **_unset(c.DetectionConfig))


def _unset(*classes) -> dict:
    """UNSET for every setting of the config classes: a flag not given is told apart from
    one given with its default value (a --preset then sets only the flags not given)."""
    from dataclasses import fields

    return {f.name: UNSET for cls in classes for f in fields(cls) if f.metadata.get("spec")}


def _load_detector(args):
    """The detector in --model with the detection flags (and --preset) applied."""
    from dnnlab.detect.config import DetectionConfig, with_preset
    from dnnlab.detect.detector import Detector
    from dnnlab.utils.paths import check_in_folder

    check_in_folder(args.model, "--model")
    detection = with_preset(DetectionConfig, _given(args, DetectionConfig), args.preset)
    return Detector.load(args.model, args.device, detection)


def cmd_detect_build(args) -> int:
    from dnnlab.detect.build import build
    from dnnlab.detect.config import BuildConfig, ProposalConfig
    from dnnlab.detect.output import build_summary

    info = build(
        args.voc_dir,
        args.out,
        args.target,
        ProposalConfig(**_given(args, ProposalConfig)),
        BuildConfig(**_given(args, BuildConfig)),
        progress=sys.stderr.isatty(),
        overwrite=args.overwrite,
    )
    print(build_summary(info))
    return 0


def cmd_detect_train(args) -> int:
    from dnnlab.detect.config import (
        DetectTrainConfig,
        FeatureSpec,
        HeadConfig,
        RegressorConfig,
        with_preset,
    )
    from dnnlab.detect.output import train_summary
    from dnnlab.detect.train import train_detector
    from dnnlab.utils.paths import check_in_folder

    check_in_folder(args.dir, "DIR")
    s = train_detector(
        args.dir,
        *(
            with_preset(c, _given(args, c), args.preset)
            for c in (FeatureSpec, HeadConfig, RegressorConfig)
        ),
        DetectTrainConfig(**_given(args, DetectTrainConfig)),
        progress=sys.stderr.isatty(),
        overwrite=args.overwrite,
    )
    print(train_summary(s))
    return 0


def cmd_detect_show(args) -> int:
    from dnnlab.detect.show import show_samples
    from dnnlab.utils.paths import check_in_folder

    check_in_folder(args.dir, "DIR")
    for p in show_samples(args.dir):
        print(f"wrote {p}")
    return 0


def cmd_detect_run(args) -> int:
    from dnnlab.detect.output import check_detection_outputs, print_run, run_detector

    check_detection_outputs(
        [Path(i) for i in args.images], Path(args.out), args.overwrite, args.model
    )
    detector = _load_detector(args)
    results = run_detector(
        args.images,
        detector,
        args.out,
        progress=sys.stderr.isatty(),
        overwrite=args.overwrite,
        model_dir=args.model,
    )
    return 1 if print_run(results, args.out) else 0


def cmd_detect_eval(args) -> int:
    from dnnlab.detect.evaluate import check_eval_inputs, evaluate_once, print_eval

    check_eval_inputs(args.voc_dir, args.model, args.draw, args.overwrite)
    detector = _load_detector(args)
    res = evaluate_once(
        args.voc_dir,
        args.model,
        detector,
        draw_dir=args.draw,
        progress=sys.stderr.isatty(),
        overwrite=args.overwrite,
    )
    print_eval(res, as_json=args.json)
    return 0


def _add_verify(sub) -> None:
    p = _parser(
        sub,
        "verify",
        "Check published study folders against their manifest.json: every file's sha256 as "
        "`dnnlab study --publish` wrote it. A changed, missing or unlisted file is named and "
        "the command exits 2.",
    )
    p.add_argument("folders", nargs="+", help="published study folders (docs/results/NAME)")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args) -> int:
    from dnnlab.study.manifest import verify

    for folder in args.folders:
        m = verify(folder)
        print(
            f"{folder}: ok, {len(m['files'])} files match its manifest "
            f"(commit {m.get('commit') or 'unrecorded'}, {m.get('date')})"
        )
    return 0


def _add_reproduce(sub) -> None:
    from dnnlab.settings import add_flags
    from dnnlab.study.reproduce import ReproduceConfig

    p = _parser(
        sub,
        "reproduce",
        "Train a published run's first epochs again on this machine (its own settings and "
        "the schedule of all its epochs) and compare them with its published curve: "
        "identical, consistent within the measurement's noise, or different. Writes "
        "reproduction.json and report.md/html in --out; the run in OUT/run is left "
        "unfinished, for `dnnlab train --resume` to continue.",
    )
    p.add_argument("run", help="a published run, e.g. docs/results/budget-cpu/runs/base")
    add_flags(p, ReproduceConfig)
    p.add_argument("--out", default="reproduce", help="output folder (default: reproduce/)")
    p.add_argument(
        "--published",
        default=None,
        help="a folder of published studies whose tables the report shows first",
    )
    p.add_argument(
        "--detector",
        default=None,
        help="a `dnnlab detect` directory whose evaluations and photos/ join the report",
    )
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args) -> int:
    from dnnlab.settings import from_args
    from dnnlab.study.publish import published_section, read_published
    from dnnlab.study.reproduce import ReproduceConfig, reproduce, reproduction_markdown

    result = reproduce(
        from_args(ReproduceConfig, args),
        args.run,
        args.out,
        published=args.published,
        detector=args.detector,
        progress=sys.stderr.isatty(),
    )
    if args.published:
        print("\n".join(published_section(read_published(args.published))))
    print("\n".join(reproduction_markdown(result, Path(args.out))))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


# One line per command for `dnnlab --help`. Only the command being run gets its flags (and
# imports its config classes), so `dnnlab --help` imports neither torchvision nor
# torch._dynamo (torch itself comes with the package: dnnlab/__init__.py). That is the
# start-up reason for this module's imports inside functions: docs/RESULTS.md §9.
HELP = {
    "si": "separability measures of a feature file",
    "models": "list the CIFAR-10 model variants",
    "train": "train one CIFAR-10 variant with the course project's recipe",
    "probe": "SI/CSI and more of every layer of a trained run, or of any network on any images",
    "study": "train + probe the variants and write the comparison report",
    "detect": "R-CNN-style detector (build, train, show, run, eval)",
    "verify": "check published study folders against their manifests",
    "reproduce": "train a published run's first epochs again and compare with its curve",
}
ADDERS = {
    "si": _add_si,
    "models": _add_models,
    "train": _add_train,
    "probe": _add_probe,
    "study": _add_study,
    "detect": _add_detect,
    "verify": _add_verify,
    "reproduce": _add_reproduce,
}


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The parser; with `argv`, only its command's flags are built (None: every command's)."""
    parser = OneLineErrors(
        prog="dnnlab", description="A lab for analysing and designing deep networks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    words = [a for a in (argv or []) if not a.startswith("-")]
    wanted = None if argv is None else (words[0] if words else "")
    for name, add in ADDERS.items():
        if wanted is None or wanted == name:
            add(sub)
        else:
            sub.add_parser(name, help=HELP[name])
    return parser


def main(argv=None) -> int:
    """Run a command. dnnlab's own errors (DnnlabError) print one "dnnlab CMD: error: ..."
    line and exit 2; a reader of stdout that stops (`| head`) ends it quietly with exit 1;
    anything else is a bug and keeps its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    from dnnlab.errors import DnnlabError

    cmd = args.command + (f" {args.detect_command}" if args.command == "detect" else "")
    shown = warnings.showwarning
    warnings.showwarning = one_line_warning(cmd)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        hint = "; rerun with --resume to continue" if hasattr(args, "resume") else ""
        print(f"dnnlab {cmd}: interrupted{hint}", file=sys.stderr)
        return 130
    except DnnlabError as e:
        print(f"dnnlab {cmd}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        if not stdout_gone():
            raise
        silence_stdout()  # the reader of stdout stopped (`dnnlab si ... | head`)
        return 1
    finally:
        warnings.showwarning = shown
