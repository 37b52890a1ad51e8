"""The third round of an outside tester's defect classes (issue 36), each fixed at its root:
writes that replace nothing the tool did not make (1), inputs that hold still while they are
read (2), annotations and weights wrong but accepted (4), and never unsafe advice (7)."""

import os
from types import SimpleNamespace

import numpy as np
import pytest

from dnnlab.errors import InputError
from tests.test_hostile_inputs import write_voc
from tests.test_hostile_inputs_2 import refused


class FakeDetector:
    """Detects one fixed box in any photo, with the settings record `detect eval` keeps."""

    config = SimpleNamespace(target="cat", to_dict=lambda: {"detection": {}})

    def detect(self, img):
        box = np.array([[1.0, 1, 9, 9]])
        return SimpleNamespace(boxes=box, scores=np.array([0.9]), seconds=0, proposals=box)


# -- 1: a write replaces nothing the tool did not make --------------------------------------
def test_detect_eval_draw_never_replaces_a_users_file_unasked(tmp_path, capsys):
    from dnnlab.detect.evaluate import evaluate_once

    voc, model, draw = tmp_path / "voc", tmp_path / "model", tmp_path / "drawn"
    for d in (voc, model, draw):
        d.mkdir()
    (model / "model.pt").write_bytes(b"fingerprinted, never loaded here")
    write_voc(voc, "a", [("cat", (10, 10, 60, 50))])
    mine = draw / "a.jpg"  # the user's own file, named as a drawn photo would be
    mine.write_bytes(b"my holiday picture")
    err = refused(["detect", "eval", voc, "--model", model, "--draw", draw], capsys, mine)
    assert "--overwrite" in err
    assert mine.read_bytes() == b"my holiday picture"
    # The same check as detect run's (one gate): --overwrite is the only way to replace it.
    evaluate_once(voc, model, FakeDetector(), draw_dir=draw, overwrite=True)
    assert mine.read_bytes()[:3] == b"\xff\xd8\xff"  # now the drawn JPEG
    assert sorted(os.listdir(draw)) == ["a.jpg"]  # no temporary left beside it
    with pytest.raises(InputError, match="--overwrite"):
        evaluate_once(voc, model, FakeDetector(), draw_dir=draw)
