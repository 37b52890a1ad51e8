"""Small fake data sets and inputs made by the tests themselves, and the helpers that
several test modules share (no test module imports another: tests/test_structure.py)."""

import contextlib
import json
import pickle
import socket
import tarfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dnnlab.cifar.data import CLASSES, load_cifar10, test_positions
from dnnlab.cifar.rundir import load_model_checkpoint
from dnnlab.cifar.train import TrainConfig, evaluate
from dnnlab.cli import main


def class_image(c: int, rng) -> np.ndarray:
    """A 32x32 RGB image whose colour pattern identifies class c, plus noise."""
    img = np.zeros((32, 32, 3), dtype=np.float64)
    img[..., c % 3] = 60 + 15 * c
    img[(c * 3) % 32 : (c * 3) % 32 + 6, :, :] = 230  # a class-specific stripe
    img += rng.normal(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_tree(root: Path, n_train: int = 30, n_test: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(class_image(c, rng)).save(d / f"{i:04d}.jpg", quality=90)
    return root


def make_tar(tree: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(tree / "train", arcname="train")
        tf.add(tree / "test", arcname="test")
    return out


def make_batches(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """A tiny directory in the original release's pickled-batch format."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        data = np.stack([class_image(int(c), rng).transpose(2, 0, 1).reshape(-1) for c in labels])
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels.tolist()}, fh)
    return root


def tiny_train_config(tree, **kw):
    """A TrainConfig for a few seconds of training on a fake tree (make_image_tree):
    batches of 20, 20 validation images; kw overrides any setting (model, epochs, ...)."""
    base = dict(model="bn", epochs=2, batch_size=20, lr=0.05, n_val=20, data_root=str(tree))
    return TrainConfig(**{**base, **kw})


def tiny_study_config(tree, models, quick=True, **kw):
    """A StudyConfig of `models` for seconds of work a run on a fake tree: 60 training
    images, 1 epoch, 20 validation and 30 test images, 40 a split probed; kw overrides any
    setting."""
    from dnnlab.study.config import study_config

    cfg = study_config(models, quick=quick, data_root=str(tree))
    budget = dict(train_subset=60, epochs=1, n_val=20, test_subset=30, max_per_split=40)
    return replace(cfg, **{**budget, **kw})


def quiet(*_):
    """A study's log that shows nothing."""


def assert_summary_matches_best(run, cfg: TrainConfig, dev, exact: bool = True) -> dict:
    """Check a finished run's summary.json against an independent re-evaluation: best.pt
    reloaded (torch.load(weights_only=True), through the package's own loader) and tested on
    the run's test positions (plan.test_positions of the config's data root, test_subset and
    seed) in the precision config.json records. `exact` (CPU): test_acc and test_loss equal
    the re-evaluation's; otherwise (CUDA, bf16/TF32 kernels may differ between two passes)
    test_acc within one test image and test_loss within a small tolerance. Also checks the
    summary's epochs, train_images, test_images, best epoch and best validation accuracy
    against the config, split.json and best.pt. Returns the summary."""
    run, dev = Path(run), torch.device(dev)
    summary = json.loads((run / "summary.json").read_text())
    record = json.loads((run / "config.json").read_text())
    split = json.loads((run / "split.json").read_text())
    data = load_cifar10(cfg.data_root)
    te = test_positions(data, cfg.test_subset, cfg.seed)
    n_test = int(te.numel())

    model, ck = load_model_checkpoint(run / "best.pt", cfg.model, map_location=dev, run=run)
    # As training leaves it: on the device, channels_last (the same kernels as the summary's test)
    model = model.to(dev).to(memory_format=torch.channels_last)
    x, y = data.test_x[te].to(dev), data.test_y[te].to(dev)
    loss, acc = evaluate(model, x, y, dev, cfg.eval_batch_size, precision=record["precision"])

    assert summary["precision"] == record["precision"]
    if exact:
        assert summary["test_acc"] == acc, (summary["test_acc"], acc)
        assert summary["test_loss"] == loss, (summary["test_loss"], loss)
    else:
        assert abs(summary["test_acc"] - acc) <= 1 / n_test + 1e-12, (summary["test_acc"], acc)
        assert summary["test_loss"] == pytest.approx(loss, rel=2e-2, abs=1e-3)

    n_train = data.train_y.numel() - cfg.n_val
    assert summary["epochs"] == cfg.epochs
    assert summary["weights_epoch"] == ck["epoch"]  # the epoch whose weights best.pt holds
    assert len(split["val"]) == cfg.n_val
    assert summary["train_images"] == len(split["train"]) == (cfg.train_subset or n_train)
    assert summary["test_images"] == n_test == (cfg.test_subset or data.test_y.numel())
    assert summary["best_epoch"] == ck["best_epoch"]
    assert summary["best_val_acc"] == ck["best_val_acc"]
    return summary


# A user's model file for `dnnlab probe --model FILE:function` (the user_file fixture).
USER_MODEL = '''
import torch
from torch import nn


class OutOfOrder(nn.Module):
    """`late` is registered before `early` but runs after it."""

    def __init__(self):
        super().__init__()
        self.late = nn.Linear(4 * 4 * 4, 5)
        self.early = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)

    def forward(self, x):
        return self.late(self.pool(self.early(x)).flatten(1))


def make():
    torch.manual_seed(0)
    return OutOfOrder()


def needs_big_images():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 7), nn.Flatten())


def not_a_module():
    return 42
'''


def snapshot(run) -> dict:
    """Every file of a run folder by name: its bytes."""
    return {p.name: p.read_bytes() for p in sorted(run.iterdir())}


# `dnnlab train` flags of a one-epoch run of base on the fake tree (the finished fixture).
TINY_TRAIN_ARGS = ["--model", "base", "--epochs", "1", "--batch-size", "64", "--val-size", "20"]


def cli(*words, **flags) -> list[str]:
    """A command line for dnnlab.cli.main: the words, then `--name value` for each keyword
    (underscores as dashes; True: the bare flag); every value str()'d."""
    out = [str(w) for w in words]
    for name, value in flags.items():
        out.append("--" + name.replace("_", "-"))
        if value is not True:
            out.append(str(value))
    return out


# Every measure separability() gives.
ALL = [
    "si",
    "csi",
    "hsi:1",
    "soft:1",
    "anti:1",
    "hsi:2",
    "soft:2",
    "anti:2",
    "hsi:3",
    "soft:3",
    "anti:3",
]


def make_data(seed, n, d, n_classes, dup_frac=0.2):
    """Random clustered data with exact duplicate rows and non-contiguous labels."""
    rng = np.random.default_rng(seed)
    y = rng.choice(np.array([-7, 3, 11, 40])[:n_classes], size=n)
    x = rng.normal(size=(n, d)) + y[:, None] * 0.05
    ndup = int(n * dup_frac)
    if ndup and n > 2:
        src = rng.integers(0, n, ndup)
        dst = rng.integers(0, n, ndup)
        x[dst] = x[src]  # exact duplicates, possibly with other labels
    return x, y


# A VOC annotation and one of its objects (str.format templates).
XML = """<annotation><filename>{fn}</filename><size><width>{w}</width><height>{h}</height>
<depth>3</depth></size>{objs}</annotation>"""
OBJ = (
    "<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin>"
    "<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
)


def write_voc(folder, stem, boxes, size=(160, 120)):
    """A grey photo and its VOC annotation; coordinates written as given (text or number)."""
    Image.new("RGB", size, (90, 90, 90)).save(folder / f"{stem}.jpg")
    objs = "".join(OBJ.format(name=n, x1=b[0], y1=b[1], x2=b[2], y2=b[3]) for n, b in boxes)
    xml = XML.format(fn=f"{stem}.jpg", w=size[0], h=size[1], objs=objs)
    (folder / f"{stem}.xml").write_text(xml)


def fake_build(folder, image):
    """The smallest build folder `detect train` reads: build.json and a two-row index."""
    from dnnlab.detect.build import INDEX_COLS
    from dnnlab.detect.config import ProposalConfig

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "build.json").write_text(
        json.dumps({"target": "cat", "proposals": asdict(ProposalConfig())})
    )
    rows = [
        [str(image), 1, 1, 20, 20, 1, "0.9", "train", 1, 1, 20, 20],
        [str(image), 30, 30, 40, 40, 0, "0.0", "val", "", "", "", ""],
    ]
    lines = [",".join(INDEX_COLS)] + [",".join(map(str, r)) for r in rows]
    (folder / "index.csv").write_text("\n".join(lines) + "\n")
    return folder


class Evil:
    """Unpickling it would create a marker file: code run by loading."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def bad_pt(tmp_path, kind: str):
    """A .pt file that must be refused: pickled code, garbage bytes, or zero bytes."""
    p = tmp_path / f"{kind}.pt"
    if kind == "pickled":
        torch.save({"x": Evil(tmp_path / "pwned")}, p)
    elif kind == "garbage":
        p.write_bytes(b"\x80\x02 not a torch file at all" * 10)
    else:
        p.write_bytes(b"")
    return p


# Words of advice to load unsafely: what no message of dnnlab's may say.
UNSAFE_ADVICE = ("weights_only=false", "allow_pickle=true", "trust_remote_code=true")


# A process holding a folder's lock (argv[1]) for a minute: the holder fixture.
HOLD = """
import sys, time
from dnnlab.utils.lock import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def refused(argv, capsys, *named) -> str:
    """The command exits 2 with one `dnnlab CMD: error:` line naming each of `named`."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("dnnlab ") and ": error: " in last, err
    for n in named:
        assert str(n) in err, (n, err)
    return err


def image_folder(root, classes=("a", "b", "c"), n=6, splits=("train", "test"), size=20):
    """Image folders ROOT/SPLIT/CLASS/i.png (ROOT/CLASS/i.png for a split of ''): each
    class a colour plus noise, n images of size x size."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c, name in enumerate(classes):
            d = root / split / name if split else root / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
                img[..., c % 3] += 150
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def free_port() -> int:
    """A TCP port free on localhost now (for a torch.distributed rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Why dnnlab refuses each kind of bad_pt: the words its message must hold.
REASON = {
    "pickled": "could run code",
    "garbage": "not a readable PyTorch file",
    "empty": "empty (0 bytes)",
}


def refused_to_write_over(argv, capsys, *named):
    """The command exits 2 with one error line naming each of `named`, no traceback."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "never writes over its inputs" in err and "Traceback" not in err, err
    for n in named:
        assert str(n) in err, (n, err)


def busy(argv, capsys, folder, pid):
    """The command exits 2 at once, naming the folder and the holder's pid."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and f"pid {pid}" in err and "Traceback" not in err, err


def truncate(path, keep: float = 0.8) -> None:
    """Cut an image file short, as an interrupted copy or download leaves it (its header
    whole: only decoding every pixel finds it)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def unsafe_words(text: str) -> list[str]:
    """The words of unsafe advice in a message (UNSAFE_ADVICE and the bare option names)."""
    flat = text.lower().replace(" ", "")
    return [w for w in (*UNSAFE_ADVICE, "weights_only", "allow_pickle") if w in flat]


@contextlib.contextmanager
def raises_naming(exc: type[Exception], *named):
    """pytest.raises(exc), then its message must name each of `named` (a file, flag, layer,
    value, count), in any order and whatever the words around them."""
    with pytest.raises(exc) as info:
        yield info
    message = str(info.value)
    for n in named:
        assert str(n) in message, (n, message)
