"""The `dnnlab` command: one subcommand per capability."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _add_si(sub) -> None:
    p = sub.add_parser(
        "si",
        help="separability measures of a feature file",
        description="Separation Index family of FEATURES (N x ...) with LABELS (N values).",
    )
    p.add_argument("features", nargs="?", help="features file: .npy, .npz[:NAME], .pt, .csv")
    p.add_argument("labels", nargs="?", help="labels file: .npy, .npz[:NAME], .pt, .csv")
    p.add_argument("--measures", default="si,csi", help="e.g. si,csi,hsi:3,soft:3,anti:3")
    p.add_argument("--normalize", default="zscore", choices=["zscore", "minmax", "none"])
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--max-memory", default="2GB", help="memory budget, e.g. 2GB")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--demo", choices=["digits"], help="run on scikit-learn's bundled digits")
    p.set_defaults(func=cmd_si)


def cmd_si(args) -> int:
    from dnnlab.separability import separability
    from dnnlab.separability.io import load_array

    if args.demo:
        if args.features or args.labels:
            raise SystemExit("dnnlab si: give either --demo or FEATURES LABELS, not both")
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = digits.data, digits.target
        if not args.json:
            print(f"demo: scikit-learn digits, {x.shape[0]} images of 8x8 pixels, 10 classes")
    else:
        if not (args.features and args.labels):
            raise SystemExit("dnnlab si: need FEATURES and LABELS files (or --demo digits)")
        x = load_array(args.features)
        y = load_array(args.labels, numeric=False)
    group = _init_distributed(args.device)
    res = separability(
        x, y, args.measures, normalize_method=args.normalize, device=args.device,
        max_memory=args.max_memory, progress=not args.no_progress and sys.stderr.isatty(),
    )  # fmt: skip
    if group is not None:
        import torch.distributed as dist

        if dist.get_rank() != 0:
            return 0
    if args.json:
        d = res.to_dict()
        print(json.dumps(d))
    else:
        print(res)
    return 0


def _init_distributed(device):
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device and str(device).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.group.WORLD


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the CIFAR-10 model variants")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from dnnlab.cifar.models import VARIANTS, build_model, count_params

    print(f"{'model':<15}{'parameters':>12}  description")
    for name, v in VARIANTS.items():
        print(f"{name:<15}{count_params(build_model(name)):>12,}  {v.about}")
    return 0


def _add_train(sub) -> None:
    from dnnlab.cifar.train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train", help="train one CIFAR-10 variant with the seed's recipe",
        description="Train one variant; defaults are the seed's recipe (SGD 0.01, momentum "
        "0.9, StepLR 40/0.1, 100 epochs, batch 256).",
    )  # fmt: skip
    p.add_argument("--model", default=d.model, help="a variant from `dnnlab models`")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--device", default=d.device, help="cpu or cuda")
    p.add_argument("--train-subset", type=int, default=None, help="stratified subset size")
    p.add_argument("--val-size", type=int, default=d.n_val, help="validation images")
    p.add_argument("--data-root", default=None, help="CIFAR-10 source (default $DNNLAB_DATA)")
    p.add_argument("--download", action="store_true", help="fetch torchvision's CIFAR10")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--softmax-head", action="store_true", help="the seed's double softmax")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from dnnlab.cifar.data import load_cifar10
    from dnnlab.cifar.train import TrainConfig, train

    if args.download:
        load_cifar10(args.data_root, download=True)
    cfg = TrainConfig(
        model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        device=args.device, train_subset=args.train_subset, data_root=args.data_root,
        seed=args.seed, softmax_head=args.softmax_head, compile=args.compile,
        n_val=args.val_size,
    )  # fmt: skip
    train(cfg, args.out, resume=args.resume, overwrite=args.overwrite,
          progress=sys.stderr.isatty())  # fmt: skip
    return 0


def _add_probe(sub) -> None:
    from dnnlab.probe.probe import ProbeConfig

    d = ProbeConfig()
    p = sub.add_parser(
        "probe", help="SI/CSI of every layer of a trained run",
        description="Probe a run directory's best weights: SI and CSI of each layer's output "
        "on train20 (a stratified 20%% of the training split), val and test.",
    )  # fmt: skip
    p.add_argument("run", help="a `dnnlab train` run directory")
    p.add_argument("--splits", default=",".join(d.splits), help="train20,val,test")
    p.add_argument("--layers", default=None,
                   help="comma-separated module names (dotted), or re:REGEX; default: the "
                        "model's top-level children in execution order")  # fmt: skip
    p.add_argument("--measures", default=d.measures, help="e.g. si,csi,hsi:3")
    p.add_argument("--normalize", default=d.normalize, choices=["zscore", "minmax", "none"])
    p.add_argument("--max-memory", default=d.max_memory, help="memory budget, e.g. 4GB")
    p.add_argument("--device", default=d.device)
    p.add_argument("--output-key", default=None, help="tuple index or dict key to probe")
    p.add_argument("--memmap", choices=["float16", "float32"], default=None,
                   help="stream features to a memory-mapped file instead of memory")
    p.add_argument("--per-class", action="store_true", help="also per-class values (JSON)")
    p.add_argument("--max-per-split", type=int, default=None, help="stratified cap per split")
    p.add_argument("--data-root", default=None)
    p.add_argument("--overwrite", action="store_true", help="replace earlier probe results")
    p.set_defaults(func=cmd_probe)


def cmd_probe(args) -> int:
    from dnnlab.probe.probe import ProbeConfig
    from dnnlab.probe.run import probe_run

    cfg = ProbeConfig(
        splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()),
        layers=args.layers, measures=args.measures, normalize=args.normalize,
        max_memory=args.max_memory, device=args.device, output_key=args.output_key,
        memmap=args.memmap, per_class=args.per_class,
    )  # fmt: skip
    res = probe_run(args.run, cfg, args.data_root, args.max_per_split, args.overwrite,
                    progress=sys.stderr.isatty())  # fmt: skip
    print(f"{'split':<8}{'layer':<12}{'dim':>8}" + "".join(
        f"{k:>9}" for k in res.rows[0] if k not in ("split", "layer", "dim", "n", "seconds",
                                                   "note", "per_class")))  # fmt: skip
    for r in res.rows:
        vals = [v for k, v in r.items() if k not in ("split", "layer", "dim", "n", "seconds",
                                                     "note", "per_class")]  # fmt: skip
        print(f"{r['split']:<8}{r['layer']:<12}{r['dim']:>8}" + "".join(f"{v:>9.4f}" for v in vals))
    print(f"wrote {args.run}/probe.csv, probe.json and the SI/CSI plots")
    return 0


def _add_study(sub) -> None:
    p = sub.add_parser(
        "study", help="train + probe the variants and write the comparison report",
        description="Train and probe a list of variants (skipping finished work), then write "
        "report.md and a self-contained report.html.",
    )  # fmt: skip
    p.add_argument("--models", default=None, help="comma-separated; default: all variants")
    p.add_argument("--out", default="study", help="study directory (default: study/)")
    p.add_argument("--quick", action="store_true",
                   help="a budget that finishes on a 2-core CPU in under 20 minutes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-root", default=None, help="CIFAR-10 source (default $DNNLAB_DATA)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--compile", action="store_true", help="torch.compile (GPU runs)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier study")
    p.add_argument("--detector", default=None,
                   help="a `dnnlab detect` directory whose evaluations and photos/ join the "
                        "report")
    p.set_defaults(func=cmd_study)


def cmd_study(args) -> int:
    from dnnlab.study.study import run_study, study_config

    models = [m.strip() for m in args.models.split(",")] if args.models else None
    cfg = study_config(models, quick=args.quick, device=args.device, data_root=args.data_root,
                       compile=args.compile)  # fmt: skip
    if args.epochs:
        from dataclasses import replace

        cfg = replace(cfg, epochs=args.epochs)
    run_study(cfg, args.out, overwrite=args.overwrite, progress=sys.stderr.isatty(),
              detector=args.detector)  # fmt: skip
    return 0


def _add_detect(sub) -> None:
    from dnnlab.detect import config as c
    from dnnlab.settings import add_flags

    det = sub.add_parser("detect", help="R-CNN-style detector (build, train, show, run, eval)")
    dsub = det.add_subparsers(dest="detect_command", required=True)
    preset = dict(choices=sorted(c.PRESETS), default=None,
                  help="a named set of settings that overrides those flags (course: the "
                       "original course project's)")

    p = dsub.add_parser("build", help="proposals, IoU labels and the box index")
    p.add_argument("voc_dir", help="folder of VOC .xml files and their images")
    p.add_argument("--out", required=True, help="detector directory")
    p.add_argument("--target", default="cat", help="the class to detect (a VOC <name>)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild a folder that holds a trained detector (which is removed)")
    add_flags(p, c.ProposalConfig)
    add_flags(p, c.BuildConfig)
    p.set_defaults(func=cmd_detect_build)

    p = dsub.add_parser("train", help="the box features, the head and the box regressors")
    p.add_argument("dir", help="detector directory made by `detect build`")
    p.add_argument("--overwrite", action="store_true", help="replace a trained model.pt")
    p.add_argument("--preset", **preset)
    for cls in (c.FeatureSpec, c.HeadConfig, c.RegressorConfig, c.TrainConfig):
        add_flags(p, cls)
    p.set_defaults(func=cmd_detect_train)

    p = dsub.add_parser("show", help="grids of positive and negative samples")
    p.add_argument("dir")
    p.set_defaults(func=cmd_detect_show)

    for name, helptext in (("run", "detect in photos"), ("eval", "AP50 / mAP on a VOC folder")):
        p = dsub.add_parser(name, help=helptext)
        if name == "run":
            p.add_argument("images", nargs="+")
            p.add_argument("--out", default="detections")
            p.add_argument("--overwrite", action="store_true",
                           help="replace the results of photos already in --out")
        else:
            p.add_argument("voc_dir")
            p.add_argument("--json", action="store_true")
            p.add_argument("--draw", default=None, help="also write annotated images here")
        p.add_argument("--model", required=True, help="detector directory with model.pt")
        p.add_argument("--preset", **preset)
        add_flags(p, c.DetectConfig)
        p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        p.set_defaults(func=cmd_detect_run if name == "run" else cmd_detect_eval)


def _load_detector(args):
    """The detector in --model with the detection flags (and --preset) applied."""
    from dnnlab.detect.config import DetectConfig, with_preset
    from dnnlab.detect.detector import Detector
    from dnnlab.settings import from_args

    detection = with_preset(from_args(DetectConfig, args), args.preset)
    return Detector.load(args.model, args.device).with_detection(detection)


def cmd_detect_build(args) -> int:
    from dnnlab.detect.build import build
    from dnnlab.detect.config import BuildConfig, ProposalConfig
    from dnnlab.detect.voc import Problems
    from dnnlab.settings import from_args

    info = build(args.voc_dir, args.out, args.target, from_args(ProposalConfig, args),
                 from_args(BuildConfig, args), progress=sys.stderr.isatty(),
                 overwrite=args.overwrite)
    pr = info["proposal_recall"]
    print(f"{info['images']} images ({info['images_by_split']}), boxes {info['boxes']}, "
          f"{info['proposals_per_image']:.0f} proposals/image, proposal recall "
          f"{pr['recall50']:.3f} @0.5, {pr['recall70']:.3f} @0.7; {info['seconds']} s")
    print(Problems.from_dict(info["problems"]).summary())
    return 0


def cmd_detect_train(args) -> int:
    from dnnlab.detect.config import FeatureSpec, HeadConfig, RegressorConfig, TrainConfig
    from dnnlab.detect.config import with_preset as preset
    from dnnlab.detect.train import train_detector
    from dnnlab.settings import from_args

    s = train_detector(args.dir, preset(from_args(FeatureSpec, args), args.preset),
                       preset(from_args(HeadConfig, args), args.preset),
                       preset(from_args(RegressorConfig, args), args.preset),
                       from_args(TrainConfig, args), progress=sys.stderr.isatty(),
                       overwrite=args.overwrite)
    print(f"trained: best val acc {s['best_val_acc']:.4f} on {s['val_boxes']} boxes; "
          f"features {s['feature_seconds']} s, head {s['head_seconds']} s, box regressor "
          f"{s['regressor_seconds']} s")
    return 0


def cmd_detect_show(args) -> int:
    from dnnlab.detect.show import show_samples

    for p in show_samples(args.dir):
        print(f"wrote {p}")
    return 0


def cmd_detect_run(args) -> int:
    from dnnlab.detect.output import run_detector

    detector = _load_detector(args)
    results = run_detector(args.images, detector, args.out, progress=sys.stderr.isatty(),
                           overwrite=args.overwrite)
    for r in results:
        if "error" in r:
            print(f"{r['image']}: {r['error']}", file=sys.stderr)
        else:
            print(f"{r['image']}: {len(r['detections'])} detections, {r['seconds']:.2f} s")
    failed = sum("error" in r for r in results)
    print(f"{len(results) - failed} of {len(results)} photos done, {failed} failed; "
          f"annotated images and JSON in {args.out}/")
    return 1 if failed else 0


def cmd_detect_eval(args) -> int:
    from dnnlab.detect.evaluate import (
        SHOWN,
        evaluate,
        fingerprint,
        record_path,
        stored_result,
        write_record,
    )
    from dnnlab.detect.voc import Problems

    detector = _load_detector(args)
    fp = fingerprint(args.voc_dir, args.model, detector)
    res = None if args.draw else stored_result(args.model, args.voc_dir, fp)
    if res is not None:
        print(f"reusing {record_path(args.model, args.voc_dir)}: same model, files and "
              "settings", file=sys.stderr)
    else:
        res = evaluate(args.voc_dir, detector, progress=sys.stderr.isatty(),
                       draw_dir=args.draw)
        write_record(args.model, args.voc_dir, fp, res)
    print(Problems.from_dict(res["problems"]).summary(), file=sys.stderr)
    if args.json:
        print(json.dumps(res))
    else:
        for k in SHOWN:
            print(f"{k:<20}{res[k]:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnnlab", description="A lab for analysing and designing deep networks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_si(sub)
    _add_models(sub)
    _add_train(sub)
    _add_probe(sub)
    _add_study(sub)
    _add_detect(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from dnnlab.separability.io import InputError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"dnnlab {args.command}: interrupted; rerun with --resume to continue",
              file=sys.stderr)  # fmt: skip
        return 130
    except (InputError, ValueError, TypeError, MemoryError, RuntimeError, OSError) as e:
        cmd = args.command + (f" {args.detect_command}" if args.command == "detect" else "")
        print(f"dnnlab {cmd}: error: {e}", file=sys.stderr)
        return 2
