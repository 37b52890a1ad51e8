import tarfile

import pytest
import torch

from dnnlab.cifar.augment import augment, to_input
from dnnlab.cifar.data import DataError, load_cifar10, split_indices
from tests.fakes import make_batches, make_image_tree, make_tar


def test_tree_tar_and_batches_load(tmp_path):
    tree = make_image_tree(tmp_path / "tree", n_train=4, n_test=2)
    a = load_cifar10(tree)
    assert a.train_x.shape == (40, 3, 32, 32) and a.train_x.dtype == torch.uint8
    assert a.test_y.tolist() == sorted(a.test_y.tolist())
    b = load_cifar10(make_tar(tree, tmp_path / "c.tar.gz"))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    c = load_cifar10(make_batches(tmp_path / "orig"))
    assert c.train_x.shape == (100, 3, 32, 32) and c.test_x.shape == (20, 3, 32, 32)


def test_cache_is_reused(tmp_path):
    tree = make_image_tree(tmp_path / "tree", n_train=2, n_test=1)
    load_cifar10(tree)
    cached = list((tmp_path / "cache").glob("cifar10-*.pt"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    load_cifar10(tree)
    assert cached[0].stat().st_mtime_ns == stamp


def test_missing_and_extra_class_folders(tmp_path):
    tree = make_image_tree(tmp_path / "t", n_train=1, n_test=1)
    (tree / "train" / "cat").rename(tree / "train" / "kitten")
    with pytest.raises(DataError, match=r"missing \['cat'\], unexpected \['kitten'\]"):
        load_cifar10(tree)


def test_unreadable_image_is_named(tmp_path):
    tree = make_image_tree(tmp_path / "t", n_train=1, n_test=1)
    (tree / "train" / "dog" / "0000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"train/dog/0000.jpg: unreadable image"):
        load_cifar10(tree)


def test_empty_root_explains_forms(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path / "empty")
    monkeypatch.delenv("DNNLAB_DATA", raising=False)
    with pytest.raises(DataError, match="DNNLAB_DATA"):
        load_cifar10(None)


def test_tar_member_outside_root_is_refused(tmp_path):
    evil = tmp_path / "evil.tar"
    payload = tmp_path / "x.jpg"
    payload.write_bytes(b"x")
    with tarfile.open(evil, "w") as tf:
        tf.add(payload, arcname="../../escape.jpg")
    with pytest.raises(DataError, match="outside the root"):
        load_cifar10(evil)
    assert not (tmp_path.parent / "escape.jpg").exists()


def test_split_is_stratified_and_seeded():
    y = torch.arange(1000) % 10
    tr, va = split_indices(y, 100, seed=3)
    assert len(va) == 100 and len(tr) == 900 and not set(tr.tolist()) & set(va.tolist())
    assert torch.bincount(y[va]).tolist() == [10] * 10
    assert torch.equal(va, split_indices(y, 100, seed=3)[1])


def test_augment_flips_rotates_and_normalizes():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = augment(x, g)
    assert out.shape == (64, 3, 32, 32) and out.min() >= -1 and out.max() <= 1
    plain = to_input(x)
    # Some images are changed (flips and rotations), and each keeps most of its pixels' values.
    changed = (out != plain).flatten(1).any(1)
    assert 0 < changed.sum() < 64 or changed.all()
    zero = augment(x, torch.Generator().manual_seed(0), max_degrees=0.0)
    flipped = (zero == plain.flip(3)).flatten(1).all(1)
    same = (zero == plain).flatten(1).all(1)
    assert (flipped | same).all() and flipped.any() and same.any()
