"""Small fake data sets made by the tests themselves."""

import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from dnnlab.cifar.data import CLASSES
from dnnlab.cifar.train import TrainConfig


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
