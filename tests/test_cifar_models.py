import pytest
import torch
from torch import nn

from dnnlab.cifar.models import VARIANTS, build_model, count_params
from dnnlab.errors import InputError
from dnnlab.probe.layers import describe_layers


def forward_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Top-level child names in the order they run on x (each listed once, first call)."""
    return [i.name for i in describe_layers(model, x, [n for n, _ in model.named_children()])]


# conv1 896 + conv2 18,496 + resblock1 2 x 36,928 + conv3 73,856 + conv4 295,168
# + resblock2 2 x 590,080 + fc1 65,792 + fc2 2,570
BASE_PARAMS = 896 + 18_496 + 2 * 36_928 + 73_856 + 295_168 + 2 * 590_080 + 65_792 + 2_570

COURSE_ORDER = [
    "conv1",
    "elu1",
    "conv2",
    "elu2",
    "maxpool1",
    "resblock1",
    "conv3",
    "elu3",
    "maxpool2",
    "conv4",
    "elu4",
    "maxpool3",
    "resblock2",
    "avgpool",
    "flatten",
    "fc1",
    "fc2",
]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_backward(name):
    torch.manual_seed(0)
    m = build_model(name)
    x = torch.randn(4, 3, 32, 32)
    out = m(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_base_param_count_by_hand():
    assert BASE_PARAMS == 1_710_794
    assert count_params(build_model("base")) == BASE_PARAMS


def test_execution_order_differs_from_registration():
    m = build_model("base")
    registered = [n for n, _ in m.named_children()]
    assert registered.index("maxpool2") < registered.index("conv3")  # as the course registers
    assert forward_order(m, torch.randn(2, 3, 32, 32)) == COURSE_ORDER


@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if not v.wide])
def test_registration_order_is_execution_order_except_maxpool2(name):
    """What the docs state: every CourseNet variant registers its children in execution order
    but for maxpool2, which sits right after resblock1."""
    m = build_model(name)
    registered = [n for n, _ in m.named_children()]
    ran = forward_order(m, torch.randn(2, 3, 32, 32))
    assert registered.index("maxpool2") == registered.index("resblock1") + 1
    assert [n for n in registered if n != "maxpool2"] == [n for n in ran if n != "maxpool2"]


def test_norm_variants_order():
    m = build_model("bn")
    order = forward_order(m, torch.randn(2, 3, 32, 32))
    assert order[:4] == ["conv1", "norm1", "elu1", "conv2"]
    assert isinstance(m.norm4, nn.BatchNorm2d) and isinstance(
        m.resblock1.paths[0].norm_b, nn.BatchNorm2d
    )
    assert isinstance(build_model("gn").norm3, nn.GroupNorm)


def test_layernorm_shapes():
    m = build_model("ln")
    shapes = {
        n: tuple(getattr(m, n).normalized_shape) for n in ("norm1", "norm2", "norm3", "norm4")
    }
    assert shapes == {
        "norm1": (32, 32, 32),
        "norm2": (64, 32, 32),
        "norm3": (128, 16, 16),
        "norm4": (256, 8, 8),
    }
    assert tuple(m.resblock1.paths[0].norm_a.normalized_shape) == (64, 16, 16)
    assert tuple(m.resblock2.paths[0].norm_b.normalized_shape) == (256, 4, 4)
    assert tuple(m.norm_fc.normalized_shape) == (256,)
    assert forward_order(m, torch.randn(2, 3, 32, 32))[-3:] == ["fc1", "norm_fc", "fc2"]


@pytest.mark.parametrize("p", [2, 4])
def test_shared_paths_equal_p_times_one_path(p):
    torch.manual_seed(0)
    shared = build_model(f"paths{p}-shared")
    x = torch.randn(3, 64, 16, 16)
    blk = shared.resblock1
    one = blk.paths[0](x)
    assert torch.allclose(blk(x), torch.nn.functional.elu(p * one + x), atol=1e-5)
    assert count_params(shared) == BASE_PARAMS
    indep = build_model(f"paths{p}")
    assert len(indep.resblock1.paths) == p
    assert count_params(indep) == BASE_PARAMS + (p - 1) * (2 * 36_928 + 2 * 590_080)


def test_noskip_and_1x1():
    torch.manual_seed(0)
    m = build_model("noskip")
    x = torch.randn(2, 64, 16, 16)
    assert torch.allclose(m.resblock1(x), torch.nn.functional.elu(m.resblock1.paths[0](x)))
    assert build_model("conv4-1x1").conv4.kernel_size == (1, 1)


def test_softmax_head():
    m = build_model("base", softmax_head=True)
    out = m(torch.randn(3, 3, 32, 32))
    assert torch.allclose(out.sum(1), torch.ones(3))


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="choose one of: base, bn"):
        build_model("resnet50")


def test_wide_has_one_module_per_activation_and_no_softmax_head():
    torch.manual_seed(0)
    m = build_model("wide")
    assert count_params(m) == 1_162_058  # the course's 1,166,218 less match_conv1 (64*64+64)
    assert 1_166_218 - count_params(m) == 64 * 64 + 64
    elus = [mod for mod in m.modules() if isinstance(mod, nn.ELU)]
    assert len({id(e) for e in elus}) == len(elus)
    # Each activation is called exactly once per forward pass, so a probe sees all of them.
    calls = {}
    for name, mod in m.named_modules():
        if isinstance(mod, nn.ELU):
            mod.register_forward_hook(
                lambda mod, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)
            )
    m(torch.randn(2, 3, 32, 32))
    assert len(calls) == len(elus) == 2 + 3 + 2 + 3 + 1 and set(calls.values()) == {1}
    ran = forward_order(m, torch.randn(2, 3, 32, 32))
    assert ran[:5] == ["conv1", "elu1", "conv2", "elu2", "pool1"]
    with pytest.raises(InputError, match="wide network has no Softmax"):
        build_model("wide", softmax_head=True)
