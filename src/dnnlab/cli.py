"""The `dnnlab` command: one subcommand per capability. This module only builds the parsers
(their flags generated from the config dataclasses where they exist) and hands the parsed
flags to the command's own module, whose `main(args)` runs it from its checks to its last
write and prints its results (like torchvision's reference scripts: `main(args)` beside the
code it calls):

    si: separability/si_command.py     train: cifar/train.py       models: cifar/models.py
    probe: probe/probe_command.py      study: study/study.py       reproduce: study/reproduce.py
    verify: study/manifest.py          detect build|train|show: detect/build.py, train.py,
    show.py                            detect run|eval: detect/output.py, evaluate.py
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from dnnlab import __version__
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
    p.set_defaults(main="dnnlab.separability.si_command")


def _add_models(sub) -> None:
    p = _parser(sub, "models")
    p.set_defaults(main="dnnlab.cifar.models")


def _add_train(sub) -> None:
    from dnnlab.cifar.train import TrainConfig
    from dnnlab.settings import add_flags, unset_defaults

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
    p.set_defaults(main="dnnlab.cifar.train", **unset_defaults(TrainConfig))


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
    p.set_defaults(main="dnnlab.probe.probe_command")


def _add_report_inputs(p) -> None:
    """The report's other sources, for `study` and `reproduce`."""
    p.add_argument(
        "--published",
        default=None,
        help="a folder of published studies (each with study.json and runs/) whose tables "
        "the report shows first",
    )
    p.add_argument(
        "--detector",
        default=None,
        help="a `dnnlab detect` directory whose evaluations and photos/ join the report",
    )


def _add_study(sub) -> None:
    from dnnlab.settings import add_flags, unset_defaults
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
    _add_report_inputs(p)
    p.add_argument(
        "--publish",
        default=None,
        help="copy the results (no weights) with a manifest into this folder each time a run "
        "finishes, and at the end; it must be new or this study's earlier publication",
    )
    p.set_defaults(main="dnnlab.study.study", **unset_defaults(StudyConfig))


def _add_detect(sub) -> None:
    from dnnlab.detect import config as c
    from dnnlab.settings import add_flags, unset_defaults

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
    p.set_defaults(main="dnnlab.detect.build", **unset_defaults(c.ProposalConfig, c.BuildConfig))

    p = dsub.add_parser("train", help="the box features, the head and the box regressors")
    p.add_argument("dir", help="detector directory made by `detect build`")
    p.add_argument("--overwrite", action="store_true", help="replace a trained model.pt")
    p.add_argument("--preset", **preset)
    sections = (c.FeatureSpec, c.HeadConfig, c.RegressorConfig, c.DetectTrainConfig)
    for cls in sections:
        add_flags(p, cls)
    p.set_defaults(main="dnnlab.detect.train", **unset_defaults(*sections))

    p = dsub.add_parser("show", help="grids of positive and negative samples")
    p.add_argument("dir")
    p.set_defaults(main="dnnlab.detect.show")

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
        command = "dnnlab.detect.output" if name == "run" else "dnnlab.detect.evaluate"
        p.set_defaults(main=command, **unset_defaults(c.DetectionConfig))


def _add_verify(sub) -> None:
    p = _parser(
        sub,
        "verify",
        "Check published study folders against their manifest.json: every file's sha256 as "
        "`dnnlab study --publish` wrote it. A changed, missing or unlisted file is named and "
        "the command exits 2.",
    )
    p.add_argument("folders", nargs="+", help="published study folders (docs/results/NAME)")
    p.set_defaults(main="dnnlab.study.manifest")


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
    _add_report_inputs(p)
    p.set_defaults(main="dnnlab.study.reproduce")


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
    parser.add_argument("--version", action="version", version=f"dnnlab {__version__}")
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

    # A path given quoted ('~/runs/x') reaches us with its ~: expanded here, at the edge, so
    # that the write gate, the readers and the writers all take the same path.
    def home(v):
        return os.path.expanduser(v) if isinstance(v, str) and v.startswith("~") else v

    for name, value in vars(args).items():
        setattr(args, name, [home(v) for v in value] if isinstance(value, list) else home(value))
    from dnnlab.errors import DnnlabError

    cmd = args.command + (f" {args.detect_command}" if args.command == "detect" else "")
    shown = warnings.showwarning
    warnings.showwarning = one_line_warning(cmd)
    try:
        # The command's own module runs it (its `main(args)`), imported only now.
        return importlib.import_module(args.main).main(args)
    except KeyboardInterrupt as e:
        # What to do next: a note the interrupted step added (train's put-back), else resume.
        notes = getattr(e, "__notes__", None)
        hint = "; rerun with --resume to continue" if hasattr(args, "resume") else ""
        hint = f"; {notes[-1]}" if notes else hint
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
