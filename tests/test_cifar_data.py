import tarfile

import pytest
import torch

from dnnlab.cifar.augment import augment, to_input
from dnnlab.cifar.data import CLASSES, DataError, load_cifar10, split_indices
from tests.fakes import make_batches, make_image_tree, make_tar, raises_naming


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


def test_identity_is_the_content_whatever_the_form(tmp_path):
    tree = make_image_tree(tmp_path / "tree", n_train=2, n_test=1)
    a = load_cifar10(tree)
    b = load_cifar10(make_tar(tree, tmp_path / "c.tar.gz"))
    assert a.identity == b.identity and len(a.identity) == 16
    other = load_cifar10(make_image_tree(tmp_path / "other", n_train=2, n_test=1, seed=1))
    assert other.identity != a.identity
    again = load_cifar10(tree)  # from the cache: the identity was stored with it
    assert again.identity == a.identity


def test_cache_sees_deleted_and_moved_images(tmp_path):
    tree = make_image_tree(tmp_path / "tree", n_train=3, n_test=1)
    first = load_cifar10(tree)
    assert first.train_x.shape[0] == 30
    for name in CLASSES:  # one image fewer in every class
        (tree / "train" / name / "0000.jpg").unlink()
    second = load_cifar10(tree)
    assert second.train_x.shape[0] == 20 and second.identity != first.identity
    (tree / "train" / "cat" / "0001.jpg").rename(tree / "train" / "dog" / "moved.jpg")
    third = load_cifar10(tree)
    counts = torch.bincount(third.train_y, minlength=10).tolist()
    assert counts[CLASSES.index("cat")] == 1 and counts[CLASSES.index("dog")] == 3


def test_truncated_archives_are_named(tmp_path):
    tree = make_image_tree(tmp_path / "tree", n_train=2, n_test=1)
    gz = make_tar(tree, tmp_path / "c.tar.gz").read_bytes()
    cut_gz = tmp_path / "cut.tar.gz"
    cut_gz.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(DataError, match="cut.tar.gz: truncated or damaged"):
        load_cifar10(cut_gz)
    plain = tmp_path / "c.tar"
    with tarfile.open(plain, "w") as tf:
        tf.add(tree / "train", arcname="train")
        tf.add(tree / "test", arcname="test")
    data = plain.read_bytes()
    with tarfile.open(plain) as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
    mid = members[len(members) // 2]
    inside = tmp_path / "inside.tar"  # cut in the middle of a member's data
    inside.write_bytes(data[: mid.offset_data + 100])
    with pytest.raises(DataError, match="inside.tar: truncated or damaged"):
        load_cifar10(inside)
    between = tmp_path / "between.tar"  # cut exactly where a member's header starts
    between.write_bytes(data[: mid.offset])
    with raises_naming(DataError, "between.tar", "ends without its end-of"):
        load_cifar10(between)


def test_archive_with_images_missing_is_refused(tmp_path):
    tree = make_image_tree(tmp_path / "tree", n_train=3, n_test=1)
    (tree / "train" / "frog" / "0002.jpg").unlink()
    with raises_naming(DataError, "train/", "has 3 images", "frog 2", "missing"):
        load_cifar10(make_tar(tree, tmp_path / "c.tar.gz"))


class Evil:
    """Unpickling this creates the marker file: what a crafted batch file could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_batch_file_cannot_run_code(tmp_path):
    import pickle

    root = make_batches(tmp_path / "orig")
    marker = tmp_path / "pwned"
    with open(root / "cifar-10-batches-py" / "data_batch_3", "wb") as fh:
        pickle.dump({"data": Evil(marker), "labels": [0]}, fh)
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR-10 batch file .*refusing"):
        load_cifar10(root)
    assert not marker.exists()
