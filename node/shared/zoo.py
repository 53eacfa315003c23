"""The model zoo: one network builder per ``ModelSpec.arch``, the only code that builds a spec.

Models are data, never code: a spec names an arch and its sizes, and every process builds
the network with the builders installed here. Nothing in a spec is executed.

Builders assume a spec that :class:`node.shared.model.ModelSpec` has already validated
(sizes bounded, kernels no larger than what they slide over); :func:`feature_sizes` is
the arithmetic both share, so validation and construction cannot disagree.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from node.shared.model import ModelSpec

LENET_FRAME = 32
"""LeNet-5 was drawn for 32x32 inputs: smaller ones (MNIST's 28x28) are padded by 2, as LeCun
et al. (1998) padded MNIST."""

GROUP_NORM_GROUPS = 2
"""Groups of :class:`torch.nn.GroupNorm` in a ResNet (one for an odd width). GroupNorm
normalises within each sample, so unlike BatchNorm it keeps no batch statistics that
non-IID nodes would disagree on (Hsieh et al., 2020)."""


def build(spec: ModelSpec) -> nn.Module:
    """The network ``spec`` describes; parameter names are stable across processes."""
    return BUILDERS[spec.arch](spec)


def mlp(spec: ModelSpec) -> nn.Sequential:
    """Flatten, then Linear + ReLU (+ Dropout) per hidden layer, then the logits (the seed's
    model: its layer indices are the parameter names every saved MLP file uses)."""
    layers: list[nn.Module] = [nn.Flatten()]
    _dense(layers, spec.input_size, spec)
    return nn.Sequential(*layers)


def cnn(spec: ModelSpec) -> nn.Sequential:
    """McMahan et al. (2017)'s MNIST CNN: per entry of ``channels`` a ``kernel`` x ``kernel``
    convolution with 'same' padding, ReLU and 2x2 max pooling; then the dense head."""
    layers: list[nn.Module] = []
    width = spec.input_shape[0]
    for out in spec.channels:
        layers += [
            nn.Conv2d(width, out, spec.kernel, padding="same"),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        width = out
    return _conv_net(layers, width, spec)


def lenet5(spec: ModelSpec) -> nn.Sequential:
    """LeNet-5 (LeCun et al., 1998) as usually re-implemented: unpadded convolutions, ReLU and
    2x2 max pooling (for the original's tanh and subsampling), inputs under 32x32 padded by
    2, then the dense head (120, 84 by default)."""
    layers: list[nn.Module] = []
    width = spec.input_shape[0]
    for i, out in enumerate(spec.channels):
        padding = lenet_padding(spec) if i == 0 else 0
        layers += [nn.Conv2d(width, out, spec.kernel, padding=padding), nn.ReLU(), nn.MaxPool2d(2)]
        width = out
    return _conv_net(layers, width, spec)


def _conv_net(layers: list[nn.Module], width: int, spec: ModelSpec) -> nn.Sequential:
    height, across = feature_sizes(spec)[-1]
    layers.append(nn.Flatten())
    _dense(layers, width * height * across, spec)
    return nn.Sequential(*layers)


def _dense(layers: list[nn.Module], width: int, spec: ModelSpec) -> None:
    """Append the fully connected head: hidden layers with ReLU and dropout, then logits
    (no softmax: the loss applies it)."""
    for i, hidden in enumerate(spec.hidden):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if i < len(spec.dropout) and spec.dropout[i] > 0:
            layers.append(nn.Dropout(spec.dropout[i]))
        width = hidden
    layers.append(nn.Linear(width, spec.num_classes))


def lenet_padding(spec: ModelSpec) -> int:
    return 2 if min(spec.input_shape[1:]) < LENET_FRAME else 0


def feature_sizes(spec: ModelSpec) -> list[tuple[int, int]]:
    """(H, W) that each convolution of a cnn or lenet5 slides over (padding included), then
    the (H, W) left after the last pooling: what the dense head flattens. A size can reach
    0 here; the spec's validation refuses it before anything is built."""
    height, width = spec.input_shape[1], spec.input_shape[2]
    sizes = []
    for i in range(len(spec.channels)):
        if spec.arch == "lenet5":
            pad = lenet_padding(spec) if i == 0 else 0
            height, width = height + 2 * pad, width + 2 * pad
            sizes.append((height, width))
            height, width = height - spec.kernel + 1, width - spec.kernel + 1
        else:  # 'same' padding keeps the size
            sizes.append((height, width))
        height, width = max(0, height) // 2, max(0, width) // 2
    sizes.append((height, width))
    return sizes


class BasicBlock(nn.Module):
    """He et al. (2016)'s basic block: two 3x3 convolutions and a shortcut (a 1x1
    projection where the width or the stride changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inputs, outputs, stride, norm)
        self.norm1 = _norm(norm, outputs)
        self.conv2 = _conv3x3(outputs, outputs, 1, norm)
        self.norm2 = _norm(norm, outputs)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=norm == "none"),
                _norm(norm, outputs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet(spec: ModelSpec) -> nn.Sequential:
    """A CIFAR-style ResNet (He et al., 2016; ResNet-8/20/32...): a 3x3 stem, one stage of
    ``(depth - 2) / (2 * stages)`` basic blocks per entry of ``channels`` (the width;
    every stage after the first halves the resolution), global average pooling, logits."""
    blocks = (spec.depth - 2) // (2 * len(spec.channels))
    width = spec.channels[0]
    parts: OrderedDict[str, nn.Module] = OrderedDict(
        stem=_conv3x3(spec.input_shape[0], width, 1, spec.norm),
        norm=_norm(spec.norm, width),
        relu=nn.ReLU(),
    )
    for stage, out in enumerate(spec.channels):
        layers = []
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(width, out, stride, spec.norm))
            width = out
        parts[f"stage{stage + 1}"] = nn.Sequential(*layers)
    parts["pool"] = nn.AdaptiveAvgPool2d(1)
    parts["flatten"] = nn.Flatten()
    parts["fc"] = nn.Linear(width, spec.num_classes)
    return nn.Sequential(parts)


def _conv3x3(inputs: int, outputs: int, stride: int, norm: str) -> nn.Conv2d:
    # A bias right before a normalisation is cancelled by its mean: only without one.
    return nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=norm == "none")


def _norm(norm: str, width: int) -> nn.Module:
    if norm == "group":
        return nn.GroupNorm(GROUP_NORM_GROUPS if width % GROUP_NORM_GROUPS == 0 else 1, width)
    if norm == "batch":
        return FloatBatchNorm2d(width)
    return nn.Identity()  # "none"


class FloatBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm without its int64 step counter, so its state is float only: the running
    mean and variance travel the weights path and are averaged like any weight.

    The counter only matters with ``momentum=None`` (a cumulative average); ours is fixed.
    """

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.register_buffer("num_batches_tracked", None)

    def _load_from_state_dict(
        self, state_dict: Any, prefix: str, metadata: Any, *rest: Any
    ) -> None:
        # A state dict without torch's version metadata (any plain dict of tensors) reads as
        # a pre-2019 one, and BatchNorm would add the counter back to it as a missing key.
        super()._load_from_state_dict(state_dict, prefix, {**metadata, "version": 2}, *rest)


BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "lenet5": lenet5,
    "resnet": resnet,
}
