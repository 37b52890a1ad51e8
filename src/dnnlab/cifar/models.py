"""The course's small residual CNN family for CIFAR-10, as one configurable class.

Layout of `CourseNet` (input 3 x 32 x 32), children named as in the course's code and run in
the order of `EXECUTION_ORDER`. They are registered in that order too, except maxpool2, which
is registered right after resblock1 (before conv3), as in the course's base network. That is
the only registration detail dnnlab copies: the course's base network also registers maxpool3
before conv4, and its gn/ln networks order their pools differently again. Pools have no
parameters, so registration order changes neither outputs nor state-dict contents, and the
probe orders layers by execution:

    conv1 3->32, [norm1], elu1, conv2 32->64, [norm2], elu2, maxpool1,
    resblock1 (64 ch, 16x16), conv3 64->128, [norm3], elu3, maxpool2,
    conv4 128->256, [norm4], elu4, maxpool3, resblock2 (256 ch, 4x4),
    avgpool (3, stride 2: 4x4 -> 1x1), flatten, fc1 256->256, [norm_fc], fc2 256->10

fc1 and fc2 have no activation between them, as in the course's code. `WideNet` is the
course's "optimized" network (see its docstring for the one layer dnnlab leaves out).
CourseNet outputs logits unless softmax_head=True (the course's Softmax inside the model,
which with CrossEntropyLoss makes its double softmax); WideNet always outputs logits, since
the course's wide network has no Softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dnnlab.errors import InputError

# Shapes (C, H, W) after each stem conv, and inside each residual block, for LayerNorm.
LN_SHAPES = {
    "norm1": (32, 32, 32),
    "norm2": (64, 32, 32),
    "resblock1": (64, 16, 16),
    "norm3": (128, 16, 16),
    "norm4": (256, 8, 8),
    "resblock2": (256, 4, 4),
}


def _in_layout_of(x: torch.Tensor, norm) -> torch.Tensor:
    """`norm` of a CPU channels_last feature map computed on its NCHW copy, the result given
    back in channels_last; elsewhere `norm(x)` as it is.

    Why: PyTorch's CPU GroupNorm kernels for channels_last bf16 take 3-9x as long as for NCHW
    (forward and backward), and LayerNorm over (C, H, W) returns an NCHW tensor, after which
    the ELU, max-pool and the next convolution run on the slow layout or copy back. One copy
    each way costs less (benchmarks/bench_norm_layout.py, docs/RESULTS.md §14). The values are
    the same normalization: only the memory order changes."""
    cl = (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )
    if not cl:
        return norm(x)
    return norm(x.contiguous()).contiguous(memory_format=torch.channels_last)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and state dict) computed in the layout _in_layout_of picks."""

    def forward(self, x):
        return _in_layout_of(x, super().forward)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and state dict) computed in the layout _in_layout_of picks."""

    def forward(self, x):
        return _in_layout_of(x, super().forward)


def make_norm(kind: str | None, channels: int, shape: tuple[int, int, int]) -> nn.Module:
    if kind is None:
        return nn.Identity()
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return GroupNorm(32, channels)
    if kind == "ln":
        return LayerNorm(list(shape))
    raise ValueError(f"unknown norm {kind!r}")


class Path2(nn.Module):
    """One residual path: conv3x3 -> [norm] -> ELU -> conv3x3 -> [norm]."""

    def __init__(self, ch: int, norm: str | None, shape):
        super().__init__()
        self.conv_a = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm_a = make_norm(norm, ch, shape)
        self.elu = nn.ELU()
        self.conv_b = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm_b = make_norm(norm, ch, shape)

    def forward(self, x):
        return self.norm_b(self.conv_b(self.elu(self.norm_a(self.conv_a(x)))))


class ResBlock(nn.Module):
    """Sum of `paths` residual paths (+ the identity shortcut unless skip=False), then ELU.

    shared=True reuses one path's weights for every path, as the course's code did, so the
    branch equals paths x one path.
    """

    def __init__(self, ch, norm=None, shape=None, paths=1, shared=False, skip=True):
        super().__init__()
        self.n_paths, self.shared, self.skip = paths, shared, skip
        self.paths = nn.ModuleList([Path2(ch, norm, shape) for _ in range(1 if shared else paths)])
        self.elu = nn.ELU()

    def forward(self, x):
        if self.shared:
            branch = self.paths[0](x) * self.n_paths
        else:
            branch = self.paths[0](x)
            for p in self.paths[1:]:
                branch = branch + p(x)
        return self.elu(branch + x if self.skip else branch)


@dataclass(frozen=True)
class Variant:
    norm: str | None = None
    skip: bool = True
    conv4_kernel: int = 3
    paths: int = 1
    shared: bool = False
    wide: bool = False
    about: str = ""


VARIANTS: dict[str, Variant] = {
    "base": Variant(about="the course's base network"),
    "bn": Variant(norm="bn", about="BatchNorm after every convolution"),
    "gn": Variant(norm="gn", about="GroupNorm (32 groups) after every convolution"),
    "ln": Variant(norm="ln", about="LayerNorm over (C,H,W) after every conv, and after fc1"),
    "noskip": Variant(skip=False, about="residual blocks without the shortcut"),
    "conv4-1x1": Variant(conv4_kernel=1, about="conv4 with a 1x1 kernel"),
    "paths2": Variant(paths=2, about="2 independent paths per block (ResNeXt-style)"),
    "paths4": Variant(paths=4, about="4 independent paths per block (ResNeXt-style)"),
    "paths2-shared": Variant(paths=2, shared=True, about="the course's code: 2 x one path"),
    "paths4-shared": Variant(paths=4, shared=True, about="the course's code: 4 x one path"),
    "wide": Variant(
        wide=True,
        about="the course's 'optimized' network less its unused 1x1 conv match_conv1 (the "
        "course's has 1,166,218 parameters)",
    ),
}

EXECUTION_ORDER = (
    "conv1",
    "norm1",
    "elu1",
    "conv2",
    "norm2",
    "elu2",
    "maxpool1",
    "resblock1",
    "conv3",
    "norm3",
    "elu3",
    "maxpool2",
    "conv4",
    "norm4",
    "elu4",
    "maxpool3",
    "resblock2",
    "avgpool",
    "flatten",
    "fc1",
    "norm_fc",
    "fc2",
)


class CourseNet(nn.Module):
    def __init__(self, variant: Variant = VARIANTS["base"], num_classes=10, softmax_head=False):
        super().__init__()
        v, nm = variant, variant.norm
        block = dict(norm=nm, paths=v.paths, shared=v.shared, skip=v.skip)
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        if nm:
            self.norm1 = make_norm(nm, 32, LN_SHAPES["norm1"])
        self.elu1 = nn.ELU()
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        if nm:
            self.norm2 = make_norm(nm, 64, LN_SHAPES["norm2"])
        self.elu2 = nn.ELU()
        self.maxpool1 = nn.MaxPool2d(2)
        self.resblock1 = ResBlock(64, shape=LN_SHAPES["resblock1"], **block)
        self.maxpool2 = nn.MaxPool2d(2)  # registered here as in the course; runs after elu3
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        if nm:
            self.norm3 = make_norm(nm, 128, LN_SHAPES["norm3"])
        self.elu3 = nn.ELU()
        k = v.conv4_kernel
        self.conv4 = nn.Conv2d(128, 256, k, padding=k // 2)
        if nm:
            self.norm4 = make_norm(nm, 256, LN_SHAPES["norm4"])
        self.elu4 = nn.ELU()
        self.maxpool3 = nn.MaxPool2d(2)
        self.resblock2 = ResBlock(256, shape=LN_SHAPES["resblock2"], **block)
        self.avgpool = nn.AvgPool2d(3, stride=2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(256, 256)
        if nm == "ln":
            self.norm_fc = nn.LayerNorm(256)
        self.fc2 = nn.Linear(256, num_classes)
        self.softmax_head = softmax_head
        if softmax_head:
            self.softmax = nn.Softmax(dim=1)
        self._order = [n for n in EXECUTION_ORDER if hasattr(self, n)]

    def forward(self, x):
        for name in self._order:
            x = getattr(self, name)(x)
        return self.softmax(x) if self.softmax_head else x


class WideNet(nn.Module):
    """The course's 'optimized' network: three residual stages, projection shortcuts.

    The course's code also defines a 1x1 convolution `match_conv1` (64 -> 64, 4,160
    parameters) that its forward never calls; dnnlab leaves it out, so this network has
    1,162,058 parameters against the course's 1,166,218, with the same outputs. Every
    activation is its own module (elu1, elu2 in the stem), so a probe records each of them.
    The course's wide network has no Softmax: it always outputs logits.
    """

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.elu1 = nn.ELU()
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.elu2 = nn.ELU()
        self.pool1 = nn.MaxPool2d(2)
        self.block1 = _WideBlock(
            [nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)], None
        )
        self.block2 = _WideBlock(
            [nn.Conv2d(64, 128, 3, padding=1), nn.MaxPool2d(2)], nn.Conv2d(64, 128, 1, stride=2)
        )
        self.block3 = _WideBlock(
            [nn.Conv2d(128, 256, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(256, 256, 3, padding=1)],
            nn.Conv2d(128, 256, 1, stride=2),
        )
        self.avgpool = nn.AvgPool2d(3)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(256, 256)
        self.elu_fc = nn.ELU()
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x):
        x = self.pool1(self.elu2(self.conv2(self.elu1(self.conv1(x)))))
        x = self.block3(self.block2(self.block1(x)))
        x = self.elu_fc(self.fc1(self.flatten(self.avgpool(x))))
        return self.fc2(x)


class _WideBlock(nn.Module):
    """ELU after each conv and after the addition, each its own module; identity or 1x1
    projection shortcut."""

    def __init__(self, layers: list[nn.Module], shortcut: nn.Module | None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        # acts[i] follows layers[i]: an ELU after a conv, nothing (Identity) after a pool.
        self.acts = nn.ModuleList(
            [nn.ELU() if isinstance(m, nn.Conv2d) else nn.Identity() for m in layers]
        )
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.elu = nn.ELU()

    def forward(self, x):
        y = x
        for layer, act in zip(self.layers, self.acts, strict=True):
            y = act(layer(y))
        return self.elu(y + self.shortcut(x))


def build_model(name: str, softmax_head: bool = False, num_classes: int = 10) -> nn.Module:
    if name not in VARIANTS:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    if v.wide:
        if softmax_head:
            raise InputError(
                "--softmax-head: the course's wide network has no Softmax, so "
                "model 'wide' has no softmax head"
            )
        return WideNet(num_classes)
    return CourseNet(v, num_classes, softmax_head)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def models_table() -> str:
    """`dnnlab models`: every variant with its parameter count and description."""
    lines = [f"{'model':<15}{'parameters':>12}  description"]
    for name, v in VARIANTS.items():
        lines.append(f"{name:<15}{count_params(build_model(name)):>12,}  {v.about}")
    return "\n".join(lines)


def main(args) -> int:
    """`dnnlab models`: the variants' table."""
    print(models_table())
    return 0
