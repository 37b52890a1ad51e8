"""Weight files read as plain data in either format, told apart by content (safe_load)."""

import pytest
import safetensors.torch
import torch
from torchvision.models import mobilenet_v2

from dnnlab.detect.features import load_backbone
from dnnlab.utils.safe_load import is_safetensors, load_error_reason, load_plain


def test_format_by_content_not_name(tmp_path):
    state = {"a": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    safetensors.torch.save_file(state, tmp_path / "really_safetensors.pt")
    torch.save(state, tmp_path / "really_torch.safetensors")
    for name in ("really_safetensors.pt", "really_torch.safetensors"):
        got = load_plain(tmp_path / name)
        assert set(got) == {"a", "b"} and all(torch.equal(got[k], state[k]) for k in state)
    assert is_safetensors(tmp_path / "really_safetensors.pt")
    assert not is_safetensors(tmp_path / "really_torch.safetensors")


def test_truncated_safetensors_reason(tmp_path):
    p = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"a": torch.zeros(100)}, p)
    data = p.read_bytes()
    for cut in (1, len(data) - 20):
        p.write_bytes(data[:cut] if cut > 8 else data[:-1])
        with pytest.raises(ValueError) as e:
            load_plain(p)
        assert "not a readable safetensors file" in load_error_reason(e.value)


def test_detector_backbone_from_safetensors_equals_pt(tmp_path):
    torch.manual_seed(0)
    state = mobilenet_v2(num_classes=1000).state_dict()
    torch.save(state, tmp_path / "b.pth")
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "b.st")
    a, norm_a = load_backbone(str(tmp_path / "b.pth"))
    b, norm_b = load_backbone(str(tmp_path / "b.st"))
    assert norm_a == norm_b
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
