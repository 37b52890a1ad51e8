import pytest

from tests.fakes import make_image_tree


@pytest.fixture(scope="session")
def tree(tmp_path_factory):
    """A small fake CIFAR-10 image-folder tree: 14 train and 5 test images per class."""
    return make_image_tree(tmp_path_factory.mktemp("cifar"), n_train=14, n_test=5)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test converts data into its own cache, never the user's ~/.cache/dnnlab."""
    monkeypatch.setenv("DNNLAB_CACHE", str(tmp_path / "cache"))
